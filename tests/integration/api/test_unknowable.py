"""What a request cannot learn or break, on both databases: a NUL in a search is bad input
(422 naming ``q``: SQLite's index would read it as the end of the text, PostgreSQL cannot
hold it); another user's task answers exactly as a missing one (no batch named)."""

from __future__ import annotations

import pytest
from apikit import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def api(auth_db_api: Api) -> Api:
    return auth_db_api


@pytest.mark.parametrize("q", ["abc\x00", "\x00abc", "a\x00"])
async def test_a_nul_in_a_search_is_refused(api: Api, q: str) -> None:
    _, root = await api.add_user("root", admin=True)
    for path in ("/api/v1/images", "/api/v1/batches", "/api/v1/admin/batches"):
        r = await root.get(path, params={"q": q})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["field"] == "q"


async def test_another_users_task_is_as_missing_as_a_task_that_is_not_there(api: Api) -> None:
    _, alice = await api.add_user("alice", credits=10)
    _, bob = await api.add_user("bob", credits=10)
    spec = {"name": "mine", "defaults": {"width": 64, "height": 64}, "tasks": [{"prompt": "x"}]}
    made = await alice.post("/api/v1/batches", json=spec)
    task = made.json()["tasks"][0]["id"]
    for method, path in (
        ("GET", "/api/v1/tasks/{}"),
        ("GET", "/api/v1/tasks/{}/references"),
        ("POST", "/api/v1/tasks/{}/retry"),
    ):
        theirs = await bob.request(method, path.format(task))
        missing = await bob.request(method, path.format(999999))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"] == f"no task {task}"
        assert missing.json()["error"]["message"] == "no task 999999"
