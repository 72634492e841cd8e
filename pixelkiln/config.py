"""Settings: ``kiln.toml`` plus ``KILN_SECTION__KEY`` environment variables.

Environment variables win over the file. Nothing here reads the environment at
import time: call :func:`load_settings` (the CLI does, once) and pass the
result down.

>>> settings = load_settings(None)          # ./kiln.toml if present, else defaults
>>> settings.scheduler.concurrency
4
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pixelkiln.exceptions import ConfigError
from pixelkiln.hours import optional_window
from pixelkiln.prompts import parse_template
from pixelkiln.specs import PARAM_NAMES

DEFAULT_CONFIG_FILE = Path("kiln.toml")


class StorageSettings(BaseModel):
    """``[storage]``: where the database and the image files live."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        Path("kiln-data"),
        description="Folder for images, logs, reports and the SQLite database.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the database; empty means SQLite at <data_dir>/kiln.db. "
        "PostgreSQL: postgresql+psycopg://…; MySQL/MariaDB: mysql+pymysql://….",
    )
    backend: Literal["local", "s3"] = Field(
        "local",
        description="Where image files live: `local` (under data_dir) or `s3` (an "
        "S3-compatible bucket every worker and the API share; credentials from the "
        "environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).",
    )
    s3_endpoint: str = Field(
        "", description="s3 only: endpoint URL (empty: AWS's own; e.g. http://minio:9000)."
    )
    s3_bucket: str = Field("", description="s3 only: the bucket; required with backend = s3.")
    s3_prefix: str = Field("", description="s3 only: key prefix of every object (a folder).")
    s3_region: str = Field("", description="s3 only: region name (empty: the client's default).")

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("[storage] backend = 's3' needs s3_bucket (the bucket's name)")
        return self

    def resolved_database_url(self) -> str:
        """The URL to connect to, with the embedded default filled in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'kiln.db').resolve()}"


class BackendSettings(BaseModel):
    """One ``[[backends]]`` entry: a named generator of some type."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name that batch files use in their `backend` parameter.")
    type: str = Field(
        description="Generator type: sdwebui, comfyui, openai, openrouter, diffusers, placeholder."
    )
    urls: list[str] = Field(
        default_factory=list, description="Base URLs of the servers of this backend (a pool)."
    )
    api_key: SecretStr | None = Field(
        None, description="API key or `user:password`; never logged or returned."
    )
    api_key_env: str = Field(
        "", description="Name of an environment variable holding the API key (wins over api_key)."
    )
    model: str = Field("", description="Default model / checkpoint when a task names none.")
    concurrency: int = Field(
        1, ge=1, le=256, description="Requests in flight per URL (or in all, without URLs)."
    )
    rpm: int | None = Field(None, ge=1, description="Requests per minute allowed; none = no cap.")
    timeout: float = Field(300.0, gt=0, description="Seconds one request may take.")
    latency: float = Field(0.0, ge=0, description="placeholder only: seconds each request takes.")
    fail_rate: float = Field(
        0.0, ge=0, le=1, description="placeholder only: share of requests that fail."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Type-specific options (e.g. comfyui `workflow`)."
    )
    fallback: list[str] = Field(
        default_factory=list,
        description="Backends that take this one's tasks, in order, while every server of it "
        "is down or its account is out of quota.",
    )
    active_hours: str = Field(
        "",
        description="A daily window `HH:MM-HH:MM` (local time; may cross midnight, e.g. "
        "`22:00-07:00`) outside which this backend takes no new tasks: they wait, spending "
        "no attempt; empty = always.",
    )
    quiet_hours: str = Field(
        "",
        description="A daily window `HH:MM-HH:MM` (local time) inside which this backend "
        "takes no new tasks (running ones finish; the others wait, and it is no fallback "
        "target); empty = none.",
    )
    price_per_image: float | None = Field(
        None,
        ge=0,
        description="Money one image costs on this backend (any currency), for plans' "
        "estimates; unset = not priced.",
    )
    price_per_megapixel: float | None = Field(
        None,
        ge=0,
        description="Money one megapixel costs on this backend, for plans' estimates "
        "(added to price_per_image when both are set).",
    )

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("use letters, digits, '-', '_' or '.'")
        return value

    @field_validator("active_hours", "quiet_hours")
    @classmethod
    def _hours_are_a_window(cls, value: str) -> str:
        optional_window(value)  # ValueError names the value and the expected shape
        return value.strip()

    def secret(self) -> str:
        """The API key (or ``user:password``): from ``api_key_env`` if set, else ``api_key``."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "")
            if not value:
                raise ConfigError(
                    f"backend '{self.name}': environment variable {self.api_key_env} is not set"
                )
            return value
        return self.api_key.get_secret_value() if self.api_key else ""

    @property
    def slots(self) -> int:
        """Requests this backend may have in flight across all its servers."""
        return self.concurrency * max(1, len(self.urls))


class SchedulerSettings(BaseModel):
    """``[scheduler]``: how tasks are claimed, limited and retried."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(4, ge=1, le=1024, description="Tasks running at once, in all.")
    max_attempts: int = Field(
        3, ge=1, le=100, description="Tries per task (1 + retries) before it fails."
    )
    task_timeout: float = Field(600.0, gt=0, description="Seconds one try of a task may take.")
    retry_base_delay: float = Field(
        2.0, ge=0, description="Seconds before the first retry; doubles each retry, jittered."
    )
    retry_max_delay: float = Field(300.0, ge=0, description="Longest wait between retries.")
    lease_seconds: float = Field(
        30.0, gt=0, description="A claimed task returns to the queue if not renewed this long."
    )
    poll_interval: float = Field(
        0.5, gt=0, description="Seconds between looks for new work when the queue is empty."
    )
    down_timeout: float = Field(
        600.0,
        ge=0,
        description="Seconds tasks wait for a backend whose every server is down (with no "
        "fallback up) before they fail, spending no attempt; 0 = wait for ever.",
    )
    stall_seconds: float = Field(
        60.0,
        gt=0,
        description="Seconds the scheduler's steps may keep failing (database, disk) before "
        "/healthz answers 503 and `kiln run` stops with exit 1.",
    )
    shared_limits: bool = Field(
        True,
        description="Hold servers' slots, backends' rpm and an admin's concurrency in the "
        "database, so every process sharing it (workers on many machines) stays within "
        "them together.",
    )
    shutdown_seconds: float = Field(
        30.0,
        gt=0,
        description="On SIGTERM, seconds running tasks may take to finish before they are "
        "given back to the queue untried.",
    )


