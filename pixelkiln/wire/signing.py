"""Webhook signatures: how pixelkiln signs a delivery and how a receiver checks it.

A delivery carries ``X-Pixelkiln-Timestamp`` (epoch seconds) and
``X-Pixelkiln-Signature: sha256=<hex>``, the HMAC-SHA256 of
``<timestamp>.<body>`` under the owner's secret (Stripe's scheme): the body
cannot be changed, and an old delivery replayed later is refused by its
timestamp. Only the standard library is used, so a receiver can copy
:func:`verify` as it is.

>>> body = b'{"type":"batch.finished"}'
>>> headers = signed_headers("whsec_x", body, timestamp=1700000000)
>>> verify("whsec_x", body, headers, now=1700000030)
True
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Pixelkiln-Timestamp"
SIGNATURE_HEADER = "X-Pixelkiln-Signature"
#: how old a delivery's timestamp may be, by default, before :func:`verify` refuses it
TOLERANCE = 300.0


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>`` under ``secret``."""
    signed = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, *, timestamp: int) -> dict[str, str]:
    """The timestamp and signature headers of a delivery of ``body``."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, body, timestamp),
    }


def verify(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``body`` with these headers was signed with ``secret`` within ``tolerance``
    seconds of ``now``. Header names are matched without regard to case."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(given, signature(secret, body, int(stamp)))
