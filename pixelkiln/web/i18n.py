"""The web UI's two languages, 简体中文 and English: which one a request gets, and the
messages of a page.

Messages live in ``messages/<page>.json`` as ``{"key": {"en": "…", "zh": "…"}}``;
``common.json`` holds what every page shows (navigation, buttons, statuses). A page
gets common's and its own, rendered into the template by ``t(key)`` and handed to
its script (``kiln.js: t``) as JSON. The language is the ``kiln_lang`` cookie (the
switch in the header sets it), else the browser's ``Accept-Language``.

>>> pick_language("zh-CN,zh;q=0.9,en;q=0.8", None)
'zh'
>>> pick_language("en-GB,en;q=0.9", None), pick_language("en", "zh")
('en', 'zh')
>>> pick_language("zh;q=0, fr", None)  # q=0: anything but Chinese
'en'
"""

from __future__ import annotations

import functools
import json
from importlib import resources

LANGUAGES = ("en", "zh")
DEFAULT = "en"
#: the cookie the language switch sets (read by the server; not a secret)
LANG_COOKIE = "kiln_lang"


def pick_language(accept: str | None, cookie: str | None) -> str:
    """The cookie's language when it names one of ours; else the first of ours that
    ``Accept-Language`` names (by q order); else English."""
    if cookie in LANGUAGES:
        return str(cookie)
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if not q > 0:  # q=0 is "not this one" (and NaN is no weight at all)
            continue
        ranked.append((-q, i, tag.strip().lower().split("-")[0]))
    for _, _, primary in sorted(ranked):
        if primary in LANGUAGES:
            return primary
    return DEFAULT


@functools.cache
def _load(name: str) -> dict[str, dict[str, str]]:
    """One messages file; a missing file is no messages (a page without its own)."""
    path = resources.files("pixelkiln.web") / "messages" / f"{name}.json"
    if not path.is_file():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def catalog(lang: str, *names: str) -> dict[str, str]:
    """Key → text in ``lang`` for the files ``names`` (later ones win); English stands in
    for a message not yet translated."""
    out: dict[str, str] = {}
    for name in names:
        for key, texts in _load(name).items():
            out[key] = texts.get(lang) or texts.get(DEFAULT) or key
    return out
