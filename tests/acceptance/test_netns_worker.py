"""A `kiln worker` in its own network namespace, reaching its database and generator over a link.

The test builds the "other machine": a network namespace whose only
addresses are its loopback and one end of a veth pair (a /30 of 10.213.0.0/16
that no interface of the host uses); the host keeps the other end. PostgreSQL
listens on 127.0.0.1 only, so a small TCP forwarder in the test listens on
the host's end of the link and carries connections to it; the fake WebUI
listens on the host's end itself. The worker runs inside (``ip netns exec``),
with a kiln.toml naming those addresses, and runs a batch submitted on the
host. Storage is the shared data folder (the namespace shares the filesystem).

It needs root and iproute2 (skipped, saying which, without them); the
namespace and the link are removed whatever happens.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pixelkiln.testing import FakeSDWebUI
from tests.acceptance.test_worker import (
    assert_each_task_once,
    finished,
    generated_by_workers,
    local_storage,
    submit,
    until,
    worker_log,
    write_config,
    write_spec,
)
from tests.processes import KILN, env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@dataclass(frozen=True)
class Link:
    """A network namespace and the two ends of its only link."""

    namespace: str
    host: str  #: the host's end (where the forwarder and the fake listen)
    inside: str  #: the namespace's end (the worker's only address but loopback)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _free_pair() -> tuple[str, str]:
    """A /30 of 10.213.0.0/16 that no interface of the host uses: (the host's end, the
    namespace's). One of 16,000, and never one in use: a /24 of 250 drawn at random
    met another run's (or a leftover) about once in 250 runs, and the worker's packets
    went to the other pair."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=30
    ).stdout
    used = {
        ipaddress.ip_interface(word.split("/")[0] + "/30").network
        for line in shown.splitlines()
        for word in line.split()
        if word.startswith("10.213.")
    }
    while True:
        third, block = secrets.randbelow(250) + 1, secrets.randbelow(64)
        pair = ipaddress.ip_network(f"10.213.{third}.{4 * block}/30")
        if pair not in used:
            host, inside = list(pair.hosts())
            return str(host), str(inside)


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs iproute2's `ip` command")
    tag = secrets.token_hex(3)
    name, host_end, inside_end = f"kiln-{tag}", f"kh{tag}", f"kn{tag}"
    host_address, inside_address = _free_pair()
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", inside_end)
        _ip("link", "set", inside_end, "netns", name)
        _ip("addr", "add", f"{host_address}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{inside_address}/30", "dev", inside_end)
        _ip("netns", "exec", name, "ip", "link", "set", inside_end, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Link(name, host_address, inside_address)
    finally:
        # deleting the namespace deletes its end of the pair, and with it the host's end
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)


@dataclass
class Forwarder:
    """Accepts on ``listen`` and carries each connection to ``target``, both ways."""

    listen: tuple[str, int]
    target: tuple[str, int]
    peers: set[str] = field(default_factory=set)  #: addresses connections came from
    _sockets: list[socket.socket] = field(default_factory=list)

    def __enter__(self) -> Forwarder:
        server = socket.create_server(self.listen)
        self.listen = server.getsockname()[:2]
        self._sockets.append(server)
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in self._sockets:
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, address = server.accept()
            except OSError:  # closed: the test is over
                return
            self.peers.add(address[0])
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_worker_across_a_link_runs_the_batch(
    tmp_path: Path, postgres_url: str, link: Link
) -> None:
    tasks = 8
    storage = local_storage(tmp_path / "kiln-data")
    url = make_url(postgres_url)
    assert url.host is not None
    with (
        FakeSDWebUI(host=link.host, latency=0.05) as webui,
        Forwarder((link.host, 0), (url.host, url.port or 5432)) as forwarder,
    ):
        far_url = url.set(host=link.host, port=forwarder.listen[1])
        write_config(tmp_path, postgres_url, webui.url, storage=storage)
        inside = write_config(
            tmp_path,
            far_url.render_as_string(hide_password=False),
            webui.url,
            storage=storage,
            name="inside.toml",
        )
        batch_id = submit(tmp_path, write_spec(tmp_path, tasks))  # on the host
        addresses = subprocess.run(
            ["ip", "netns", "exec", link.namespace, "ip", "-4", "-o", "addr"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        with (tmp_path / "w.out").open("w") as out:
            worker = subprocess.Popen(
                ["ip", "netns", "exec", link.namespace, *KILN, "worker", "-c", str(inside)],
                cwd=tmp_path,
                env=env(tmp_path),  # the database of its kiln.toml: across the link
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                until(finished(postgres_url, batch_id, tasks), "the far worker to run the batch")
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=60) == 0, worker_log(tmp_path, "w.out")
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=30)
    # inside: loopback and its end of the link, nothing else
    found = {line.split()[3].split("/")[0] for line in addresses.splitlines()}
    assert found == {"127.0.0.1", link.inside}
    assert forwarder.peers == {link.inside}  # the database was reached across the link
    assert_each_task_once(postgres_url, batch_id, tasks, storage)
    assert generated_by_workers(tmp_path) == tasks
