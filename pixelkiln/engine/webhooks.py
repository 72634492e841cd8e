"""The deliverer: POSTs each batch end to the batch's webhook, signed, retried, never twice.

It runs beside the scheduler wherever one runs (``kiln serve``, ``kiln run``,
the ``Kiln`` library): :class:`pixelkiln.engine.assembly.Engine` hands it to
each scheduler it builds as a companion, which the scheduler starts with its
own helpers and starts again should it die. It never holds up batch work: it
has its own HTTP client and touches the database only through short reads
and writes.

What is owed comes from the database, not from memory (see
:mod:`pixelkiln.db.webhooks`): a pass makes the delivery rows owed for new
``done`` events (every :data:`SWEEP_SECONDS` it looks at every event, for ends
a crash or another process left behind), claims the due rows, and sends them.
A failed try is due again after ``[webhooks] backoff`` seconds, doubling each
time up to ``backoff_max``, until ``max_attempts``.

A pass starts every ``[webhooks] poll_interval`` while there is work; while
nothing is owed or due the pause doubles, up to :data:`IDLE_BACKOFF` times the
interval (a worker that sits idle, or runs batches without webhooks, then costs
the database next to nothing). A batch that ends in this process :meth:`pokes
<Deliverer.poke>` it, so its delivery goes out at once; an end in another process
is found at the next pass, as before.

When its scheduler stops (``kiln run`` once its batches end), :meth:`finish`
delivers what is due for at most ``[webhooks] timeout`` seconds (and a short
margin); the rest stays pending for the next process that runs a scheduler
on this database.

>>> deliverer = Deliverer(db, settings)          # doctest: +SKIP
>>> await deliverer.deliver_pending()            # one pass: how many were delivered
1
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection

from pixelkiln import __version__
from pixelkiln.config import Settings
from pixelkiln.db.database import Database
from pixelkiln.db.records import latest_event_id
from pixelkiln.db.webhooks import (
    BatchEnd,
    Claimed,
    batch_end,
    claim_due,
    due_count,
    enqueue_owed,
    ensure_secret,
    owed_count,
    record_attempt,
    stored_secret,
)
from pixelkiln.engine.supervisor import Supervision
from pixelkiln.wire.schemas import (
    CountsPublic,
    WebhookBatch,
    WebhookLinks,
    WebhookPayload,
    WebhookSummary,
)
from pixelkiln.wire.signing import signed_headers

log = logging.getLogger("pixelkiln.webhooks")

#: seconds between looks at every ``done`` event (not only the new ones) for owed deliveries
SWEEP_SECONDS = 60.0
#: deliveries sent at once by one process
PARALLEL = 16
#: the longest pause between passes while nothing is owed, in ``poll_interval``s
IDLE_BACKOFF = 8
#: seconds a claimed try holds its row beyond ``[webhooks] timeout`` (the row comes back
#: to the queue after that when the process died mid-try)
LEASE_MARGIN = 30.0
#: seconds :meth:`Deliverer.finish` goes on beyond ``[webhooks] timeout``: a try that times
#: out still has its outcome written (else its row waits out the lease)
FINISH_MARGIN = 2.0
EVENT = "batch.finished"
#: how an admin lets webhooks reach private addresses (said with every refusal)
ALLOW_HINT = "an admin may allow it with [webhooks] allow_private = true"


class WebhookRefusedError(Exception):
    """The URL may not be sent to (a private address while those are not allowed)."""


@dataclass(frozen=True)
class TryOutcome:
    """What one try came to."""

    delivered: bool
    code: int | None = None  #: the receiver's HTTP status, when it answered
    error: str | None = None
    final: bool = False  #: trying again cannot help (the URL is refused)


@dataclass
class Round:
    """What one round of deliveries came to."""

    delivered: int = 0  #: tries the receiver acknowledged
    failed: int = 0  #: tries that failed (due again later, or given up)
    idle: bool = True  #: nothing was owed or due: the next pass may wait longer

    def count(self, outcome: TryOutcome | None) -> None:
        if outcome is not None:
            self.delivered += outcome.delivered
            self.failed += not outcome.delivered


@dataclass(frozen=True)
class _Look:
    """What a pass finds before writing anything, read on one connection."""

    top: int  #: the newest event's id
    owed: int  #: batch ends after the cursor owed a delivery row
    due: int  #: deliveries due now


def _look(conn: Connection, after: int, now: float) -> _Look:
    # the newest id first: an end committed meanwhile is looked at again next time
    return _Look(latest_event_id(conn), owed_count(conn, after), due_count(conn, now))


def idle_pause(poll_interval: float, idle_passes: int) -> float:
    """Seconds until the next pass after ``idle_passes`` passes in a row found nothing:
    the interval, doubled per idle pass, at most :data:`IDLE_BACKOFF` times it."""
    factor: int = min(2 ** min(idle_passes, 16), IDLE_BACKOFF)
    return poll_interval * factor


@dataclass
class _Cursor:
    """Where the look for new ``done`` events starts, and when to look at them all again."""

    after: int | None = None  #: None: look at every event (first pass, or a sweep is due)
    next_sweep: float = 0.0


def build_payload(claimed: Claimed, end: BatchEnd, public_url: str) -> WebhookPayload:
    """The body of ``claimed``'s delivery: the ``done`` summary, the batch, links."""
    summary = WebhookSummary.model_validate(end.summary)
    counts = CountsPublic(
        total=summary.total,
        pending=0,
        running=0,
        succeeded=summary.succeeded,
        failed=summary.failed,
        cancelled=summary.cancelled,
        images=summary.images,
    )
    base = f"{public_url.rstrip('/')}/api/v1/batches/{end.batch_id}"
    return WebhookPayload(
        type=EVENT,
        delivery_id=claimed.id,
        event_id=claimed.event_id,
        batch=WebhookBatch(id=end.batch_id, name=end.name, status=summary.status, counts=counts),
        summary=summary,
        links=WebhookLinks(
            batch=base,
            events=f"{base}/log",
            images_zip=f"{base}/images.zip",
            webhooks=f"{base}/webhooks",
        ),
    )


