"""Browser tests: `kiln serve` as a subprocess, Debian's chromium driven by Playwright.

- ``server``: one `kiln serve` per test module (auth and credits on, the placeholder
  backend), with users ``root`` (admin), ``alice`` and ``bob`` and their tokens.
- ``browse``: ``browse("alice")`` → a signed-in page (``browse(None)``: signed out),
  in English unless ``locale=`` says otherwise. Every page is watched: a console error,
  an uncaught exception, a failed request or a 5xx fails the test at teardown, unless
  the test declared it with ``watch.allow(pattern)``.
- ``shot(page, "name")``: a full-page screenshot into ``build/browser/`` (or
  ``$KILN_BROWSER_ARTIFACTS``), kept as a test artefact.
- ``axe(page)``: axe-core's check of the page; fails on serious or critical violations.

Chromium: ``executable_path="/usr/bin/chromium"``, headless, ``--no-sandbox`` (as root).
``.ci/run`` installs it (``apt-get install chromium``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import axe_playwright_python
import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.conftest import folder_database
from tests.processes import KILN, START_SECONDS, env, free_port, wait_healthy

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("KILN_BROWSER_ARTIFACTS", ROOT / "build" / "browser"))
AXE_JS = Path(axe_playwright_python.__file__).parent / "axe.min.js"
#: how long an ``expect(...)`` waits for the page to get there (Playwright's default is 5 s):
#: a bound on a hang, not a speed check; a page reload took longer than 5 s on the 2-core
#: box with the suite's workers and a `kiln serve` per module sharing it
EXPECT_MS = 20_000
expect.set_options(timeout=EXPECT_MS)

CONFIG = """
[[backends]]
name = "placeholder"
type = "placeholder"
concurrency = 4
latency = 0.15
options = { reject_if_prompt_contains = "[fail]" }  # a prompt with [fail] fails for good

[[backends]]
name = "slowpoke"
type = "placeholder"
concurrency = 2
latency = 0.3

[scheduler]
poll_interval = 0.05
retry_base_delay = 0.01

[auth]
enabled = true

[credits]
enabled = true
per_image = 1
"""

USERS = {"alice": 5000, "bob": 5000}


@dataclass
class Server:
    """A running `kiln serve` and its users' tokens."""

    url: str
    cwd: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, user: str) -> httpx.Client:
        """An httpx client for ``/api/v1`` with the user's bearer token."""
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=30,
        )

    def wait_batch(self, user: str, batch_id: int, timeout: float = 60) -> dict[str, Any]:
        """The batch once it has finished (any end status)."""
        deadline = time.monotonic() + timeout
        with self.api(user) as api:
            while True:
                batch: dict[str, Any] = api.get(f"/batches/{batch_id}").json()
                if batch["status"] in ("completed", "partial", "failed", "cancelled"):
                    return batch
                if time.monotonic() > deadline:
                    raise AssertionError(f"batch {batch_id} did not finish: {batch['status']}")
                time.sleep(0.1)


def _kiln(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [*KILN, *args],
        cwd=cwd,
        env=env(cwd),
        capture_output=True,
        text=True,
        timeout=START_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextmanager
def serving(cwd: Path, config: str) -> Iterator[Server]:
    """`kiln serve` in ``cwd`` with ``config`` (auth and credits on, for its users), root
    (admin) and the USERS with their tokens; stopped at the end, with no traceback logged."""
    with folder_database(cwd):  # the module's server outlives each test's database
        yield from _serving(cwd, config)


def _serving(cwd: Path, config: str) -> Iterator[Server]:
    (cwd / "kiln.toml").write_text(config)
    root_token = _kiln(cwd, "users", "add", "root", "--admin", "--credits", "5000")
    port = free_port()
    log = cwd / "serve.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            [*KILN, "serve", "--port", str(port), "--log-level", "warning"],
            cwd=cwd,
            env=env(cwd),
            stdout=out,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        running = Server(f"http://127.0.0.1:{port}", cwd, {"root": root_token})
        try:
            wait_healthy(running.url, process, log)
            with running.api("root") as api:
                for name, credits in USERS.items():
                    made = api.post("/admin/users", json={"name": name, "credits": credits})
                    assert made.status_code == 201, made.text
                    running.tokens[name] = made.json()["token"]
            yield running
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            finally:
                if process.poll() is None:
                    process.kill()
    text = log.read_text()
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("serve"), CONFIG) as running:
        yield running