class WorkerSettings(BaseModel):
    """``[worker]``: what a ``kiln worker`` process (the scheduler without the API) serves."""

    model_config = ConfigDict(extra="forbid")

    health_host: str = Field("127.0.0.1", description="Address of the health/metrics port.")
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of `GET /healthz` and `GET /metrics` of a worker; 0 = none.",
    )


class LogSettings(BaseModel):
    """``[log]``: the log file written by each run."""

    model_config = ConfigDict(extra="forbid")

    level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value


class AuthSettings(BaseModel):
    """``[auth]``: who may use the HTTP API."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Require a bearer token on every endpoint but /healthz. When false, "
        "`kiln serve` binds to loopback only.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key that encrypts users' provider keys and signs sessions and "
        "image links; empty = one generated into <data_dir>/secret.key on first use, beside "
        "what it protects (set this, e.g. as KILN_AUTH__SECRET_KEY, instead).",
    )
    link_ttl: float = Field(
        86400.0,
        gt=0,
        le=366 * 86400,
        description="Seconds a signed image link works: the image URLs pixelkiln hands to "
        "readers that cannot send a token (the drop-in APIs' image URLs, exported tables' "
        "links) carry an expiry and a signature when auth is on.",
    )
    session_ttl: float = Field(
        30 * 86400.0,
        gt=0,
        le=366 * 86400,
        description="Seconds a browser session lasts after signing in with a token on "
        "/login (an HttpOnly, SameSite=Strict cookie); revoking the token ends it sooner.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Other origins (scheme://host:port) whose pages may send writes to "
        "the API (with the session cookie, or with auth off), e.g. a proxy's public "
        "address; the server's own host is always allowed (with auth off: when it is "
        "this machine).",
    )
    failed_limit: int = Field(
        10,
        ge=0,
        le=1_000_000,
        description="Different bad tokens (bearer tokens, session cookies, sign-ins) one "
        "client address may send within failed_window before its requests are answered 429 "
        "for failed_window seconds, good tokens too; counted per process; loopback never "
        "locked; 0 = no limit.",
    )
    failed_window: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Seconds over which failed_limit counts, and how long a lock lasts.",
    )


class CreditsSettings(BaseModel):
    """``[credits]``: what a generated image costs a user of the API."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Charge credits for batches created through the API by a user."
    )
    per_image: int = Field(1, ge=0, description="Credits one image costs on the system's key.")
    backends: dict[str, int] = Field(
        default_factory=dict, description="Per-backend price per image, overriding per_image."
    )
    refund_failed: bool = Field(
        True,
        description="Refund a task that fails for good; false keeps its charge "
        "(cancelled tasks are refunded either way). A batch follows the policy of its latest "
        "charge (its creation, or a later retry or regenerate).",
    )

    def price(self, backend: str) -> int:
        """Credits one image on ``backend`` costs (on the system's key)."""
        return self.backends.get(backend, self.per_image)


