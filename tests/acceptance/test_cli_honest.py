"""Small honest behaviours of the `kiln` command, as a user (or cron) meets them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
from test_cli import kiln
from test_serve import AUTH, CONFIG, serving

PLACEHOLDER = (
    '[[backends]]\nname = "placeholder"\ntype = "placeholder"\n'
    '[backends.options]\nreject_if_prompt_contains = "bad"\n'
    "[scheduler]\nretry_base_delay = 0.01\n"
)


def test_a_relative_data_dir_is_the_config_files_folders(tmp_path: Path) -> None:
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()  # cron runs commands from a folder of its own (/)
    (conf / "kiln.toml").write_text(f'[storage]\ndata_dir = "data"\n{PLACEHOLDER}')
    (conf / "b.yaml").write_text("defaults: {width: 64, height: 64}\ntasks: [{prompt: a}]\n")
    done = kiln(elsewhere, "run", "--config", str(conf / "kiln.toml"), str(conf / "b.yaml"))
    assert done.returncode == 0, done.stderr
    assert len(list((conf / "data" / "images" / "1").glob("*.png"))) == 1
    assert len(list((conf / "data" / "logs").glob("kiln_*.log"))) == 1
    assert list(elsewhere.iterdir()) == []
    status = kiln(elsewhere, "status", "1", "--config", str(conf / "kiln.toml"))
    assert status.returncode == 0 and "completed" in status.stdout


def test_the_log_shows_values_never_enum_reprs(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(PLACEHOLDER)
    (tmp_path / "b.yaml").write_text(
        "defaults: {width: 64, height: 64}\ntasks: [{prompt: good}, {prompt: bad}]\n"
    )
    assert kiln(tmp_path, "run", "b.yaml", "--quiet").returncode == 1
    [log] = (tmp_path / "kiln-data" / "logs").glob("kiln_*.log")
    text = log.read_text(encoding="utf-8")
    assert "batch_update status=running" in text and "batch_update status=partial" in text
    assert "summary={status=partial" in text
    for enum in ("BatchStatus", "TaskStatus", "EventType"):
        assert f"<{enum}." not in text and f"{enum}." not in text


def test_text_that_looks_like_markup_is_printed_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        'name: "[/x] night [red]"\ndefaults: {width: 64, height: 64}\ntasks: [{prompt: a}]\n'
    )
    done = kiln(tmp_path, "run", "b.yaml", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "'[/x] night [red]'" in done.stdout
    listed = kiln(tmp_path, "status")
    assert listed.returncode == 0 and "[/x] night [red]" in listed.stdout
    for ref in ("[/bold]", "[red]abc"):
        missing = kiln(tmp_path, "status", ref)
        assert missing.returncode == 2, missing.stderr  # a clean refusal, not a traceback
        assert f"no batch with id or name '{ref}'" in " ".join(missing.stderr.split())
        assert "Traceback" not in missing.stderr
    too_high = kiln(tmp_path, "concurrency", "999")
    assert too_high.returncode == 2 and "[server] max_concurrency" in too_high.stderr


def test_non_ascii_keys_and_prefixes_keep_their_letters(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "defaults: {width: 64, height: 64}\n"
        "tasks:\n"
        "  - {prompt: a, key: 场景1}\n"
        "  - {prompt: b, key: s2, filename_prefix: 第二幕/开场}\n"
        "  - {prompt: c, key: ../../etc}\n",
        encoding="utf-8",
    )
    assert kiln(tmp_path, "run", "b.yaml", "--quiet").returncode == 0
    names = sorted(p.name for p in (tmp_path / "kiln-data" / "images" / "1").iterdir())
    assert names == ["etc_0003_0.png", "场景1_0001_0.png", "第二幕_开场_0002_0.png"]
    assert kiln(tmp_path, "export", "1", "--to", "out.zip").returncode == 0
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert "场景1_0001_0.png" in archive.namelist()


def test_serve_writes_its_log_file(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG)
    body = {
        "name": "n",
        "defaults": {"width": 64, "height": 64},
        "tasks": [{"prompt": "REJECT", "key": "r"}],
    }
    with serving(tmp_path) as url:
        made = httpx.post(f"{url}/api/v1/batches?wait=true", json=body, timeout=30)
        assert made.json()["status"] == "failed"
    console = (tmp_path / "serve.log").read_text()
    assert "(docs at /docs)" in console
    [log] = (tmp_path / "kiln-data" / "logs").glob("serve_*.log")
    assert f"  log       kiln-data/logs/{log.name}" in console
    text = log.read_text(encoding="utf-8")
    assert "pixelkiln.serve: serving on 127.0.0.1:" in text
    assert "task r (batch 1, placeholder) attempt 1/3 failed" in text


def test_serve_with_auth_does_not_advertise_docs(tmp_path: Path) -> None:
    (tmp_path / "kiln.toml").write_text(CONFIG + AUTH)
    with serving(tmp_path) as url:
        assert httpx.get(f"{url}/docs").status_code == 404
    console = (tmp_path / "serve.log").read_text()
    assert "pixelkiln API on http://127.0.0.1:" in console and "/docs" not in console
