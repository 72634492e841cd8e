"""Running `kiln` as a subprocess in tests: the command, a clean environment, a free port."""

from __future__ import annotations

import os
import socket
import sys

KILN = [sys.executable, "-m", "pixelkiln.cli"]  # the `kiln` command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env() -> dict[str, str]:
    """This environment without KILN_* variables (a test's config file decides)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