class ServerSettings(BaseModel):
    """``[server]``: `kiln serve` and the HTTP API's limits."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address `kiln serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port `kiln serve` listens on.")
    max_request_bytes: int = Field(
        560 * 1024 * 1024, ge=1024, description="Largest request body accepted (HTTP 413 above)."
    )
    max_spec_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest batch spec: a JSON request body or an imported batch file (HTTP 413).",
    )
    max_upload_files: int = Field(50, ge=1, description="Images one upload may carry.")
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest uploaded image, in bytes."
    )
    max_upload_pixels: int = Field(
        40_000_000, ge=1, description="Largest uploaded image, in pixels (decompression bombs)."
    )
    max_concurrency: int = Field(
        10, ge=1, le=1024, description="Highest global concurrency an admin may set at run time."
    )
    heartbeat_seconds: float = Field(
        15.0, gt=0, description="Seconds between SSE heartbeat comments on a quiet stream."
    )
    max_wait_seconds: float = Field(
        600.0, gt=0, description="Longest `?wait=true` a create request may wait for its batch."
    )
    idempotency_hours: float = Field(
        24.0,
        gt=0,
        description="How long an `Idempotency-Key` is remembered; after that it may be reused.",
    )


class WebhooksSettings(BaseModel):
    """``[webhooks]``: POSTing a batch's summary to its ``webhook`` URL when it ends."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(
        8, ge=1, le=100, description="Tries per delivery before it is marked failed."
    )
    timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds one try may take; also how long `kiln run` goes on delivering "
        "after its batches end (the rest waits for the next process).",
    )
    backoff: float = Field(
        10.0, ge=0, description="Seconds before the second try; doubles after each failed try."
    )
    backoff_max: float = Field(3600.0, ge=0, description="Longest wait between two tries.")
    poll_interval: float = Field(
        1.0, gt=0, description="Seconds between looks for batch ends that are owed a delivery."
    )
    allow_private: bool | None = Field(
        None,
        description="Whether webhooks may reach private, loopback and link-local addresses; "
        "unset = allowed only while [auth] is off (a loopback-only server).",
    )
    public_url: str = Field(
        "",
        description="Base URL of the API as receivers reach it (`https://kiln.example.com`), "
        "for the links in a payload; empty = links are paths.",
    )


