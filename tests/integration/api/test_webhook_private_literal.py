"""A webhook naming a literal private, loopback or link-local address is refused at submit
(422 on ``webhook``, saying why) while such addresses are not allowed; names pass, and are
checked when each delivery is sent."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from apikit import Api, spec

pytestmark = pytest.mark.anyio

ApiMaker = Callable[..., contextlib.AbstractAsyncContextManager[Api]]
AUTH: dict[str, Any] = {"auth": {"enabled": True}}
REFUSED = {
    "http://169.254.169.254/latest": "169.254.169.254 is a link-local address",
    "http://127.0.0.1:9/x": "127.0.0.1 is a loopback address",
    "http://[::1]/": "::1 is a loopback address",
    "http://10.0.0.1/": "10.0.0.1 is a private address",
    "https://[::ffff:192.168.0.7]:8443/in": "::ffff:192.168.0.7 is a private address",
}


async def test_a_literal_private_address_is_refused_at_submit_naming_why(
    make_api: ApiMaker,
) -> None:
    async with make_api(**AUTH) as api:
        _, ana = await api.add_user("ana")
        answers = {
            url: await ana.post("/api/v1/batches", json={**spec("a fox"), "webhook": url})
            for url in REFUSED
        }
        listed = (await ana.get("/api/v1/batches")).json()
    for url, answer in answers.items():
        assert answer.status_code == 422, (url, answer.text)
        error = answer.json()["error"]
        assert error["field"] == "webhook"
        [problem] = error["problems"]
        assert problem["field"] == "webhook"
        assert REFUSED[url] in problem["message"]
        assert "allow_private" in problem["message"]
    assert listed["items"] == []  # nothing stored


async def test_names_and_public_addresses_pass_the_submit_check(make_api: ApiMaker) -> None:
    async with make_api(**AUTH) as api:
        _, ana = await api.add_user("ana")
        answers = [
            await ana.post("/api/v1/batches", json={**spec("a fox"), "webhook": url})
            for url in ("http://localhost:9/x", "https://hooks.example.com/in", "http://8.8.8.8/")
        ]
    assert [a.status_code for a in answers] == [201, 201, 201]


@pytest.mark.parametrize(
    "settings",
    [
        {"auth": {"enabled": False}},
        {"auth": {"enabled": True}, "webhooks": {"allow_private": True}},
    ],
)
async def test_private_addresses_pass_where_they_are_allowed(
    make_api: ApiMaker, settings: dict[str, Any]
) -> None:
    async with make_api(**settings) as api:
        client = (await api.add_user("ana"))[1] if settings["auth"]["enabled"] else api.client
        answer = await client.post(
            "/api/v1/batches",
            json={**spec("a fox"), "webhook": "http://169.254.169.254/latest"},
        )
    assert answer.status_code == 201, answer.text
