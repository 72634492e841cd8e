"""Scale-out as deployed: one `kiln serve --no-worker` and `kiln worker` processes on PostgreSQL.

The API runs no task; the workers run them all, and what they do reaches the
API's clients: a batch posted to the API completes, its events stream over
SSE, its images download through the API from the shared storage, and a
cancel through the API stops the work a worker holds (at its next lease
renewal). Storage is a parameter of the layout: the shared local folder now,
S3-compatible storage next.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from pixelkiln import Client
from pixelkiln.models import BatchStatus
from pixelkiln.testing import FakeSDWebUI
from tests.acceptance.test_worker import (
    SharedStorage,
    assert_each_task_once,
    generated_by_workers,
    local_storage,
    rows,
    until,
    worker_log,
    write_config,
)
from tests.processes import free_port, running, serving, stop
from tests.s3server import S3Server, s3_storage_settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS = 4


@pytest.fixture(params=["local", "s3"])
def shared_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedStorage]:
    """The storage every process of the layout shares (one parameter per kind)."""
    if request.param == "local":
        yield local_storage(tmp_path / "kiln-data")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")  # and the credentials in the env
    lines = "\n".join(f'{k} = "{v}"' for k, v in s3_storage_settings(server, bucket).items())

    def files() -> int:
        listed = server.client().list_objects_v2(Bucket=bucket, Prefix="kiln/images/")
        return len(listed.get("Contents", []))

    yield SharedStorage("s3", lines, files)


def test_a_batch_posted_to_the_api_runs_on_four_workers(
    tmp_path: Path, postgres_url: str, shared_storage: SharedStorage
) -> None:
    tasks = 24
    with FakeSDWebUI(latency=0.1) as webui:
        write_config(tmp_path, postgres_url, webui.url, storage=shared_storage, per_url=8)
        with (
            serving(tmp_path, "--no-worker") as url,
            Client(url) as client,
            ExitStack() as stack,
        ):
            health = httpx.get(f"{url}/healthz").json()
            assert health["status"] == "ok" and health["scheduler"] is None  # no scheduler here
            workers = [
                stack.enter_context(running(tmp_path, "worker", log=f"w{i}.out"))
                for i in range(WORKERS)
            ]
            batch = client.create_batch(
                {
                    "name": "scale-out",
                    "defaults": {"width": 64, "height": 64},
                    "tasks": [{"prompt": f"scene {i}", "key": f"s{i}"} for i in range(tasks)],
                }
            )
            events = list(client.stream(batch.id))  # ends with `done`
            done = client.get_batch(batch.id)
            made = [e for e in events if e.type == "image_generated"]
            png = client.download(made[0].data["image"]["url"])
            for i, process in enumerate(workers):
                assert stop(process) == 0, worker_log(tmp_path, f"w{i}.out")
    assert events[0].type == "batch_update" and events[-1].type == "done"
    assert done.status == BatchStatus.COMPLETED
    assert sorted(e.data["item_key"] for e in made) == sorted(f"s{i}" for i in range(tasks))
    assert png.startswith(b"\x89PNG")
    assert_each_task_once(postgres_url, batch.id, tasks, shared_storage)
    assert generated_by_workers(tmp_path) == tasks


def test_a_cancel_through_the_api_stops_a_workers_running_tasks(
    tmp_path: Path, postgres_url: str, shared_storage: SharedStorage
) -> None:
    port = free_port()
    with FakeSDWebUI(latency=0.01) as webui:
        write_config(tmp_path, postgres_url, webui.url, storage=shared_storage)
        webui.hold()
        with (
            serving(tmp_path, "--no-worker") as url,
            Client(url) as client,
            running(tmp_path, "worker", "--health-port", str(port), log="w.out") as worker,
        ):
            batch = client.create_batch(
                {"name": "stop me", "tasks": [{"prompt": f"p{i}"} for i in range(5)]}
            )
            until(lambda: webui.held == 2, "two generations held by the worker")
            client.cancel_batch(batch.id)

            def dropped() -> bool:
                body = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
                return bool(body["worker"]["held"] == 0)

            until(dropped, "the worker to drop the cancelled tasks (lease renewal)")
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert stop(worker) == 0, worker_log(tmp_path, "w.out")
        webui.release()
    status = rows(postgres_url, "SELECT status FROM batches WHERE id = :b", b=batch.id)
    assert status == [("cancelled",)]
    assert 'kiln_worker_generating{backend="sd"} 0' in metrics
