"""Failed-token throttling: a client address that sends too many different bad tokens is
refused for a while, good tokens included, without any token being checked.

Tokens are 256-bit random values and session cookies carry an HMAC-SHA256: nobody guesses
one. What the throttle bounds is the guessing all the same (a leaked prefix, a stolen
database's hashes), the database lookups a hostile client makes the server pay for, and
the noise: each lock is one WARNING in the log, naming the address (never a token).

The rules, decided once here:

* **What counts**: a bearer token that matches no active user, a session cookie that is
  forged, expired or whose token is revoked, a failed sign-in (``POST /api/v1/session``).
  *Different* credentials count, each once per window: a script that repeats one revoked
  token, or a browser holding a cookie from before the secret changed, is no guesser and
  must not lock an office's shared address out. A request without a token, and a signed
  image link that is stale, count for nothing (the first costs no lookup, the second is
  what an old exported table holds).
* **The lock**: the ``limit``-th different failure within ``window`` seconds locks the
  address for ``window`` seconds. While locked every authenticated request from it is
  answered 429 with ``Retry-After``, a good token too: were good tokens let through, a
  guesser would see its hit (200 among 429s) and the limit would stop nothing. Requests
  during the lock neither extend it nor count.
* **The address**: the client's, as the ASGI server gives it (``kiln serve``: uvicorn
  believes ``X-Forwarded-For`` only from a peer in its ``forwarded_allow_ips``, loopback by
  default, ``FORWARDED_ALLOW_IPS`` to add a proxy). IPv6 addresses count by their /64 (one
  host holds a whole /64). A loopback or unknown address is never locked: it stands for
  every client of a proxy on this machine that sends no ``X-Forwarded-For``, and locking
  it would lock all of them out at once.
* **Where it lives**: in this process's memory, not the database: a counter in the
  database would make each bad request a write (on SQLite, through the one writer), so the
  throttle would itself be the denial of service it is meant to bound. With N processes
  behind a balancer the limit is per process (N × ``limit`` guesses at most), and a
  restart forgets every lock.

>>> attempts = FailedAttempts(limit=2, window=60, clock=lambda: 1000.0)
>>> attempts.failed("203.0.113.9", "pk_one"), attempts.failed("203.0.113.9", "pk_one")
(False, False)
>>> attempts.failed("203.0.113.9", "pk_two"), attempts.retry_after("203.0.113.9")
(True, 60)
>>> client_key("::1") is None, client_key("2001:db8::1:2:3:4")
(True, '2001:db8::/64')
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("pixelkiln.auth")

#: addresses remembered at once; past it the least recently seen is forgotten first
MAX_ADDRESSES = 10_000


def client_key(host: str | None) -> str | None:
    """The address ``host`` counts as: an IPv4 address, an IPv6 /64, a name as given;
    None (never locked) for loopback and for no address at all (a Unix socket)."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an address (a test client's name): counted as it is
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Address:
    #: a digest of each different bad credential → when it was last sent
    failures: dict[bytes, float] = field(default_factory=dict)
    locked_until: float = 0.0


class FailedAttempts:
    """The failed-token counts of one process, by client address (see the module's rules).

    ``limit`` 0 turns the throttle off. Thread-safe; the clock is ``time.monotonic``
    unless a test gives another.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str | None) -> int:
        """Whole seconds until ``key``'s lock ends; 0 when it is not locked."""
        if key is None or not self.limit:
            return 0
        with self._lock:
            entry = self._addresses.get(key)
            left = entry.locked_until - self.clock() if entry is not None else 0.0
        return max(1, math.ceil(left)) if left > 0 else 0

    def failed(self, key: str | None, credential: str | bytes) -> bool:
        """Count a bad ``credential`` from ``key``; True when it locks the address (the
        one time its lock is logged). Only a digest of the credential is kept."""
        if key is None or not self.limit:
            return False
        raw = (
            credential.encode("utf-8", "surrogateescape")
            if isinstance(credential, str)
            else credential
        )
        digest = hashlib.sha256(raw).digest()[:16]
        with self._lock:
            now = self.clock()
            entry = self._touch(key, now)
            if entry.locked_until > now:
                return False  # refused before any check: nothing more to count
            stale = now - self.window
            entry.failures = {d: t for d, t in entry.failures.items() if t > stale}
            entry.failures[digest] = now
            if len(entry.failures) < self.limit:
                return False
            entry.failures.clear()
            entry.locked_until = now + self.window
        log.warning(
            "client %s: %d different bad tokens within %g s; its requests are refused "
            "(429) for %g s",
            key,
            self.limit,
            self.window,
            self.window,
        )
        return True

    def _touch(self, key: str, now: float) -> _Address:
        """``key``'s entry, made the most recently seen; the table kept within bounds by
        forgetting the least recently seen addresses."""
        entry = self._addresses.pop(key, None) or _Address()
        self._addresses[key] = entry
        while len(self._addresses) > self.max_addresses:
            self._addresses.popitem(last=False)
        return entry
