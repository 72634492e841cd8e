"""Copy a batch's images out of the data folder: to a folder or a ZIP, with a manifest."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from pixelkiln.db.database import Database
from pixelkiln.db.records import batch_images
from pixelkiln.db.tasks import images_by_task
from pixelkiln.storage import Storage


def manifest(db: Database, batch_id: int) -> list[dict[str, Any]]:
    """One entry per image: file name, task key and position, what was sent, who made it.

    ``negative_prompt`` and ``params`` are as sent (what the backend ignores is left out),
    ``width``/``height`` as returned, ``model`` the one used, ``server`` without credentials.
    """
    return [
        {
            "file": Path(info.image.path).name,
            "key": info.key,
            "position": info.position,
            "index": info.image.index,
            "prompt": info.prompt,
            "negative_prompt": info.sent_negative_prompt,
            "seed": info.image.seed,
            "width": info.image.width,
            "height": info.image.height,
            "sha256": info.image.sha256,
            "backend": info.image.backend,
            "server": info.image.server,
            "model": info.image.model,
            "params": info.sent_params,
        }
        for info in db.read(batch_images, batch_id)
    ]


def export_batch(db: Database, data_dir: Path, batch_id: int, target: Path) -> int:
    """Write images + manifest.json to ``target`` (a folder, or a .zip file); returns the count."""
    storage = Storage(data_dir)
    entries = manifest(db, batch_id)
    by_name = {
        Path(i.path).name: i.path
        for imgs in db.read(images_by_task, batch_id).values()
        for i in imgs
    }
    if target.suffix.lower() == ".zip":
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
            for entry in entries:  # PNGs are compressed already
                archive.write(storage.absolute(by_name[entry["file"]]), entry["file"])
            archive.writestr("manifest.json", json.dumps(entries, indent=2, ensure_ascii=False))
        return len(entries)
    target.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        shutil.copyfile(storage.absolute(by_name[entry["file"]]), target / entry["file"])
    (target / "manifest.json").write_text(
        json.dumps(entries, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return len(entries)
