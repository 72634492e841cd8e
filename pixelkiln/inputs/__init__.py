"""Batch files: JSON, YAML, TOML specs and CSV / XLSX tables, loaded into one shape.

:func:`load_batch_file` picks the reader from the file's extension and returns a
:class:`LoadedBatch`: the validated spec plus what is needed to resolve it
against the file (its folder, for relative image paths) and to name its tasks
in messages the way the user sees them ("task 3" in a spec, "row 4" in a table).
Every problem with the file raises :class:`~pixelkiln.exceptions.SpecError`.

>>> batch = load_batch_file(Path("examples/quickstart.yaml"))      # doctest: +SKIP
>>> tasks = batch.resolve(default_backend="placeholder")            # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pixelkiln.inputs import structured, tabular
from pixelkiln.inputs._files import file_error
from pixelkiln.inputs.tabular import TableTemplate
from pixelkiln.resolve import ResolvedTask, resolve_tasks
from pixelkiln.specs import BatchSpec, TaskPlaces

__all__ = ["SUPPORTED_EXTENSIONS", "LoadedBatch", "TableTemplate", "load_batch_file"]

#: file extensions :func:`load_batch_file` reads
SUPPORTED_EXTENSIONS = (*structured.EXTENSIONS, ".csv", ".xlsx")


@dataclass(frozen=True)
class LoadedBatch:
    """A batch file, validated: its spec and how to resolve and name its tasks."""

    spec: BatchSpec  #: the batch as the file describes it
    source: str  #: the file name as the user gave it, for messages
    base_dir: Path  #: the file's folder: relative image paths resolve against it
    where: Callable[[int], str]  #: names task i (0-based): "task 3", "item 'a'", "row 4"
    #: files written for the pictures in a spreadsheet's cells, named in the tasks' inputs
    pictures: tuple[str, ...] = ()

    def resolve(
        self,
        *,
        default_backend: str,
        known_backends: Iterable[str] | None = None,
        rng: random.Random | None = None,
    ) -> list[ResolvedTask]:
        """Every task with every value decided; SpecError names each problem's task or row.

        >>> batch.resolve(default_backend="placeholder")[0].width      # doctest: +SKIP
        256
        """
        return resolve_tasks(
            self.spec,
            default_backend=default_backend,
            known_backends=known_backends,
            base_dir=self.base_dir,
            source=self.source,
            rng=rng,
            where=self.where,
        )


@dataclass(frozen=True)
class _RowNumbers:
    """Names tasks of a table by their spreadsheet row, blank rows counted."""

    rows: tuple[int, ...] = field(repr=False)

    def __call__(self, index: int) -> str:
        return f"row {self.rows[index]}"


def load_batch_file(
    path: Path,
    *,
    name: str | None = None,
    partial: bool = False,
    source: str | None = None,
    pictures_dir: Callable[[], Path] | None = None,
    template: TableTemplate | None = None,
    max_tasks: int | None = None,
) -> LoadedBatch:
    """Read and validate a batch file; the extension says which format it is.

    ``name`` names the batch when the file does not (a spec without ``name``,
    or a table); otherwise the file's stem does. Raises SpecError listing every
    problem found. With ``partial=True`` a file that can be read but holds
    invalid values loads all the same, its problems carried by the spec
    (:attr:`~pixelkiln.specs.BatchSpec.problems`), so that :meth:`LoadedBatch.resolve`
    or ``Kiln.submit`` report them together with missing input files and the like.
    ``source`` names the file in messages (default: the path as given).
    Pictures in an XLSX's cells are written to ``pictures_dir()`` (default: a private
    folder removed when the process ends) and listed in :attr:`LoadedBatch.pictures`.
    A ``template`` makes a table's rows items (:class:`TableTemplate`); a JSON, YAML or
    TOML file, which can hold its own, is refused one. A file listing more than
    ``max_tasks`` tasks (``[limits] max_tasks_per_batch``) is refused before they are
    built (:mod:`pixelkiln.inputs.sizes`); a sweep's or wildcards' count is checked later.

    >>> load_batch_file(Path("shots.csv")).where(0)                 # doctest: +SKIP
    'row 2'
    """
    source = str(path) if source is None else source
    suffix = path.suffix.lower()
    default_name = name or path.stem
    base_dir = path.absolute().parent
    if suffix in structured.EXTENSIONS:
        if template is not None:
            raise file_error(
                source,
                "a template given with the file is for CSV and XLSX tables; "
                "a JSON, YAML or TOML file holds its own 'template' and 'vars'",
            )
        spec = structured.load_structured(
            path, source, default_name, partial=partial, max_tasks=max_tasks
        )
        return LoadedBatch(spec, source, base_dir, TaskPlaces.of(spec))
    if suffix in (".csv", ".xlsx"):
        if suffix == ".csv":
            table = tabular.load_csv(
                path, source, default_name, partial=partial, template=template, max_tasks=max_tasks
            )
        else:
            table = tabular.load_xlsx(
                path,
                source,
                default_name,
                partial=partial,
                pictures_dir=pictures_dir,
                template=template,
                max_tasks=max_tasks,
            )
        where = _RowNumbers(table.rows)
        return LoadedBatch(table.spec, source, base_dir, where, table.pictures)
    raise file_error(
        source,
        f"unsupported file type '{suffix or '(none)'}'; "
        f"batch files must end in {', '.join(SUPPORTED_EXTENSIONS)}",
    )