def address_kind(address: str) -> str | None:
    """What makes ``address`` one a user's webhook must not reach without the admin's leave
    ("loopback", "link-local", "private"...), or None for a public unicast address. IPv4
    inside IPv6 is judged as IPv4. The one rule: the submit check of a literal address
    (:func:`literal_refusal`) and the send-time check of every resolved one both ask here.

    >>> address_kind("169.254.169.254"), address_kind("::ffff:127.0.0.1"), address_kind("8.8.8.8")
    ('link-local', 'loopback', None)
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return None
    kinds = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    )
    return next((kind for hit, kind in kinds if hit), "non-public")


def forbidden_address(address: str) -> bool:
    """Whether ``address`` is one a user's webhook must not reach without the admin's leave:
    anything but a public unicast address (loopback, private, link-local, shared, reserved,
    multicast, unspecified; IPv4 inside IPv6 judged as IPv4).

    >>> forbidden_address("10.1.2.3"), forbidden_address("::ffff:127.0.0.1")
    (True, True)
    """
    return address_kind(address) is not None


def private_allowed(settings: Settings) -> bool:
    """Whether webhooks may reach private addresses: ``[webhooks] allow_private``, and
    when unset, only while auth is off (a loopback-only server used by its own operator)."""
    allow = settings.webhooks.allow_private
    return (not settings.auth.enabled) if allow is None else allow


def literal_refusal(url: str) -> str | None:
    """Why ``url`` may not be sent to when its host is a literal address that is not
    public (None for a public address or a host name: names are checked when sent, as
    what they resolve to may change). For the submit check, where private addresses are
    not allowed.

    >>> literal_refusal("http://[::1]:8080/in")
    '::1 is a loopback address; an admin may allow it with [webhooks] allow_private = true'
    """
    host = urlsplit(url).hostname or ""
    try:
        kind = address_kind(host)
    except ValueError:
        return None  # a name, not an address
    if kind is None:
        return None
    return f"{host} is {_a(kind)} address; {ALLOW_HINT}"


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to now (the system resolver, off the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Deliverer:
    """Sends owed webhook deliveries; see the module docstring."""

    name = "webhooks"  #: as the scheduler names its companions

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings.webhooks
        self.allow_private = private_allowed(settings)
        self._http = http
        self._own_http = http is None
        self._clock = clock
        self._cursor = _Cursor()
        self._lock = asyncio.Lock()  # one pass at a time (the loop's, or finish's)
        self._stopping = False
        self._poked = asyncio.Event()  # a batch ended here: the next pass now
        self._supervision = Supervision(stall_seconds=float("inf"))

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver what is due every ``poll_interval`` (less often while nothing is owed)
        until cancelled or :meth:`finish`."""
        self._stopping = False
        idle_passes = 0
        while not self._stopping:
            try:
                done = await self.deliver_round()
            except Exception as exc:  # the database: back off, log without a flood
                await asyncio.sleep(self._supervision.failed("webhook delivery", exc))
                continue
            self._supervision.ok("webhook delivery")
            idle_passes = idle_passes + 1 if done.idle else 0
            await self._pause(idle_pause(self.settings.poll_interval, idle_passes))

    def poke(self) -> None:
        """A batch ended in this process: look for owed deliveries now. Call on the loop."""
        self._poked.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poked.wait(), seconds)
        self._poked.clear()

    async def finish(self) -> None:
        """Deliver what is due now, for at most ``[webhooks] timeout`` seconds (and
        :data:`FINISH_MARGIN`; the scheduler is stopping): what is left stays pending
        for the next process."""
        self._stopping = True
        try:
            async with asyncio.timeout(self.settings.timeout + FINISH_MARGIN):
                await self.deliver_pending()
        except TimeoutError:
            log.info("webhooks: deliveries still due are left for the next run")
        except Exception as exc:
            log.warning("webhooks: could not deliver before stopping: %s", exc)

    async def aclose(self) -> None:
        """Close the HTTP client this deliverer opened."""
        if self._own_http and self._http is not None:
            await self._http.aclose()
        self._http = None

    # -- one pass -------------------------------------------------------------------------------

    async def deliver_pending(self, deadline: float | None = None) -> int:
        """Make the owed rows, then send every due delivery; how many were delivered."""
        return (await self.deliver_round(deadline)).delivered

    async def deliver_round(self, deadline: float | None = None) -> Round:
        """Make the owed rows, then send every due delivery: what came of the tries.

        With ``deadline`` (a :func:`time.monotonic` time) no try starts after it;
        tries under way finish (each within ``[webhooks] timeout``) and are written
        down, so a bounded run never leaves a row waiting out its lease.
        """
        done = Round()
        async with self._lock:
            due = await self._enqueue()
            done.idle = not due
            while due:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                claimed = await self.db.awrite(claim_due, PARALLEL, lease=self._lease())
                if not claimed:
                    break  # another process took them
                outcomes = await asyncio.gather(
                    *(self._deliver(c) for c in claimed), return_exceptions=True
                )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome  # the row's lease lapses; it is tried again later
                    done.count(outcome)
                due = await self.db.aread(due_count, self._clock()) > 0
            return done

    async def _enqueue(self) -> bool:
        """Make the rows owed for new batch ends; True when a delivery may be due now."""
        cursor, now = self._cursor, time.monotonic()
        after = 0 if cursor.after is None or now >= cursor.next_sweep else cursor.after
        if after == 0:
            cursor.next_sweep = now + SWEEP_SECONDS
        # one read (one connection) for the three looks: this runs every poll interval
        look = await self.db.aread(_look, after, self._clock())
        if look.owed:  # made now, or by another process meanwhile: due either way
            made = await self.db.awrite(enqueue_owed, after)
            log.debug("webhooks: %d delivery(ies) owed", made)
        cursor.after = look.top
        return look.due > 0 or look.owed > 0

    def _lease(self) -> float:
        return self.settings.timeout + LEASE_MARGIN

    async def _deliver(self, claimed: Claimed) -> TryOutcome | None:
        """One try of ``claimed``; its outcome written (None: the batch is gone)."""
        end = await self.db.aread(batch_end, claimed)
        if end is None:
            return None  # the batch was deleted meanwhile (its rows with it)
        secret = await self._secret(end.owner_id)
        body = build_payload(claimed, end, self.settings.public_url).model_dump_json().encode()
        outcome = await self._send(claimed, body, secret)
        last_try = outcome.final or claimed.attempt >= self.settings.max_attempts
        retry_in = None if outcome.delivered or last_try else self._backoff(claimed.attempt)
        await self.db.awrite(
            record_attempt,
            claimed,
            delivered=outcome.delivered,
            response_code=outcome.code,
            error=outcome.error,
            retry_in=retry_in,
        )
        self._log(claimed, outcome, retry_in)
        return outcome

    def _backoff(self, attempt: int) -> float:
        return float(min(self.settings.backoff_max, self.settings.backoff * 2 ** (attempt - 1)))

    async def _secret(self, owner_id: int | None) -> str:
        found = await self.db.aread(stored_secret, owner_id)
        return found if found is not None else await self.db.awrite(ensure_secret, owner_id)

    def _log(self, claimed: Claimed, outcome: TryOutcome, retry_in: float | None) -> None:
        where = f"batch {claimed.batch_id} delivery {claimed.id} try {claimed.attempt}"
        if outcome.delivered:
            log.info("webhooks: %s delivered (HTTP %s)", where, outcome.code)
        elif retry_in is None:
            log.warning("webhooks: %s failed for good: %s", where, outcome.error)
        else:
            log.info("webhooks: %s failed (%s); next try in %g s", where, outcome.error, retry_in)

    # -- HTTP -----------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # redirects are refused: a receiver must not bounce a delivery elsewhere
            self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self._http

    async def _send(self, claimed: Claimed, body: bytes, secret: str) -> TryOutcome:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"pixelkiln/{__version__} (webhook)",
            "X-Pixelkiln-Event": EVENT,
            "X-Pixelkiln-Delivery": str(claimed.id),
            "X-Pixelkiln-Attempt": str(claimed.attempt),
            **signed_headers(secret, body, timestamp=int(self._clock())),
        }
        try:
            request = await self._request(claimed.url, body, headers)
            response = await self._client().send(request)
            await response.aclose()  # the answer's body is not needed: never read it whole
        except WebhookRefusedError as exc:
            return TryOutcome(False, error=str(exc), final=True)
        except httpx.TimeoutException:
            return TryOutcome(False, error=f"no answer within {self.settings.timeout:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return TryOutcome(False, error=f"{type(exc).__name__}: {exc}"[:500])
        return _judge(response)

    async def _request(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Request:
        """The POST, sent to a checked address when private ones are not allowed.

        The name is resolved here and the request goes to the address that was
        checked (the ``Host`` header and TLS name stay the URL's), so a name that
        resolves elsewhere on the second look cannot slip past the check.
        """
        target = httpx.URL(url)
        timeout = httpx.Timeout(self.settings.timeout)
        extensions: dict[str, object] = {"timeout": timeout.as_dict()}
        if not self.allow_private:
            address = await self._checked_address(target)
            extensions["sni_hostname"] = target.host
            headers = {**headers, "Host": target.netloc.decode("ascii")}
            target = target.copy_with(host=address)
        return self._client().build_request(
            "POST", target, content=body, headers=headers, extensions=extensions
        )

    async def _checked_address(self, url: httpx.URL) -> str:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await resolve(url.host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {url.host}: {exc}") from exc
        refused = [a for a in addresses if forbidden_address(a)]
        if refused or not addresses:
            raise WebhookRefusedError(
                f"refused: {url.host} resolves to a private or local address "
                f"({', '.join(refused) or 'none'}); {ALLOW_HINT}"
            )
        return addresses[0]


def _judge(response: httpx.Response) -> TryOutcome:
    code = response.status_code
    if 200 <= code < 300:
        return TryOutcome(True, code)
    if 300 <= code < 400:
        where = response.headers.get("location", "")
        return TryOutcome(False, code, f"HTTP {code}: redirects are not followed ({where})"[:500])
    return TryOutcome(False, code, f"HTTP {code}")
