"""Records at scale: the page in a browser, its API under load, the prompt search at a million.

    python -m bench.ui [--quick] [--records 10000] [--search 1000000] [--repeat 5]
                       [--postgres URL | --no-postgres] [--no-browser] [--part page|search]

Every database is filled by bulk inserts (image records of finished batches, 100 tasks
a batch, one image a task), never by running the engine; everything runs on 127.0.0.1
and is deleted at the end.

1. *Browser*: ``kiln serve`` (SQLite, auth off) over ``--records`` images whose files
   are 1024×1024 PNGs, and headless Chromium (``/usr/bin/chromium``, Playwright) opening
   ``/records``: first contentful paint, and "thumbnails visible" (every thumbnail in the
   viewport loaded). Cold: the first visit, each thumbnail made from its PNG on the
   server; warm: later visits in a fresh browser context (the server's thumbnail cache
   kept, the browser's empty), median of ``--repeat``. Baseline: the same with 100
   images. Targets: both under 1 s.
2. *API under load*: the records page's request (``GET /api/v1/images?limit=48``, count
   on, as the page asks) alone, then under ``bench.api_load``'s polling load (10 clients,
   each asking every 100 ms for a batch's status or the records page, in turn) while
   that batch runs on the placeholder backend (50 ms an image, 16 at once). Server time
   is the route's own (its ``Server-Timing`` header); latency adds the queue of a busy
   one-process server. Target: server time p99 under 50 ms loaded; ratio to alone.
3. *Search at a million*: ``--search`` image records on SQLite and on PostgreSQL; prompt
   searches from common to absent (the share of prompts holding each is printed), as a
   page of 50 with its count when cheap (what the API answers), as everyone's records and
   as one user's. Baseline: the search before the index (a scan for the page, a scan for
   the count). Target: under 100 ms (median of ``--repeat``).

``--quick`` (CI size): 2,000 records, 100,000 for the search, a shorter load. The
default gives the full figures of docs/web/records.md. PostgreSQL: a throwaway database
on the server of ``--postgres`` (default: the tests' server), skipped when unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import create_engine, func, text

from bench.api_load import SERVE, _free_port, _ms, _wait_up
from pixelkiln.backends.placeholder import draw
from pixelkiln.db import prompt_search
from pixelkiln.db.database import MIGRATIONS, Database
from pixelkiln.db.image_search import find_images
from pixelkiln.db.records import ImageQuery, _joined
from pixelkiln.db.tables import batches, images, tasks

POSTGRES = os.environ.get("KILN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PER_BATCH = 100
SOURCES = 16  # 1024×1024 PNG files the records point at, in turn

# -- prompts whose words have known shares ---------------------------------------------------

SUBJECTS = ["moth", "fox", "owl", "lighthouse", "castle", "robot", "dragon", "cat", "whale"]
SUBJECTS += [f"creature {i}" for i in range(100 - len(SUBJECTS))]  # "moth": 1 in 100
ADJECTIVES = ["red", "misty", "ancient", "tiny", "giant", "glowing", "quiet", "broken"]
PLACES = ["in a forest", "on a hill", "under the sea", "at night", "in the rain", "by a lake"]
STYLES = ["oil painting", "watercolor", "photograph", "pixel art"]  # 1 in 4 each
CHINESE = ["一只发光的飞蛾在森林里", "古老的城堡在山上", "萤火虫在夜晚的湖边", "红色的狐狸在雪地里"]
#: (text, share of prompts holding it); "zeppelin" is in none: the worst case for a scan
SEARCHES = [
    ("oil painting", "22%"),
    ("萤火虫", "2.5%"),
    ("moth", "0.9%"),
    ("paper lantern", "0.1%"),
    ("aurora borealis", "0.02%"),
    ("zeppelin", "0"),
]


def prompt(rng: random.Random, i: int) -> str:
    if i % 10 == 7:  # one in ten in Chinese: "萤火虫" in a quarter of them
        return f"{rng.choice(CHINESE)} 第{i}号"
    text = f"a {rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(PLACES)}"
    text += f", {rng.choice(STYLES)}, detailed, soft light, #{i}"
    if i % 1000 == 3:
        text += ", with a paper lantern"
    if i % 5000 == 11:
        text += ", aurora borealis"
    return text


def _rows(n: int, owner: int | None) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) in chunks: batches, their tasks, one image each, a second apart."""
    rng, start = random.Random(7), time.time() - n
    for first in range(0, n, 20 * PER_BATCH):
        found: dict[str, list[tuple[Any, ...]]] = {"batches": [], "tasks": [], "images": []}
        for i in range(first, min(n, first + 20 * PER_BATCH)):
            batch, at = i // PER_BATCH + 1, start + i
            if i % PER_BATCH == 0:
                k = min(PER_BATCH, n - i)
                row = (batch, owner, f"bench {batch}", "completed", "api", "{}", 1, k, k, k, at)
                found["batches"].append(row)
            task = (i + 1, batch, i % PER_BATCH, f"t{i}", "succeeded", "placeholder")
            found["tasks"].append((*task, prompt(rng, i), "", "{}", "{}", 1, at))
            path = f"bench/source_{i % SOURCES}.png"
            backend = "slowpoke" if i % 3 == 0 else "placeholder"
            image = (i + 1, i + 1, batch, 0, path, 1024, 1024, 1, "0" * 64, i, at, backend)
            found["images"].append(image)
        yield from found.items()


