"""Intake: an img2img task without a size keeps its input's shape; upload batches' names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from pixelkiln.db.batches import NewBatch
from pixelkiln.engine.intake import prepare_batch
from pixelkiln.specs import parse_batch
from pixelkiln.storage import LocalStorage


def picture(path: Path, width: int, height: int) -> str:
    Image.new("RGB", (width, height), "teal").save(path)
    return path.name


def prepare(data: dict[str, Any], folder: Path) -> NewBatch:
    return prepare_batch(
        parse_batch(data, source="b.yaml", partial=True),
        storage=LocalStorage(folder / "data"),
        default_backend="placeholder",
        known_backends=["placeholder"],
        max_attempts=3,
        source_name="b.yaml",
        base_dir=folder,
    )


def sizes(batch: NewBatch) -> list[tuple[int, int]]:
    return [(t.width, t.height) for t in batch.tasks]


def test_outputs_follow_the_input_shape_unless_a_size_or_ratio_is_given(tmp_path: Path) -> None:
    wide, tall = picture(tmp_path / "wide.png", 160, 90), picture(tmp_path / "tall.jpg", 60, 80)
    batch = prepare(
        {
            "name": "shapes",
            "defaults": {"prompt": "p"},
            "tasks": [
                {"init_image": wide},
                {"init_image": tall, "resolution": "2k"},
                {"init_image": wide, "aspect_ratio": "1:1"},
                {"init_image": tall, "width": 512},
                {"init_image": wide, "width": 256, "height": 128},
                {"reference_images": [tall]},  # no init image: nothing to follow
            ],
        },
        tmp_path,
    )
    assert sizes(batch) == [
        (1344, 768),
        (1728, 2368),
        (1024, 1024),
        (512, 512),
        (256, 128),
        (1024, 1024),
    ]
    assert batch.tasks[0].params_json()["width"] == 1344  # stored as the task's size
    assert sorted(a["name"] for a in batch.assets) == ["tall.jpg", "wide.png"]


def test_a_ratio_in_the_defaults_wins_over_the_shape(tmp_path: Path) -> None:
    wide = picture(tmp_path / "wide.png", 160, 90)
    data = {"name": "b", "defaults": {"prompt": "p", "aspect_ratio": "9:16"}, "tasks": [{}]}
    data["tasks"][0]["init_image"] = wide
    assert sizes(prepare(data, tmp_path)) == [(768, 1344)]


def test_tasks_keyed_by_image_names_are_named_after_them_uniquely(tmp_path: Path) -> None:
    one, two = picture(tmp_path / "one.png", 64, 64), picture(tmp_path / "two.png", 72, 64)
    tasks = [
        {"init_image": one, "key": "photo.png"},
        {"init_image": two, "key": "PHOTO.jpg"},
        {"init_image": one, "key": "场景 1.webp"},
    ]
    batch = prepare({"name": "b", "defaults": {"prompt": "p"}, "tasks": tasks}, tmp_path)
    assert [i["name"] for i in batch.inputs] == ["photo", "PHOTO-2", "场景_1"]
    storage = LocalStorage(tmp_path / "data")
    assert storage.image_path(1, "PHOTO-2", None, 0) == "images/1/PHOTO-2_0.png"
    assert storage.image_path(1, "x", 3, 0) == "images/1/x_0003_0.png"


def test_a_batch_of_other_keys_keeps_positions_in_its_file_names(tmp_path: Path) -> None:
    one = picture(tmp_path / "one.png", 64, 64)
    for tasks in (
        [{"init_image": one, "key": "a.png"}, {"init_image": one, "key": "scene-2"}],
        [{"init_image": one, "key": "a.png"}, {"key": "b.png"}],
        [{"init_image": one, "key": "a.png", "filename_prefix": "shot"}],
    ):
        batch = prepare({"name": "b", "defaults": {"prompt": "p"}, "tasks": tasks}, tmp_path)
        assert all("name" not in i for i in batch.inputs), tasks