# module scope, not session: Playwright's sync API keeps an asyncio loop running in this
# thread while it lives, and the async tests that run after the browser tests need none
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    launched = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
    )
    yield launched
    launched.close()


@dataclass
class Watch:
    """What went wrong on a page: console errors, uncaught exceptions, failed requests."""

    problems: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """A problem this test provokes on purpose (a 422 it checks is shown, say)."""
        self.allowed.append(re.compile(pattern))

    def add(self, text: str) -> None:
        self.problems.append(text)

    def attach(self, page: Page) -> None:
        page.on(
            "console",
            lambda m: (
                self.add(f"console {m.type}: {m.text} @ {m.location.get('url')}")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda e: self.add(f"uncaught: {e}"))
        # a request the browser itself cut short when the page moved on (an open
        # EventSource, an image still loading) is not a failure; anything else is
        page.on(
            "requestfailed",
            lambda r: (
                None
                if (r.failure or "").startswith("net::ERR_ABORTED")
                else self.add(f"request failed: {r.method} {r.url}: {r.failure}")
            ),
        )
        page.on(
            "response",
            lambda r: (
                self.add(f"HTTP {r.status}: {r.request.method} {r.url}")
                if r.status >= 500
                else None
            ),
        )

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(a.search(p) for a in self.allowed)]


@dataclass
class Browse:
    """Opens signed-in pages; keeps each page's watch for the check at teardown."""

    server: Server
    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)
    watches: list[Watch] = field(default_factory=list)

    def __call__(
        self, user: str | None, *, locale: str = "en-US", **options: Any
    ) -> tuple[Page, Watch]:
        context = self.browser.new_context(base_url=self.server.url, locale=locale, **options)
        self.contexts.append(context)
        if user is not None:
            signed = context.request.post(
                "/api/v1/session", data={"token": self.server.tokens[user]}
            )
            assert signed.ok, signed.text()
        page = context.new_page()
        watch = Watch()
        watch.attach(page)
        self.watches.append(watch)
        return page, watch


@pytest.fixture
def browse(server: Server, browser: Browser) -> Iterator[Browse]:
    opened = Browse(server, browser)
    yield opened
    for context in opened.contexts:
        context.close()
    problems = [p for w in opened.watches for p in w.unexpected()]
    assert not problems, "the browser saw problems:\n" + "\n".join(problems)


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """``shot(page, "name")``: a full-page PNG under build/browser/, named by test."""
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def take(page: Page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{test}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def settled(page: Page) -> None:
    """Wait until the page has loaded and its API calls are answered (``kiln.js`` keeps
    the count on ``<html data-busy>``; a live EventSource is not a call, so this works
    where Playwright's "networkidle" would wait for ever)."""
    page.wait_for_load_state("load")
    page.wait_for_function("() => document.documentElement.dataset.busy === '0'")


SERIOUS = ("serious", "critical")


def axe(page: Page) -> None:
    """axe-core on the page as it is now: no serious or critical violation.

    The script is evaluated over the DevTools protocol, which the pages' Content
    Security Policy (scripts from 'self' only) does not apply to.
    """
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_JS.read_text(encoding="utf-8"))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v.get("impact") in SERIOUS]
    detail = [
        f"{v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(n["target"][0] if n["target"] else "?" for n in v["nodes"][:5])
        for v in bad
    ]
    assert not bad, f"axe on {page.url}:\n" + "\n".join(detail)
