"""PostgreSQL LISTEN/NOTIFY: other processes learn of new work and new events without polling.

Two kinds of news are sent, each on its own channel, in the transaction of the
change it reports (so a listener hears of it only once it is committed, and
never of a change that rolled back):

- :data:`WORK`: tasks became claimable — a batch was created or resumed, tasks
  went back to pending (retried, regenerated, released, recovered, a failed try
  to retry later). Sent by :mod:`.transitions` and :mod:`.transition_counts`.
  Schedulers of every process wake up and claim.
- :data:`EVENTS`: events were appended (:func:`pixelkiln.db.events.append_events`).
  The event bus of every process that follows the events table (SSE streams)
  reads them at once instead of at its next poll.
- :data:`SLOTS`: a process gave back slots of generator servers (:mod:`.slots`):
  schedulers waiting for a server whose slots other processes held look again at
  once instead of at their next re-check (engine.shared_limits).
- :data:`STATE`: what schedulers otherwise re-read every second or two changed: a
  runtime setting an admin stored (:mod:`.settings_store`: the concurrency), or a
  server found down or back (:mod:`.server_health`). Every scheduler reads them
  again now; while it listens it re-reads them by itself only every
  :data:`STATE_POLL` seconds.

A channel is named after its kind and the database schema (``kiln_work:public``),
so installations sharing one database in different schemas do not wake each
other. Within one transaction a channel is notified once: PostgreSQL folds
identical notifications of a transaction anyway, and skipping the repeats here
saves the round trips (the writer commits many writes in one transaction).

SQLite (and MySQL) send nothing: their processes poll, as every process still
does as a fallback. :class:`Listener` is the receiving end: one connection per
process in its own thread, reconnecting when the server goes away. A connection
that dies without a word (a NAT or firewall that forgot it, a server host that lost
power: half-open) is noticed too: TCP keepalives, and a ``SELECT 1`` that must be
answered once the connection has been quiet for :data:`CHECK_SECONDS`.

>>> listener = Listener(url, on_notify=lambda kind: print(kind))   # doctest: +SKIP
>>> listener.start()
>>> listener.stop()
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy.engine import make_url

from pixelkiln.db import driver
from pixelkiln.db.database import Tx

log = logging.getLogger(__name__)

WORK = "kiln_work"  #: tasks became claimable
EVENTS = "kiln_events"  #: events were appended
SLOTS = "kiln_slots"  #: a process gave back slots of generator servers (db.slots)
STATE = "kiln_state"  #: stored limits changed, or a server was found down or back
KINDS = (WORK, EVENTS, SLOTS, STATE)
#: seconds between a listening process's own re-reads of what :data:`STATE` announces
#: (a fallback: while the connection is live, nothing announced is missed, and a
#: reconnect announces every kind once)
STATE_POLL = 30.0
#: seconds between tries to (re)connect the listening connection, at most
RECONNECT_MAX = 10.0
#: seconds of quiet on the listening connection after which it is asked a ``SELECT 1``
CHECK_SECONDS = 30.0
#: seconds that ``SELECT 1`` may take before the connection counts as lost
ANSWER_SECONDS = 10.0
_CONNECT_TIMEOUT = 5
#: libpq's TCP keepalives (the kernel notices a dead peer of an idle connection within
#: about a minute), and how long sent bytes may stay unacknowledged (milliseconds)
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}

# run through the driver (db.driver): a record of outcomes sends one per transaction
#: the expression that sends a notification; its one parameter is the kind
NOTIFY_EXPR = "pg_notify(%s || ':' || current_schema(), '')"
_NOTIFY = f"SELECT {NOTIFY_EXPR}"
_SENT = "kiln_notified"  # Connection.info key: (transaction, kinds sent in it)


def notify(tx: Tx, kind: str) -> None:
    """Tell every listening process of ``kind`` news once ``tx`` commits (PostgreSQL only)."""
    if to_send(tx, kind):
        driver.rows(tx, _NOTIFY, (kind,))


def to_send(tx: Tx, kind: str) -> bool:
    """Whether ``kind`` news is still to be sent in ``tx``'s transaction (PostgreSQL; never
    elsewhere); noted as sent, so a caller told True sends it (:data:`NOTIFY_EXPR`, in a
    statement it runs anyway: one round trip less than :func:`notify`)."""
    if tx.dialect != "postgresql":
        return False
    transaction = tx.conn.get_transaction()
    sent: tuple[Any, set[str]] | None = tx.conn.info.get(_SENT)
    if sent is None or sent[0] is not transaction:
        sent = (transaction, set())
        tx.conn.info[_SENT] = sent
    if kind in sent[1]:
        return False
    sent[1].add(kind)
    return True


def channel(kind: str, schema: str) -> str:
    """The channel name of ``kind`` news in ``schema``."""
    return f"{kind}:{schema}"


def libpq_url(database_url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://…``) as psycopg takes it."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Listener:
    """LISTENs on ``kinds`` (:data:`KINDS`: all of them) in a thread of its own.

    ``on_notify(kind)`` is called in that thread for each notification, and for
    every kind each time the connection is (re)established: news sent while no one
    listened is not kept by the server. ``on_live(bool)`` says when listening starts
    and stops (pollers may slow down while it is live). A lost connection is tried
    again with a growing pause, up to :data:`RECONNECT_MAX` seconds; so is one quiet
    for ``check_seconds`` that does not answer a ``SELECT 1`` within ``answer_seconds``.

    Listening needs psycopg 3 (the ``postgres`` extra): without it :meth:`start` says
    so once and the process polls, as it does on SQLite.
    """

    def __init__(
        self,
        database_url: str,
        on_notify: Callable[[str], None],
        on_live: Callable[[bool], None] | None = None,
        *,
        check_seconds: float = CHECK_SECONDS,
        answer_seconds: float = ANSWER_SECONDS,
        kinds: Collection[str] = KINDS,
    ) -> None:
        self.conninfo = libpq_url(database_url)
        #: the news listened for: a process nobody follows events in (``kiln worker``) is
        #: not woken by every task recorded anywhere
        self.kinds = tuple(kind for kind in KINDS if kind in kinds)
        self.on_notify = on_notify
        self.on_live = on_live
        self.check_seconds = check_seconds
        self.answer_seconds = answer_seconds
        self.live = False  #: connected and listening now
        self._stopping = threading.Event()
        # written to by stop(): ends the wait on the connection's socket at once
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="kiln-listen", daemon=True)

    def start(self) -> None:
        """Listen from now on; without psycopg 3, one line in the log and nothing else."""
        try:
            import psycopg  # noqa: F401  (the postgres extra)
        except ImportError:
            log.warning(
                "other processes' work and events are not heard as they happen: LISTEN "
                "needs psycopg 3 (pip install 'pixelkiln[postgres]', and a "
                "postgresql+psycopg:// database_url); polling instead"
            )
            return
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and wait for the thread (closes the connection)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        pause = 0.1
        while not self._stopping.is_set():
            try:
                self._listen()
                pause = 0.1
            except Exception as exc:  # psycopg errors, a socket gone: listen again later
                if self._stopping.is_set():
                    self._set_live(False)
                    return
                # said before anyone is told: whoever sees listening stop finds the why
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
                self._set_live(False)
            self._stopping.wait(pause)
            pause = min(pause * 2, RECONNECT_MAX)

    def _listen(self) -> None:
        import psycopg  # the postgres extra; only a PostgreSQL installation gets here

        # closed here rather than by ``with``: leaving a ``with`` on an error first tries a
        # rollback, which a connection cut mid-query refuses with a warning of its own
        conn = psycopg.connect(
            self.conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT, **_KEEPALIVES
        )
        try:
            row = conn.execute("SELECT current_schema()").fetchone()
            schema = str(row[0]) if row else "public"
            kinds = {channel(kind, schema): kind for kind in self.kinds}
            for name in kinds:
                conn.execute(f'LISTEN "{name}"')
            self._set_live(True)
            for kind in self.kinds:  # what was sent while nobody listened
                self.on_notify(kind)
            with selectors.DefaultSelector() as selector:
                selector.register(conn.pgconn.socket, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    if not selector.select(self.check_seconds):
                        self._check(conn, selector)  # quiet so long: is anyone there?
                    self._drain(conn, kinds)
            self._set_live(False)
        finally:
            conn.close()

    def _check(self, conn: Any, selector: selectors.BaseSelector) -> None:
        """``SELECT 1``, answered within ``answer_seconds``, or the connection is lost.

        A half-open connection raises no error on its own (writes go into the socket's
        buffer): only an answer that does not come tells. Sent and read through libpq
        directly, so the wait has a bound and :meth:`stop` still cuts it short;
        notifications that arrive meanwhile stay queued for :meth:`_drain`.
        """
        import psycopg

        pgconn = conn.pgconn
        deadline = time.monotonic() + self.answer_seconds
        pgconn.send_query(b"SELECT 1")
        while pgconn.flush():  # non-blocking: what the socket did not take yet
            self._wait(selector, deadline)
        while True:
            pgconn.consume_input()  # raises psycopg.OperationalError on a lost connection
            if not pgconn.is_busy():
                break
            self._wait(selector, deadline)
        while (result := pgconn.get_result()) is not None:
            if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
                message = result.error_message.decode(errors="replace").strip()
                raise psycopg.OperationalError(f"SELECT 1 failed: {message}")

    def _wait(self, selector: selectors.BaseSelector, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not selector.select(left):
            raise TimeoutError(f"no answer to SELECT 1 within {self.answer_seconds:g} s")
        if self._stopping.is_set():
            raise InterruptedError("stopping")

    def _drain(self, conn: Any, kinds: dict[str, str]) -> None:
        """Hand on every notification that arrived; raises when the connection broke."""
        pgconn = conn.pgconn
        pgconn.consume_input()  # raises psycopg.OperationalError on a lost connection
        heard: set[str] = set()
        while (note := pgconn.notifies()) is not None:
            kind = kinds.get(note.relname.decode())
            if kind is not None:
                heard.add(kind)
        for kind in sorted(heard):  # many at once: one call per kind is enough
            self.on_notify(kind)

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            if self.on_live is not None:
                self.on_live(live)