class CompatSettings(BaseModel):
    """``[compat]``: other tools' request shapes served at their own paths (off by default)."""

    model_config = ConfigDict(extra="forbid")

    slides: bool = Field(
        False,
        description="Serve the slide-deck image API at /api/slide/batch/* (see docs/compat.md).",
    )
    img2img_service: bool = Field(
        False,
        description="Serve the batch img2img service's API at /api/batch/* and /api/admin/* "
        "(see docs/compat.md).",
    )
    slide_template: str = Field(
        "{style_prompt}. {title}: {visual_desc}",
        min_length=1,
        max_length=2000,
        description="How a slide's prompt is composed: fields of the slide (id, page_num, "
        "type, title, content_text, visual_desc) and style_prompt.",
    )

    @field_validator("slide_template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        # refused at start, not in every slide request: the template is the installation's
        parse_template(value)  # TemplateError (a ValueError) says what is wrong, and where
        return value


class LimitsSettings(BaseModel):
    """``[limits]``: the largest batch and image anyone may ask for; when `kiln run` asks first."""

    model_config = ConfigDict(extra="forbid")

    max_tasks_per_batch: int = Field(
        100_000,
        ge=1,
        description="Most tasks one batch may hold: a larger one is refused (422, exit 2) "
        "before any is resolved, and its plan says so.",
    )
    max_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        description="Largest image a task may ask for, in pixels (4K's largest); a larger "
        "one is refused with the batch, naming the task.",
    )
    confirm_images: int = Field(
        1000,
        ge=0,
        description="`kiln run` shows the plan and asks before queuing a batch of more "
        "images than this (`--yes` skips; without a terminal it does not ask); 0 = never.",
    )
    confirm_hours: float = Field(
        1.0,
        ge=0,
        description="`kiln run` also asks when the plan's estimated time is longer than "
        "this many hours; 0 = never asks for time.",
    )
    confirm_money: float = Field(
        0.0,
        ge=0,
        description="`kiln run` also asks when the plan's money (backends with a "
        "price_per_image or price_per_megapixel) is above this, and without a terminal "
        "refuses (exit 2) unless `--yes`; 0 = never.",
    )


class RetentionSettings(BaseModel):
    """``[retention]``: what `kiln serve` (every hour) and `kiln gc` delete, and when."""

    model_config = ConfigDict(extra="forbid")

    events_days: float = Field(
        30.0,
        ge=0,
        description="Delete a finished batch's events this many days after it "
        "ended (its images and tasks stay); 0 = keep for ever.",
    )
    images_days: float = Field(
        0.0,
        ge=0,
        description="Delete a finished batch whole (its tasks, images, events, image "
        "files and thumbnails) this many days after it ended; 0 = keep for ever (the default).",
    )
    uploads_days: float = Field(
        30.0,
        ge=0,
        description="Delete an uploaded image that no task of any batch uses this many "
        "days after it was last uploaded; 0 = keep for ever.",
    )
    interval_hours: float = Field(
        1.0,
        gt=0,
        description="Hours between two passes of `kiln serve` over the rules above "
        "(the first at start-up).",
    )


