"""A project's scenes file, and its scenes made tasks through the prompt template.

A scenes file is a JSON (YAML, TOML) list of objects, or ``{"scenes": [...]}``.
Each scene becomes one task: its key is its ``id`` (else ``scene_id``, else its
1-based position), its prompt the template rendered with the scene's fields.

The prompts are wildcard text (:mod:`pixelkiln.wildcards`): only the template's
own text and the channel's style (both written by the installation) may hold
wildcards; the scenes' and the project's values are escaped, so a scene that
says ``__init__`` or ``{OPEN|CLOSED}`` is generated as written, once.

>>> from pixelkiln.prompts import parse_template
>>> tasks = scene_tasks([{"id": "s1", "prompt": "a {red|blue} fox"}], parse_template(
...     "{prompt}, {style}"), "prompt", {}, "ink", "p1/scenes.json")
>>> tasks[0]["prompt"]
'a {{red|blue}} fox, ink'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixelkiln.inputs._files import file_error, read_text
from pixelkiln.inputs.structured import _PARSERS
from pixelkiln.prompts import Template, TemplateError, json_safe, render

#: the fields a scene's key is read from, in order; else its 1-based position
SCENE_IDS = ("id", "scene_id")
#: stands for the channel's style while a prompt is rendered (field values are escaped;
#: the style, the installation's own text, keeps its wildcards), then is replaced by it
_STYLE = "\x00style\x00"


def scene_tasks(
    scenes: Sequence[Mapping[str, Any]],
    template: Template,
    prompt_field: str,
    fields: Mapping[str, Any],
    style: str,
    where: str,
) -> list[dict[str, Any]]:
    """One task (``key``, ``prompt``, ``item``) per scene; ValueError naming the scene
    (``where, scene 3``) for a duplicate id, a missing prompt or a missing field."""
    tasks: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, scene in enumerate(scenes):
        key = _scene_key(scene, i)
        place = f"{where}, scene {i + 1}"
        if key in seen:
            raise ValueError(f"{place}: id '{key}' is also scene {seen[key]}'s")
        seen[key] = i + 1
        if scene.get(prompt_field) in (None, ""):
            raise ValueError(f"{place}: has no '{prompt_field}' (the prompt_field)")
        scene_fields = {**fields, "style": _STYLE if style else "", "prompt": scene[prompt_field]}
        scene_fields |= {"scene": scene, "key": key, "index": i + 1}
        try:
            prompt = render(template, scene_fields, place, wildcards=True)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        tasks.append({"key": key, "prompt": prompt.replace(_STYLE, style), "item": scene})
    return tasks


def _scene_key(scene: Mapping[str, Any], index: int) -> str:
    for name in SCENE_IDS:
        value = scene.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:200]
    return str(index + 1)


def read_scenes(path: Path, source: str) -> list[dict[str, Any]]:
    """A scenes file's scenes: a JSON (YAML, TOML) list of objects, or ``{"scenes": [...]}``.

    ValueError (SpecError) says what is wrong, naming the file.
    """
    parse = _PARSERS.get(path.suffix.lower(), _PARSERS[".json"])
    data = parse(read_text(path, source), source)
    if isinstance(data, dict) and isinstance(data.get("scenes"), list):
        data = data["scenes"]
    if not isinstance(data, list) or not data:
        raise file_error(source, 'must hold a list of scenes (or {"scenes": [...]}), not empty')
    bad = [i + 1 for i, scene in enumerate(data) if not isinstance(scene, dict)]
    if bad:
        raise file_error(source, f"scene {bad[0]} is not an object of fields")
    try:
        scenes: list[dict[str, Any]] = json_safe(data)
    except ValueError as exc:
        raise file_error(source, f"holds a value JSON cannot: {exc}") from exc
    return scenes


__all__ = ["SCENE_IDS", "read_scenes", "scene_tasks"]
