"""Encryption of users' provider keys at rest (Fernet: AES-128-CBC + HMAC-SHA256), and the
installation's secret that signed sessions and image links derive their keys from.

The key comes from ``[auth] secret_key`` (best: ``KILN_AUTH__SECRET_KEY`` from a secret
store), or is generated once into ``<data_dir>/secret.key`` (mode 0600) the first time
one is needed, and read from there ever after: an existing install keeps working. That
file lies beside the database it protects, so a copy of the data folder carries both;
:func:`secret_key_warning` is what ``kiln serve`` and ``kiln worker`` say about it at
start-up. Losing that file makes stored provider keys unreadable, never readable by
someone else: users then store their keys again.

>>> secret_key_warning(Settings(auth={"enabled": True, "secret_key": "x" * 43 + "="})) is None
True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from pixelkiln.config import Settings
from pixelkiln.exceptions import ConfigError

#: the generated key's file, in ``[storage] data_dir``
KEY_FILE = "secret.key"


class KeyBox:
    """Encrypts and decrypts provider keys; builds its Fernet key on first use."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.auth.secret_key
        self._configured = secret.get_secret_value() if secret else None
        self._file = settings.storage.data_dir / KEY_FILE
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def encrypt(self, plaintext: str) -> str:
        return self._get().encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._get().decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a stored provider key cannot be decrypted with this secret key"
            ) from exc

    def derive(self, purpose: bytes) -> bytes:
        """A key for ``purpose`` (signing links, say) derived from the installation's
        secret: the secret itself never signs anything, and each purpose gets its own."""
        with self._lock:
            if self._configured is None:  # read (or made) once, as for the Fernet key
                self._configured = _load_or_create(self._file)
            secret = self._configured
        return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()

    def _get(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                key = self._configured or _load_or_create(self._file)
                try:
                    self._fernet = Fernet(key)
                except ValueError as exc:
                    raise ConfigError(f"[auth] secret_key is not a Fernet key: {exc}") from exc
            return self._fernet


def secret_key_warning(settings: Settings) -> str | None:
    """What to warn about at start-up while the secret key lives in the data folder
    beside what it protects; None when ``[auth] secret_key`` is set, or when there is
    nothing to protect (auth off and no key generated yet: no sessions, no links, no
    stored provider keys)."""
    if settings.auth.secret_key:
        return None
    path = settings.storage.data_dir / KEY_FILE
    exists = path.is_file()
    if not exists and not settings.auth.enabled:
        return None
    where = f"is {path}" if exists else f"will be generated into {path}"
    return (
        f"the secret key (it encrypts users' provider keys and signs sessions and image "
        f"links) {where}, beside the data it protects: set KILN_AUTH__SECRET_KEY"
        + (" to that file's contents, then delete the file" if exists else "")
        + " (see docs/security.md)"
    )


def _load_or_create(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key
