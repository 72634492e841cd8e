"""The LISTEN connection notices a peer that went silent, and a missing driver is said once.

A half-open connection (a NAT or firewall that forgot it, a server host that lost
power) raises nothing by itself: the listener must find out, mark itself not live (so
SSE followers and schedulers poll at their normal pace again) and connect anew once the
server can be reached. Made here with a TCP proxy between the listener and PostgreSQL
that drops every byte without closing anything (tests/tcpproxy.py), and a quiet period
of half a second instead of the default 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from pixelkiln.db import notify as notify_module
from pixelkiln.db.database import Database, Tx
from pixelkiln.db.notify import WORK, Listener, notify
from pixelkiln.testing import wait_until
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.postgres


def _through(proxy: TcpProxy, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


def _target(url: str) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or 5432


def test_a_silent_connection_is_noticed_and_listening_comes_back(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[str] = []
    live: list[bool] = []
    changed = threading.Event()

    def on_live(up: bool) -> None:
        live.append(up)
        changed.set()

    db = Database.open(postgres_url)
    with TcpProxy(_target(postgres_url)) as proxy:
        listener = Listener(
            _through(proxy, postgres_url),
            heard.append,
            on_live,
            check_seconds=0.5,
            answer_seconds=0.5,
        )
        listener.start()
        try:
            asyncio.run(wait_until(lambda: listener.live, timeout=20))
            proxy.blackhole()  # nothing comes back, nothing is closed
            with caplog.at_level(logging.WARNING, "pixelkiln.db.notify"):
                asyncio.run(wait_until(lambda: not listener.live, timeout=20))
            # logged before listening is said to be off; and only by us (no rollback
            # of the cut connection tried and complained of by psycopg)
            assert "no answer to SELECT 1" in caplog.text
            assert "error ignored in rollback" not in caplog.text
            proxy.restore()
            asyncio.run(wait_until(lambda: listener.live, timeout=60))
            heard.clear()

            def work(tx: Tx) -> None:
                notify(tx, WORK)

            db.write(work)  # heard on the new connection
            asyncio.run(wait_until(lambda: WORK in heard, timeout=20))
        finally:
            listener.stop()
            db.close()
    assert live[:3] == [True, False, True]


def test_the_listening_connection_has_tcp_keepalives(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    connect = psycopg.connect

    def spy(*args: Any, **kwargs: Any) -> Any:
        conn = connect(*args, **kwargs)
        made.append(conn)
        return conn

    monkeypatch.setattr(psycopg, "connect", spy)
    listener = Listener(postgres_url, lambda kind: None)
    listener.start()
    try:
        asyncio.run(wait_until(lambda: listener.live, timeout=20))
        with socket.socket(fileno=os.dup(made[0].pgconn.socket)) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 0
    finally:
        listener.stop()


def test_without_psycopg_3_it_says_so_once_and_polls(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``postgresql+psycopg2`` installation without psycopg 3: one line, no thread that
    logs "LISTEN connection lost" every few seconds forever."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg: ImportError
    url = postgres_url.replace("+psycopg://", "+psycopg2://")
    listener = Listener(url, lambda kind: None)
    with caplog.at_level(logging.WARNING, "pixelkiln.db.notify"):
        listener.start()
        listener.stop()
    warnings = [r for r in caplog.records if r.name == notify_module.__name__]
    assert len(warnings) == 1 and "psycopg 3" in warnings[0].getMessage()
    assert not listener.live
