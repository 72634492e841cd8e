"""From a spec to a batch ready to store: every problem at once, nothing stored for bad input."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelkiln.engine.intake import prepare_batch
from pixelkiln.exceptions import NotFoundError, SpecError
from pixelkiln.specs import parse_batch
from pixelkiln.storage import LocalStorage


def png(path: Path) -> Path:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG")
    path.write_bytes(out.getvalue())
    return path


def prepare(data: dict[str, Any], folder: Path, **options: Any) -> Any:
    spec = parse_batch(data, source="b.yaml", partial=True)
    return prepare_batch(
        spec,
        storage=LocalStorage(folder / "data"),
        default_backend="placeholder",
        known_backends=["placeholder"],
        max_attempts=3,
        source_name="b.yaml",
        base_dir=folder,
        **options,
    )


def test_schema_values_files_and_image_content_are_reported_together(tmp_path: Path) -> None:
    png(tmp_path / "fine.png")
    (tmp_path / "notes.png").write_text("not an image")
    data = {
        "name": "bad",
        "tasks": [
            {"prompt": "a", "n": 0, "init_image": "fine.png"},
            {"prompt": "b", "aspect_ratio": "5:7"},
            {"prompt": "c", "init_image": "missing.png"},
            {"prompt": "d", "reference_images": ["notes.png", "fine.png"]},
            {"prompt": "e", "init_image": "notes.png"},  # the same bad file: said once
        ],
    }
    with pytest.raises(SpecError) as exc:
        prepare(data, tmp_path)
    located = [(p.source, p.where, p.field) for p in exc.value.problems]
    assert located == [
        ("b.yaml", "task 1", "n"),
        ("b.yaml", "task 2", "aspect_ratio"),
        ("b.yaml", "task 3", "init_image"),
        ("b.yaml", "task 4", "reference_images"),
    ]
    assert "notes.png: not a readable image" in exc.value.problems[3].message
    # a refused batch leaves no copy of its good images behind
    assert not (tmp_path / "data" / "assets").exists()


def test_uploads_are_looked_up_with_the_other_checks(tmp_path: Path) -> None:
    def resolve_asset(ref: str) -> str:
        raise NotFoundError("no uploaded image with that id")

    data = {"name": "x", "tasks": [{"prompt": "a", "seed": -7, "init_image": "asset:9"}]}
    with pytest.raises(SpecError) as exc:
        prepare(data, tmp_path, resolve_asset=resolve_asset)
    assert [(p.where, p.field) for p in exc.value.problems] == [
        ("task 1", "seed"),
        ("task 1", "init_image"),
    ]
    assert exc.value.problems[1].message == "asset:9: no uploaded image with that id"


def test_a_good_batch_stores_its_images_once(tmp_path: Path) -> None:
    png(tmp_path / "fine.png")
    data = {
        "name": "ok",
        "defaults": {"init_image": "fine.png"},
        "tasks": [{"prompt": "a"}, {"prompt": "b", "reference_images": ["fine.png"]}],
    }
    new = prepare(data, tmp_path)
    assert len(new.assets) == 1
    stored = new.assets[0]["path"]
    assert new.inputs == [
        {"init_image": stored},
        {"init_image": stored, "reference_images": [stored]},
    ]
    assert (tmp_path / "data" / stored).is_file()
