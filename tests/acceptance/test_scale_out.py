"""The issue's scale-out proof: 1 `kiln serve --no-worker` + 4 `kiln worker`, PostgreSQL, S3.

One deployment serves the whole module, laid out as an operator would run it: a
PostgreSQL schema, a bucket on a moto S3 server, auth on with two users (alice and
bob, each with a token from `kiln users add`), the API alone and four workers, all
reading one kiln.toml whose only generator is a fake WebUI with `concurrency = 2`.
Every test is one sentence of the issue, measured from outside the processes: the
fake's own count of generations in progress, rows in the database, objects in the
bucket, bytes through the API. A test leaves the deployment as it found it: four
live workers, the fake not holding, none of its tasks running.
"""

from __future__ import annotations

import functools
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pixelkiln import ApiError, Client
from pixelkiln.engine.dispatch import PREFETCH_SECONDS
from pixelkiln.models import BatchStatus
from pixelkiln.testing import FakeSDWebUI
from tests.acceptance.test_worker import (
    PATIENCE,
    TXT2IMG,
    SharedStorage,
    kiln,
    rows,
    until,
    write_config,
)
from tests.conftest import Scratch
from tests.processes import free_port, running, serving
from tests.s3server import CREDENTIALS, REGION, S3Server, s3_storage_settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS = 4
SLOTS = 2  #: the fake WebUI's `concurrency` in kiln.toml: what its owner allows at once
PER_WORKER = 2  #: each worker's own [scheduler] concurrency (4 × 2 want more than 2 slots)
LATENCY = 0.1  #: seconds per generation (the fair-share test sets its own)
SHUTDOWN = 3.0  #: [scheduler] shutdown_seconds: the drain bound of a SIGTERMed worker
PREFIX = "kiln"  #: [storage] s3_prefix


@dataclass
class Deployment:
    """The processes and parts of the module's deployment, and what tests ask of them."""

    folder: Path
    database_url: str
    url: str  #: the API (`kiln serve --no-worker`)
    webui: FakeSDWebUI
    s3: S3Server
    bucket: str
    tokens: dict[str, str]  #: user name → API token
    stack: ExitStack  #: stops what it holds at the end of the module
    workers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  #: pid → process
    logs: dict[int, str] = field(default_factory=dict)  #: pid → its output file's name
    ports: dict[int, int] = field(default_factory=dict)  #: pid → its health port

    def start_worker(self) -> int:
        """A `kiln worker` more, with a health port; its pid."""
        log, port = f"worker{len(self.logs) + 1}.out", free_port()
        process = self.stack.enter_context(
            running(self.folder, "worker", "--health-port", str(port), log=log)
        )
        self.workers[process.pid], self.logs[process.pid] = process, log
        self.ports[process.pid] = port
        return process.pid

    def keep_four(self) -> None:
        """Start workers until four run (a test that stopped one starts it again), and wait
        until each answers on its health port: its scheduler runs and its signals are caught."""
        for pid in [pid for pid, p in self.workers.items() if p.poll() is not None]:
            del self.workers[pid]
        started = [self.start_worker() for _ in range(WORKERS - len(self.workers))]
        for pid in started:
            until(functools.partial(self._health, pid), f"worker {pid} up ({self.logs[pid]})")
        self.settle()

    def settle(self) -> None:
        """Until no worker holds a task and the fake generates nothing: what an earlier test
        left (a cancelled batch's tasks, dropped at the workers' next lease renewal, with
        an interrupt sent to the WebUI) cannot reach the next test."""

        def quiet() -> bool:
            answers = [self._health(pid) for pid in self.workers]
            return self.webui.in_flight == 0 and all(
                a is not None and a["worker"]["held"] == 0 for a in answers
            )

        until(quiet, "the workers to hold nothing and the fake to be idle")

    def _health(self, pid: int) -> dict[str, Any] | None:
        """The worker's /healthz answer (None until it answers 200)."""
        assert self.workers[pid].poll() is None, self.log(pid)
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.ports[pid]}/healthz", timeout=5)
        except httpx.TransportError:
            return None
        body: dict[str, Any] = answer.json()
        return body if answer.status_code == 200 else None

    def log(self, pid: int) -> str:
        return (self.folder / self.logs[pid]).read_text()

    def client(self, user: str) -> Client:
        return Client(self.url, token=self.tokens[user])

    def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        return rows(self.database_url, statement, **params)

    def objects(self, batch_id: int) -> dict[str, bytes]:
        """The bucket's image objects of a batch: key → bytes."""
        s3 = self.s3.client()
        found: dict[str, bytes] = {}
        pages = s3.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/images/{batch_id}/"):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"]
                found[item["Key"]] = body.read()
        return found


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("scale-out")
    scratch = Scratch("postgres")
    bucket = f"kiln-{secrets.token_hex(6)}"
    with ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        # every process finds the S3 credentials where any AWS client looks: the environment
        for name, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
            env.setenv(name, value)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        database_url, drop = scratch.create()
        stack.callback(scratch.dispose)
        stack.callback(drop)  # after every process below has stopped
        s3_server.client().create_bucket(Bucket=bucket)
        webui = stack.enter_context(FakeSDWebUI(latency=LATENCY))
        _configure(folder, database_url, webui.url, s3_server, bucket)
        tokens = {user: _add_user(folder, user) for user in ("alice", "bob")}
        url = stack.enter_context(serving(folder, "--no-worker"))
        deployed = Deployment(folder, database_url, url, webui, s3_server, bucket, tokens, stack)
        deployed.keep_four()
        yield deployed
        webui.release()
        for process in deployed.workers.values():  # each drains and exits 0
            process.send_signal(signal.SIGTERM)
        for pid, process in deployed.workers.items():
            assert process.wait(timeout=PATIENCE) == 0, deployed.log(pid)