class SchedulesSettings(BaseModel):
    """``[schedules]``: cron schedules run by `kiln serve` (and `kiln worker`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Whether this process runs schedules that are due.")
    timezone: str = Field(
        "",
        description="IANA time zone of cron expressions (`Asia/Shanghai`); empty = this "
        "machine's local time.",
    )
    poll_interval: float = Field(
        20.0,
        gt=0,
        description="Seconds between looks for schedules that are due (a schedule's own due "
        "time wakes the runner too).",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        check_timezone(value)
        return value


def check_timezone(name: str) -> None:
    """ValueError unless ``name`` is "" (local time) or an IANA time zone.

    >>> check_timezone("Asia/Shanghai")
    """
    if not name:
        return
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone '{name}'; use an IANA name such as Asia/Shanghai or UTC"
        ) from exc


class ProjectsSettings(BaseModel):
    """``[projects]``: defaults for `kiln projects` (a project config may override each)."""

    model_config = ConfigDict(extra="forbid")

    projects_dir: Path = Field(
        Path("projects"),
        description="Folder holding one folder per project id (relative: to the project "
        "config's folder).",
    )
    required_files: list[str] = Field(
        default_factory=lambda: [
            "{pid}_scenes.json",
            "{pid}_paragraphs.json",
            "{pid}.aac",
            "{pid}_{language}.srt",
        ],
        description="Files a project folder must hold (`{pid}`, `{language}` filled in); a "
        "project missing any fails alone.",
    )
    scenes_file: str = Field(
        "{pid}_scenes.json", description="The file whose scenes become the project's tasks."
    )
    prompt_field: str = Field(
        "prompt", description="The scene's field holding its prompt (`image_prompt`, ...)."
    )
    prompt_template: str = Field(
        "{prompt}, {style}",
        description="How a scene's final prompt is composed: `{prompt}` (the scene's "
        "prompt_field), `{style}` (the channel's), `{scene.FIELD}`, and the project's "
        "settings (`{description}`, `{language}`, `{pid}`...); see docs/projects.md.",
    )
    output: str = Field(
        "",
        description='"project" also copies each image into the project folder; empty = '
        "only the data folder.",
    )
    images_dir: str = Field(
        "{pid}/images", description='Where `output = "project"` copies images, in projects_dir.'
    )
    logs_dir: Path = Field(
        Path("logs"),
        description="Folder of each run's log and JSON report (relative: to the "
        "project config's folder).",
    )


class ChannelSettings(BaseModel):
    """One ``[channels.NAME]`` entry: a named style preset. Its parameters win over a project
    config's ``default_settings``; a project's own settings and the command line win over it."""

    model_config = ConfigDict(extra="allow")

    style: str = Field("", description="Style text the prompt template places (`{style}`).")
    negative_prompt: str = Field("", description="Negative prompt of the channel's tasks.")

    @model_validator(mode="after")
    def _extras_are_parameters(self) -> ChannelSettings:
        unknown = sorted(set(self.model_extra or {}) - set(PARAM_NAMES))
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(unknown)}; a channel holds style, "
                "negative_prompt and generation parameters"
            )
        return self

    def params(self) -> dict[str, Any]:
        """The generation parameters it sets (everything but ``style``)."""
        found = dict(self.model_extra or {})
        if self.negative_prompt:
            found["negative_prompt"] = self.negative_prompt
        return found


class Settings(BaseSettings):
    """Everything configurable. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="KILN_", env_nested_delimiter="__", extra="forbid")

    storage: StorageSettings = Field(default_factory=StorageSettings)
    backends: list[BackendSettings] = Field(default_factory=list)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    credits: CreditsSettings = Field(default_factory=CreditsSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    compat: CompatSettings = Field(default_factory=CompatSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    schedules: SchedulesSettings = Field(default_factory=SchedulesSettings)
    projects: ProjectsSettings = Field(default_factory=ProjectsSettings)
    channels: dict[str, ChannelSettings] = Field(
        default_factory=dict,
        description="Named style presets (`[channels.world_zh]`): style, negative_prompt and "
        "any generation parameter.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init kwargs; the environment must win over them.
        return (env_settings, init_settings)

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, value: list[BackendSettings]) -> list[BackendSettings]:
        names = [b.name for b in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backend names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @field_validator("backends")
    @classmethod
    def _fallbacks_exist_without_loops(cls, value: list[BackendSettings]) -> list[BackendSettings]:
        names = {b.name for b in value}
        for backend in value:
            unknown = [f for f in backend.fallback if f not in names]
            if unknown:
                raise ValueError(
                    f"backend '{backend.name}': fallback names unknown backend(s) "
                    f"{', '.join(unknown)}; configured: {', '.join(sorted(names))}"
                )
            loop = _fallback_loop(value, backend.name)
            if loop:
                raise ValueError(f"fallback chains must not loop: {' → '.join(loop)}")
        return value

    def fallback_chain(self, name: str) -> list[str]:
        """Where tasks of backend ``name`` go when it is down: its ``fallback`` list, each
        followed by its own chain, in order, without repeats (``name`` itself excluded)."""
        by_name = {b.name: b for b in self.effective_backends()}
        chain: list[str] = []

        def visit(current: str) -> None:
            for nxt in by_name[current].fallback if current in by_name else ():
                if nxt not in chain:  # validation refused loops: ``name`` never comes back
                    chain.append(nxt)
                    visit(nxt)

        visit(name)
        return chain

    def effective_backends(self) -> list[BackendSettings]:
        """The configured backends, or the offline ``placeholder`` when none is configured."""
        if self.backends:
            return self.backends
        return [BackendSettings(name="placeholder", type="placeholder", concurrency=4)]

    def default_backend(self) -> str:
        """Name of the backend a task uses when it names none: the first configured."""
        return self.effective_backends()[0].name


def _fallback_loop(backends: list[BackendSettings], start: str) -> list[str]:
    """A loop of fallbacks through ``start`` (``[a, b, a]``), or [] when there is none."""
    by_name = {b.name: b.fallback for b in backends}
    path: list[str] = []

    def walk(name: str) -> list[str]:
        if name in path:
            return [*path[path.index(name) :], name] if name == start else []
        path.append(name)
        for nxt in by_name.get(name, ()):
            found = walk(nxt)
            if found:
                return found
        path.pop()
        return []

    return walk(start)


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read ``path`` (or ``./kiln.toml`` / ``$KILN_CONFIG`` when None), then the environment.

    Relative paths in the file (``[storage] data_dir``, an SQLite ``database_url``)
    are the file's folder's, wherever the command runs from (cron runs it from
    ``/``); relative paths in the environment or ``overrides`` are the current folder's.
    Raises :class:`ConfigError` with every invalid key named.
    """
    file = path
    if file is None:
        env_path = os.environ.get("KILN_CONFIG")
        if env_path:
            file = Path(env_path)
        elif DEFAULT_CONFIG_FILE.is_file():
            file = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    if file is not None:
        data = _read_toml(file)
        _paths_against(data, file.absolute().parent)
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = f" in {file}" if file else ""
        lines = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(lines)) from exc


def _paths_against(data: dict[str, Any], folder: Path) -> None:
    """Make the file's relative storage paths relative to ``folder`` (the file's own)."""
    storage = data.get("storage")
    if not isinstance(storage, dict):
        return  # not a table: Settings names the mistake
    data_dir = storage.get("data_dir")
    if isinstance(data_dir, str) and data_dir:
        storage["data_dir"] = str(folder / Path(data_dir).expanduser())
    url = storage.get("database_url")
    if isinstance(url, str):
        storage["database_url"] = _sqlite_against(url, folder)


# sqlite:///relative/path.db (three slashes, then no fourth): a path relative to the cwd
_SQLITE_RELATIVE = re.compile(r"^(sqlite(?:\+\w+)?:///)([^/?][^?]*)(\?.*)?$")


def _sqlite_against(url: str, folder: Path) -> str:
    """An SQLite URL with a relative file path made absolute against ``folder``.

    >>> _sqlite_against("sqlite:///db/kiln.db", Path("/etc/kiln"))
    'sqlite:////etc/kiln/db/kiln.db'
    """
    match = _SQLITE_RELATIVE.match(url)
    if match is None or match.group(2) == ":memory:":
        return url
    path = Path(match.group(2)).expanduser()
    if path.is_absolute():  # it was "~/..."
        return f"{match.group(1)}{path}{match.group(3) or ''}"
    return f"{match.group(1)}{folder / path}{match.group(3) or ''}"


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {file}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc
