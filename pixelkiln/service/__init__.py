"""The application core that every face calls: the CLI, the API, the ``Kiln`` library
facade and, next, the web UI, schedules and workers.

A face parses its user's shape, calls one function here with a
:class:`ServiceContext` (the open installation, passed in) and a
:class:`Caller` (who asks), and renders the answer. No HTTP here: errors are
:mod:`pixelkiln.exceptions`, which each face translates once.

- :mod:`~pixelkiln.service.submission`: validate, prepare, price, charge, idempotency, store, wake
- :mod:`~pixelkiln.service.control`: retry and regenerate (charged again), cancel, pause,
  resume, delete
- :mod:`~pixelkiln.service.pricing`: what images cost a user; the one module that charges
- :mod:`~pixelkiln.service.reading`: a batch with a page of its tasks; waiting for its end
- :mod:`~pixelkiln.service.sheets`: a sweep batch's contact sheets (which there are; one as PNG)
- :mod:`~pixelkiln.service.admin`: runtime concurrency, global and per backend (read, set, reset)
- :mod:`~pixelkiln.service.presets`: presets (admins manage them, users list the active ones)
- :mod:`~pixelkiln.service.uploads`: an img2img batch from uploaded images and one prompt
- :mod:`~pixelkiln.service.runs`: project runs, planned, stored, driven one project after
  another and reported (imported from there: it needs the reports, which need this package)
- :mod:`~pixelkiln.service.retention`: what ``[retention]`` deletes, planned then applied
  (``kiln gc``, the server's sweeper)
- :mod:`~pixelkiln.service.context`: the context, the caller, the schedulers to wake

Each name here is imported from its module when first used (PEP 562): ``from pixelkiln
import service`` costs nothing, and ``service.LOCAL`` imports only the context, not
admin's backends checks nor submission's planning (``kiln`` start-up pays for what its
command uses).

>>> from pixelkiln import service
>>> async with Kiln(settings) as kiln:                                   # doctest: +SKIP
...     batch_id, _ = await service.submit(kiln.service, service.LOCAL, service.Submission(spec))
...     await service.cancel(kiln.service, service.LOCAL, batch_id)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelkiln.service.admin import (
        BackendView,
        ConcurrencyView,
        LiveLimits,
        concurrency_view,
        reset_backend_concurrency,
        reset_concurrency,
        set_backend_concurrency,
        set_concurrency,
    )
    from pixelkiln.service.context import (
        LOCAL,
        BackendCatalog,
        Caller,
        SchedulerLink,
        Schedulers,
        ServiceContext,
    )
    from pixelkiln.service.control import cancel, delete, pause, regenerate, resume, retry
    from pixelkiln.service.presets import (
        change_preset,
        create_preset,
        delete_preset,
        get_preset,
        list_presets,
        reorder_presets,
    )
    from pixelkiln.service.pricing import Pricing, pricing_for
    from pixelkiln.service.reading import (
        ALL_TASKS,
        BatchPage,
        TaskPage,
        batch_page,
        wait_until_finished,
    )
    from pixelkiln.service.sheets import SheetRef, list_sheets, sheet_png
    from pixelkiln.service.submission import Submission, Submitted, fingerprint, submit
    from pixelkiln.service.uploads import Uploaded, UploadFields, upload_spec

#: each name this package gives, and the module of this package it comes from
_FROM: dict[str, str] = {
    "BackendView": "admin",
    "ConcurrencyView": "admin",
    "LiveLimits": "admin",
    "concurrency_view": "admin",
    "reset_backend_concurrency": "admin",
    "reset_concurrency": "admin",
    "set_backend_concurrency": "admin",
    "set_concurrency": "admin",
    "BackendCatalog": "context",
    "Caller": "context",
    "LOCAL": "context",
    "SchedulerLink": "context",
    "Schedulers": "context",
    "ServiceContext": "context",
    "cancel": "control",
    "delete": "control",
    "pause": "control",
    "regenerate": "control",
    "resume": "control",
    "retry": "control",
    "change_preset": "presets",
    "create_preset": "presets",
    "delete_preset": "presets",
    "get_preset": "presets",
    "list_presets": "presets",
    "reorder_presets": "presets",
    "Pricing": "pricing",
    "pricing_for": "pricing",
    "ALL_TASKS": "reading",
    "BatchPage": "reading",
    "TaskPage": "reading",
    "batch_page": "reading",
    "wait_until_finished": "reading",
    "SheetRef": "sheets",
    "list_sheets": "sheets",
    "sheet_png": "sheets",
    "Submission": "submission",
    "Submitted": "submission",
    "fingerprint": "submission",
    "submit": "submission",
    "UploadFields": "uploads",
    "Uploaded": "uploads",
    "upload_spec": "uploads",
}

__all__ = [
    "ALL_TASKS",
    "LOCAL",
    "BackendCatalog",
    "BackendView",
    "BatchPage",
    "Caller",
    "ConcurrencyView",
    "LiveLimits",
    "Pricing",
    "SchedulerLink",
    "Schedulers",
    "ServiceContext",
    "SheetRef",
    "Submission",
    "Submitted",
    "TaskPage",
    "UploadFields",
    "Uploaded",
    "batch_page",
    "cancel",
    "change_preset",
    "concurrency_view",
    "create_preset",
    "delete",
    "delete_preset",
    "fingerprint",
    "get_preset",
    "list_presets",
    "list_sheets",
    "pause",
    "pricing_for",
    "regenerate",
    "reorder_presets",
    "reset_backend_concurrency",
    "reset_concurrency",
    "resume",
    "retry",
    "set_backend_concurrency",
    "set_concurrency",
    "sheet_png",
    "submit",
    "upload_spec",
    "wait_until_finished",
]


def __getattr__(name: str) -> Any:
    module = _FROM.get(name)
    if module is None:
        raise AttributeError(f"module 'pixelkiln.service' has no attribute {name!r}")
    value = getattr(import_module(f"pixelkiln.service.{module}"), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM})