def _configure(folder: Path, database_url: str, webui: str, s3: S3Server, bucket: str) -> None:
    storage = "\n".join(f'{k} = "{v}"' for k, v in s3_storage_settings(s3, bucket, PREFIX).items())
    config = write_config(
        folder,
        database_url,
        webui,
        storage=SharedStorage("s3", storage, lambda: 0),
        per_url=SLOTS,
        concurrency=PER_WORKER,
        shutdown_seconds=SHUTDOWN,
    )
    config.write_text(config.read_text() + "\n[auth]\nenabled = true\n")


def _add_user(folder: Path, name: str) -> str:
    """`kiln users add NAME`: the token it prints (alone on stdout)."""
    done = kiln(folder, "users", "add", name)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _spec(name: str, count: int, n: int = 1) -> dict[str, Any]:
    """A batch of ``count`` tasks whose prompts name it (``NAME i``), ``n`` images each."""
    return {
        "name": name,
        "defaults": {"width": 64, "height": 64, "n": n},
        "tasks": [{"prompt": f"{name} {i}", "key": f"{name}-{i}"} for i in range(count)],
    }


def _sent(webui: FakeSDWebUI, name: str) -> Counter[str]:
    """Generation requests the fake received for batch ``name``, per prompt."""
    prompts = (r.json()["prompt"] for r in webui.received(TXT2IMG))
    return Counter(p for p in prompts if p.startswith(f"{name} "))


def _pid(owner: str) -> int:
    """The process id in a lease owner or slot holder (``host:pid:nonce``)."""
    return int(owner.split(":")[1])


def _ended(client: Client, batch_id: int) -> bool:
    return client.get_batch(batch_id).status.finished


def _assert_each_task_once(d: Deployment, batch_id: int, tasks: int, n: int) -> None:
    """Every task succeeded once: n image rows each, and the bucket holds exactly their files."""
    states = d.sql("SELECT status FROM tasks WHERE batch_id = :b", b=batch_id)
    assert Counter(s for (s,) in states) == {"succeeded": tasks}
    images = d.sql('SELECT task_id, "index", path FROM images WHERE batch_id = :b', b=batch_id)
    assert len(images) == tasks * n
    assert Counter(task for task, _, _ in images) == dict.fromkeys({t for t, _, _ in images}, n)
    assert len({(task, index) for task, index, _ in images}) == tasks * n
    assert set(d.objects(batch_id)) == {f"{PREFIX}/{path}" for _, _, path in images}


def _slot_holders(d: Deployment, batch_id: int) -> Counter[int]:
    """Live workers holding a server slot now, with how many tasks of ``batch_id`` each holds."""
    holders = d.sql("SELECT holder FROM server_slots WHERE holder IS NOT NULL")
    pids = {_pid(h) for (h,) in holders} & {p for p, w in d.workers.items() if w.poll() is None}
    held = d.sql(
        "SELECT lease_owner FROM tasks WHERE batch_id = :b AND status = 'running'", b=batch_id
    )
    return Counter(_pid(o) for (o,) in held if o and _pid(o) in pids)


# -- 1. two slots, four workers: the fake never sees more than two ---------------------------


