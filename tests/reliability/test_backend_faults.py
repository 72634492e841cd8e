"""Every fault a fake generator of ``pixelkiln.testing`` can play, mid-batch, under
`kiln serve` with credits on: error codes (500, 502, 503 and 429 with Retry-After, 504,
408), a hang past the backend's timeout, a reset connection, a malformed body, an error
sent with HTTP 200, bursts of latency, and then all of them at random rates at once.

The batch must complete with each task succeeded once (one progress event, ``n`` image
rows and files), no temp file, the ledger exact and no 5xx from the API meanwhile.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pixelkiln.testing import FAKES, FakeServer
from pixelkiln.testing.faults import Outcome
from tests.reliability.conftest import MODE, Soak, Tally
from tests.reliability.faultkit import (
    CountingFaults,
    Poller,
    add_user,
    audit,
    create_batch,
    reached,
    serve,
    until,
    wait_finished,
    write_config,
)

#: each played twice in a row mid-batch (the second often on a retry of the first)
OUTCOMES: tuple[Outcome, ...] = (500, 502, 503, 504, 429, 408, "hang", "reset", "malformed")
#: the random mix played after the forced ones, for three quarters of the tasks left
RATES = {500: 0.05, 502: 0.03, 503: 0.05, 429: 0.05}


#: what each hosted kind needs beside its URL
HOSTED = {
    "openai": 'api_key = "sk-test"\nmodel = "gpt-image-1"',
    "openrouter": 'api_key = "sk-test"\nmodel = "google/gemini-2.5-flash-image"',
}


#: the fakes played against: in quick mode the WebUI and OpenRouter (which alone sends an
#: error with HTTP 200); in full mode every one
KINDS = (
    ["sdwebui", "openrouter"] if MODE == "quick" else ["sdwebui", "openrouter", "openai", "comfyui"]
)


def backend_toml(fake: FakeServer) -> str:
    return f"""
[[backends]]
name = "{fake.kind}"
type = "{fake.kind}"
urls = ["{fake.url}"]
concurrency = 4
timeout = 2
{HOSTED.get(fake.kind, "")}
options = {{ open_seconds = 0.2, max_open_seconds = 1 }}
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_backend_fault_mid_batch_and_each_task_ends_once(
    kind: str, tmp_path: Path, soak: Soak, tally: Tally
) -> None:
    tasks = soak.pick(50, 400)
    seed = random.SystemRandom().randrange(10**6)
    print(f"\nbackend faults ({kind}): seed {seed}")
    database_url = f"sqlite:///{tmp_path / 'kiln-data' / 'kiln.db'}"
    outcomes: list[Outcome] = [*OUTCOMES, *(("error200",) if kind == "openrouter" else ())]
    # a hang lasts past the backend's timeout (2 s)
    faults = CountingFaults(latency=0.02, hang_seconds=5, seed=seed)
    with FAKES[kind](faults=faults) as fake:
        write_config(tmp_path, database_url, backends=backend_toml(fake), max_attempts=20)
        token = add_user(tmp_path, "alice", tasks)
        with serve(tmp_path) as server:
            batch_id = create_batch(server.url, token, tasks, name="faults")
            paths = [f"/api/v1/batches/{batch_id}", "/healthz"]
            with Poller(server.url, token, paths) as poller:
                step = max(1, tasks // (2 * len(outcomes) + 4))
                for i, outcome in enumerate(outcomes, 1):
                    until(reached(database_url, batch_id, i * step), f"{i * step} tasks to succeed")
                    fake.faults.fail_next(outcome, outcome)
                fake.faults.latency = lambda: random.choice((0.0, 0.02, 0.3))
                fake.faults.error_rates = dict(RATES)
                fake.faults.reset_rate = fake.faults.malformed_rate = 0.03
                mixed = len(outcomes) * step + (tasks - len(outcomes) * step) * 3 // 4
                until(reached(database_url, batch_id, mixed), f"{mixed} tasks to succeed")
                fake.faults.clear()
                final = wait_finished(server.url, token, batch_id)
    found = audit(
        database_url, tmp_path / "kiln-data", batch_id, tasks=tasks, user="alice", grant=tasks
    )
    tally.add(
        "backend faults",
        faults=sum(faults.played.values()),
        inputs=poller.asked,
        server_errors=poller.server_errors,
        lost=found.lost,
        duplicated=found.duplicated,
        drift=found.drift,
    )
    print(f"backend faults ({kind}): played {dict(faults.played)}")
    assert set(faults.played) >= {str(o) for o in outcomes}, faults.played
    assert poller.errors == [], poller.errors
    assert final["status"] == "completed", final
    assert found.statuses == {"succeeded": tasks}, found
    assert found.image_rows == found.files == tasks, found
    assert (found.lost, found.duplicated, found.drift) == (0, 0, 0), found
    assert found.problems == [], found.problems
