"""Images in an S3-compatible bucket (AWS S3, MinIO, Ceph, moto…), through boto3.

Imported only when ``[storage] backend = "s3"`` (boto3 costs a few hundred ms to
import, and ``kiln`` start-up matters). Keys are ``<s3_prefix>/<relative path>``,
the same relative paths as the local folder's (``images/3/fox_0001_0.png``), so
rows do not change with the storage.

Credentials come from boto3's own chain: the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), then the shared files and the
instance role; pixelkiln never reads, logs or shows them.

A PUT is atomic (readers see the old object or the new one), so writes need no
temporary name. An upload stored again is "touched" by copying the object onto
itself with fresh metadata, which moves its ``LastModified``: retention reads
that as the upload's age, as it reads a local file's mtime. Errors are translated
here, once: a missing object is ``FileNotFoundError``, anything else from the
store :class:`~pixelkiln.storage.base.StorageError`, and :meth:`S3Storage.check`
turns the usual misconfigurations into one sentence each.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from pixelkiln.exceptions import ConfigError, StorageError
from pixelkiln.storage.base import (
    Closing,
    Storage,
    StoredFileChanged,
    StoredInfo,
    Stream,
    checked_relative,
    content_type,
)

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

log = logging.getLogger("pixelkiln.storage")

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_REFUSED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)
_CHANGED = frozenset({"412", "PreconditionFailed"})  # If-Match: another version now
_DELETE_CHUNK = 1000  # DeleteObjects takes at most 1000 keys


class S3Storage(Storage):
    """A bucket (below an optional key prefix) as the storage of images and uploads.

    >>> storage = S3Storage(bucket="kiln", endpoint="http://127.0.0.1:9000")  # doctest: +SKIP
    >>> storage.check()                                                        # doctest: +SKIP
    """

    def __init__(
        self, *, bucket: str, prefix: str = "", endpoint: str = "", region: str = ""
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=32,
            # own endpoints (MinIO, moto) rarely have a DNS name per bucket
            s3={"addressing_style": "path"} if endpoint else None,
        )
        # a session of its own: boto3's default session is shared and not thread-safe
        self._client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None, region_name=region or None, config=config
        )

    # -- names ---------------------------------------------------------------------------------

    def _key(self, relative: str) -> str:
        path = checked_relative(relative)
        return f"{self.prefix}/{path}" if self.prefix else path

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def where(self, relative: str) -> str:
        return f"s3://{self.bucket}/{self._key(relative)}"

    def _place(self) -> str:
        return f"bucket '{self.bucket}' at {self.endpoint or 'AWS S3'}"

    # -- writing -------------------------------------------------------------------------------

    def write(self, relative: str, data: bytes) -> None:
        key = self._key(relative)
        with _translated("write", key):
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type(key)
            )

    def _store_or_touch(self, relative: str, data: bytes) -> None:
        key = self._key(relative)
        if not self._exists(key):
            with _translated("write", key):
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentType=content_type(key)
                )
            return
        # stored again: a copy onto itself with new metadata moves LastModified, which
        # retention reads as the upload's age (an S3 object has no utime)
        with _translated("touch", key):
            self._client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={"stored": f"{time.time():.3f}"},
                ContentType=content_type(key),
            )

    # -- reading -------------------------------------------------------------------------------

    def read(self, relative: str) -> bytes:
        with self.open(relative) as body:
            return body.read()

    def open(
        self,
        relative: str,
        start: int = 0,
        length: int | None = None,
        *,
        if_match: str | None = None,
    ) -> Stream:
        key = self._key(relative)
        extra: dict[str, Any] = {}
        if if_match is not None:
            extra["IfMatch"] = if_match  # 412 once it was written again: StoredFileChanged
        if length == 0:
            if if_match is not None:  # nothing to read, but still the version asked for
                self._still(key, if_match)
            return _Body(None, key)
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            extra["Range"] = f"bytes={start}-{end}"
        with _translated("read", key):
            answer = self._client.get_object(Bucket=self.bucket, Key=key, **extra)
        return _Body(answer["Body"], key)

    def stat(self, relative: str) -> StoredInfo:
        key = self._key(relative)
        with _translated("stat", key):
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        return StoredInfo(
            self._relative(key),
            head["ContentLength"],
            head["LastModified"].timestamp(),
            head["ETag"],
        )

    def _still(self, key: str, etag: str) -> None:
        with _translated("stat", key):
            self._client.head_object(Bucket=self.bucket, Key=key, IfMatch=etag)

    def _exists(self, key: str) -> bool:
        try:
            with _translated("stat", key):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def list_files(self, folder: str) -> Iterator[StoredInfo]:
        return self._listed(self._key(folder) + "/")

    def _listed(self, prefix: str) -> Iterator[StoredInfo]:
        pages = self._client.get_paginator("list_objects_v2")
        with _translated("list", prefix):
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield StoredInfo(
                        self._relative(item["Key"]),
                        item["Size"],
                        item["LastModified"].timestamp(),
                        item["ETag"],
                    )

    # -- deleting ------------------------------------------------------------------------------

    def delete(self, relative: str) -> None:
        key = self._key(relative)
        with _translated("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def delete_folder(self, folder: str) -> None:
        self._delete_keys([self._key(i.path) for i in self.list_files(folder)])

    def delete_image(self, relative: str, batch_id: int, image_id: int) -> None:
        thumbs = self.thumbnails(f"thumbs/{batch_id}", (image_id,))
        self._delete_keys([self._key(relative), *(self._key(t.path) for t in thumbs)])

    def thumbnails(self, folder: str, ids: Collection[int]) -> Iterator[StoredInfo]:
        """One listing per id, by the key prefix ``<folder>/<id>_``: the folder's other
        objects (every upload's thumbnails, under ``thumbs/assets``) are not listed."""
        base = self._key(folder)
        for image_id in sorted(set(ids)):
            for info in self._listed(f"{base}/{int(image_id)}_"):
                if info.path.endswith(".webp"):
                    yield info

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[start : start + _DELETE_CHUNK]
            with _translated("delete", chunk[0]):
                answer = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            for error in answer.get("Errors", []):
                # the rows are gone already: a leftover object is only space
                log.warning("could not delete %s: %s", error.get("Key"), error.get("Message"))

    # -- health --------------------------------------------------------------------------------

    def check(self) -> None:
        """One HEAD of the bucket; ConfigError says what is wrong, in one sentence."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ConfigError(
                f"[storage] s3: no usable credentials for {self._place()} ({exc}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for "
                "temporary ones) in the environment"
            ) from exc
        except EndpointConnectionError as exc:
            raise ConfigError(f"[storage] s3: cannot reach {self._place()}: {exc}") from exc
        except ClientError as exc:
            raise ConfigError(f"[storage] s3: {self._refusal(exc)}") from exc
        except BotoCoreError as exc:
            raise ConfigError(f"[storage] s3: {self._place()} cannot be used: {exc}") from exc

    def _refusal(self, exc: ClientError) -> str:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"{self._place()} does not exist (create it, or fix s3_bucket)"
        if code in _REFUSED:
            return (
                f"access to {self._place()} was refused ({code}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the bucket's policy"
            )
        return f"{self._place()} cannot be used: {exc}"

    def close(self) -> None:
        self._client.close()


class _Body(Closing):
    """An object's body as a :class:`~pixelkiln.storage.base.Stream`; errors translated."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body  # botocore's StreamingBody; None: an empty range
        self._key = key

    def read(self, size: int = -1, /) -> bytes:
        if self._body is None:
            return b""
        with _translated("read", self._key):
            data: bytes = self._body.read(None if size < 0 else size)
        return data

    def close(self) -> None:
        if self._body is not None:
            self._body.close()


@contextlib.contextmanager
def _translated(action: str, key: str) -> Iterator[None]:
    """botocore's errors as ours: a missing object is FileNotFoundError, the rest StorageError."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _MISSING:
            raise FileNotFoundError(f"no object {key}") from exc
        if code in _CHANGED:
            raise StoredFileChanged(f"{key} was written again since it was looked at") from exc
        message = error.get("Message") or code
        raise StorageError(f"S3 {action} of {key} failed: {code} {message}".strip()) from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 {action} of {key} failed: {exc}") from exc