def test_a_two_slot_server_never_sees_more_than_two_generations(deployment: Deployment) -> None:
    d, webui, tasks = deployment, deployment.webui, 40
    d.keep_four()
    webui.hold()  # generations stay in progress: the test looks while 8 want to go
    webui.reset_peak()
    try:
        with d.client("alice") as alice:
            batch = alice.create_batch(_spec("slots", tasks))

            def held_per_worker() -> list[int]:
                found = d.sql(
                    "SELECT lease_owner FROM tasks WHERE batch_id = :b AND status = 'running'",
                    b=batch.id,
                )
                return sorted(Counter(_pid(o) for (o,) in found).values())

            def started() -> int:
                return len(
                    d.sql(
                        "SELECT id FROM tasks WHERE batch_id = :b AND started_at IS NOT NULL",
                        b=batch.id,
                    )
                )

            # every worker holds at least its 2 (its own concurrency): 8 want the 2 slots;
            # only a request that got a slot starts (and spends its attempt)
            until(
                lambda: (h := held_per_worker()) and len(h) == WORKERS and min(h) >= PER_WORKER,
                "every worker holding its tasks",
            )
            until(lambda: webui.held == SLOTS, "the server's two slots in use")
            assert (webui.in_flight, webui.peak_in_flight) == (SLOTS, SLOTS)
            assert started() == SLOTS
            webui.release()
            until(lambda: _ended(alice, batch.id), "the batch to end")
            assert alice.get_batch(batch.id).status == BatchStatus.COMPLETED
    finally:
        webui.release()
    print(f"\nslots: at most {webui.peak_in_flight} generation(s) at once, {SLOTS} slots")
    assert webui.peak_in_flight == SLOTS
    _assert_each_task_once(d, batch.id, tasks, 1)
    assert _sent(webui, "slots") == {f"slots {i}": 1 for i in range(tasks)}  # each sent once


# -- 2. SIGKILL of a worker mid-batch ---------------------------------------------------------


def test_sigkill_of_a_worker_mid_batch_loses_and_doubles_nothing(deployment: Deployment) -> None:
    d, tasks, n = deployment, 60, 2
    d.keep_four()
    with d.client("alice") as alice:
        batch = alice.create_batch(_spec("kill", tasks, n))

        def victim_busy() -> bool:
            done = d.sql(
                "SELECT count(*) FROM tasks WHERE batch_id = :b AND status = 'succeeded'",
                b=batch.id,
            )[0][0]
            return done >= 5 and bool(_slot_holders(d, batch.id))

        until(victim_busy, "a worker generating after the first successes")
        victim, held = _slot_holders(d, batch.id).most_common(1)[0]
        d.workers[victim].send_signal(signal.SIGKILL)
        assert d.workers[victim].wait(timeout=PATIENCE) == -signal.SIGKILL
        d.keep_four()  # a worker is started again in its place
        until(lambda: _ended(alice, batch.id), "the others to finish the batch")
        assert alice.get_batch(batch.id).status == BatchStatus.COMPLETED
        image = d.sql(
            "SELECT id, path FROM images WHERE batch_id = :b ORDER BY id LIMIT 1", b=batch.id
        )[0]
        served = alice.download(image[0])  # through the API, from the bucket
        with d.client("bob") as bob, pytest.raises(ApiError) as refused:
            bob.download(image[0])  # alice's image is not bob's
    _assert_each_task_once(d, batch.id, tasks, n)
    assert refused.value.status == 404
    assert served.startswith(b"\x89PNG") and served == d.objects(batch.id)[f"{PREFIX}/{image[1]}"]
    sent = _sent(d.webui, "kill")
    print(f"\nSIGKILL: the victim held {held} task(s); {sum(sent.values())} sent for {tasks}")
    # sent again: at most what the victim held (the tasks it had claimed ahead had not gone out)
    assert set(sent) == {f"kill {i}" for i in range(tasks)}
    assert held > 0 and tasks <= sum(sent.values()) <= tasks + held


# -- 3. fair share: bob's 10 tasks behind alice's 2,000 ---------------------------------------


