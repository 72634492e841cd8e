"""Who holds a lease: owner ids, and spotting owners on this host that have died."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable


def new_owner_id() -> str:
    """``host:pid:nonce`` — lets a scheduler on the same host spot a dead owner at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_local_owners(owners: Iterable[str], me: str) -> list[str]:
    """Lease owners on this host whose process no longer exists."""
    host = socket.gethostname()
    dead = []
    for owner in owners:
        owner_host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if owner == me or owner_host != host or not pid_text.isdigit():
            continue
        if int(pid_text) == os.getpid():
            continue  # another scheduler of this process: trust its lease
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            dead.append(owner)
        except PermissionError:
            pass  # alive, someone else's
    return dead
