"""What every ``kiln`` command shares: consoles, options, exit codes, errors, settings, logging."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pixelkiln.exceptions import (
    ConfigError,
    InvalidStateError,
    KilnError,
    NotFoundError,
    PermissionDeniedError,
    SpecError,
    UnstorableValueError,
)

if TYPE_CHECKING:  # the settings, the database: imported by the commands that use them
    from pixelkiln.config import Settings
    from pixelkiln.db.database import Database
    from pixelkiln.models import Batch

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="kiln.toml to use (default: ./kiln.toml or $KILN_CONFIG)."),
]
LogLevelOption = Annotated[
    str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
BatchArg = Annotated[str, typer.Argument(help="Batch id, or the name of the newest batch.")]

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def print_error(message: object) -> None:
    """``Error: <message>`` on stderr; the message is the user's text, never markup."""
    err_console.print("[red]Error:[/]", escape(str(message)), highlight=False, soft_wrap=True)


@contextmanager
def errors() -> Iterator[None]:
    """Turn our errors into a clear message and exit code: never a traceback for bad input."""
    try:
        yield
    except SpecError as exc:
        err_console.print(f"[red]Invalid input ({len(exc.problems)} problem(s)):")
        for problem in exc.problems[:50]:
            err_console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        if len(exc.problems) > 50:
            err_console.print(f"  … and {len(exc.problems) - 50} more")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except (
        ConfigError,
        NotFoundError,
        InvalidStateError,
        PermissionDeniedError,
        UnstorableValueError,
    ) as exc:
        print_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KilnError as exc:
        print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    except OverflowError:  # an id past 64 bits names nothing
        err_console.print("[red]Error:[/] a number is out of range", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def settings_from(config: Path | None, log_level: str | None = None) -> Settings:
    """The settings of ``config`` (or ./kiln.toml, $KILN_CONFIG), with a log level override."""
    from pixelkiln.config import load_settings

    overrides: dict[str, Any] = {"log": {"level": log_level}} if log_level else {}
    return load_settings(config, **overrides)


def setup_logging(settings: Settings, prefix: str = "kiln") -> Path:
    """A timestamped log file per run under <data_dir>/logs; the terminal keeps the progress bar."""
    folder = settings.storage.data_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}_{datetime.now():%Y%m%d_%H%M%S}.log"
    try:
        # created here or not at all (O_EXCL): of two processes that start in the same
        # second, a check-then-open would let both append to one file
        path.touch(exist_ok=False)
    except FileExistsError:  # another process started in the same second: a file of its own
        path = path.with_name(f"{path.stem}_{os.getpid()}.log")
    handler = logging.FileHandler(path, encoding="utf-8")
    # the process id: several servers on one database each say which claimed what
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s")
    )
    root = logging.getLogger("pixelkiln")
    root.handlers = [handler]
    root.setLevel(settings.log.level)
    root.propagate = False
    return path


def with_db(settings: Settings, fn: Callable[[Database], T]) -> T:
    """Open the database, call ``fn`` with it, close it."""
    from pixelkiln.db.database import Database

    db = Database.open(settings.storage.resolved_database_url())
    try:
        return fn(db)
    finally:
        db.close()


def resolve(db: Database, ref: str) -> Batch:
    """A batch by id or by the name of the newest batch so named."""
    from pixelkiln.db.batches import find_batch

    return db.read(find_batch, ref)
