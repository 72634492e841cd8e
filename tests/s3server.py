"""A real S3-compatible server on loopback for the storage tests: moto in server mode.

moto runs as its own process (``python -m moto.server``), as MinIO or AWS would be:
the tests talk to it over HTTP through boto3, nothing is patched in this process.
One server serves the session; each test gets a bucket of its own (``s3_bucket``),
so tests never see each other's objects. ``.ci/run`` needs nothing more: the
fixture starts and stops the server itself.

``strict_s3_server`` is a second one that checks credentials (moto's IAM
emulation: ``INITIAL_NO_AUTH_ACTION_COUNT=0``), for the "credentials refused" test.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

#: what the tests' boto3 clients (and the storage under test) sign with: moto accepts any
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"
START_SECONDS = 120.0  # a bound on a hang: the suite's workers share the cores


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint URL."""

    endpoint: str

    def client(self, **credentials: str) -> Any:
        """A boto3 S3 client of this server (the test credentials unless given)."""
        import boto3

        keys = credentials or {
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, **keys
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # polling a port that is not open yet: there is nothing to wait on
    raise RuntimeError(f"moto server did not listen on port {port} within {START_SECONDS} s")


@contextlib.contextmanager
def moto_server(**environment: str) -> Iterator[S3Server]:
    """``python -m moto.server`` on a free loopback port, stopped afterwards."""
    port = _free_port()
    env = {**os.environ, **environment}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_listening(process, port)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def strict_s3_server() -> Iterator[S3Server]:
    """A moto server that checks credentials against its (empty) IAM: every key is refused."""
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as server:
        yield server


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test credentials in the environment, where boto3 (and so pixelkiln) finds them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def s3_bucket(s3_server: S3Server, s3_env: None) -> str:
    """A new, empty bucket for one test."""
    name = f"kiln-{secrets.token_hex(6)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def s3_storage_settings(server: S3Server, bucket: str, prefix: str = "kiln") -> dict[str, str]:
    """The ``[storage]`` keys of an s3 storage on ``server`` (data_dir is added by the caller)."""
    return {
        "backend": "s3",
        "s3_endpoint": server.endpoint,
        "s3_bucket": bucket,
        "s3_prefix": prefix,
        "s3_region": REGION,
    }
