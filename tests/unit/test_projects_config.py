"""A studio's project config and folders, read as they are (no database, no generator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pixelkiln.config import ProjectsSettings, load_settings
from pixelkiln.exceptions import SpecError
from pixelkiln.inputs.projects import (
    Channel,
    ProjectsPlan,
    checked_pid,
    load_projects_config,
    plan_projects,
)

SRT = "1\n00:00:00,000 --> 00:00:02,000\nhello\n"


def make_project(
    folder: Path,
    pid: str,
    scenes: Any,
    *,
    language: str = "zh",
    skip: tuple[str, ...] = (),
) -> Path:
    """A project folder as the studio makes it: scenes, paragraphs, audio, subtitles."""
    project = folder / pid
    project.mkdir(parents=True, exist_ok=True)
    files = {
        f"{pid}_scenes.json": json.dumps(scenes, ensure_ascii=False),
        f"{pid}_paragraphs.json": "[]",
        f"{pid}.aac": "",
        f"{pid}_{language}.srt": SRT,
    }
    for name, text in files.items():
        if name not in skip:
            (project / name).write_text(text, encoding="utf-8")
    return project


def scenes(count: int, field: str = "image_prompt") -> list[dict[str, Any]]:
    return [{"id": f"s{i + 1}", field: f"scene {i + 1}", "mood": "calm"} for i in range(count)]


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


STUDIO = {
    "description": "nightly",
    "data_dir": "data",
    "prompt_field": "image_prompt",
    "prompt_template": "{description}. {prompt}, {style}",
    "default_settings": {
        "language": "zh",
        "channel": "world_zh",
        "description": "documentary still",
        "cfg_scale": 7,
        "negative_prompt": "blurry",
        "delay_between_projects": 2,
        "voice": "female-1",  # the studio's own key: kept as a template field
    },
    "projects": [
        {"pid": "project001"},
        {"pid": "project002", "description": "", "cfg_scale": 8, "language": "en"},
    ],
}
WORLD = Channel("world_zh", "ink wash", {"cfg_scale": 9, "negative_prompt": "text"}, "kiln.toml")


def plan(config: Path, overrides: dict[str, Any] | None = None, **kw: Any) -> ProjectsPlan:
    loaded = load_projects_config(config, overrides or {}, ProjectsSettings(), **kw)
    return plan_projects(loaded, {"world_zh": WORLD})


def test_the_studio_config_as_it_is_becomes_one_batch_per_project(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg" / "nightly.json", STUDIO)
    make_project(tmp_path / "cfg" / "data", "project001", scenes(3))
    make_project(tmp_path / "cfg" / "data", "project002", scenes(2), language="en")
    planned = plan(config)
    first, second = planned.projects
    assert planned.config.projects_dir == tmp_path / "cfg" / "data"
    assert first.spec is not None and second.spec is not None
    assert [t.prompt for t in first.spec.tasks] == [
        f"documentary still. scene {i}, ink wash" for i in (1, 2, 3)
    ]
    assert [t.key for t in first.spec.tasks] == ["s1", "s2", "s3"]
    # an empty description leaves no dangling ". "
    assert second.spec.tasks[0].prompt == "scene 1, ink wash"
    # default_settings < channel < the project's own
    assert first.spec.defaults.cfg_scale == 9 and second.spec.defaults.cfg_scale == 8
    assert first.spec.defaults.negative_prompt == "text"
    assert first.delay == 2 and planned.images == 5
    assert first.spec.tasks[0].item == {"id": "s1", "image_prompt": "scene 1", "mood": "calm"}


def test_the_command_line_wins_and_chooses_projects(tmp_path: Path) -> None:
    config = write_config(tmp_path / "nightly.json", STUDIO)
    make_project(tmp_path / "data", "project002", scenes(1), language="zh")
    overrides = {"language": "zh", "cfg_scale": 5, "description": "CLI", "negative_prompt": "x"}
    planned = plan(config, overrides, pids=["project002"])
    [only] = planned.projects
    assert only.pid == "project002" and only.spec is not None
    assert only.spec.defaults.cfg_scale == 5 and only.spec.defaults.negative_prompt == "x"
    assert only.spec.tasks[0].prompt == "CLI. scene 1, ink wash"


def test_a_project_missing_a_file_fails_alone_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "nightly.json", STUDIO)
    make_project(tmp_path / "data", "project001", scenes(1), skip=("project001_zh.srt",))
    make_project(tmp_path / "data", "project002", scenes(1), language="en")
    first, second = plan(config).projects
    assert first.spec is None and first.missing == ("project001_zh.srt",)
    assert "project001_zh.srt" in first.problem
    assert second.spec is not None



def test_a_project_without_a_folder_says_so_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "nightly.json", STUDIO)
    make_project(tmp_path / "data", "project002", scenes(1), language="en")
    first, second = plan(config).projects
    assert first.spec is None and first.missing == ()
    assert first.problem == f"folder {tmp_path / 'data' / 'project001'} not found"
    assert second.spec is not None

def test_template_fields_come_from_the_scene_and_the_project(tmp_path: Path) -> None:
    data = {
        **STUDIO,
        "prompt_template": "{voice} {pid} {language} {channel} #{index} {key}: {scene.mood}",
        "scenes_file": "{pid}/scenes.json",
        "required_files": [],
    }
    config = write_config(tmp_path / "nightly.json", data)
    folder = tmp_path / "data" / "project001"
    folder.mkdir(parents=True)
    (folder / "project001").mkdir()
    (folder / "project001" / "scenes.json").write_text(json.dumps({"scenes": scenes(1)}))
    first = plan(config, pids=["project001"]).projects[0]
    assert first.spec is not None
    assert first.spec.tasks[0].prompt == "female-1 project001 zh world_zh #1 s1: calm"


@pytest.mark.parametrize(
    ("scene_data", "why"),
    [
        ({"not": "scenes"}, "must hold a list of scenes"),
        ([{"id": 1, "text": "no prompt"}], "has no 'image_prompt'"),
        ([{"id": 1, "image_prompt": "a"}, {"id": 1, "image_prompt": "b"}], "id '1' is also"),
        (["just text"], "scene 1 is not an object"),
    ],
)
def test_bad_scenes_fail_their_project_with_the_reason(
    tmp_path: Path, scene_data: Any, why: str
) -> None:
    config = write_config(tmp_path / "nightly.json", STUDIO)
    make_project(tmp_path / "data", "project001", scene_data)
    first = plan(config, pids=["project001"]).projects[0]
    assert first.spec is None and why in first.problem


def test_an_unknown_channel_fails_its_project_naming_it(tmp_path: Path) -> None:
    data = {**STUDIO, "projects": [{"pid": "project001", "channel": "nope"}]}
    config = write_config(tmp_path / "nightly.json", data)
    make_project(tmp_path / "data", "project001", scenes(1))
    [first] = plan(config).projects
    assert first.spec is None and "channel 'nope'" in first.problem


def test_a_bad_config_lists_every_problem_located(tmp_path: Path) -> None:
    data = {
        "default_settings": {"cfg_scale": "hot", "delay_between_projects": -1},
        "projects": [{"pid": "../etc"}, {"pid": "ok", "steps": 0}, {"pid": "ok"}, "x"],
    }
    config = write_config(tmp_path / "bad.json", data)
    with pytest.raises(SpecError) as caught:
        load_projects_config(config, {}, ProjectsSettings())
    found = {(p.where, p.field) for p in caught.value.problems}
    assert found == {
        ("default_settings", "cfg_scale"),
        ("default_settings", "delay_between_projects"),
        ("projects[0]", "pid"),
        ("projects[1] ('ok')", "steps"),
        ("projects[2]", "pid"),
        ("projects[3]", ""),
    }
    assert all(p.source == str(config) for p in caught.value.problems)


@pytest.mark.parametrize("pid", ["a/b", "..", "a\\b", ".hidden", "", None, True])
def test_a_pid_never_names_a_path_outside_the_projects_folder(pid: Any) -> None:
    assert checked_pid(pid)[0] == ""


def test_yaml_configs_and_a_language_that_would_leave_the_folder(tmp_path: Path) -> None:
    config = tmp_path / "nightly.yaml"
    config.write_text(
        "projects_dir: data\nprompt_field: image_prompt\n"
        "default_settings: {language: ../../x}\nprojects: [{pid: p1}]\n"
    )
    make_project(tmp_path / "data", "p1", scenes(1))
    [first] = plan(config).projects
    assert first.spec is None and "would leave the project folder" in first.problem


def test_relative_folders_are_the_config_files_own_wherever_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / "studio" / "nightly.json", STUDIO)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_projects_config(Path("../studio/nightly.json"), {}, ProjectsSettings())
    assert loaded.projects_dir == (tmp_path / "studio" / "data").absolute()
    assert loaded.logs_dir == tmp_path / "studio" / "logs"
    assert config.is_file()


def test_output_project_puts_images_under_the_project(tmp_path: Path) -> None:
    config = write_config(tmp_path / "nightly.json", {**STUDIO, "output": "project"})
    make_project(tmp_path / "data", "project001", scenes(1))
    first = plan(config, pids=["project001"]).projects[0]
    assert first.images_dir == tmp_path / "data" / "project001" / "images"


def test_the_example_plans_as_its_readme_says() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "projects"
    settings = load_settings(root / "kiln.toml")
    channels = {
        n: Channel(n, c.style, c.params(), "kiln.toml") for n, c in settings.channels.items()
    }
    loaded = load_projects_config(root / "nightly.json", {}, settings.projects)
    demo001, demo002 = plan_projects(loaded, channels).projects
    assert (demo001.images, demo001.missing, demo002.missing) == (3, (), ("demo002_en.srt",))
    assert demo001.spec is not None and demo001.spec.tasks[0].prompt == (
        "a lighthouse keeper's day. a lighthouse on a cliff at dawn, "
        "watercolour storybook illustration, soft light"
    )


def _texts(prompt: str) -> list[str]:
    from pixelkiln.wildcards import Library, combinations, parse

    return list(combinations(parse(prompt, Library(None))))


def test_scene_text_is_text_and_only_the_template_and_style_hold_wildcards(
    tmp_path: Path,
) -> None:
    data = {**STUDIO, "prompt_template": "{prompt}, {{lit}} {a|b}, {style}"}
    config = write_config(tmp_path / "nightly.json", data)
    found = [
        {"id": "code", "image_prompt": "python code with __init__ method"},
        {"id": "door", "image_prompt": "a {OPEN|CLOSED} door"},
    ]
    make_project(tmp_path / "data", "project001", found)
    styled = Channel("world_zh", "{ink|oil}", {}, "kiln.toml")
    loaded = load_projects_config(config, {}, ProjectsSettings(), pids=["project001"])
    [first] = plan_projects(loaded, {"world_zh": styled}).projects
    assert first.spec is not None, first.problem
    code, door = (_texts(t.prompt or "") for t in first.spec.tasks)
    assert code[:2] == [
        "python code with __init__ method, {lit} a, ink",
        "python code with __init__ method, {lit} a, oil",
    ]
    assert len(code) == 4 and door[0] == "a {OPEN|CLOSED} door, {lit} a, ink"
    assert first.images == 8 and loaded.projects[0].pid == "project001"  # 2 scenes x 2 x 2


def test_a_pid_given_twice_runs_once_in_the_order_given(tmp_path: Path) -> None:
    config = write_config(tmp_path / "nightly.json", STUDIO)
    loaded = load_projects_config(
        config, {}, ProjectsSettings(), pids=["project002", "project001", "project002"]
    )
    assert [p.pid for p in loaded.projects] == ["project002", "project001"]


@pytest.mark.parametrize("images_dir", ["/tmp/elsewhere", "../outside", "{pid}/../../x"])
def test_an_images_dir_that_would_leave_the_projects_folder_fails_its_project(
    tmp_path: Path, images_dir: str
) -> None:
    data = {**STUDIO, "output": "project", "images_dir": images_dir}
    config = write_config(tmp_path / "nightly.json", data)
    make_project(tmp_path / "data", "project001", scenes(1))
    [first] = plan(config, pids=["project001"]).projects
    assert first.spec is None and "images_dir" in first.problem
    assert "would leave the projects folder" in first.problem
