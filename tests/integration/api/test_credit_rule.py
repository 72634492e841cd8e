"""One rule says whether a balance covers a batch (``db.credits.ensure_covered``): a dry run
(``POST /batches?dry_run=true``) foretells exactly what the create then does, at the edge
of the balance too, with the same 402; and a retry's charge follows the same rule.
"""

from __future__ import annotations

from typing import Any

import pytest
from apikit import SMALL, Api

from pixelkiln.db.credits import InsufficientCreditsError, ensure_covered

pytestmark = pytest.mark.anyio


def counts(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's counts (it also answers time and money: docs/plans.md)."""
    return {k: plan[k] for k in ("tasks", "images", "credits")}


def test_a_balance_covers_what_it_equals_and_not_one_more() -> None:
    ensure_covered(0, 0)
    ensure_covered(5, 5)
    with pytest.raises(InsufficientCreditsError) as refused:
        ensure_covered(6, 5)
    assert (refused.value.needed, refused.value.balance) == (6, 5)
    assert str(refused.value) == "this batch costs 6 credit(s); the balance is 5"


@pytest.fixture
def api(credits_db_api: Api) -> Api:
    return credits_db_api


@pytest.mark.parametrize("credits", [5, 6, 7])
async def test_the_dry_run_answers_what_the_create_does(api: Api, credits: int) -> None:
    """The batch costs 6: two images at 1, one on "slow" at 3, one more at 1."""
    _, alice = await api.add_user("alice", credits=credits)
    spec = {
        "name": "edge",
        "defaults": SMALL,
        "tasks": [
            {"prompt": "two foxes", "n": 2},
            {"prompt": "an owl", "backend": "slow"},
            {"prompt": "a moth"},
        ],
    }
    dry = await alice.post("/api/v1/batches?dry_run=true", json=spec)
    real = await alice.post("/api/v1/batches", json=spec)
    if credits >= 6:
        assert dry.status_code == 200 and real.status_code == 201, (dry.text, real.text)
        assert counts(dry.json()) == {"tasks": 3, "images": 4, "credits": 6}
        balance = (await alice.get("/api/v1/me/credits")).json()["balance"]
        assert balance == credits - 6
    else:
        assert dry.status_code == real.status_code == 402, (dry.text, real.text)
        assert dry.json() == real.json()  # the same code, message and figures
        assert "costs 6 credit(s); the balance is 5" in dry.json()["error"]["message"]
