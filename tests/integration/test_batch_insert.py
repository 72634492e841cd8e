"""create_batch sends its task rows with their JSON columns encoded once (``json.dumps``):
the stored text is exactly what SQLAlchemy's JSON type writes, and every value reads back
equal, on SQLite and PostgreSQL; a batch of more rows than one chunk is stored whole."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, insert, select

from pixelkiln.db import batches
from pixelkiln.db.batches import NewBatch, create_batch
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.tables import tasks
from pixelkiln.resolve import ResolvedTask

JSON_COLUMNS = ("params", "inputs", "item", "axes")


def _task(position: int, **given: Any) -> ResolvedTask:
    values: dict[str, Any] = {
        "position": position,
        "key": f"k{position}",
        "backend": "placeholder",
        "prompt": "a fox",
        "negative_prompt": "",
        "model": "",
        "width": 64,
        "height": 64,
        "steps": 10,
        "cfg_scale": 7.0,
        "sampler": "",
        "seed": 2**32 - 1,
        "n": 1,
        "denoise": 0.75,
        "filename_prefix": "",
    }
    return ResolvedTask(**(values | given))


AXES = {"x": {"cfg_scale": 7.5}, "z": {"$mood": "ruhig — 静か"}}
TASKS = [
    _task(1),
    _task(2, prompt='ein Fuchs, 狐 "quoted" \\ back', model="sd-1.5", sampler="Euler a"),
    _task(3, axes=AXES, item={"id": "s1", "title": "Ünïcode", "n": [1, 2.5, None, True]}),
    _task(4, axes=AXES, backends=("a", "b"), seed_drawn=True, cfg_scale=1e-7),
]
INPUTS = [{}, {"init_image": "assets/ab.png"}, {"reference_images": ["a.png", "b.png"]}, {}]


def _stored(db: Database, batch_id: int) -> list[dict[str, Any]]:
    """Each task's JSON columns as the database holds their text, and as read back."""
    texts = [cast(tasks.c[name], String).label(f"{name}_text") for name in JSON_COLUMNS]
    query = select(tasks.c.position, *(tasks.c[n] for n in JSON_COLUMNS), *texts)
    query = query.where(tasks.c.batch_id == batch_id).order_by(tasks.c.position)
    return [dict(row._mapping) for row in db.read(lambda conn: conn.execute(query).all())]


def _by_the_json_type(tx: Tx, batch_id: int, new: NewBatch) -> None:
    """The same rows inserted the way create_batch did before: SQLAlchemy encoding each."""
    rows = [
        {
            "batch_id": batch_id,
            "position": t.position,
            "key": t.key,
            "status": "pending",
            "backend": t.backend,
            "prompt": t.prompt,
            "negative_prompt": t.negative_prompt,
            "params": t.params_json(),
            "inputs": i,
            "item": t.item,
            "axes": t.axes,
            "max_attempts": new.max_attempts,
            "created_at": tx.now,
            "next_attempt_at": 0.0,
        }
        for t, i in zip(new.tasks, new.inputs, strict=True)
    ]
    tx.conn.execute(insert(tasks), rows)


def test_the_stored_json_is_what_the_json_type_writes(db: Database) -> None:
    new = NewBatch("b", "cli", 3, TASKS, inputs=INPUTS)
    ours = db.write(create_batch, new)
    theirs = db.write(create_batch, NewBatch("c", "cli", 3, []))
    db.write(_by_the_json_type, theirs, new)
    stored, expected = _stored(db, ours), _stored(db, theirs)
    assert stored == expected
    assert [row["params"] for row in stored] == [t.params_json() for t in TASKS]
    assert [row["inputs"] for row in stored] == INPUTS
    assert [row["axes"] for row in stored] == [None, None, AXES, AXES]
    assert stored[2]["item"] == TASKS[2].item and stored[0]["item_text"] == "null"


def test_a_batch_of_several_chunks_is_stored_whole(db: Database, monkeypatch: Any) -> None:
    monkeypatch.setattr(batches, "CHUNK", 3)
    made = [_task(i, axes=AXES if i % 2 else None) for i in range(1, 9)]
    batch_id = db.write(create_batch, NewBatch("b", "cli", 3, made))
    stored = _stored(db, batch_id)
    assert len(stored) == 8
    assert [row["axes"] for row in stored] == [AXES if i % 2 else None for i in range(1, 9)]
    assert [row["params"]["seed"] for row in stored] == [2**32 - 1] * 8


def test_text_that_copy_escapes_reads_back_as_given(db: Database) -> None:
    # PostgreSQL stores the rows by COPY, whose text format escapes these
    odd = ["tab\there", "two\nlines", "\\N", "\\.", "back\\slash\r\n", "狐 🦊", ""]
    made = [_task(i, prompt=text, negative_prompt=text[::-1]) for i, text in enumerate(odd, 1)]
    batch_id = db.write(create_batch, NewBatch("b", "cli", 3, made))
    query = select(tasks.c.prompt, tasks.c.negative_prompt, tasks.c.item).where(
        tasks.c.batch_id == batch_id
    )
    rows = db.read(lambda conn: conn.execute(query.order_by(tasks.c.position)).all())
    assert [(r.prompt, r.negative_prompt, r.item) for r in rows] == [
        (text, text[::-1], None) for text in odd
    ]
