"""Signed image links: a link to one image's file (or thumbnail, or input) that works
without a token until it expires.

``<img src>``, a spreadsheet's link column and a webhook receiver cannot send a
bearer header, so where pixelkiln hands out an image URL for such a reader (the
drop-in APIs' ``image_url``, exports, webhook payloads) it adds ``exp`` (epoch
seconds) and ``sig``, an HMAC-SHA256 of the image id and the expiry under a key
derived from the installation's secret (``[auth] secret_key``, or the generated
``secret.key``). A signature grants reading that one image — its file, its
thumbnail and the inputs of the task that made it — and nothing else; changing
the secret revokes every link. With auth off links are plain: nothing
needs a token.

>>> from pixelkiln.config import Settings
>>> keys = KeyBox(Settings(auth={"secret_key": "x" * 43 + "="}))
>>> query = link_query(keys, 7, ttl=60, now=1000.0)
>>> query.split("&")[0], link_is_valid(keys, 7, 1060, query.split("sig=")[1], now=1000.0)
('exp=1060', True)
"""

from __future__ import annotations

import hashlib
import hmac
import time

from pixelkiln.keybox import KeyBox

#: what the derived key is for: a key made for one purpose never signs for another
PURPOSE = b"pixelkiln image links v1"


def _signature(keys: KeyBox, image_id: int, exp: int) -> str:
    message = f"{image_id}:{exp}".encode()
    return hmac.new(keys.derive(PURPOSE), message, hashlib.sha256).hexdigest()


def link_query(keys: KeyBox, image_id: int, *, ttl: float, now: float | None = None) -> str:
    """``exp=…&sig=…`` for links to image ``image_id`` that work for ``ttl`` seconds."""
    exp = int((now if now is not None else time.time()) + ttl)
    return f"exp={exp}&sig={_signature(keys, image_id, exp)}"


def link_is_valid(
    keys: KeyBox, image_id: int, exp: int, sig: str, now: float | None = None
) -> bool:
    """Whether ``sig`` signs image ``image_id`` until ``exp``, and ``exp`` has not passed."""
    if exp < (now if now is not None else time.time()):
        return False
    # bytes: compare_digest refuses text that is not ASCII (a 500 for a hostile ``sig``)
    return hmac.compare_digest(_signature(keys, image_id, exp).encode(), sig.encode())
