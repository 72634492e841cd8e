"""Domain records → API schemas. URLs of files are built here, in one place.

The records come from our own database, so the schemas are built with
``model_construct`` (no validation): on the hot read paths (a batch's task page,
the records search) validating what we just read cost more than the query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pixelkiln.config import Settings
from pixelkiln.db.credits import LedgerEntry
from pixelkiln.db.presets import Preset
from pixelkiln.db.records import Asset, ImageInfo
from pixelkiln.db.users import User
from pixelkiln.keybox import KeyBox
from pixelkiln.models import Batch, Event, EventType, ImageRecord, Task
from pixelkiln.reports import eta_seconds
from pixelkiln.service.links import link_query
from pixelkiln.service.reading import BatchPage
from pixelkiln.wire.schemas import (
    AssetPublic,
    BatchDetail,
    BatchPublic,
    CountsPublic,
    EventPublic,
    ImageDetail,
    ImageInputPublic,
    ImagePublic,
    LedgerEntryPublic,
    PresetPublic,
    TaskPublic,
    UserPublic,
)

API = "/api/v1"


def image_url(image_id: int) -> str:
    return f"{API}/images/{image_id}/file"


def thumbnail_url(image_id: int) -> str:
    return f"{API}/images/{image_id}/thumbnail"


@dataclass(frozen=True)
class ImageLinks:
    """Absolute image URLs for readers that cannot send a token (``<img src>``, a
    spreadsheet's link, another tool's front end): with auth on each carries a signed
    ``exp`` and ``sig`` (see :mod:`pixelkiln.service.links`); with auth off it is plain.

    >>> ImageLinks(base="http://127.0.0.1:8000").file(7)
    'http://127.0.0.1:8000/api/v1/images/7/file'
    """

    base: str = ""  #: scheme and host the reader reaches this server by; "" = paths
    keys: KeyBox | None = None  #: signs the links; None = plain links (auth off)
    ttl: float = 86400.0  #: seconds a signed link works (``[auth] link_ttl``)

    @classmethod
    def of(cls, settings: Settings, keys: KeyBox, base: str) -> ImageLinks:
        signer = keys if settings.auth.enabled else None
        return cls(base.rstrip("/"), signer, settings.auth.link_ttl)

    def file(self, image_id: int) -> str:
        return self._link(image_url(image_id), image_id)

    def thumbnail(self, image_id: int) -> str:
        return self._link(thumbnail_url(image_id), image_id)

    def input(self, image_id: int, n: int = 0) -> str:
        """Input ``n`` (0 = the init image) of the task that made image ``image_id``."""
        return self._link(f"{API}/images/{image_id}/inputs/{n}", image_id)

    def _link(self, path: str, image_id: int) -> str:
        if self.keys is None:
            return self.base + path
        return f"{self.base}{path}?{link_query(self.keys, image_id, ttl=self.ttl)}"


def batch_public(batch: Batch, now: float | None = None) -> BatchPublic:
    return BatchPublic.model_construct(**batch_fields(batch, now))


def batch_fields(batch: Batch, now: float | None = None) -> dict[str, Any]:
    now = now or time.time()
    c = batch.counts
    elapsed = None
    if batch.started_at:
        elapsed = round((batch.finished_at or now) - batch.started_at, 3)
    eta = eta_seconds(batch, now)
    return {
        "id": batch.id,
        "name": batch.name,
        "status": batch.status,
        "priority": batch.priority,
        "source": batch.source,
        "owner_id": batch.owner_id,
        "counts": CountsPublic.model_construct(
            total=c.total,
            pending=c.pending,
            running=c.running,
            succeeded=c.succeeded,
            failed=c.failed,
            cancelled=c.cancelled,
            images=c.images,
        ),
        "progress": round(c.progress, 4),
        "eta_seconds": round(eta, 1) if eta is not None else None,
        "elapsed_seconds": elapsed,
        "created_at": batch.created_at,
        "started_at": batch.started_at,
        "finished_at": batch.finished_at,
        "scheduled_at": batch.scheduled_at,
        "max_workers": batch.max_workers,
        "delay": batch.delay,
        "webhook": batch.webhook,
    }


def image_public(image: ImageRecord) -> ImagePublic:
    return ImagePublic.model_construct(**_image_fields(image))


def _image_fields(image: ImageRecord) -> dict[str, Any]:
    return {
        "id": image.id,
        "task_id": image.task_id,
        "batch_id": image.batch_id,
        "index": image.index,
        "width": image.width,
        "height": image.height,
        "bytes": image.bytes,
        "seed": image.seed_sent,
        "url": image_url(image.id),
        "thumbnail_url": thumbnail_url(image.id),
        "created_at": image.created_at,
        "backend": image.backend,
        "server": image.server,
        "model": image.model,
        "run": image.run,
        "superseded": image.superseded,
    }


def task_public(task: Task, images: list[ImageRecord]) -> TaskPublic:
    return TaskPublic.model_construct(
        id=task.id,
        batch_id=task.batch_id,
        position=task.position,
        key=task.key,
        status=task.status,
        backend=task.backend,
        prompt=task.prompt,
        negative_prompt=task.negative_prompt,
        params=task.params,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        error=task.last_error if task.status != "succeeded" else None,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        duration=task.duration,
        item=task.item,
        run=task.run,
        images=[image_public(i) for i in images],
    )


def input_urls(info: ImageInfo) -> list[ImageInputPublic]:
    """The task's input images, served through the image they belong to."""
    out = []
    if info.inputs.get("init_image"):
        out.append(
            ImageInputPublic.model_construct(role="init_image", url=_input_url(info.image.id, 0))
        )
    for n, _ in enumerate(info.inputs.get("reference_images") or [], start=1):
        out.append(
            ImageInputPublic.model_construct(
                role="reference_image", url=_input_url(info.image.id, n)
            )
        )
    return out


