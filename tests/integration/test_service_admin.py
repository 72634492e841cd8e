"""service.admin and service.presets: the rules the API, the compat admin and the CLI share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pixelkiln import service
from pixelkiln.api.runner import SchedulerThread
from pixelkiln.app import Kiln
from pixelkiln.db.presets import PresetFields
from pixelkiln.db.settings_store import (
    CONCURRENCY,
    backend_concurrency_key,
    get_setting,
    stored_concurrency,
)
from pixelkiln.db.users import add_user
from pixelkiln.engine.scheduler import SchedulerStatus
from pixelkiln.exceptions import (
    InvalidValueError,
    NotFoundError,
    PermissionDeniedError,
)
from pixelkiln.service import LOCAL, Caller
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def kiln(tmp_path: Path, database_url: str) -> AsyncIterator[Kiln]:
    settings = make_settings(
        tmp_path / "data",
        storage={"database_url": database_url},
        scheduler={"concurrency": 4},
        server={"max_concurrency": 10},
        backends=[
            {"name": "slow", "type": "placeholder", "concurrency": 2},
            {"name": "placeholder", "type": "placeholder", "concurrency": 3},
        ],
    )
    async with Kiln(settings, engine=False) as opened:
        yield opened


async def _user(kiln: Kiln, name: str, *, admin: bool = False) -> Caller:
    return Caller((await kiln.db.awrite(add_user, name, is_admin=admin))[0])


def _backend(view: service.ConcurrencyView, name: str) -> service.BackendView:
    return next(b for b in view.backends if b.name == name)


# -- concurrency ------------------------------------------------------------------------------


async def test_the_view_without_a_scheduler_is_kiln_toml_until_an_admin_sets_values(
    kiln: Kiln,
) -> None:
    view = await service.concurrency_view(kiln.service)
    assert (view.concurrency, view.set_at_run_time, view.max, view.effective) == (4, False, 10, 4)
    slow = _backend(view, "slow")
    assert (slow.per_url, slow.configured, slow.overridden, slow.servers) == (2, 2, False, 1)
    assert (slow.cap, slow.effective, slow.limited_by, slow.servers_up) == (2, 2, "backend", None)

    view = await service.set_concurrency(kiln.service, LOCAL, 1)
    assert (view.concurrency, view.set_at_run_time, view.effective) == (1, True, 1)
    assert _backend(view, "slow").limited_by == "global"
    view = await service.reset_concurrency(kiln.service, LOCAL)
    assert (view.concurrency, view.set_at_run_time) == (4, False)
    assert await kiln.service.read(get_setting, CONCURRENCY) is None


async def test_values_out_of_range_are_refused_naming_the_field_and_nothing_is_stored(
    kiln: Kiln,
) -> None:
    for wrong in (0, -3, 11):
        with pytest.raises(InvalidValueError, match=r"between 1 and 10 \(\[server\]") as raised:
            await service.set_concurrency(kiln.service, LOCAL, wrong)
        assert raised.value.field == "concurrency"
    for wrong in (0, 257):
        with pytest.raises(InvalidValueError, match="between 1 and 256"):
            await service.set_backend_concurrency(kiln.service, LOCAL, "slow", wrong)
    assert await kiln.service.read(stored_concurrency) == (None, {})


async def test_only_configured_backends_have_a_limit(kiln: Kiln) -> None:
    for change in (
        service.set_backend_concurrency(kiln.service, LOCAL, "nope", 2),
        service.reset_backend_concurrency(kiln.service, LOCAL, "nope"),
    ):
        with pytest.raises(
            NotFoundError, match=r"no backend 'nope'; configured: placeholder, slow"
        ):
            await change
    view = await service.set_backend_concurrency(kiln.service, LOCAL, "slow", 5)
    slow = _backend(view, "slow")
    assert (slow.per_url, slow.overridden, slow.cap, slow.effective) == (5, True, 5, 4)
    assert not _backend(view, "placeholder").overridden
    view = await service.reset_backend_concurrency(kiln.service, LOCAL, "slow")
    assert (_backend(view, "slow").per_url, _backend(view, "slow").overridden) == (2, False)
    assert await kiln.service.read(get_setting, backend_concurrency_key("slow")) is None


async def test_only_admins_change_the_concurrency(kiln: Kiln) -> None:
    ivy, root = await _user(kiln, "ivy"), await _user(kiln, "root", admin=True)
    for change in (
        service.set_concurrency(kiln.service, ivy, 2),
        service.reset_concurrency(kiln.service, ivy),
        service.set_backend_concurrency(kiln.service, ivy, "slow", 2),
        service.reset_backend_concurrency(kiln.service, ivy, "slow"),
    ):
        with pytest.raises(PermissionDeniedError, match="only admins"):
            await change
    assert await kiln.service.read(stored_concurrency) == (None, {})
    assert (await service.set_concurrency(kiln.service, root, 2)).concurrency == 2


async def _until_status(live: SchedulerThread, probe: Callable[[SchedulerStatus], bool]) -> None:
    """Wait until the scheduler's own status passes ``probe``: a deadline, not a timing test.

    A change is applied at once, but the scheduler also re-reads the stored values
    every few seconds: a read taken just before the write may land just after it,
    and for one interval show the older value.
    """
    async with asyncio.timeout(20):
        while (status := await live.status()) is None or not probe(status):
            await asyncio.sleep(0.02)


async def test_a_scheduler_running_here_applies_a_change_and_is_what_the_view_shows(
    kiln: Kiln,
) -> None:
    live = SchedulerThread(kiln)
    await asyncio.to_thread(live.start)
    try:
        view = await service.set_concurrency(kiln.service, LOCAL, 3, live)
        assert view.concurrency == 3 and live.concurrency == 3
        await _until_status(live, lambda s: s.concurrency == 3)
        view = await service.set_backend_concurrency(kiln.service, LOCAL, "slow", 7, live)
        assert _backend(view, "slow").overridden
        await _until_status(live, lambda s: s.backends["slow"].per_url == 7)
        await service.reset_backend_concurrency(kiln.service, LOCAL, "slow", live)
        await _until_status(live, lambda s: s.backends["slow"].per_url == 2)
        view = await service.concurrency_view(kiln.service, live)
        assert view.concurrency == 3 and not _backend(view, "slow").overridden
    finally:
        await asyncio.to_thread(live.stop)


# -- presets ----------------------------------------------------------------------------------


async def test_presets_params_are_checked_when_saved_and_stored_normalised(kiln: Kiln) -> None:
    with pytest.raises(InvalidValueError, match="unknown parameter") as unknown:
        await service.create_preset(
            kiln.service, LOCAL, PresetFields(title="x", content="y", params={"colour": "red"})
        )
    assert unknown.value.field == "params"
    with pytest.raises(InvalidValueError, match=r"^params\.steps: ") as bad:
        await service.create_preset(
            kiln.service, LOCAL, PresetFields(title="x", content="y", params={"steps": -1})
        )
    assert bad.value.field == "params.steps"
    assert [p.field for p in bad.value.problems] == ["params.steps"]
    assert await service.list_presets(kiln.service, LOCAL, include_inactive=True) == []

    made = await service.create_preset(
        kiln.service, LOCAL, PresetFields(title="Ink", content="ink, {prompt}", params={"n": "2"})
    )
    assert made.params == {"n": 2}
    changed = await service.change_preset(
        kiln.service, LOCAL, made.id, PresetFields(params={"steps": 12})
    )
    assert (changed.title, changed.params) == ("Ink", {"steps": 12})


async def test_users_see_active_presets_and_only_admins_manage_them(kiln: Kiln) -> None:
    ivy = await _user(kiln, "ivy")
    shown = await service.create_preset(kiln.service, LOCAL, PresetFields(title="A", content="a"))
    hidden = await service.create_preset(
        kiln.service, LOCAL, PresetFields(title="B", content="b", active=False)
    )
    for change in (
        service.create_preset(kiln.service, ivy, PresetFields(title="C", content="c")),
        service.change_preset(kiln.service, ivy, shown.id, PresetFields(title="D")),
        service.delete_preset(kiln.service, ivy, shown.id),
        service.reorder_presets(kiln.service, ivy, [hidden.id]),
    ):
        with pytest.raises(PermissionDeniedError, match="only admins"):
            await change
    mine = await service.list_presets(kiln.service, ivy, include_inactive=True)
    assert [p.title for p in mine] == ["A"]
    with pytest.raises(NotFoundError):
        await service.get_preset(kiln.service, ivy, hidden.id)
    assert (await service.get_preset(kiln.service, LOCAL, hidden.id)).title == "B"
    order = await service.reorder_presets(kiln.service, LOCAL, [hidden.id])
    assert [p.title for p in order] == ["B", "A"]
    await service.delete_preset(kiln.service, LOCAL, hidden.id)
    with pytest.raises(NotFoundError):
        await service.delete_preset(kiln.service, LOCAL, hidden.id)


async def test_a_stored_limits_read_that_crossed_a_live_change_does_not_undo_it(
    kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler re-reads the stored limits now and then (``follow_settings``). An
    admin's change applied live while such a read is out must win over what it read."""
    scheduler = kiln.engine().scheduler(follow_settings=True)
    read = scheduler.db.aread

    async def read_crossing_a_change(fn: Callable[..., object], *args: object) -> object:
        found = await read(fn, *args)  # type: ignore[arg-type]
        if fn is stored_concurrency:  # the admin's change lands while the read is out
            scheduler.set_concurrency(7)
        return found

    monkeypatch.setattr(scheduler.db, "aread", read_crossing_a_change)
    await scheduler._housekeeping()
    assert scheduler.limits.overall == 7
    monkeypatch.setattr(scheduler.db, "aread", read)
    scheduler._next_settings = 0.0
    await scheduler._housekeeping()  # a later read sees what is stored: nothing was
    assert scheduler.limits.overall == 4