COLUMNS = {
    "batches": "id, owner_id, name, status, source, defaults, max_attempts, n_tasks, "
    "n_succeeded, n_images, created_at",
    "tasks": 'id, batch_id, position, "key", status, backend, prompt, negative_prompt, params, '
    "inputs, max_attempts, created_at",
    "images": 'id, task_id, batch_id, "index", path, width, height, bytes, sha256, seed, '
    "created_at, backend",
}


def fill(url: str, n: int, owner: int | None = 1) -> float:
    """``n`` image records in a new database at ``url``; seconds it took. The prompt
    index is dropped first and made again at the end (as migration 0007 makes it)."""
    started = time.perf_counter()
    Database.open(url).close()  # the schema, migrated
    engine = create_engine(url)
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        sqlite = url.startswith("sqlite")
        if sqlite:
            for statement in ("PRAGMA journal_mode=MEMORY", "PRAGMA synchronous=OFF"):
                raw.execute(statement)
            for name in ("image", "delete", "update"):
                raw.execute(f"DROP TRIGGER IF EXISTS tasks_search_{name}")
            raw.execute("DROP TABLE IF EXISTS tasks_search")
        else:
            raw.execute("DROP INDEX IF EXISTS ix_tasks_prompt_trgm")
        for table, rows in _rows(n, owner):
            if sqlite:
                marks = ", ".join("?" * len(rows[0]))
                raw.executemany(f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})", rows)
            else:
                with raw.cursor().copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        _index(raw, sqlite)
        raw.commit()
        if sqlite:
            raw.execute("PRAGMA journal_mode=WAL")
    engine.dispose()
    return time.perf_counter() - started


def _index(raw: Any, sqlite: bool) -> None:
    """The prompt index of migration 0007, over what was inserted."""
    if sqlite:
        path = MIGRATIONS / "versions" / "0007_queue_order_prompt_search.py"
        spec = importlib.util.spec_from_file_location("migration_0007", path)
        assert spec is not None and spec.loader is not None
        migration = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(migration)
        for statement in migration.SQLITE_SEARCH:  # the table, its triggers, filled
            raw.execute(statement)
        return
    schema = raw.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    ).fetchone()
    if schema:
        opclass = f'"{schema[0]}".gin_trgm_ops'
        raw.execute(f"CREATE INDEX ix_tasks_prompt_trgm ON tasks USING gin (prompt {opclass})")
    raw.execute("ANALYZE")


# -- 3. the search at a million --------------------------------------------------------------


def old_search(conn: Any, needle: str, owner: int | None) -> tuple[int, int]:
    """The search before the index: the newest 50 by a scan, then a scan to count them."""
    held = prompt_search.matches(tasks.c.prompt, needle, conn.dialect.name, indexable=False)
    mine = [batches.c.owner_id == owner] if owner is not None else []
    where = (images.c.superseded.is_(False), held, *mine)
    page = _joined(images.c.id).where(*where).order_by(images.c.id.desc()).limit(50)
    found = len(conn.execute(page).all())
    return found, int(conn.execute(_joined(func.count()).where(*where)).scalar_one())


def new_search(conn: Any, needle: str | None, owner: int | None) -> tuple[int, int | None]:
    rows, total = find_images(conn, ImageQuery(text=needle), owner_id=owner, limit=50, count=True)
    return len(rows), total


def _timed(fn: Any, *args: Any, repeat: int) -> tuple[float, Any]:
    """Median milliseconds of ``repeat`` calls (after one unmeasured), and the answer."""
    answer, times = fn(*args), []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = fn(*args)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), answer


