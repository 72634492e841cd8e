"""Measured speeds: filled when a batch ends, on SQLite and PostgreSQL, and what plans use;
over a limit, a submit creates nothing and the plan says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from pixelkiln.app import Kiln
from pixelkiln.db import speeds as speeds_module
from pixelkiln.db.batches import list_batches
from pixelkiln.db.database import Database
from pixelkiln.db.speeds import MEMORY, Speed, measured
from pixelkiln.exceptions import SpecError
from pixelkiln.service import LOCAL, Submission, submit
from pixelkiln.service.submission import plan
from pixelkiln.specs import BatchSpec, parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _spec(tasks: list[dict[str, Any]], **defaults: Any) -> BatchSpec:
    base = {"width": 64, "height": 64, "steps": 10, **defaults}
    return parse_batch({"name": "s", "defaults": base, "tasks": tasks})


def _kiln(tmp_path: Path, database_url: str, **limits: Any) -> Kiln:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        limits=limits,
        backends=[
            {"name": "p", "type": "placeholder", "concurrency": 2, "latency": 0.05},
            {"name": "q", "type": "placeholder", "price_per_image": 0.5},
        ],
    )
    return Kiln(settings)


async def _run(kiln: Kiln, spec: BatchSpec) -> int:
    batch_id = (await submit(kiln.service, LOCAL, Submission(spec))).batch_id
    await kiln.run_until_done([batch_id])
    return batch_id


async def test_a_finished_batch_fills_speeds_by_backend_size_and_steps(
    tmp_path: Path, database_url: str
) -> None:
    async with _kiln(tmp_path, database_url) as kiln:
        spec = _spec(
            [
                {"prompt": "a"},
                {"prompt": "b", "n": 2},
                {"prompt": "c", "width": 128},
                {"prompt": "d", "steps": 20},
            ]
        )
        await _run(kiln, spec)
        found = await kiln.service.read(measured, ["p", "q"])
        assert set(found) == {"p"}
        rows = {(s.width, s.height, s.steps): s for s in found["p"]}
        assert set(rows) == {(64, 64, 10), (128, 64, 10), (64, 64, 20)}
        assert rows[(64, 64, 10)].samples == 2
        # the placeholder sleeps 0.05 s a request: per image, the 2-image task counts half
        assert all(0.02 < s.seconds_per_image < 1.0 for s in rows.values())

        await _run(kiln, _spec([{"prompt": "e"}]))
        again = {
            (s.width, s.height, s.steps): s for s in (await kiln.service.read(measured, ["p"]))["p"]
        }
        assert again[(64, 64, 10)].samples == 3  # a running mean over both batches


async def test_a_plan_uses_what_was_measured(tmp_path: Path, database_url: str) -> None:
    async with _kiln(tmp_path, database_url) as kiln:
        spec = _spec([{"prompt": str(i)} for i in range(4)])
        before = await plan(kiln.service, LOCAL, Submission(spec))
        assert (before.tasks, before.images, before.seconds, before.unknown) == (4, 4, None, ("p",))
        await _run(kiln, spec)
        after = await plan(kiln.service, LOCAL, Submission(spec))
        assert after.seconds is not None and after.unknown == ()
        [p] = after.backends
        assert (p.name, p.slots, p.basis) == ("p", 2, "measured")
        assert after.seconds == pytest.approx(2 * p.seconds_per_image)  # 4 tasks, 2 at a time
        # another size on the same backend is scaled from the nearest measured one
        bigger = await plan(kiln.service, LOCAL, Submission(_spec([{"prompt": "x"}], width=128)))
        assert bigger.backends[0].basis == "scaled"
        assert bigger.seconds == pytest.approx(2 * p.seconds_per_image)
        # money where the backend has a price; nothing was run there: its time is unknown
        priced = await plan(
            kiln.service, LOCAL, Submission(_spec([{"prompt": "x", "n": 3}], backend="q"))
        )
        assert (priced.money, priced.seconds, priced.unknown) == (1.5, None, ("q",))


async def test_over_the_task_limit_nothing_is_created_and_the_plan_says_why(
    tmp_path: Path, database_url: str
) -> None:
    async with _kiln(tmp_path, database_url, max_tasks_per_batch=3) as kiln:
        spec = _spec([{"prompt": str(i)} for i in range(4)])
        found = await plan(kiln.service, LOCAL, Submission(spec, source_name="big.json"))
        assert (found.tasks, found.images) == (4, 4)
        assert [str(p) for p in found.problems] == [
            "big.json, field 'tasks': 4 tasks; at most 3 in one batch "
            "([limits] max_tasks_per_batch): split it"
        ]
        with pytest.raises(SpecError) as refused:
            await submit(kiln.service, LOCAL, Submission(spec))
        assert refused.value.problems[0].field == "tasks"
        with pytest.raises(SpecError) as too_large:
            await submit(
                kiln.service,
                LOCAL,
                Submission(_spec([{"prompt": "x", "width": 8192, "height": 4096}])),
            )
        assert "8192×4096 is 33,554,432 pixels" in str(too_large.value)
        assert await kiln.service.read(list_batches) == []


async def test_the_mean_weighs_its_history_at_most_memory_samples(
    tmp_path: Path, database_url: str
) -> None:
    from pixelkiln.db import speeds as db_speeds  # the upsert itself, with chosen figures

    async with _kiln(tmp_path, database_url) as kiln:

        def fold(tx: Any, speed: Speed) -> None:
            tx.conn.execute(db_speeds._upsert(tx.dialect, speed, tx.now))

        await kiln.db.awrite(fold, Speed("p", 64, 64, 10, 1000, 1.0))
        await kiln.db.awrite(fold, Speed("p", 64, 64, 10, MEMORY, 3.0))
        [row] = (await kiln.service.read(measured, ["p"]))["p"]
        assert row.samples == 1000 + MEMORY
        assert row.seconds_per_image == pytest.approx(2.0)  # history weighed as MEMORY


def test_a_batch_upserts_its_groups_in_key_order(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches ending at once on PostgreSQL lock the rows they upsert: in one order for
    every transaction, or they can deadlock. A grouped read comes back in any order."""
    groups = [
        Speed("q", 64, 64, 10, 1, 1.0),
        Speed("p", 128, 64, 10, 1, 1.0),
        Speed("p", 64, 64, 20, 1, 1.0),
        Speed("p", 64, 64, 10, 1, 1.0),
        Speed("p", 64, 32, 30, 1, 1.0),
    ]
    monkeypatch.setattr(speeds_module, "batch_speeds", lambda conn, batch_id: groups)
    upserted: list[tuple[Any, ...]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SPEEDS"):
            values = params if isinstance(params, dict) else dict(enumerate(params))
            upserted.append(tuple(values.values())[:4])

    event.listen(db.write_engine, "before_cursor_execute", seen)
    try:
        assert db.write(speeds_module.record_batch, 1) == 5
    finally:
        event.remove(db.write_engine, "before_cursor_execute", seen)
    assert upserted == sorted((g.backend, g.width, g.height, g.steps) for g in groups)
