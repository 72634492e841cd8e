"""Failed-token throttling (pixelkiln/service/throttle.py) through the real app: which
failures count, what a locked address is answered, who is not affected, when it ends.

The app runs in-process (``httpx.ASGITransport``, whose ``client`` names the caller's
address); the throttle's clock is replaced by one the test moves, so the lock's end is
seen without waiting for it. tests/reliability/test_auth_throttle.py does the same
against a real ``kiln serve`` with a real clock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from apikit import Api
from cryptography.fernet import Fernet

from pixelkiln.config import Settings
from pixelkiln.keybox import KEY_FILE, KeyBox, secret_key_warning
from pixelkiln.service.links import link_query
from pixelkiln.service.sessions import COOKIE, session_token_hash, session_value
from pixelkiln.service.throttle import FailedAttempts, client_key

pytestmark = pytest.mark.anyio

GUESSER, NEIGHBOUR = "203.0.113.7", "198.51.100.2"
LIMIT, WINDOW = 3, 60.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def throttled(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]], **auth: Any
) -> AsyncIterator[tuple[Api, Clock]]:
    """Auth on, ``failed_limit`` 3 per 60 s (or ``auth``), the throttle on a hand clock."""
    settings = {"enabled": True, "failed_limit": LIMIT, "failed_window": WINDOW, **auth}
    async with make_api(auth=settings) as api:
        clock = Clock()
        api.ctx.throttle.clock = clock
        yield api, clock


def client_from(api: Api, address: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app, client=(address, 40000)),
        base_url="http://localhost",
        headers=headers or {},
    )
    api.clients.append(client)
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_guessing_address_is_locked_and_nobody_else_is(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pixelkiln")
    async with throttled(make_api) as (api, clock):
        _, alice = await api.add_user("alice")
        good = alice.headers["authorization"]
        guesser = client_from(api, GUESSER)
        guesses = [f"pk_guess-{i}" for i in range(LIMIT + 5)]
        answers = [(await guesser.get("/api/v1/me", headers=bearer(g))) for g in guesses]
        assert [r.status_code for r in answers] == [401] * LIMIT + [429] * 5
        refused = answers[-1]
        assert refused.headers["retry-after"] == str(int(WINDOW))
        error = refused.json()["error"]
        assert error["code"] == "too_many_requests"
        assert (
            error["message"]
            == f"too many bad tokens from this address: try again in {int(WINDOW)} s"
        )
        # a good token from the locked address is not even checked
        r = await guesser.get("/api/v1/me", headers={"Authorization": good})
        assert r.status_code == 429
        # nor is no token at all; what takes none (health, the pages' shell) still answers
        assert (await guesser.get("/api/v1/batches")).status_code == 429
        assert (await guesser.get("/healthz")).status_code == 200
        # another address: its good token works, its bad ones are its own to count
        neighbour = client_from(api, NEIGHBOUR)
        assert (await neighbour.get("/api/v1/me", headers={"Authorization": good})).json()[
            "name"
        ] == "alice"
        assert (await neighbour.get("/api/v1/me", headers=bearer("pk_typo"))).status_code == 401
        # this machine (a proxy here that sends no X-Forwarded-For) is never locked
        local = client_from(api, "127.0.0.1")
        for i in range(LIMIT * 3):
            assert (await local.get("/api/v1/me", headers=bearer(f"pk_{i}"))).status_code == 401

        clock.now += WINDOW - 0.5  # the lock counts down...
        r = await guesser.get("/api/v1/me", headers={"Authorization": good})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        clock.now += 1.0  # ...and ends after the window: a fresh count
        assert (await guesser.get("/api/v1/me", headers={"Authorization": good})).status_code == 200
        for i in range(LIMIT):
            r = await guesser.get("/api/v1/me", headers=bearer(f"pk_again-{i}"))
            assert r.status_code == 401
        assert (await guesser.get("/api/v1/me", headers={"Authorization": good})).status_code == 429

    locks = [r for r in caplog.records if "different bad tokens" in r.getMessage()]
    assert [r.levelno for r in locks] == [logging.WARNING] * 2  # once per lock, not per request
    assert all(GUESSER in r.getMessage() for r in locks)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(g in logged for g in guesses) and good.split()[1] not in logged


async def test_one_bad_token_sent_again_and_again_counts_once(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]],
) -> None:
    """A script that keeps sending a revoked token is no guesser: always 401, never a lock
    of its (perhaps shared) address."""
    async with throttled(make_api) as (api, _):
        _, alice = await api.add_user("alice")
        script = client_from(api, GUESSER, bearer("pk_revoked-long-ago"))
        for _ in range(LIMIT * 10):
            assert (await script.get("/api/v1/batches")).status_code == 401
        r = await client_from(api, GUESSER).get(
            "/api/v1/me", headers={"Authorization": alice.headers["authorization"]}
        )
        assert r.status_code == 200


async def test_bad_cookies_and_failed_sign_ins_count_as_bad_tokens(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]],
) -> None:
    async with throttled(make_api) as (api, _):
        _, alice = await api.add_user("alice")
        token = alice.headers["authorization"].removeprefix("Bearer ")
        browser = client_from(api, GUESSER)
        for forged in ("a.b.c", "0" * 64 + ".1.0"):
            r = await browser.get("/api/v1/me", headers={"Cookie": f"{COOKIE}={forged}"})
            assert r.status_code == 401
        r = await browser.post("/api/v1/session", json={"token": "pk_wrong"})
        assert r.status_code == 401 and r.json()["error"]["field"] == "token"
        # locked: the right token signs nobody in, and no cookie is set
        r = await browser.post("/api/v1/session", json={"token": token})
        assert r.status_code == 429 and "set-cookie" not in r.headers
        assert int(r.headers["retry-after"]) == int(WINDOW)
        # the login page itself still shows (its form then says what the API answered)
        assert (await browser.get("/login")).status_code == 200
        other = client_from(api, NEIGHBOUR)
        assert (await other.post("/api/v1/session", json={"token": token})).status_code == 200


async def test_a_stale_signed_link_is_no_bad_token(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]],
) -> None:
    """An exported table full of expired image links must not lock its reader out."""
    async with throttled(make_api) as (api, _):
        reader = client_from(api, GUESSER)
        for image in range(1, LIMIT * 3):
            r = await reader.get(f"/api/v1/images/{image}/file?exp=1&sig={'0' * 64}")
            assert r.status_code == 401
        assert api.ctx.throttle.retry_after(GUESSER) == 0


async def test_failed_limit_0_turns_the_throttle_off(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]],
) -> None:
    async with throttled(make_api, failed_limit=0) as (api, _):
        guesser = client_from(api, GUESSER)
        for i in range(30):
            assert (await guesser.get("/api/v1/me", headers=bearer(f"pk_{i}"))).status_code == 401


async def test_every_operation_that_takes_a_token_documents_429(
    make_api: Callable[..., contextlib.AbstractAsyncContextManager[Api]],
) -> None:
    async with throttled(make_api) as (api, _):
        schema = api.app.openapi()
    tokenless = {("/healthz", "get"), ("/api/v1/session", "delete")}
    checked = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if (path, method) in tokenless or method == "parameters":
                continue
            answer = operation["responses"].get("429")
            assert answer is not None, f"{method.upper()} {path} does not document 429"
            assert "Retry-After" in answer["headers"], (method, path)
            checked += 1
    assert checked > 50


# --- the throttle's own rules (pixelkiln/service/throttle.py) ------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client of a dual-stack socket
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same host's /64
        ("127.0.0.1", None),
        ("127.8.9.10", None),
        ("::1", None),
        ("", None),
        (None, None),
        ("testclient", "testclient"),
    ],
)
def test_which_address_a_client_counts_as(host: str | None, key: str | None) -> None:
    assert client_key(host) == key


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    attempts = FailedAttempts(3, 10.0, clock=clock)
    assert not attempts.failed("a", "one")
    assert not attempts.failed("a", "two")
    clock.now += 10.5  # both lapsed: two more are not yet three
    assert not attempts.failed("a", "three")
    assert not attempts.failed("a", "four")
    assert attempts.retry_after("a") == 0
    assert attempts.failed("a", "five")
    assert attempts.retry_after("a") == 10


def test_the_table_of_addresses_is_bounded() -> None:
    attempts = FailedAttempts(2, 60.0, clock=Clock(), max_addresses=100)
    attempts.failed("locked", "x")
    assert attempts.failed("locked", "y")
    for i in range(1000):  # a crowd of addresses, one guess each
        attempts.failed(f"10.0.{i // 256}.{i % 256}", "z")
    assert len(attempts._addresses) == 100
    # the least recently seen went first: an address a crowd pushed out starts afresh
    assert attempts.retry_after("locked") == 0


# --- the secret key's place (pixelkiln/keybox.py) ------------------------------------------


def test_the_key_warning_is_given_while_the_key_lives_in_the_data_folder(tmp_path: Path) -> None:
    def settings(**auth: Any) -> Settings:
        return Settings(storage={"data_dir": str(tmp_path)}, auth=auth)

    assert secret_key_warning(settings()) is None  # auth off, nothing generated: nothing to protect
    coming = secret_key_warning(settings(enabled=True))
    assert coming is not None and f"will be generated into {tmp_path / KEY_FILE}" in coming
    KeyBox(settings()).encrypt("sk-users-own")  # an install that stored a provider key
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    for auth in ({}, {"enabled": True}):
        there = secret_key_warning(settings(**auth))
        assert there is not None and f"is {tmp_path / KEY_FILE}," in there
        assert "set KILN_AUTH__SECRET_KEY to that file's contents" in there
    configured = Fernet.generate_key().decode()
    assert secret_key_warning(settings(enabled=True, secret_key=configured)) is None


def test_moving_the_generated_key_into_the_setting_keeps_what_it_protects(tmp_path: Path) -> None:
    """What docs/security.md tells an existing install to do: KILN_AUTH__SECRET_KEY = the
    file's contents, then delete the file. Stored provider keys, sessions and links
    stay good."""
    before = KeyBox(Settings(storage={"data_dir": str(tmp_path)}))
    stored = before.encrypt("sk-users-own")
    link = link_query(before, 7, ttl=60, now=1000.0)
    cookie = session_value(before, "ab" * 32, ttl=60, now=1000.0)
    contents = (tmp_path / KEY_FILE).read_text().strip()
    (tmp_path / KEY_FILE).unlink()
    after = KeyBox(Settings(storage={"data_dir": str(tmp_path)}, auth={"secret_key": contents}))
    assert after.decrypt(stored) == "sk-users-own"
    assert link_query(after, 7, ttl=60, now=1000.0) == link
    assert session_token_hash(after, cookie, now=1000.0) == "ab" * 32
    assert not (tmp_path / KEY_FILE).exists()  # nothing generated again
