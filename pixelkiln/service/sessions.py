"""Browser sessions: a token pasted once becomes an HttpOnly cookie.

``<img src>``, ``EventSource`` and a file download cannot send a bearer header,
so the web UI signs in once (``POST /api/v1/session`` with a token) and the API
accepts the cookie it sets as well as the header. The cookie is *signed, not
stored*: it holds the token's hash, an expiry and an HMAC-SHA256 of both under
a key derived from the installation's secret (the same secret as signed image
links, another purpose). So a session is exactly as good as its token:
revoking the token (``kiln users revoke``, the admin page) or disabling the
user ends every browser session made from it, and changing the secret ends
them all. The token's text never reaches the browser's storage.

>>> from pixelkiln.config import Settings
>>> keys = KeyBox(Settings(auth={"secret_key": "x" * 43 + "="}))
>>> value = session_value(keys, "ab" * 32, ttl=60, now=1000.0)
>>> session_token_hash(keys, value, now=1000.0) == "ab" * 32
True
>>> session_token_hash(keys, value, now=2000.0) is None  # expired
True
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from pixelkiln.db.users import User, hash_token, user_for_token_hash
from pixelkiln.keybox import KeyBox
from pixelkiln.service.context import ServiceContext

#: the cookie's name; ``__Host-`` would need https, which a loopback install lacks
COOKIE = "kiln_session"
#: what the derived key is for: never the same key as image links
PURPOSE = b"pixelkiln browser sessions v1"

#: hash.expiry.signature; matched whole (``$`` alone would let a trailing newline by)
_VALUE = re.compile(r"([0-9a-f]{64})\.([0-9]{1,12})\.([0-9a-f]{64})")


def _signature(keys: KeyBox, token_hash: str, exp: int) -> str:
    message = f"{token_hash}.{exp}".encode()
    return hmac.new(keys.derive(PURPOSE), message, hashlib.sha256).hexdigest()


def session_value(keys: KeyBox, token_hash: str, *, ttl: float, now: float | None = None) -> str:
    """The cookie's value for a session of the token with ``token_hash``, ``ttl`` seconds."""
    exp = int((now if now is not None else time.time()) + ttl)
    return f"{token_hash}.{exp}.{_signature(keys, token_hash, exp)}"


def session_token_hash(keys: KeyBox, value: str, now: float | None = None) -> str | None:
    """The token hash a cookie value carries, when its signature holds and it has not
    expired; else None (the caller then answers 401, as for a bad token)."""
    found = _VALUE.fullmatch(value)
    if found is None:
        return None
    token_hash, exp, sig = found.group(1), int(found.group(2)), found.group(3)
    if exp < (now if now is not None else time.time()):
        return None
    if not hmac.compare_digest(_signature(keys, token_hash, exp).encode(), sig.encode()):
        return None
    return token_hash


async def sign_in(ctx: ServiceContext, token: str) -> tuple[User, str] | None:
    """The user of ``token`` and a session cookie's value for it; None for a token that
    is unknown, revoked or of a disabled user (the face answers as for a bad token)."""
    token_hash = hash_token(token)
    user = await ctx.read(user_for_token_hash, token_hash)
    if user is None:
        return None
    return user, session_value(ctx.keys, token_hash, ttl=ctx.settings.auth.session_ttl)


async def session_user(ctx: ServiceContext, value: str | None) -> User | None:
    """The active user of a session cookie's ``value``; None when there is no cookie,
    or it is forged, expired, signed under another secret, or its token revoked (or its
    user disabled). The API's and the pages' one check."""
    token_hash = session_token_hash(ctx.keys, value) if value else None
    if token_hash is None:
        return None
    return await ctx.read(user_for_token_hash, token_hash)
