"""`kiln plan` and `kiln run`'s question, as a user runs them; and the issue's proof: after
one warm-up batch, the plan of an 18-task sweep (3 × 3 × 2) against two fake WebUI
servers says 18 tasks and a time within 20% of the measured run; and `kiln plan` of a
100,000-task sweep counts every task, image and price (from the sweep's sample)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.testing import FakeSDWebUI
from tests.processes import KILN, count, env, query

LATENCY = 0.6  #: seconds each fake generation takes: the run's time is mostly these


def kiln(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kiln` with no terminal on stdin, as cron runs it."""
    environ = env(cwd) | {"COLUMNS": "200"}
    return subprocess.run(
        [*KILN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
        stdin=subprocess.DEVNULL,
    )


def _write(folder: Path, name: str, tasks: list[dict[str, Any]], **top: Any) -> str:
    spec = {"name": name, "defaults": {"width": 64, "height": 64}, "tasks": tasks, **top}
    (folder / f"{name}.json").write_text(json.dumps(spec))
    return f"{name}.json"


def _config(folder: Path, urls: list[str], limits: str = "") -> None:
    (folder / "kiln.toml").write_text(
        f"""
[scheduler]
concurrency = 4
poll_interval = 0.05
{limits}
[[backends]]
name = "webui"
type = "sdwebui"
urls = {json.dumps(urls)}
concurrency = 1
"""
    )


#: the issue's 3 × 3 × 2 sweep
SWEEP = {
    "x": {"cfg_scale": [5, 7, 9]},
    "y": {"sampler": ["Euler a", "Euler", "DDIM"]},
    "z": {"steps": [10, 20]},
}


@pytest.mark.slow
def test_after_a_warm_up_the_plan_of_a_sweep_is_within_20_percent(tmp_path: Path) -> None:
    with FakeSDWebUI(latency=LATENCY) as one, FakeSDWebUI(latency=LATENCY) as two:
        _config(tmp_path, [one.url, two.url])
        sweep = _write(tmp_path, "sweep", [{"prompt": "a lighthouse"}], sweep=SWEEP)
        cold = kiln(tmp_path, "plan", sweep, "--json")
        assert cold.returncode == 0, cold.stderr
        assert json.loads(cold.stdout)["seconds"] is None  # no history yet: unknown

        # the warm-up measures both step counts; its first round pays the process's cold
        # start (connections, first encodes), which four rounds spread out
        warm = _write(tmp_path, "warm", [{"prompt": "w", "steps": s} for s in (10, 20) * 4])
        assert kiln(tmp_path, "run", warm, "--quiet").returncode == 0

        planned = kiln(tmp_path, "plan", "sweep.json", "--json")
        assert planned.returncode == 0, planned.stderr
        found = json.loads(planned.stdout)
        assert (found["tasks"], found["images"], found["unknown"]) == (18, 18, [])
        assert found["backends"][0]["slots"] == 2
        ran = kiln(tmp_path, "run", "sweep.json", "--quiet")
        assert ran.returncode == 0, ran.stderr
    [(started, finished)] = query(
        tmp_path, "SELECT started_at, finished_at FROM batches WHERE name = 'sweep'"
    )
    measured = finished - started
    assert abs(found["seconds"] - measured) <= 0.2 * measured, (found["seconds"], measured)


def test_kiln_plan_prints_a_table_and_exits_2_over_the_limit(tmp_path: Path) -> None:
    _config(tmp_path, ["http://127.0.0.1:9"], limits="[limits]\nmax_tasks_per_batch = 3\n")
    small = kiln(tmp_path, "plan", _write(tmp_path, "small", [{"prompt": "a", "n": 2}]))
    assert small.returncode == 0, small.stderr
    assert "Plan: 1 task(s), 2 image(s)" in small.stdout
    assert "no measured speed yet for webui" in small.stdout
    big = kiln(tmp_path, "plan", _write(tmp_path, "big", [{"prompt": "a"}] * 4))
    assert big.returncode == 2
    assert "4 tasks; at most 3 in one batch" in " ".join(big.stderr.split())
    ran = kiln(tmp_path, "run", "big.json", "--quiet")
    assert ran.returncode == 2 and "at most 3 in one batch" in " ".join(ran.stderr.split())
    bad = kiln(tmp_path, "plan", _write(tmp_path, "bad", [{"prompt": "a", "steps": -1}]))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert not (tmp_path / "kiln-data" / "images").exists()  # nothing was ever queued


def test_kiln_run_asks_above_the_threshold_and_never_waits_without_a_terminal(
    tmp_path: Path,
) -> None:
    """Without a terminal, a large batch goes on (a nightly job); money above the set
    threshold is refused with exit 2 (nobody can be asked), and --yes queues it."""
    (tmp_path / "kiln.toml").write_text(
        "[limits]\nconfirm_images = 2\nconfirm_money = 0.05\n\n"
        '[[backends]]\nname = "paid"\ntype = "placeholder"\nprice_per_image = 0.04\n'
    )
    spec = _write(tmp_path, "three", [{"prompt": "a"}, {"prompt": "b", "n": 2}])
    refused = kiln(tmp_path, "run", spec, "--quiet")
    assert refused.returncode == 2
    said = " ".join(refused.stderr.split())
    assert "--yes" in said and "money 0.12 (over 0.05)" in said
    assert "3 images" not in said  # size alone stops no unattended run
    assert "Plan: 2 task(s), 3 image(s)" in refused.stdout
    assert count(tmp_path, "batches") == 0
    ran = kiln(tmp_path, "run", spec, "--quiet", "--yes")
    assert ran.returncode == 0, ran.stderr


def test_kiln_plan_of_a_100000_task_sweep_counts_every_task_and_its_money(
    tmp_path: Path,
) -> None:
    (tmp_path / "kiln.toml").write_text(
        '[[backends]]\nname = "paid"\ntype = "placeholder"\nprice_per_image = 0.01\n'
        '[[backends]]\nname = "free"\ntype = "placeholder"\n'
    )
    colours = "|".join(f"colour{i}" for i in range(10))
    sweep = {
        "x": {"cfg_scale": [4 + i / 4 for i in range(25)]},
        "y": {"seed": list(range(1, 201))},
        "z": {"backend": ["paid", "free"]},
    }
    spec = _write(tmp_path, "huge", [{"prompt": f"a {{{colours}}} fox", "n": 2}], sweep=sweep)
    planned = kiln(tmp_path, "plan", spec, "--json")
    assert planned.returncode == 0, planned.stderr
    found = json.loads(planned.stdout)
    assert (found["tasks"], found["images"], found["problems"]) == (100_000, 200_000, [])
    per_backend = {b["name"]: (b["tasks"], b["images"]) for b in found["backends"]}
    assert per_backend == {"free": (50_000, 100_000), "paid": (50_000, 100_000)}
    assert [b["money"] for b in found["backends"]] == [None, pytest.approx(1_000.0)]
    assert found["money"] == pytest.approx(1_000.0)
