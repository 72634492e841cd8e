"""Where image bytes live: the local data folder (default) or an S3-compatible bucket.

One interface, :class:`Storage`, with two implementations chosen by ``[storage]
backend``: :class:`LocalStorage` (files under ``data_dir``) and
:class:`~pixelkiln.storage.s3.S3Storage` (objects in a bucket, imported only
when configured). Both are addressed by relative paths built here from ids and
sanitised names (:func:`safe_name`), deterministic so that re-running a task
overwrites its files instead of duplicating them. The database, logs, reports
and ``secret.key`` always stay in ``data_dir``.

>>> from pixelkiln.config import load_settings
>>> storage = open_storage(load_settings(None).storage)    # doctest: +SKIP
>>> storage.where("images/1/fox_0000_0.png")               # doctest: +SKIP
'/home/me/kiln-data/images/1/fox_0000_0.png'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pixelkiln.exceptions import StorageError
from pixelkiln.storage.base import (
    Storage,
    StoredFileChanged,
    StoredInfo,
    Stream,
    checked_relative,
    content_type,
    thumbnails_of,
)
from pixelkiln.storage.images import (
    INPUT_FORMATS,
    MAX_INPUT_BYTES,
    MAX_INPUT_PIXELS,
    InputImage,
    StoredImage,
    infotext,
    png_size,
    read_input_image,
    safe_name,
    to_png,
)
from pixelkiln.storage.local import LocalStorage

if TYPE_CHECKING:
    from pixelkiln.config import StorageSettings

__all__ = [
    "INPUT_FORMATS",
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "InputImage",
    "LocalStorage",
    "Storage",
    "StorageError",
    "StoredFileChanged",
    "StoredImage",
    "StoredInfo",
    "Stream",
    "check_storage",
    "checked_relative",
    "content_type",
    "infotext",
    "open_storage",
    "png_size",
    "read_input_image",
    "safe_name",
    "thumbnails_of",
    "to_png",
]


def open_storage(settings: StorageSettings) -> Storage:
    """The storage ``[storage]`` configures (nothing contacted yet: see ``Storage.check``)."""
    if settings.backend == "s3":
        from pixelkiln.storage.s3 import S3Storage  # boto3 only when asked for

        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
        )
    return LocalStorage(settings.data_dir)


def check_storage(settings: StorageSettings) -> None:
    """ConfigError when the configured storage cannot be used (see ``Storage.check``): for
    a face that starts before it opens a :class:`~pixelkiln.app.Kiln` (``kiln serve``)."""
    storage = open_storage(settings)
    try:
        storage.check()
    finally:
        storage.close()
