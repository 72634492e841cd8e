"""The browser UI: server-rendered pages (Jinja2) and plain JavaScript modules over the
public ``/api/v1``; no build step, nothing from a CDN. See :mod:`pixelkiln.web.pages`."""

from __future__ import annotations

from pixelkiln.web.headers import SecurityHeaders
from pixelkiln.web.pages import PAGES, mount_web

__all__ = ["PAGES", "SecurityHeaders", "mount_web"]