def search_figures(label: str, url: str, n: int, repeat: int) -> list[float]:
    """Fill, then time each search new and old; prints a table, returns the new medians."""
    seconds = fill(url, n)
    print(f"\n{label}: {n:,} image records filled in {seconds:.0f} s", flush=True)
    engine, medians = create_engine(url), []
    print(
        f"  {'search':18} {'share':>6} {'as':>9} {'matches':>8} {'new ms':>8} "
        f"{'old ms':>9} {'old/new':>8}"
    )
    with engine.connect() as conn:
        for owner, who in ((None, "everyone"), (1, "a user")):
            for needle, share in [*SEARCHES, (None, "—")]:
                ms, (_, total) = _timed(new_search, conn, needle, owner, repeat=repeat)
                medians.append(ms)
                old = ""
                if needle is not None and owner is None:  # once: it is slow
                    started = time.perf_counter()
                    _, total = old_search(conn, needle, owner)
                    old_ms = 1000 * (time.perf_counter() - started)
                    old = f"{old_ms:9.0f} {old_ms / ms:8.1f}"
                shown = "(none)" if needle is None else needle
                count_text = "?" if total is None else f"{total:,}"
                print(
                    f"  {shown:18} {share:>6} {who:>9} {count_text:>8} {ms:8.1f} {old}", flush=True
                )
    engine.dispose()
    worst = max(medians)
    print(f"  slowest median {worst:.1f} ms (target < 100 ms)")
    return medians


def _postgres_database(admin_url: str) -> tuple[str, Any]:
    """A throwaway database on the PostgreSQL server of ``admin_url`` and its remover."""
    name = f"kiln_bench_ui_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


# -- 1 and 2. the page in a browser, its API under load --------------------------------------


