"""An S3 storage that cannot be used is said at start-up in one sentence, and a storage
outage while a batch runs is a server-side task failure that is retried.

``kiln run`` and ``kiln serve`` are run as processes: they must exit 2 with the
reason, not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelkiln.app import Kiln
from pixelkiln.db.tasks import list_tasks
from pixelkiln.exceptions import ConfigError
from pixelkiln.models import TaskStatus
from pixelkiln.specs import parse_batch
from pixelkiln.storage import StorageError
from pixelkiln.storage.s3 import S3Storage
from tests.conftest import make_settings
from tests.s3server import CREDENTIALS, REGION, S3Server, s3_storage_settings

pytestmark = pytest.mark.anyio


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_a_missing_bucket_is_named(s3_server: S3Server, s3_env: None) -> None:
    storage = S3Storage(bucket="no-such-bucket", endpoint=s3_server.endpoint, region=REGION)
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket' at http://127.*does not exist"):
        storage.check()


def test_refused_credentials_are_named_and_not_shown(
    strict_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    storage = S3Storage(bucket="any", endpoint=strict_s3_server.endpoint, region=REGION)
    with pytest.raises(ConfigError, match=r"refused.*AWS_ACCESS_KEY_ID") as caught:
        storage.check()
    assert "very-secret-value" not in str(caught.value)


def test_missing_credentials_are_named(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for
    storage = S3Storage(bucket="any", endpoint=s3_server.endpoint, region=REGION)
    with pytest.raises(ConfigError, match=r"no usable credentials.*AWS_SECRET_ACCESS_KEY"):
        storage.check()


def test_an_endpoint_that_is_down_is_named(s3_env: None) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    storage = S3Storage(bucket="any", endpoint=endpoint, region=REGION)
    with pytest.raises(ConfigError, match=f"cannot reach bucket 'any' at {endpoint}"):
        storage.check()


def test_an_outage_after_start_is_a_storage_error_not_a_missing_file(s3_env: None) -> None:
    storage = S3Storage(bucket="any", endpoint=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(StorageError, match=r"S3 write of images/1/a\.png failed"):
        storage.write("images/1/a.png", b"x")
    with pytest.raises(StorageError):
        storage.read("images/1/a.png")


async def test_a_storage_outage_fails_the_task_with_retries(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The bucket goes away after start-up: each try's images cannot be written, and the
    task is retried (a server-side failure), not failed at once as bad input."""
    settings = make_settings(
        tmp_path / "data",
        storage=s3_storage_settings(s3_server, s3_bucket),
        backends=[{"name": "placeholder", "type": "placeholder"}],
    )
    async with Kiln(settings) as kiln:
        s3_server.client().delete_bucket(Bucket=s3_bucket)  # empty: it can go
        spec = parse_batch(
            {"name": "outage", "defaults": {"width": 64, "height": 64}, "tasks": [{"prompt": "a"}]}
        )
        batch_id = await kiln.submit(spec, source="cli")
        await kiln.run_until_done([batch_id])
        [task] = await kiln.db.aread(list_tasks, batch_id)
    assert task.status == TaskStatus.FAILED
    assert task.attempts == task.max_attempts == 3
    assert "S3 write" in (task.last_error or "") and "NoSuchBucket" in (task.last_error or "")


# -- the faces: exit 2 with the reason ------------------------------------------------------


def _kiln(
    tmp_path: Path, *args: str, endpoint: str, bucket: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "kiln.toml"
    config.write_text(
        f'[storage]\ndata_dir = "data"\nbackend = "s3"\ns3_endpoint = "{endpoint}"\n'
        f's3_bucket = "{bucket}"\ns3_region = "{REGION}"\n\n'
        '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "AWS_"))}
    env |= CREDENTIALS | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "pixelkiln.cli", *args, "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_kiln_run_serve_and_worker_exit_2_naming_a_missing_bucket(
    s3_server: S3Server, tmp_path: Path
) -> None:
    spec = tmp_path / "batch.json"
    spec.write_text('{"name": "b", "tasks": [{"prompt": "a fox"}]}', encoding="utf-8")
    for args in (("run", str(spec), "--quiet"), ("serve", "--port", "0"), ("worker",)):
        done = _kiln(tmp_path, *args, endpoint=s3_server.endpoint, bucket="absent-bucket")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "bucket 'absent-bucket'" in done.stderr and "does not exist" in done.stderr
        assert "Traceback" not in done.stderr
