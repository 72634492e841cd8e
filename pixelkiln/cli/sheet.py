"""``kiln sheet``: a sweep batch's contact sheets, one PNG per z value (see docs/sheets.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from pixelkiln import service
from pixelkiln.app import Kiln
from pixelkiln.cli.common import BatchArg, ConfigOption, QuietOption, console, errors, settings_from
from pixelkiln.config import Settings
from pixelkiln.db.batches import find_batch
from pixelkiln.exceptions import ConfigError, InvalidStateError
from pixelkiln.sheets import DEFAULT_CELL, MIN_CELL
from pixelkiln.storage import safe_name

ZOption = Annotated[
    str | None,
    typer.Option("--z", help="Only the sheet of this z value (default: one per z value)."),
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Folder to write into (default: the current folder), or a .png file when "
        "one sheet is written.",
    ),
]
CellOption = Annotated[
    int,
    typer.Option("--cell", min=MIN_CELL, max=1024, help="Cell size in pixels (longer side)."),
]


def sheet(
    batch: BatchArg,
    z: ZOption = None,
    out: OutOption = None,
    cell: CellOption = DEFAULT_CELL,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Draw a sweep batch's contact sheets (x columns, y rows, one PNG per z value).

    Missing results show as grey cells (pending, failed, …); run it again after a resume
    to fill them in. Prints the path of each PNG written.
    """
    with errors():
        settings = settings_from(config)
        written = asyncio.run(_write_sheets(settings, batch, z, out, cell, quiet))
    for path, label in written:
        console.print(f"Wrote {path}" + (f"  ({label})" if label else ""), markup=False)


async def _write_sheets(
    settings: Settings, ref: str, z: str | None, out: Path | None, cell: int, quiet: bool
) -> list[tuple[Path, str]]:
    async with Kiln(settings, engine=False) as kiln:
        batch_id = (await kiln.db.aread(find_batch, ref)).id
        refs = await service.list_sheets(kiln.service, service.LOCAL, batch_id)
        if not refs:
            raise InvalidStateError(
                f"batch {batch_id} is not a sweep: contact sheets are drawn for batches "
                "with a 'sweep' (x, y and z axes)"
            )
        chosen = _chosen(refs, z)
        if not chosen:  # an unknown z value: the service says which there are
            await service.sheet_png(kiln.service, service.LOCAL, batch_id, z=z)
        targets = _targets(batch_id, refs, chosen, out)
        with _progress(quiet or len(chosen) == 1) as progress:
            step = progress.add_task("Drawing sheets", total=len(chosen))
            for sheet_ref, target in zip(chosen, targets, strict=True):
                png = await service.sheet_png(
                    kiln.service, service.LOCAL, batch_id, sheet_ref.z, sheet_ref.group, cell
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(png)
                progress.advance(step)
    return [(t, r.label) for t, r in zip(targets, chosen, strict=True)]


def _chosen(refs: list[service.SheetRef], z: str | None) -> list[service.SheetRef]:
    return refs if z is None else [r for r in refs if r.z == z]


def _targets(
    batch_id: int, refs: list[service.SheetRef], chosen: list[service.SheetRef], out: Path | None
) -> list[Path]:
    """Where each sheet goes: ``batch-7-sheet-z1-m1.png`` in the folder, or the one file."""
    if out is not None and out.suffix.lower() == ".png":
        if len(chosen) != 1:
            raise ConfigError(
                f"--out {out} names one file, but {len(chosen)} sheets are to be written: "
                "give a folder (or one --z value)"
            )
        return [out]
    folder = out if out is not None else Path.cwd()
    z_values = list(dict.fromkeys(r.z for r in refs))
    names = []
    for r in chosen:
        name = f"batch-{batch_id}-sheet"
        if r.z is not None:
            name += f"-z{z_values.index(r.z) + 1}-{safe_name(r.z, 'value', 60)}"
        if r.groups > 1:
            name += f"-set{r.group}"
        names.append(folder / f"{name}.png")
    return names


def _progress(disabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=disabled,
        transient=True,
    )