def _serve(folder: Path, n: int, latency: float) -> tuple[subprocess.Popen[bytes], str]:
    """``kiln serve`` over ``n`` records (their files: a few 1024×1024 PNGs)."""
    data = folder / "data"
    (data / "bench").mkdir(parents=True)
    for k in range(SOURCES):
        (data / "bench" / f"source_{k}.png").write_bytes(draw(f"source {k}", k, 1024, 1024))
    fill(f"sqlite:///{data / 'kiln.db'}", n, owner=None)
    config = folder / "kiln.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{data}"\n\n[scheduler]\nconcurrency = 16\n\n'
        f'[[backends]]\nname = "placeholder"\ntype = "placeholder"\nconcurrency = 16\n'
        f"latency = {latency}\n"
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    command = [*SERVE, "--config", str(config), "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(command, env=env), f"http://127.0.0.1:{port}"


VISIBLE_LOADED = """() => {
  const imgs = [...document.querySelectorAll('#rec-grid img')].filter((i) => {
    const r = i.getBoundingClientRect();
    return r.bottom > 0 && r.top < innerHeight;
  });
  const done = imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  return done ? performance.now() : false;
}"""
FCP = "() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"


def browser_figures(url: str, repeat: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((FCP, thumbnails visible) cold, the same warm: median of ``repeat``), in ms."""
    from playwright.sync_api import sync_playwright

    runs: list[tuple[float, float]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        for _ in range(repeat + 1):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{url}/records", wait_until="commit")
            shown = page.wait_for_function(VISIBLE_LOADED, polling="raf", timeout=60_000)
            visible = float(shown.json_value())
            page.wait_for_function(f"({FCP})() !== null")
            runs.append((float(page.evaluate(FCP)), visible))
            context.close()
        browser.close()
    warm = runs[1:]
    return runs[0], (statistics.median(r[0] for r in warm), statistics.median(r[1] for r in warm))


RECORDS_PAGE = "/api/v1/images?limit=48"  # what /records asks for


def _server_ms(response: httpx.Response) -> float:
    """The route's own time, from its ``Server-Timing: search;dur=…`` header."""
    return float(response.headers["server-timing"].split("dur=")[1])


async def _poll(
    http: httpx.AsyncClient, batch_id: int, stop: asyncio.Event, seen: Any, offset: int
) -> None:
    """``bench.api_load``'s dashboard: the batch's status and the records page, one of
    them every 100 ms; each records page's latency and server time kept."""
    requests = [f"/api/v1/batches/{batch_id}?task_limit=0", RECORDS_PAGE]
    n = offset
    while not stop.is_set():
        path = requests[n % 2]
        n += 1
        started = time.perf_counter()
        try:
            response = await http.get(path)
        except httpx.TransportError:  # a keep-alive connection closed under us: not timed
            continue
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        if path == RECORDS_PAGE:
            seen["latency"].append(elapsed)
            seen["server"].append(_server_ms(response) / 1000)
        await asyncio.sleep(max(0.0, 0.1 - elapsed))


async def load_figures(url: str, tasks_n: int) -> tuple[dict[str, list[float]], ...]:
    """The records page alone (200 in a row), then under the polling load while a batch
    of ``tasks_n`` runs: latency and server time (seconds) of each."""
    alone: dict[str, list[float]] = {"latency": [], "server": []}
    loaded: dict[str, list[float]] = {"latency": [], "server": []}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(200):
            started = time.perf_counter()
            response = await http.get(RECORDS_PAGE)
            alone["latency"].append(time.perf_counter() - started)
            alone["server"].append(_server_ms(response) / 1000)
        spec = {
            "name": "load",
            "defaults": {"width": 64, "height": 64, "seed": 1},
            "tasks": [{"prompt": f"load {i}"} for i in range(tasks_n)],
        }
        made = await http.post("/api/v1/batches", json=spec)
        made.raise_for_status()
        batch_id = made.json()["id"]
        stop = asyncio.Event()
        pollers = [asyncio.create_task(_poll(http, batch_id, stop, loaded, i)) for i in range(10)]
        while not (await http.get(f"/api/v1/batches/{batch_id}?task_limit=0")).json()["finished"]:
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*pollers)
    return alone, loaded


def _load_report(alone: dict[str, list[float]], loaded: dict[str, list[float]], n: int) -> None:
    for label, seen in (("alone", alone), (f"under load ({n} tasks running)", loaded)):
        server, latency = seen["server"], seen["latency"]
        print(
            f"records page {label}: {len(latency)} requests, server time "
            f"p50 {_ms(server, 0.5):.1f} ms p99 {_ms(server, 0.99):.1f} ms; "
            f"latency p50 {_ms(latency, 0.5):.1f} ms p99 {_ms(latency, 0.99):.1f} ms"
        )
    ratio = _ms(loaded["server"], 0.99) / _ms(alone["server"], 0.99)
    print(f"server time p99 loaded / alone: {ratio:.2f} (target: loaded p99 < 50 ms)")


def page_figures(records: int, repeat: int, tasks_n: int, browser: bool) -> None:
    for n, label in ((100, "baseline: 100 records"), (records, f"{records:,} records")):
        with tempfile.TemporaryDirectory(prefix="kiln-bench-ui-") as folder:
            process, url = _serve(Path(folder), n, latency=0.05)
            try:
                asyncio.run(_wait_up(url, process))
                httpx.get(f"{url}/records").raise_for_status()  # the server warmed up, not
                httpx.get(f"{url}/api/v1/images?limit=1").raise_for_status()  # its thumbnails
                if browser:
                    (fcp, shown), (wfcp, wshown) = browser_figures(url, repeat)
                    print(
                        f"{label:>24}: first contentful paint {fcp:5.0f} ms cold, {wfcp:5.0f} ms "
                        f"warm; thumbnails visible {shown:5.0f} ms cold, {wshown:5.0f} ms warm",
                        flush=True,
                    )
                if n == records:
                    _load_report(*asyncio.run(load_figures(url, tasks_n)), tasks_n)
            finally:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=30)
    if browser:
        print("targets: first contentful paint and thumbnails visible < 1000 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: smaller databases")
    parser.add_argument("--records", type=int, help="records behind the page (10,000)")
    parser.add_argument("--search", type=int, help="records searched (1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each measure")
    parser.add_argument("--postgres", default=POSTGRES, help="a PostgreSQL server (127.0.0.1)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--part", choices=("all", "page", "search"), default="all")
    args = parser.parse_args()
    records = args.records or (2_000 if args.quick else 10_000)
    searched = args.search or (100_000 if args.quick else 1_000_000)
    if urlsplit(args.postgres.replace("+psycopg", "")).hostname not in LOOPBACK:
        raise SystemExit("--postgres: this benchmark runs against 127.0.0.1 only")
    if args.part in ("all", "page"):
        page_figures(records, args.repeat, 300 if args.quick else 2000, not args.no_browser)
    if args.part == "page":
        return
    with tempfile.TemporaryDirectory(prefix="kiln-bench-ui-") as folder:
        search_figures("SQLite", f"sqlite:///{Path(folder) / 'search.db'}", searched, args.repeat)
    if not args.no_postgres:
        try:
            url, drop = _postgres_database(args.postgres)
        except Exception as exc:  # no server: say so, skip
            print(f"\nPostgreSQL skipped: {exc}".splitlines()[0])
            return
        try:
            search_figures("PostgreSQL", url, searched, args.repeat)
        finally:
            drop()


if __name__ == "__main__":
    sys.exit(main())
