"""An admin sets a user's fair-share weight over the API; users see their own."""

from __future__ import annotations

import pytest
from apikit import Api

pytestmark = pytest.mark.anyio


async def test_an_admin_sets_and_lists_shares(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    made = await admin.post("/api/v1/admin/users", json={"name": "carol", "share": 2.5})
    assert made.status_code == 201, made.text
    carol = made.json()
    assert carol["share"] == 2.5
    changed = await admin.patch(f"/api/v1/admin/users/{carol['id']}", json={"share": 4})
    assert changed.status_code == 200, changed.text
    assert changed.json()["share"] == 4 and changed.json()["active"] is True
    listed = {u["name"]: u["share"] for u in (await admin.get("/api/v1/admin/users")).json()}
    assert listed == {"carol": 4, "root": 1}
    me = await auth_api.with_token(carol["token"]).get("/api/v1/me")
    assert me.json()["share"] == 4


async def test_a_bad_share_is_refused_with_its_reason(auth_api: Api) -> None:
    _, admin = await auth_api.add_user("root", admin=True)
    carol = (await admin.post("/api/v1/admin/users", json={"name": "carol"})).json()
    for bad in (0, -1, 1001, "lots"):
        r = await admin.patch(f"/api/v1/admin/users/{carol['id']}", json={"share": bad})
        assert r.status_code == 422, (bad, r.text)
        assert "share" in r.text
    both = {"share": 3, "active": False}
    r = await admin.patch(f"/api/v1/admin/users/{carol['id']}", json=both)
    assert r.status_code == 200 and r.json()["share"] == 3 and r.json()["active"] is False
    missing = await admin.patch("/api/v1/admin/users/999", json={"share": 2})
    assert missing.status_code == 404
    _, kim = await auth_api.add_user("kim")
    r = await kim.patch(f"/api/v1/admin/users/{carol['id']}", json={"share": 9})
    assert r.status_code == 403
