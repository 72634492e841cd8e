"""A regenerated task's files: later runs never take another file's name."""

from __future__ import annotations

from pathlib import Path

from pixelkiln.storage import LocalStorage


def test_later_runs_end_in_their_run_and_the_first_run_keeps_its_name(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.image_path(3, "s2", 2, 0) == "images/3/s2_0002_0.png"
    assert storage.image_path(3, "s2", 2, 0, run=1) == "images/3/s2_0002_0_r1.png"
    assert storage.image_path(3, "photo_00", None, 1, run=2) == "images/3/photo_00_1_r2.png"


def test_an_upload_named_like_a_later_run_keeps_its_own_file(tmp_path: Path) -> None:
    """Upload stems are unique, but one may look like another's run: ``photo_00_r1``."""
    storage = LocalStorage(tmp_path)
    names = {
        storage.image_path(1, stem, None, index, run)
        for stem in ("photo_00", "photo_00_r1", "photo_00_0", "photo_00_0_r1")
        for index in range(3)
        for run in range(3)
    }
    assert len(names) == 4 * 3 * 3
