"""The base of the HTTP backends: settings, the shared client, a server pool, and cleanup."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from pixelkiln.backends.base import BackendDeps, GenerationRequest
from pixelkiln.backends.http import raise_for_status, send
from pixelkiln.backends.pool import ServerPool
from pixelkiln.config import BackendSettings
from pixelkiln.exceptions import BackendError


class PooledBackend:
    """Base of the HTTP backends: settings, the shared client, a pool, and cleanup.

    Subclasses implement ``generate`` (sending each request through
    ``self.pool.run``), :meth:`health` and :meth:`list_models`. Error messages
    pass through :meth:`request`, which removes the secret should a server echo
    it back.
    """

    #: base URL used when the settings list none (hosted APIs)
    default_url: str | None = None
    #: path added to a configured URL that names only a host (a hosted API's ``/v1``)
    api_path = ""

    def __init__(self, settings: BackendSettings, deps: BackendDeps) -> None:
        self.settings = settings
        self.http = deps.http
        self._secret = settings.secret()
        urls = [self.normalize_url(u) for u in settings.urls]
        if not urls and self.default_url:
            urls = [self.default_url]
        self.pool = ServerPool.from_settings(settings, self.health, urls)

    @classmethod
    def normalize_url(cls, url: str) -> str:
        """A configured URL as requests are built from it: ``api_path`` added to a bare host."""
        url = url.rstrip("/")
        return url + cls.api_path if urlsplit(url).path in ("", "/") else url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.settings.name!r} {len(self.pool.servers)} server(s)>"

    async def health(self, url: str) -> None:
        """Raise a BackendError unless the server at ``url`` can take work."""
        await self.list_models(url)

    async def list_models(self, url: str) -> list[str]:
        """Model names the server at ``url`` offers (for ``kiln backends check``)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.pool.aclose()

    def bearer(self, request: GenerationRequest | None = None) -> dict[str, str]:
        """``Authorization: Bearer`` with the request's user key, else the configured one."""
        key = (request.api_key if request is not None else None) or self._secret
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def request(self, method: str, url: str, *, server: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request with our errors, the settings' timeout, and no secret in messages."""
        kwargs.setdefault("timeout", self.settings.timeout)
        try:
            return await send(self.http, method, url, server=server, **kwargs)
        except BackendError as exc:
            # a user's own key, sent in this request's headers, is a secret too
            sent = (kwargs.get("headers") or {}).get("Authorization", "")
            self.hide_secrets(exc, sent.removeprefix("Bearer ").strip())
            raise

    def check(
        self, response: httpx.Response, *, server: str, request: GenerationRequest | None = None
    ) -> None:
        """:func:`raise_for_status` for a response fetched with ``check=False``, scrubbed."""
        try:
            raise_for_status(response, server=server)
        except BackendError as exc:
            self.hide_secrets(exc, request.api_key if request is not None else None)
            raise

    def hide_secrets(self, exc: BackendError, user_key: str | None = None) -> None:
        """Mask the configured secret and a user's own key in ``exc``'s message."""
        scrub(exc, self._secret)
        if user_key:
            scrub(exc, user_key)


def scrub(exc: BackendError, secret: str) -> None:
    """Mask ``secret`` (and its halves, for ``user:password``) in ``exc``'s message."""
    text = str(exc)
    for part in {secret, *secret.split(":", 1)} if secret else ():
        if len(part) >= 4:
            text = text.replace(part, "***")
    if text != str(exc):
        exc.args = (text,)
