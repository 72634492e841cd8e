"""Settings: file, environment, defaults, errors, and that every key is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from pixelkiln.config import BackendSettings, ChannelSettings, Settings, load_settings
from pixelkiln.exceptions import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# these tests read the configuration itself: not the suite's database variable
pytestmark = pytest.mark.usefixtures("no_suite_database")


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None)
    assert settings.scheduler.concurrency == 4
    assert settings.scheduler.max_attempts == 3
    assert [b.name for b in settings.effective_backends()] == ["placeholder"]
    assert settings.storage.resolved_database_url().endswith("kiln-data/kiln.db")


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text("[scheduler]\nconcurrency = 2\nmax_attempts = 5\n")
    monkeypatch.setenv("KILN_SCHEDULER__CONCURRENCY", "7")
    settings = load_settings(config)
    assert (settings.scheduler.concurrency, settings.scheduler.max_attempts) == (7, 5)


def test_backends_from_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_BACKENDS", '[{"name": "a", "type": "sdwebui", "urls": ["http://x"]}]')
    assert load_settings(None).default_backend() == "a"


def test_unknown_key_and_bad_value_are_named(tmp_path: Path) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text("[scheduler]\nconcurency = 2\nmax_attempts = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "scheduler.concurency" in str(caught.value)
    assert "scheduler.max_attempts" in str(caught.value)


def test_broken_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "kiln.toml"
    broken.write_text("[scheduler\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_duplicate_backend_names_are_refused() -> None:
    entry = {"name": "a", "type": "placeholder"}
    with pytest.raises(ConfigError, match="repeated: a"):
        load_settings(None, backends=[entry, entry])


def test_secret_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = BackendSettings(name="o", type="openai", api_key="inline", api_key_env="MY_KEY")
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        backend.secret()
    monkeypatch.setenv("MY_KEY", "from-env")
    assert backend.secret() == "from-env"
    assert "inline" not in repr(backend)


def _sections() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        model = {"backends": BackendSettings, "channels": ChannelSettings}.get(
            name, field.annotation
        )
        assert isinstance(model, type) and issubclass(model, BaseModel)
        title = {"backends": "[[backends]]", "channels": "[channels.NAME]"}.get(name, f"[{name}]")
        sections[title] = model
    return sections


def test_relative_storage_paths_are_the_config_files_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "kiln"
    folder.mkdir(parents=True)
    (folder / "kiln.toml").write_text(
        '[storage]\ndata_dir = "data"\ndatabase_url = "sqlite:///db/kiln.db?timeout=5"\n'
    )
    monkeypatch.chdir("/")  # as cron runs it
    settings = load_settings(folder / "kiln.toml")
    assert settings.storage.data_dir == folder / "data"
    assert settings.storage.resolved_database_url() == f"sqlite:///{folder}/db/kiln.db?timeout=5"
    monkeypatch.chdir(tmp_path)  # the file named relative to where the command runs
    assert load_settings(Path("etc/kiln/kiln.toml")).storage.data_dir == folder / "data"


def test_absolute_and_server_storage_paths_are_kept(tmp_path: Path) -> None:
    config = tmp_path / "kiln.toml"
    config.write_text(
        '[storage]\ndata_dir = "/srv/kiln"\ndatabase_url = "postgresql+psycopg://db/kiln"\n'
    )
    storage = load_settings(config).storage
    assert (storage.data_dir, storage.database_url) == (
        Path("/srv/kiln"),
        "postgresql+psycopg://db/kiln",
    )
    config.write_text('[storage]\ndatabase_url = "sqlite:////var/kiln.db"\n')
    assert load_settings(config).storage.database_url == "sqlite:////var/kiln.db"


def test_without_a_file_or_from_the_environment_paths_are_the_current_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(None).storage.data_dir == Path("kiln-data")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "kiln.toml").write_text('[storage]\ndata_dir = "data"\n')
    monkeypatch.setenv("KILN_STORAGE__DATA_DIR", "from-env")
    assert load_settings(tmp_path / "conf" / "kiln.toml").storage.data_dir == Path("from-env")


def test_every_setting_has_a_default_or_is_required_and_has_help() -> None:
    for section, model in _sections().items():
        for key, field in model.model_fields.items():
            assert field.description, f"{section} {key} has no description"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for section, model in _sections().items():
        match = re.search(rf"### `{re.escape(section)}`\n(.*?)(?=\n### |\Z)", text, re.S)
        assert match, f"docs/configuration.md has no section {section}"
        for key in model.model_fields:
            assert f"| `{key}` |" in match.group(1), f"{section} {key} is not documented"


def _backends(**fallbacks: list[str]) -> list[dict[str, object]]:
    return [{"name": n, "type": "placeholder", "fallback": f} for n, f in fallbacks.items()]


def test_fallback_chains_follow_each_backend_in_order() -> None:
    settings = load_settings(None, backends=_backends(a=["b", "c"], b=["d"], c=[], d=[]))
    assert settings.fallback_chain("a") == ["b", "d", "c"]
    assert settings.fallback_chain("b") == ["d"]
    assert settings.fallback_chain("c") == []
    assert (settings.scheduler.down_timeout, settings.scheduler.stall_seconds) == (600.0, 60.0)


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [
        ({"a": ["x"]}, "backend 'a': fallback names unknown backend(s) x; configured: a"),
        ({"a": ["a"]}, "fallback chains must not loop: a → a"),
        ({"a": ["b"], "b": ["c"], "c": ["b"]}, "fallback chains must not loop: b → c → b"),
    ],
)
def test_a_fallback_must_name_a_backend_and_never_loop(
    fallbacks: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, backends=_backends(**fallbacks))
    assert f"backends: {message}" in str(caught.value)
