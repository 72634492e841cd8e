"""Which provider key goes with a task: its owner's own, or the backend's configured one.

A task created while its owner had their own key stored for its backend is
priced 0 and marked ``own_key``; at request time the key is read from the
database and decrypted here, so a key replaced in between is the one used. If
the owner has since removed it, the task fails without retrying (running it on
the system's key would be free use of it); the message says how to recover.
"""

from __future__ import annotations

import asyncio

from pixelkiln.backends.base import Backend, accepts_user_keys
from pixelkiln.db.database import Database
from pixelkiln.db.leases import ClaimedTask
from pixelkiln.db.users import provider_key_for_task
from pixelkiln.exceptions import RejectedInputError
from pixelkiln.keybox import KeyBox


class UserKeys:
    """Looks up and decrypts the owner's key for tasks marked ``own_key``."""

    def __init__(self, db: Database, keys: KeyBox) -> None:
        self._db = db
        self._keys = keys

    async def key_for(self, task: ClaimedTask, backend: Backend) -> str | None:
        """The key to send with ``task`` (None: the backend's own)."""
        if not task.own_key:
            return None
        if not accepts_user_keys(backend):
            raise RejectedInputError(
                f"backend '{task.backend}' no longer takes users' own keys; "
                "retry the task to run it on the system's key"
            )
        ciphertext = await self._db.aread(provider_key_for_task, task.id)
        if ciphertext is None:
            raise RejectedInputError(
                f"this task was queued to run on your own key for backend '{task.backend}', "
                "which has since been removed; store it again (or retry the task to run it "
                "on the system's key)"
            )
        return await asyncio.to_thread(self._keys.decrypt, ciphertext)
