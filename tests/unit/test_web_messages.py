"""The web UI's messages: every one in English and 简体中文, and every key a template or a
script asks for is one the page is given.

A page gets ``common.json``, the files its ``Page.uses`` names (if any) and its own
``<page>.json`` (see :func:`pixelkiln.web.pages.render`). So ``t('key')`` in
``templates/records.html`` or ``static/js/records.js`` must be in one of those;
``kiln.js`` and ``shell.js`` run on every page, ``base.html`` frames every page: theirs
must be in common. A shared module or partial is held to every page that loads it.
A key built at run time (``t(`status.${s}`)``, ``t('nav.' ~ p.name)``) is checked for
every value it can take, from :data:`DYNAMIC`; a new kind of built key must be added
there, with the values it takes, or the test says which file builds it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cache
from pathlib import Path

import pytest

from pixelkiln.models import BatchCounts, BatchStatus, TaskStatus
from pixelkiln.web.pages import PAGES

WEB = Path(__file__).resolve().parents[2] / "pixelkiln" / "web"
MESSAGES = WEB / "messages"
TEMPLATES = WEB / "templates"
SCRIPTS = WEB / "static" / "js"
LANGUAGES = {"en", "zh"}
PAGE_NAMES = {p.name for p in PAGES}
#: scripts and templates every page loads: their keys must be in common.json
EVERY_PAGE = {"kiln.js", "shell.js", "base.html"}

#: a key's fixed start → every value the rest of it can take
DYNAMIC: dict[str, set[str]] = {
    "status.": {s.value for s in BatchStatus} | {s.value for s in TaskStatus},
    # base.html builds nav.<name> for the pages in the navigation, title.<name> for all
    "nav.": {p.name for p in PAGES if p.nav},
    "title.": set(PAGE_NAMES),
    # batch_detail.js: one line per count the API gives (BatchCounts' fields)
    "bd.count_": {f.name for f in dataclasses.fields(BatchCounts)},
    # library.js: the picker's two tabs
    "library.empty_": {"uploads", "results"},
    # queue.js: a batch's four moves (MOVES)
    "queue.move_": {"top", "up", "down", "bottom"},
    "queue.short_": {"top", "up", "down", "bottom"},
    # batch.js: a cell's column name (CELLS)
    "batch.col.": {
        "prompt",
        "negative_prompt",
        "aspect_ratio",
        "resolution",
        "reference_images",
        "n",
        "filename_prefix",
    },
    # admin.js: the sections' names (SECTIONS)
    "admin.": {"concurrency", "presets", "users", "batches", "stats", "health"},
}

#: t("…"), t('…'), t(`…`) in a script, not obj.t(…) nor alert(…)
JS_CALL = re.compile(r"(?<![\w$.])t\(\s*(?:([\"'])((?:\\.|(?!\1).)*?)\1|`([^`]*)`)")
#: t('…') or t('prefix.' ~ name) inside a Jinja expression
JINJA_CALL = re.compile(r"(?<![\w.])t\(\s*(['\"])(.*?)\1\s*(\)|~)")
JINJA_ANY_CALL = re.compile(r"(?<![\w.])t\(")
JINJA_CODE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
JS_IMPORT = re.compile(r"""(?:import|from)\s*\(?\s*["']\./([\w./-]+\.js)["']""")
JINJA_LOAD = re.compile(r"""\{%-?\s*(?:include|extends|import|from)\s+["']([\w./-]+)["']""")
FIELD = re.compile(r"\{(\w+)\}")


@cache
def messages(name: str) -> dict[str, dict[str, str]]:
    path = MESSAGES / f"{name}.json"
    if not path.is_file():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def files_of(page: str) -> tuple[str, ...]:
    """The messages files a page is rendered with, as ``render`` loads them."""
    uses = tuple(getattr(next(p for p in PAGES if p.name == page), "uses", ()) or ())
    return ("common", *uses, page)


def keys_of(page: str | None) -> set[str]:
    """The keys a page has; None: common's only."""
    names = ("common",) if page is None else files_of(page)
    return {key for name in names for key in messages(name)}


def _strip_js_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(?m)^\s*//.*$", "", text)


def loaders(folder: Path, pattern: re.Pattern[str], suffix: str) -> dict[str, set[str]]:
    """File name → the names of the files that load it (import, include, extends)."""
    loaded_by: dict[str, set[str]] = {}
    for path in folder.glob(f"*{suffix}"):
        for target in pattern.findall(path.read_text(encoding="utf-8")):
            loaded_by.setdefault(Path(target).name, set()).add(path.name)
    return loaded_by


def pages_loading(name: str, loaded_by: dict[str, set[str]], suffix: str) -> set[str | None]:
    """The pages whose messages a file's keys must be in: its own page; common (None)
    for a file on every page; else every page that loads it, directly or through others."""
    stem = name.removesuffix(suffix)
    if name in EVERY_PAGE:
        return {None}
    if stem in PAGE_NAMES:
        return {stem}
    found: set[str | None] = set()
    seen, todo = {name}, [name]
    while todo:
        for parent in loaded_by.get(todo.pop(), set()) - seen:
            seen.add(parent)
            parent_stem = parent.removesuffix(suffix)
            if parent in EVERY_PAGE:
                return {None}
            if parent_stem in PAGE_NAMES:
                found.add(parent_stem)
            todo.append(parent)
    return found or {None}  # loaded by no page (yet): common's keys only


def wanted_keys(fixed: str, built: bool) -> list[str] | str:
    """The keys a call may ask for; a message (str) when a built key is of an unknown kind."""
    if not built:
        return [fixed]
    if fixed not in DYNAMIC:
        return (
            f"builds a key from {fixed!r}: add that start and every value it takes to "
            "DYNAMIC in tests/unit/test_web_messages.py"
        )
    return [fixed + value for value in sorted(DYNAMIC[fixed])]


def js_calls(text: str) -> list[tuple[str, bool]]:
    """(key or fixed start, built) for each t(...) with a literal in a script."""
    calls = []
    for match in JS_CALL.finditer(_strip_js_comments(text)):
        if match.group(3) is None:
            calls.append((match.group(2), False))
            continue
        template = match.group(3)
        if "${" not in template:
            calls.append((template, False))
        elif re.fullmatch(r"[^$]*\$\{[^}]*\}", template):
            calls.append((template.split("${")[0], True))
        else:
            calls.append((template, True))  # anything else built: DYNAMIC cannot cover it
    return calls


def jinja_calls(text: str) -> tuple[list[tuple[str, bool]], int]:
    """(key or fixed start, built) for each t('...') in Jinja code, and how many t(...)
    calls are something else (a variable: nothing to check against)."""
    calls, others = [], 0
    for code in JINJA_CODE.findall(text):
        found = JINJA_CALL.findall(code)
        calls += [(key, end == "~") for _, key, end in found]
        others += len(JINJA_ANY_CALL.findall(code)) - len(found)
    return calls, others


def problems_in(folder: Path, suffix: str) -> list[str]:
    pattern = JS_IMPORT if suffix == ".js" else JINJA_LOAD
    loaded_by = loaders(folder, pattern, suffix)
    problems = []
    for path in sorted(folder.glob(f"*{suffix}")):
        text = path.read_text(encoding="utf-8")
        calls = js_calls(text) if suffix == ".js" else jinja_calls(text)[0]
        where = f"{path.relative_to(WEB)}"
        for fixed, built in calls:
            wanted = wanted_keys(fixed, built)
            if isinstance(wanted, str):
                problems.append(f"{where}: {wanted}")
                continue
            for page in sorted(pages_loading(path.name, loaded_by, suffix), key=str):
                have = keys_of(page)
                files = " or ".join(f"{n}.json" for n in files_of(page)) if page else "common.json"
                problems += [
                    f"{where}: t({key!r}) is in none of {files}"
                    for key in wanted
                    if key not in have
                ]
    return problems


# --- the messages files ---------------------------------------------------------------


def message_files() -> list[Path]:
    return sorted(MESSAGES.glob("*.json"))


def test_there_are_messages_templates_and_scripts() -> None:
    assert (MESSAGES / "common.json").is_file() and len(message_files()) >= 2
    assert len(list(TEMPLATES.glob("*.html"))) >= len(PAGES)
    assert len(list(SCRIPTS.glob("*.js"))) >= len(PAGES)
    assert sum(len(js_calls(p.read_text())) for p in SCRIPTS.glob("*.js")) >= 5
    assert sum(len(jinja_calls(p.read_text())[0]) for p in TEMPLATES.glob("*.html")) > 5


@pytest.mark.parametrize("path", message_files(), ids=lambda p: p.name)
def test_every_message_is_in_english_and_chinese(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data, f"{path.name}: not a JSON object of messages"
    problems = []
    for key, texts in data.items():
        if not isinstance(texts, dict):
            problems.append(f"{path.name}: {key!r} is not {{'en': ..., 'zh': ...}}")
            continue
        for lang in sorted(LANGUAGES | set(texts)):
            text = texts.get(lang)
            if lang not in LANGUAGES:
                problems.append(f"{path.name}: {key!r} has {lang!r}, which no page shows")
            elif not isinstance(text, str) or not text.strip():
                problems.append(f"{path.name}: {key!r} has no {lang!r} text")
        if all(isinstance(texts.get(lang), str) for lang in LANGUAGES):
            fields = {lang: set(FIELD.findall(texts[lang])) for lang in sorted(LANGUAGES)}
            if len({frozenset(f) for f in fields.values()}) > 1:
                problems.append(f"{path.name}: {key!r} fills other {{fields}}: {fields}")
    assert not problems, "\n".join(problems)


def test_every_messages_file_belongs_to_a_page() -> None:
    """A file no page loads is never shown: a typo in its name, or a page's ``uses``."""
    used = {name for page in PAGE_NAMES for name in files_of(page)}
    stray = [p.name for p in message_files() if p.stem not in used]
    assert stray == [], f"messages files no page loads: {stray}"


# --- keys asked for -------------------------------------------------------------------------


def test_every_key_a_template_asks_for_exists() -> None:
    problems = problems_in(TEMPLATES, ".html")
    assert not problems, "keys missing from the messages:\n" + "\n".join(problems)


def test_every_key_a_script_asks_for_exists() -> None:
    problems = problems_in(SCRIPTS, ".js")
    assert not problems, "keys missing from the messages:\n" + "\n".join(problems)


def test_built_keys_cover_every_status_and_page() -> None:
    """The lists DYNAMIC checks against are the real ones: every status a badge shows
    (kiln.js) and every page's title and navigation link (base.html), all in common."""
    assert {"queued", "running", "paused", "partial", "pending", "succeeded"} <= DYNAMIC["status."]
    assert DYNAMIC["title."] >= {"generate", "batch_detail", "login"}
    shared = [p + v for p in ("status.", "nav.", "title.") for v in sorted(DYNAMIC[p])]
    assert [key for key in shared if key not in keys_of(None)] == []


# --- the checker itself ---------------------------------------------------------------------


def test_the_script_pattern_finds_every_kind_of_call() -> None:
    text = """
    // t("in.a.comment") is not a call
    el("p", {}, t("plain.key"), t('single.key', { n }), t(`tick.key`));
    badge(t(`status.${status}`)); t(`odd.${a}.${b}`); obj.t("not.ours"); alert("x");
    t(key);
    """
    assert js_calls(text) == [
        ("plain.key", False),
        ("single.key", False),
        ("tick.key", False),
        ("status.", True),
        ("odd.${a}.${b}", True),
    ]
    assert isinstance(wanted_keys("odd.${a}.${b}", True), str)
    assert wanted_keys("status.", True)[0].startswith("status.")


def test_the_template_pattern_finds_every_kind_of_call() -> None:
    text = """<title>{{ t('title.' ~ page.name) }}</title><p>{{ t("a.b") }} it(x)</p>
    {% if x %}{{ t(variable) }}{% endif %}"""
    assert jinja_calls(text) == ([("title.", True), ("a.b", False)], 1)


def test_a_shared_module_answers_to_every_page_that_loads_it() -> None:
    loaded_by = {"lightbox.js": {"records.js", "helper.js"}, "helper.js": {"batch.js"}}
    assert pages_loading("lightbox.js", loaded_by, ".js") == {"records", "batch"}
    assert pages_loading("kiln.js", loaded_by, ".js") == {None}
    assert pages_loading("orphan.js", loaded_by, ".js") == {None}
    assert pages_loading("records.js", loaded_by, ".js") == {"records"}
