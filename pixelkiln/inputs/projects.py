"""A studio's project config and project folders, read as they are, planned as batches.

The config (JSON, YAML or TOML)::

    {"description": "nightly",
     "projects_dir": "data",                       # optional; also "data_dir"
     "default_settings": {"language": "zh", "channel": "world_zh", "cfg_scale": 7,
                          "delay_between_projects": 30, ...},
     "projects": [{"pid": "project001"}, {"pid": "project002", "language": "en"}]}

Each project's settings are, later winning: ``[projects]`` of kiln.toml, the
config's top-level ``[projects]`` keys, ``default_settings``, the project's entry,
then the command line. Generation parameters take the channel's in between:
``default_settings`` < channel < the project's own < the command line. Keys that
are neither a generation parameter nor a known project key are kept as template
fields (the studio's own data). Relative paths are the config file's folder's.

:func:`load_projects_config` reads and checks the config (every problem located,
one :class:`~pixelkiln.exceptions.SpecError`); :func:`plan_projects` looks at each
project's folder (required files, scenes) and makes its batch spec. A project
that cannot run says why, and the others still run.

>>> config = load_projects_config(Path("nightly.json"), {}, ProjectsSettings())  # doctest: +SKIP
>>> plan = plan_projects(config, channels={})                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from pixelkiln.config import ProjectsSettings
from pixelkiln.exceptions import Problem, SpecError
from pixelkiln.inputs._files import file_error, read_text
from pixelkiln.inputs.scenes import read_scenes, scene_tasks
from pixelkiln.inputs.structured import _PARSERS
from pixelkiln.problems import capped, problems_from_validation
from pixelkiln.prompts import TemplateError, json_safe, parse_template, render
from pixelkiln.specs import PARAM_NAMES, BatchSpec, Params, parse_batch
from pixelkiln.sweeps import count_tasks

#: settings of one project that are not generation parameters (nor file layout)
PROJECT_FIELDS = ("language", "channel", "description", "delay_between_projects")
#: ``[projects]`` keys a project may set for itself (the rest belong to the whole run)
LAYOUT_FIELDS = (
    "required_files",
    "scenes_file",
    "prompt_field",
    "prompt_template",
    "output",
    "images_dir",
)
#: keys of the config's top level besides the layout ones
TOP_FIELDS = ("description", "default_settings", "projects", "projects_dir", "data_dir", "logs_dir")
#: longest pause between two projects, in seconds
MAX_DELAY = 86_400.0
#: a project id's UTF-8 length: its folder's files (``{pid}_paragraphs.json``) fit in a name
MAX_PID_BYTES = 200
#: a file name's length on common filesystems (ext4, APFS, NTFS in UTF-16 units)
MAX_PART_BYTES = 255


class ProjectSettings(Params):
    """One layer of a project's settings: ``default_settings``, a project, the command line.

    Unknown keys are allowed: they are the studio's own fields, kept for templates.
    """

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True, coerce_numbers_to_str=True)

    language: str | None = None
    channel: str | None = None  #: a ``[channels.NAME]`` of kiln.toml, or a preset's title
    description: str | None = None
    delay_between_projects: float | None = Field(None, ge=0, le=MAX_DELAY)
    required_files: list[str] | None = None
    scenes_file: str | None = None
    prompt_field: str | None = None
    prompt_template: str | None = None
    output: str | None = None
    images_dir: str | None = None

    @field_validator("prompt")
    @classmethod
    def _no_prompt(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("a project's prompts come from its scenes through prompt_template")
        return value

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            parse_template(value)  # TemplateError is a ValueError: located like the others
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str | None) -> str | None:
        if value not in (None, "", "project"):
            raise ValueError('must be "project" or empty')
        return value


@dataclass(frozen=True)
class ProjectEntry:
    """One project of the config, its settings merged but not yet looked at on disk."""

    pid: str
    where: str  #: "projects[2]", or "command line" for a --pid the config does not list
    shared: dict[str, Any]  #: layout < top level < default_settings (validated)
    own: dict[str, Any]  #: the project's entry, then the command line (validated)

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.shared, **self.own}


@dataclass(frozen=True)
class ProjectsConfig:
    """A project config, read and checked."""

    source: str  #: the file as the user named it, for messages
    path: Path  #: absolute
    description: str
    projects_dir: Path  #: absolute
    logs_dir: Path  #: absolute
    projects: tuple[ProjectEntry, ...]
    fields: dict[str, Any] = field(default_factory=dict)  #: unknown top-level keys

    @property
    def channel_names(self) -> set[str]:
        return {n for p in self.projects if (n := p.settings.get("channel"))}


@dataclass(frozen=True)
class Channel:
    """A named style preset: style text and generation parameters (negative prompt too)."""

    name: str
    style: str
    params: dict[str, Any]
    origin: str  #: "kiln.toml", "preset 4"


@dataclass(frozen=True)
class ProjectPlan:
    """What one project would run, or why it cannot."""

    pid: str
    folder: Path
    spec: BatchSpec | None  #: None when it cannot run
    missing: tuple[str, ...] = ()  #: required files not in its folder
    problem: str = ""  #: why it cannot run ("" when it can)
    delay: float = 0.0  #: seconds to wait before it starts (not before the first)
    images_dir: Path | None = None  #: where its images are copied (``output = "project"``)

    @property
    def images(self) -> int:
        """Images it would make: its tasks after the template's and style's wildcards
        expand (a project's tasks all take ``n`` from its settings)."""
        if self.spec is None:
            return 0
        return count_tasks(self.spec, self.folder) * (self.spec.defaults.n or 1)


@dataclass(frozen=True)
class ProjectsPlan:
    """Every project of a config, planned."""

    config: ProjectsConfig
    projects: tuple[ProjectPlan, ...]

    @property
    def images(self) -> int:
        return sum(p.images for p in self.projects)


# -- the config ---------------------------------------------------------------------------------


def load_projects_config(
    path: Path,
    overrides: Mapping[str, Any],
    defaults: ProjectsSettings,
    *,
    pids: Sequence[str] = (),
    source: str | None = None,
) -> ProjectsConfig:
    """Read and check a project config; SpecError lists every problem, located.

    ``overrides`` are the command line's (``language``, ``cfg_scale``, ...,
    ``projects_dir``); ``pids``, when given, chooses the projects to run (a pid the
    config does not list runs with ``default_settings``).
    """
    source = str(path) if source is None else source
    data = _read(path, source)
    folder = path.resolve().parent
    problems: list[Problem] = []
    top = {k: v for k, v in data.items() if k in LAYOUT_FIELDS}
    base = defaults.model_dump(include=set(LAYOUT_FIELDS)) | _layer(top, source, "", problems)
    raw_shared = data.get("default_settings") or {}
    if not isinstance(raw_shared, dict):
        problems.append(Problem(source, "", "default_settings", "must be a mapping"))
        raw_shared = {}
    shared = base | _layer(raw_shared, source, "default_settings", problems)
    run_level = {k: overrides[k] for k in ("projects_dir",) if k in overrides}
    cli = _layer(
        {k: v for k, v in overrides.items() if k not in run_level},
        source,
        "command line",
        problems,
    )
    entries = _entries(data.get("projects"), source, shared, cli, pids, problems)
    projects_dir = _folder(data, run_level, defaults, folder, source, problems)
    logs_dir = _path_value(data.get("logs_dir", defaults.logs_dir), folder)
    description = data.get("description")
    if problems:
        raise SpecError(capped(problems, source))
    fields = {k: v for k, v in data.items() if k not in TOP_FIELDS and k not in LAYOUT_FIELDS}
    return ProjectsConfig(
        source,
        path.resolve(),
        "" if description is None else str(description),
        projects_dir,
        logs_dir,
        tuple(entries),
        json_safe(fields),
    )


def _read(path: Path, source: str) -> dict[str, Any]:
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise file_error(source, "a project config ends in .json, .yaml, .yml or .toml")
    data = parse(read_text(path, source), source)
    if not isinstance(data, dict):
        raise file_error(
            source, "the top level must be a mapping with 'default_settings' and 'projects'"
        )
    return data


def _layer(raw: Mapping[str, Any], source: str, where: str, found: list[Problem]) -> dict[str, Any]:
    """One layer of settings, checked: only the keys it sets (problems into ``found``)."""
    try:
        layer = ProjectSettings.model_validate(dict(raw))
    except ValidationError as exc:
        found.extend(
            problems_from_validation(exc, source, lambda loc: (where, ".".join(map(str, loc))))
        )
        return {}
    values = layer.model_dump(exclude_unset=True)
    try:
        safe: dict[str, Any] = json_safe({k: v for k, v in values.items() if v is not None})
        return safe
    except ValueError as exc:
        found.append(Problem(source, where, "", f"holds a value JSON cannot: {exc}"))
        return {}


def _entries(
    raw: Any,
    source: str,
    shared: dict[str, Any],
    cli: dict[str, Any],
    pids: Sequence[str],
    found: list[Problem],
) -> list[ProjectEntry]:
    if not isinstance(raw, list):
        found.append(Problem(source, "", "projects", "is required: a list of {'pid': ...}"))
        return []
    entries: dict[str, ProjectEntry] = {}
    for i, item in enumerate(raw):
        where = f"projects[{i}]"
        if not isinstance(item, dict):
            found.append(Problem(source, where, "", "must be a mapping with a 'pid'"))
            continue
        pid, why = checked_pid(item.get("pid"))
        if why:
            found.append(Problem(source, where, "pid", why))
            continue
        if pid in entries:
            found.append(Problem(source, where, "pid", f"'{pid}' is also {entries[pid].where}"))
            continue
        rest = {k: v for k, v in item.items() if k != "pid"}
        own = _layer(rest, source, f"{where} ('{pid}')", found) | cli
        entries[pid] = ProjectEntry(pid, where, shared, own)
    if not pids:
        return list(entries.values())
    chosen: dict[str, ProjectEntry] = {}  # a pid given twice runs once, where first given
    for pid in pids:
        checked, why = checked_pid(pid)
        if why:
            found.append(Problem(source, "command line", "--pid", why))
        elif checked not in chosen:
            chosen[checked] = entries.get(checked) or ProjectEntry(
                checked, "command line", shared, cli
            )
    return list(chosen.values())


def checked_pid(value: Any) -> tuple[str, str]:
    """A project id as text, and "" — or "" and why it cannot be one (it names a folder).

    >>> checked_pid("project001")
    ('project001', '')
    >>> checked_pid("../etc")[0]
    ''
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return "", "is required: a text (the project's folder name)"
    pid = str(value).strip()
    if (
        "/" in pid
        or "\\" in pid
        or ".." in pid
        or pid.startswith(".")
        or any(ord(c) < 32 or ord(c) == 127 for c in pid)
        # bytes, not characters: its folder's files ({pid}_scenes.json ...) stay under
        # the 255 bytes a file name may take
        or len(pid.encode()) > MAX_PID_BYTES
    ):
        return "", (
            f"'{pid[:60]}' cannot name a project folder: no '/', '\\', '..' or control "
            f"characters, at most {MAX_PID_BYTES} bytes"
        )
    return pid, ""


def _folder(
    data: Mapping[str, Any],
    run_level: Mapping[str, Any],
    defaults: ProjectsSettings,
    folder: Path,
    source: str,
    found: list[Problem],
) -> Path:
    """projects_dir: the command line's, else the config's (or its alias data_dir), else
    kiln.toml's."""
    given, alias = data.get("projects_dir"), data.get("data_dir")
    if given is not None and alias is not None and given != alias:
        found.append(Problem(source, "", "data_dir", "names another folder than projects_dir"))
    value = run_level.get("projects_dir", given if given is not None else alias)
    if value is None:
        value = defaults.projects_dir
    if not isinstance(value, (str, Path)) or not str(value).strip():
        found.append(Problem(source, "", "projects_dir", "must be a folder's path"))
        return folder
    # the command line's is relative to where it runs, the files' to the config's folder
    return _path_value(value, Path.cwd() if "projects_dir" in run_level else folder)


def _path_value(value: Any, folder: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else folder / path


# -- the projects' folders ----------------------------------------------------------------------


def plan_projects(config: ProjectsConfig, channels: Mapping[str, Channel]) -> ProjectsPlan:
    """Each project looked at on disk: its required files, its scenes, its batch spec."""
    return ProjectsPlan(config, tuple(_plan(config, entry, channels) for entry in config.projects))


def _plan(
    config: ProjectsConfig, entry: ProjectEntry, channels: Mapping[str, Channel]
) -> ProjectPlan:
    settings = entry.settings
    folder = config.projects_dir / entry.pid
    delay = float(settings.get("delay_between_projects") or 0.0)
    fields = _project_fields(config, entry)
    try:
        images_dir = _images_dir(config, entry, fields)
    except ValueError as exc:
        return ProjectPlan(entry.pid, folder, None, problem=str(exc), delay=delay)
    if not folder.is_dir():  # one reason, not every required file named missing
        why = f"folder {folder} not found"
        return ProjectPlan(entry.pid, folder, None, problem=why, delay=delay)
    try:
        missing = tuple(_missing(folder, settings.get("required_files") or [], fields))
    except ValueError as exc:
        return ProjectPlan(entry.pid, folder, None, problem=str(exc), delay=delay)
    if missing:
        why = f"missing {', '.join(missing)}"
        return ProjectPlan(entry.pid, folder, None, missing, why, delay)
    name = settings.get("channel")
    channel = channels.get(name) if name else Channel("", "", {}, "")
    if channel is None:
        why = f"channel '{name}' is neither a [channels.{name}] of kiln.toml nor an active preset"
        return ProjectPlan(entry.pid, folder, None, problem=why, delay=delay)
    try:
        spec = _spec(config, entry, folder, channel, fields)
    except (ValueError, SpecError) as exc:
        return ProjectPlan(entry.pid, folder, None, problem=_why(exc), delay=delay)
    return ProjectPlan(entry.pid, folder, spec, delay=delay, images_dir=images_dir)


def _why(exc: Exception) -> str:
    if isinstance(exc, SpecError):
        shown = "; ".join(str(p) for p in exc.problems[:3])
        more = len(exc.problems) - 3
        return shown + (f" (and {more} more)" if more > 0 else "")
    return str(exc)


def _project_fields(config: ProjectsConfig, entry: ProjectEntry) -> dict[str, Any]:
    """What templates (the prompt's, the required files') may name of the project."""
    known = {"pid": entry.pid, "description": "", "language": "", "channel": ""}
    return {**config.fields, **known, **entry.settings, "pid": entry.pid}


def _inside(folder: Path, name: str, what: str, named: str = "the project folder") -> Path:
    """``folder / name``, refused (ValueError) when ``name`` would leave ``folder``
    (``named`` in the message) on any system: ``\\`` counts as a separator and a drive
    (``C:``) as absolute, as on Windows; a NUL or a part longer than a file name may be
    is refused too, rather than failing when the folder is made."""
    windows = PureWindowsPath(name)  # splits on both '/' and '\\'
    if Path(name).is_absolute() or windows.anchor or ".." in windows.parts or not name.strip():
        raise ValueError(f"{what} '{name}' would leave {named}")
    if "\0" in name or any(len(part.encode()) > MAX_PART_BYTES for part in windows.parts):
        raise ValueError(
            f"{what} '{name[:60]}' cannot be a path: a NUL, or a part longer than "
            f"{MAX_PART_BYTES} bytes"
        )
    return folder / Path(*windows.parts)


def _missing(folder: Path, patterns: Sequence[str], fields: Mapping[str, Any]) -> list[str]:
    found = []
    for pattern in patterns:
        try:
            name = render(pattern, fields, f"required file '{pattern}'")
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        if not _inside(folder, name, "required file").is_file():
            found.append(name)
    return found


def _images_dir(
    config: ProjectsConfig, entry: ProjectEntry, fields: Mapping[str, Any]
) -> Path | None:
    """Where ``output = "project"`` copies the project's images; None without it."""
    if entry.settings.get("output") != "project":
        return None
    pattern = entry.settings.get("images_dir") or "{pid}/images"
    try:
        name = render(pattern, fields, "images_dir")
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return _inside(config.projects_dir, name, "images_dir", "the projects folder")


def _spec(
    config: ProjectsConfig,
    entry: ProjectEntry,
    folder: Path,
    channel: Channel,
    fields: dict[str, Any],
) -> BatchSpec:
    settings = entry.settings
    scenes_name = render(settings.get("scenes_file") or "{pid}_scenes.json", fields, "scenes_file")
    scenes_path = _inside(folder, scenes_name, "scenes file")
    place = f"{entry.pid}/{scenes_name}"
    tasks = scene_tasks(
        read_scenes(scenes_path, place),
        parse_template(settings.get("prompt_template") or "{prompt}, {style}"),
        settings.get("prompt_field") or "prompt",
        fields,
        channel.style,
        place,
    )
    defaults = _params(entry.shared) | channel.params | _params(entry.own)
    return parse_batch({"name": entry.pid, "defaults": defaults, "tasks": tasks}, config.source)


def _params(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k in PARAM_NAMES}
