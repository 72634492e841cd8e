"""pixelkiln: batch image generation server, library and CLI."""

from __future__ import annotations

__version__ = "0.1.0"