def _input_url(image_id: int, n: int) -> str:
    return f"{API}/images/{image_id}/inputs/{n}"


def image_detail(info: ImageInfo) -> ImageDetail:
    return ImageDetail.model_construct(
        **_image_fields(info.image),
        key=info.key,
        prompt=info.prompt,
        negative_prompt=info.sent_negative_prompt,
        params=info.sent_params,
        batch_name=info.batch_name,
        batch_status=info.batch_status,
        inputs=input_urls(info),
    )


def asset_public(asset: Asset, filename: str | None = None) -> AssetPublic:
    """An asset as uploaded now under ``filename``, or (None) as listed: by its own name."""
    name = asset.name or filename or f"asset-{asset.id}"
    return AssetPublic.model_construct(
        id=asset.id,
        ref=f"asset:{asset.id}",
        filename=filename or name,
        name=name,
        mime=asset.mime,
        width=asset.width,
        height=asset.height,
        bytes=asset.bytes,
        sha256=asset.sha256,
        url=f"{API}/assets/{asset.id}/file",
        thumbnail_url=f"{API}/assets/{asset.id}/thumbnail",
        created_at=asset.created_at,
    )


def event_public(event: Event) -> EventPublic:
    """An event for clients: image events carry URLs instead of storage paths."""
    data = event.data
    if event.type == EventType.IMAGE_GENERATED and isinstance(data.get("image"), dict):
        image = {k: v for k, v in data["image"].items() if k != "path"}
        if "id" in image:
            image["url"] = image_url(image["id"])
            image["thumbnail_url"] = thumbnail_url(image["id"])
        data = {**data, "image": image}
    return EventPublic.model_construct(
        id=event.id,
        type=event.type,
        batch_id=event.batch_id,
        task_id=event.task_id,
        created_at=event.created_at,
        data=data,
    )


def preset_public(p: Preset) -> PresetPublic:
    return PresetPublic.model_construct(
        id=p.id,
        title=p.title,
        content=p.content,
        negative_prompt=p.negative_prompt,
        params=p.params,
        category=p.category,
        position=p.position,
        active=p.active,
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


def user_public(user: User, balance: int) -> UserPublic:
    return UserPublic.model_construct(
        id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        active=user.active,
        created_at=user.created_at,
        balance=balance,
        share=user.share,
    )


def ledger_public(entry: LedgerEntry) -> LedgerEntryPublic:
    return LedgerEntryPublic.model_construct(
        id=entry.id,
        delta=entry.delta,
        reason=entry.reason,
        batch_id=entry.batch_id,
        note=entry.note,
        created_at=entry.created_at,
    )


def batch_detail(page: BatchPage) -> BatchDetail:
    """A batch with one page of its tasks and their images."""
    return BatchDetail.model_construct(
        **batch_fields(page.batch),
        tasks=[task_public(t, page.images.get(t.id, [])) for t in page.tasks],
        task_total=page.task_total,
        task_offset=page.task_offset,
        finished=page.batch.status.finished,
    )
