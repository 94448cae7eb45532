"""Config loading: defaults, environment overrides, and every error listed at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftd.config import load, load_text
from driftd.errors import ConfigError

MINIMAL = """
[schema]
features = [{ name = "a" }, { name = "b", kind = "categorical" }]
"""


def test_a_minimal_config_gets_documented_defaults() -> None:
    cfg = load_text(MINIMAL)
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.port == 8765
    assert cfg.schema.task == "classification"
    assert cfg.model.metric == "accuracy"
    schema = cfg.schema_obj()
    assert schema.numeric == ("a",) and schema.categorical == ("b",)


def test_environment_overrides_the_file_and_is_typed() -> None:
    env = {
        "DRIFTD_SERVER_PORT": "9100",
        "DRIFTD_SERVER_TOKEN": "0123456789abcdef0",
        "DRIFTD_LOG_LEVEL": "debug",
    }
    cfg = load_text(MINIMAL, env=env)
    assert cfg.server.port == 9100
    assert cfg.server.token == "0123456789abcdef0"
    assert cfg.log.level == "debug"


def test_a_bad_environment_value_is_reported_like_a_bad_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_text(MINIMAL, env={"DRIFTD_SERVER_PORT": "http"})
    assert err.value.errors == ["server.port: got 'http', expected an integer"]


def test_every_error_is_listed_at_once() -> None:
    text = """
unknown_section = 1
[server]
port = 70000
max_batch_size = true
[schema]
features = [{ name = "a" }, { name = "a" }]
[model]
metric = "rmse"
"""
    with pytest.raises(ConfigError) as err:
        load_text(text)
    errors = err.value.errors
    assert any(e.startswith("unknown_section: unknown key") for e in errors)
    assert "server.port: got 70000, expected a value <= 65535" in errors
    assert "server.max_batch_size: got True, expected an integer" in errors
    assert "schema.features: feature 'a' is declared more than once" in errors


def test_metric_must_fit_the_task() -> None:
    with pytest.raises(ConfigError) as err:
        load_text(MINIMAL + '\n[model]\nmetric = "rmse"\n')
    assert "model.metric: got 'rmse'" in err.value.errors[0]


def test_a_remote_bind_needs_a_token_or_an_explicit_opt_out() -> None:
    with pytest.raises(ConfigError) as err:
        load_text(MINIMAL + '\n[server]\nhost = "0.0.0.0"\n')
    assert "server.host" in err.value.errors[0]
    ok = load_text(MINIMAL + '\n[server]\nhost = "0.0.0.0"\ntoken = "a-long-enough-token"\n')
    assert ok.server.host == "0.0.0.0"


def test_state_directory_from_systemd_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = load_text(MINIMAL)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert cfg.state_dir == tmp_path


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "d.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL + '\n[state]\ndir = "var"\n')
    cfg = load(path, env={})
    assert cfg.state_dir == tmp_path / "conf" / "var"


def test_unreadable_and_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[schema\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parent.parent.joinpath("daemon").glob("*.toml"))
)
def test_shipped_configs_load(path: Path) -> None:
    load(path, env={})


def test_example_toml_documents_every_key() -> None:
    """Every setting (section and key) appears in daemon/example.toml, set or commented."""
    import dataclasses
    import re
    import typing

    from driftd.config import Config

    text = Path(__file__).parent.parent.joinpath("daemon", "example.toml").read_text()
    missing = []

    def walk(cls: type, section: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "source":
                continue
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                name = f"{section}.{f.name}" if section else f.name
                if f"[{name}]" not in text:
                    missing.append(f"[{name}]")
                walk(tp, name)  # type: ignore[arg-type]
            elif not re.search(
                rf"^#? ?{re.escape(f.name)} = ", text, re.MULTILINE
            ) and not re.search(rf"{{ ?{re.escape(f.name)} = ", text):
                missing.append(f"{section}.{f.name}")

    walk(Config, "")
    assert not missing, missing


def test_registry_retention_keeps_ten_by_default_and_names_a_bad_pin_or_count() -> None:
    cfg = load_text(MINIMAL)
    assert (cfg.model.keep_versions, cfg.model.pinned) == (10, [])
    assert load_text(MINIMAL + "[model]\npinned = [3, 7]\n").model.pinned == [3, 7]
    with pytest.raises(ConfigError) as err:
        load_text(MINIMAL + "[model]\nkeep_versions = 0\n")
    assert err.value.errors == ["model.keep_versions: got 0, expected a value >= 1"]
    with pytest.raises(ConfigError) as err:
        load_text(MINIMAL + "[model]\npinned = [2, 0]\n")
    assert err.value.errors == ["model.pinned: got 0, expected version numbers >= 1"]
