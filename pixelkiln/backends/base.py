"""The one interface every generator adapter implements.

A backend turns one :class:`GenerationRequest` (one task) into its images. It
receives its dependencies (settings, an ``httpx.AsyncClient``) when built and
never blocks the event loop: blocking work runs in a thread, so the scheduler
keeps renewing leases while a generation is in progress.

Each image says which server and model made it (:class:`GeneratedImage`), and a
backend says which request parameters it sends at all (``honours``, see
:func:`honoured_params`), so an image's record says what was sent, not what was asked.

Errors leave a backend only as :mod:`pixelkiln.exceptions` ``BackendError``
subclasses; their ``retryable`` flag tells the scheduler whether to try again.

A third-party backend is a factory registered under the entry-point group
``pixelkiln.backends``::

    [project.entry-points."pixelkiln.backends"]
    mygen = "mypkg.kiln:create"        # create(settings, deps) -> Backend
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from pixelkiln.config import BackendSettings
from pixelkiln.models import GENERATION_PARAMS
from pixelkiln.params import RESOLUTIONS, nearest_ratio


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a backend needs to make the images of one task."""

    task_id: int  #: database id, unique per task; backends may use it to tag requests
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    sampler: str  #: "" = the backend's default
    seed: int  #: image i uses seed + i, as the WebUI does
    n: int  #: number of images wanted
    model: str  #: "" = the backend's configured default
    denoise: float  #: img2img strength, used only with an init image
    init_image: bytes | None = None  #: encoded image (PNG/JPEG/...) for img2img
    reference_images: tuple[bytes, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    #: the task owner's own provider key, sent instead of the configured one
    #: (only to backends with ``accepts_user_keys = True``); never in repr or logs
    api_key: str | None = field(default=None, repr=False)

    def ratio_and_resolution(self, ratios: Iterable[str]) -> tuple[str, str]:
        """The size as the nearest of ``ratios`` (``"16:9"``) and resolution (``"2k"``).

        For generators sized by ratio and resolution rather than pixels. A task
        keeps only its width and height (params.resolve_size made them from the
        ratio and resolution asked); this gives those back for every size of
        that table, and the closest for a size given in pixels.
        """
        ratio = nearest_ratio(self.width, self.height, ratios)
        megapixels = self.width * self.height / (1024 * 1024)
        resolution = min(RESOLUTIONS, key=lambda r: abs(math.log(megapixels / RESOLUTIONS[r] ** 2)))
        return ratio, resolution


@dataclass(frozen=True)
class GeneratedImage:
    """One image a backend produced, and where it came from (for the image's record)."""

    data: bytes  #: encoded image as the generator returned it (PNG, JPEG or WebP)
    seed: int  #: the seed that made it, as reported by the generator when it says
    info: dict[str, Any] = field(default_factory=dict)  #: generator-specific details
    server: str = ""  #: base URL of the server that made it, without credentials; "" if local
    #: the model that made it: the generator's answer when it names one, else the model
    #: sent; "" when unknown (the record then falls back to the task's or configured model)
    model: str = ""


@dataclass(frozen=True)
class BackendDeps:
    """What a backend is given when built; passed in, never imported as globals."""

    http: httpx.AsyncClient


@runtime_checkable
class Backend(Protocol):
    """A generator adapter. ``settings.name`` is how batches refer to it."""

    settings: BackendSettings

    async def generate(self, request: GenerationRequest) -> list[GeneratedImage]:
        """Return the images of one task, or raise a BackendError."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds (the shared HTTP client is closed by its owner)."""
        ...


def honoured_params(backend: Backend | None) -> frozenset[str]:
    """Which :data:`~pixelkiln.models.GENERATION_PARAMS` ``backend`` sends to its generator.

    A backend declares them with an attribute ``honours`` (a class attribute, or set per
    instance when options decide, e.g. a negative prompt appended to the prompt); an
    image's record (PNG ``parameters``, ``GET /images/{id}``, the manifest) keeps only
    those. A backend that declares nothing is taken to send them all.
    """
    declared = getattr(backend, "honours", None)
    return frozenset(GENERATION_PARAMS if declared is None else declared)


def answered_model(answer: Mapping[str, Any]) -> str:
    """The ``model`` a generator's JSON answer names ("" when it names none)."""
    model = answer.get("model")
    return model if isinstance(model, str) else ""


@dataclass(frozen=True)
class BackendInfo:
    """A configured backend as the API and pricing see it: known without building it."""

    settings: BackendSettings
    accepts_user_keys: bool = False  #: see :func:`accepts_user_keys`

    @property
    def name(self) -> str:
        return self.settings.name


def accepts_user_keys(backend: Backend | BackendInfo) -> bool:
    """Whether ``backend`` sends a user's own key (``GenerationRequest.api_key``) when given.

    A backend opts in with a class attribute ``accepts_user_keys = True`` (on
    the class or function registered as its factory); the API refuses to store
    users' keys for any other.
    """
    return bool(getattr(backend, "accepts_user_keys", False))


class BackendFactory(Protocol):
    """Builds a backend from its settings and dependencies."""

    def __call__(self, settings: BackendSettings, deps: BackendDeps) -> Backend: ...
