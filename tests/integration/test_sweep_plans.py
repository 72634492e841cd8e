"""The plan of a sweep from its sample (its tasks over the axes that change a plan, each
weighted by the tasks it stands for) equals the plan of every task made: counts, images,
credits, time and money per backend, on several specs; and where the sample cannot say
exactly what is wrong, the whole batch's checks answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from pixelkiln import sweeps
from pixelkiln.app import Kiln
from pixelkiln.db.credits import balance
from pixelkiln.db.database import Tx
from pixelkiln.db.tables import speeds
from pixelkiln.db.users import add_user
from pixelkiln.exceptions import SpecError
from pixelkiln.service import LOCAL, Caller, Submission, submit
from pixelkiln.service.plans import Plan
from pixelkiln.service.submission import plan
from pixelkiln.specs import parse_batch
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

ISSUE = {"x": {"cfg_scale": [5, 7, 9]}, "y": {"sampler": ["Euler a", "Euler", "DDIM"]}}
SPECS: dict[str, dict[str, Any]] = {
    "the issue's 3 x 3 x 2": {
        "tasks": [{"prompt": "a lighthouse"}],
        "sweep": ISSUE | {"z": {"steps": [10, 20]}},
    },
    "backend, size, steps and n": {
        "tasks": [{"prompt": "a {red|blue} fox", "key": "fox"}, {"prompt": "a hen", "n": 2}],
        "sweep": {
            "x": {"backend": ["p", "q"]},
            "y": {"size": ["64x64", "128x64", "96x96"]},
            "z": {"n": [1, 3]},
        },
    },
    "steps and seeds over wildcards and lists": {
        "tasks": [
            {"prompt": "a {red|{green|blue}} fox, __styles__", "steps": 20},
            {"prompt": "a hen", "backend": "q", "width": 128},
            {"prompt": "{3::an owl|a crow} at night", "negative_prompt": "{blur|noise}"},
        ],
        "sweep": {"x": {"seed": [1, 2, 3, 4]}, "y": {"steps": [10, 20, 30]}},
    },
    "fragments and aspect ratios": {
        "defaults": {"prompt": "a $thing, {ink|oil}", "resolution": "1k"},
        "tasks": [{}, {"backend": "q"}, {"prompt": "only $thing"}],
        "sweep": {
            "x": {"$thing": ["fox", "hen", "owl"]},
            "y": {"aspect_ratio": ["1:1", "16:9"]},
        },
    },
    "wildcards alone": {
        "tasks": [{"prompt": "a {red|green|blue} {fox|hen}, __styles__"}, {"prompt": "plain"}],
    },
    "random draws and a backend chain": {
        "tasks": [{"prompt": "a {red|green|blue} fox", "backend": ["q", "p"]}, {"prompt": "x"}],
        "expand": {"random": 7, "seed": 3},
        "sweep": {"z": {"model": ["m1", "m2"]}, "x": {"width": [64, 128]}},
    },
}


def _spec(name: str) -> dict[str, Any]:
    body = SPECS[name]
    defaults = {"width": 64, "height": 64, "steps": 10, **body.get("defaults", {})}
    if "aspect_ratio" in str(body):  # the ratio and resolution make the size
        defaults.pop("width"), defaults.pop("height")
    return {"name": "grid", **body, "defaults": defaults}


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "styles.txt").write_text("ink\n{oil|water}colour\n")
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        credits={"enabled": True, "per_image": 1, "backends": {"q": 3}},
        backends=[
            {"name": "p", "type": "placeholder", "concurrency": 3},
            {"name": "q", "type": "placeholder", "price_per_image": 0.5},
        ],
    )
    async with Kiln(settings, engine=False) as running:

        def measure(tx: Tx) -> None:  # measured at one size: the others are scaled from it
            for backend, seconds in (("p", 0.25), ("q", 1.5)):
                row = {"backend": backend, "width": 64, "height": 64, "steps": 10}
                row |= {"samples": 5, "seconds_per_image": seconds, "updated_at": tx.now}
                tx.conn.execute(insert(speeds).values(**row))

        await running.service.write(measure)
        yield running


def _submission(data: dict[str, Any], folder: Path) -> Submission:
    """A batch file in ``folder``, as ``kiln plan`` submits it."""
    spec = parse_batch(data, source="grid.yaml", partial=True)
    return Submission(spec, "cli", "grid.yaml", server_paths=True, base_dir=folder)


async def _plan(kiln: Kiln, data: dict[str, Any], folder: Path, caller: Caller = LOCAL) -> Plan:
    return await plan(kiln.service, caller, _submission(data, folder))


@pytest.mark.parametrize("name", list(SPECS))
async def test_a_sweeps_plan_from_its_sample_equals_the_plan_of_every_task(
    kiln: Kiln, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _spec(name)
    sampled = sweeps.Expansion(parse_batch(data), base_dir=tmp_path).sample()
    assert sampled is not None  # each spec is planned from a sample
    assert len(sampled.spec.tasks) == len(data["tasks"])
    fast = await _plan(kiln, data, tmp_path)
    monkeypatch.setattr(sweeps.Expansion, "sample", lambda self: None)
    slow = await _plan(kiln, data, tmp_path)
    assert fast == slow
    assert fast.tasks == sweeps.count_tasks(parse_batch(data), tmp_path) and not fast.problems


async def test_a_sweep_over_backend_size_and_n_plans_counts_time_and_money(
    kiln: Kiln, tmp_path: Path
) -> None:
    found = await _plan(kiln, _spec("backend, size, steps and n"), tmp_path)
    # (2 fox prompts + 1 hen) x 2 backends x 3 sizes x 2 n values
    assert found.tasks == 36
    assert found.images == 3 * 3 * (1 + 3) + 3 * 3 * (1 + 3)  # n from the axis wins over 2
    p, q = found.backends
    assert (p.name, p.tasks, p.basis, q.name, q.tasks) == ("p", 18, "scaled", "q", 18)
    assert q.money == pytest.approx(0.5 * q.images)
    assert found.seconds is not None and found.money == q.money


async def test_a_sweeps_credits_are_what_its_submit_charges(
    kiln: Kiln, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, _ = await kiln.service.write(add_user, "alice", credits=10_000)
    alice = Caller(user)
    data = _spec("backend, size, steps and n")
    fast = await _plan(kiln, data, tmp_path, alice)
    assert fast.credits == 36 * 1 + 36 * 3  # 36 images on p at 1, 36 on q at 3
    assert fast.balance == 10_000
    await submit(kiln.service, alice, _submission(data, tmp_path))
    assert await kiln.service.read(balance, user.id) == 10_000 - fast.credits
    monkeypatch.setattr(sweeps.Expansion, "sample", lambda self: None)
    assert await _plan(kiln, data, tmp_path, alice) == replace(fast, balance=10_000 - fast.credits)


@pytest.mark.parametrize(
    ("task", "sweep", "field"),
    [
        ({"prompt": "{|a}{|b}"}, {"x": {"cfg_scale": [5, 7]}}, "prompt"),  # one text is ""
        ({"prompt": "$thing"}, {"x": {"$thing": ["", "fox"]}}, "prompt"),  # a fragment empties it
        ({"prompt": "a", "backend": "nope"}, {"x": {"seed": [1, 2]}}, "backend"),
        ({"prompt": "a", "steps": -1}, {"x": {"seed": [1, 2]}}, "steps"),  # left out of the spec
        ({"prompt": "a", "width": 8192, "height": 4096}, {"x": {"seed": [1, 2]}}, "width"),
    ],
)
async def test_a_sweep_with_a_problem_is_refused_as_a_submit_would_refuse_it(
    kiln: Kiln, tmp_path: Path, task: dict[str, Any], sweep: dict[str, Any], field: str
) -> None:
    data = {"name": "bad", "defaults": {"width": 64, "height": 64}, "tasks": [task]}
    with pytest.raises(SpecError) as fast:
        await _plan(kiln, data | {"sweep": sweep}, tmp_path)
    assert {p.field for p in fast.value.problems} == {field}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweeps.Expansion, "sample", lambda self: None)
        with pytest.raises(SpecError) as slow:
            await _plan(kiln, data | {"sweep": sweep}, tmp_path)
    assert [str(p) for p in fast.value.problems] == [str(p) for p in slow.value.problems]
