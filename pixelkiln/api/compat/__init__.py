"""Other tools' request shapes at their own paths, each switched on by a ``[compat]`` setting.

A compat API is a thin adapter: it parses its tool's request, calls
:mod:`pixelkiln.service` as the ``/api/v1`` routes do, and renders its tool's
answer (errors included, see :mod:`~pixelkiln.api.compat.envelope`). The
batches it makes are ordinary batches, seen in ``/api/v1``, records, events
and the UI. Same bearer tokens as ``/api/v1``. See docs/compat.md.

- ``[compat] img2img_service``: :mod:`~pixelkiln.api.compat.img2img` (+ ``img2img_admin``)
- ``[compat] slides``: :mod:`~pixelkiln.api.compat.slides`
"""

from __future__ import annotations

from fastapi import APIRouter

from pixelkiln.config import CompatSettings


def compat_routers(compat: CompatSettings) -> list[APIRouter]:
    """The routers of the drop-in APIs switched on (none by default: their paths 404)."""
    routers: list[APIRouter] = []
    if compat.img2img_service:
        from pixelkiln.api.compat import img2img, img2img_admin

        routers += [img2img.router, img2img_admin.router]
    if compat.slides:
        from pixelkiln.api.compat import slides

        routers.append(slides.router)
    return routers