def test_a_small_batch_behind_a_large_one_finishes_within_twice_its_fair_share(
    deployment: Deployment,
) -> None:
    d, webui, small = deployment, deployment.webui, 10
    d.keep_four()
    # generation time well above a worker's claim-ahead window (engine.dispatch): each
    # worker then holds only what its own concurrency runs, none claimed ahead. It was
    # 0.25 s, the window itself: a worker whose server latency estimate still carried the
    # earlier tests' 0.1 s (an average) counted the server as fast and could claim alice's
    # tasks ahead of bob's; CI saw completion 43 and 47 against the bound of 40, twice,
    # while runs here gave 18 to 23.
    webui.faults.latency = 2 * PREFETCH_SECONDS
    try:
        with d.client("alice") as alice, d.client("bob") as bob:
            large = alice.create_batch(_spec("large", 2000))
            until(lambda: _succeeded(d, large.id) >= 30, "alice's batch in full flow")
            behind = bob.create_batch(_spec("small", small))
            until(lambda: _ended(bob, behind.id), "bob's batch to end", timeout=PATIENCE)
            assert bob.get_batch(behind.id).status == BatchStatus.COMPLETED
            alice.cancel_batch(large.id)  # the rest of the 2,000 is not what is measured
            until(lambda: _ended(alice, large.id), "alice's batch to end")
            d.settle()  # the cancel has reached the workers
    finally:
        webui.faults.latency = LATENCY
    finishes = d.sql(
        "SELECT batch_id, finished_at FROM tasks WHERE batch_id IN (:a, :b)"
        " AND status = 'succeeded' ORDER BY finished_at",
        a=large.id,
        b=behind.id,
    )
    submitted = behind.created_at
    before = [at for batch, at in finishes if batch == large.id and at < submitted]
    after = [batch for batch, at in finishes if at >= submitted]
    last = max(i for i, batch in enumerate(after, 1) if batch == behind.id)  # its rank
    # equal shares: bob is owed 1 of every 2 completions, so 10 tasks are 20 completions
    fair = small * 2
    rate = (len(before[-20:]) - 1) / (before[-1] - before[-20])  # completions/s, just before
    took = max(at for batch, at in finishes if batch == behind.id) - submitted
    print(
        f"\nfair share: bob's last task was completion {last} after he submitted "
        f"(fair share {fair}, bound {2 * fair}); {took:.2f} s vs ideal {fair / rate:.2f} s "
        f"({rate:.1f} tasks/s): ratio {took * rate / fair:.2f}"
    )
    assert last <= 2 * fair


def _succeeded(d: Deployment, batch_id: int) -> int:
    found = d.sql(
        "SELECT count(*) FROM tasks WHERE batch_id = :b AND status = 'succeeded'", b=batch_id
    )
    return int(found[0][0])


# -- 4. SIGTERM: the worker gives its tasks back within the bound -----------------------------


def test_sigterm_of_a_worker_gives_its_tasks_back_within_the_bound(
    deployment: Deployment,
) -> None:
    d, webui, tasks, margin = deployment, deployment.webui, 12, 30.0
    d.keep_four()
    webui.hold()  # what the victim generates stays in progress past its drain
    try:
        with d.client("alice") as alice:
            batch = alice.create_batch(_spec("drain", tasks))
            until(lambda: webui.held == SLOTS, "the server's two slots in use")
            until(lambda: bool(_slot_holders(d, batch.id)), "a worker holding tasks and a slot")
            victim = _slot_holders(d, batch.id).most_common(1)[0][0]
            owner = d.sql(
                "SELECT DISTINCT lease_owner FROM tasks WHERE batch_id = :b AND status = 'running'",
                b=batch.id,
            )
            victim_owner = next(o for (o,) in owner if o and _pid(o) == victim)
            ids = [
                i
                for (i,) in d.sql(
                    "SELECT id FROM tasks WHERE batch_id = :b AND lease_owner = :o",
                    b=batch.id,
                    o=victim_owner,
                )
            ]
            started = time.monotonic()
            d.workers[victim].send_signal(signal.SIGTERM)
            try:
                code = d.workers[victim].wait(timeout=SHUTDOWN + margin)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit within {SHUTDOWN} + {margin} s:\n{d.log(victim)}")
            took = time.monotonic() - started
            back = d.sql(
                "SELECT status, attempts, lease_owner FROM tasks WHERE id = ANY(:ids)",
                ids=ids,
            )
            webui.release()
            d.keep_four()
            until(lambda: _ended(alice, batch.id), "the others to finish the batch")
            assert alice.get_batch(batch.id).status == BatchStatus.COMPLETED
    finally:
        webui.release()
    print(f"\nSIGTERM: exit {code} after {took:.2f} s (bound {SHUTDOWN} s), {len(ids)} given back")
    assert code == 0, d.log(victim)
    assert ids and all(owner != victim_owner for _, _, owner in back)  # none kept by the victim
    # given back untried: still pending with no attempt spent, or already taken by another
    assert all(status != "pending" or attempts == 0 for status, attempts, _ in back), back
    _assert_each_task_once(d, batch.id, tasks, 1)
    spent = dict(d.sql("SELECT id, attempts FROM tasks WHERE batch_id = :b", b=batch.id))
    why = d.sql("SELECT id, attempts, last_error FROM tasks WHERE batch_id = :b", b=batch.id)
    assert {spent[i] for i in ids} == {1}, (ids, back, why)  # one try, elsewhere
    print(f"attempts over the batch: {sorted(Counter(spent.values()).items())}")
