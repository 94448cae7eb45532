"""Config loading: defaults, environment overrides, and every error listed at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from driftd.config import load, load_text
from driftd.errors import ConfigError
from tests.conftest import require_tool, self_signed_cert

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
            if f.name == "file":
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


# -- auth scopes and TLS ------------------------------------------------------------------------
TOKEN_A = "ingest-token-0123456789"
TOKEN_B = "read-token-0123456789ab"


def test_scoped_tokens_come_from_the_file_and_token_files_and_server_token_holds_every_scope(
    tmp_path: Path,
) -> None:
    (tmp_path / "read.tokens").write_text(f"\n{TOKEN_B}  \n\nanother-read-token-0123\n")
    path = tmp_path / "d.toml"
    path.write_text(
        MINIMAL
        + '[server]\ntoken = "legacy-token-0123456789"\n'
        + f'[auth.tokens]\ningest = ["{TOKEN_A}"]\n'
        + '[auth.token_files]\nread = ["read.tokens"]\n'
    )
    tokens = load(path, env={}).scope_tokens()
    assert tokens == {
        "ingest": (TOKEN_A, "legacy-token-0123456789"),
        "predict": ("legacy-token-0123456789",),
        "operate": ("legacy-token-0123456789",),
        "read": (TOKEN_B, "another-read-token-0123", "legacy-token-0123456789"),
    }


def test_scoped_tokens_can_come_from_the_environment() -> None:
    cfg = load_text(MINIMAL, env={"DRIFTD_AUTH_TOKENS": f'{{ operate = ["{TOKEN_A}"] }}'})
    assert cfg.scope_tokens()["operate"] == (TOKEN_A,)
    assert cfg.scope_tokens()["read"] == ()
    assert cfg.auth.open_probes


def test_bad_tokens_and_token_files_are_listed_with_their_keys_and_never_echoed(
    tmp_path: Path,
) -> None:
    (tmp_path / "short").write_text(f"{TOKEN_A}\ntoo-short\n")
    (tmp_path / "empty").write_text("\n\n")
    (tmp_path / "a-dir").mkdir()
    path = tmp_path / "d.toml"
    path.write_text(
        MINIMAL
        + '[auth.tokens]\npredict = ["tiny", "has a space in it, 0123"]\n'
        + '[auth.token_files]\ningest = ["short", "missing"]\noperate = ["empty"]\n'
        + 'read = ["a-dir"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    errors = err.value.errors
    assert errors == [
        "auth.tokens.predict[0]: got a token shorter than 16 characters, expected at least 16",
        "auth.tokens.predict[1]: got a token with a space or a character outside visible ASCII,"
        " expected neither",
        f"auth.token_files.ingest[0]: line 2 of {str(tmp_path / 'short')!r}: got a token"
        " shorter than 16 characters, expected at least 16",
        f"auth.token_files.ingest[1]: cannot read {str(tmp_path / 'missing')!r}"
        " (No such file or directory)",
        f"auth.token_files.operate[0]: {str(tmp_path / 'empty')!r} holds no token,"
        " expected one token a line",
        f"auth.token_files.read[0]: cannot read {str(tmp_path / 'a-dir')!r} (Is a directory)",
    ]
    assert not [e for e in errors if "tiny" in e or "too-short" in e or TOKEN_A in e]


def test_check_config_lists_token_and_tls_errors_with_the_others(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        MINIMAL
        + '[server]\nport = "x"\n'
        + '[auth.token_files]\nread = ["nowhere"]\n[auth.tokens]\nadmin = ["x"]\n'
    )
    first = _check_config(path)
    assert first.returncode == 2
    assert "server.port: got 'x', expected an integer" in first.stderr
    assert "auth.tokens.admin: unknown key (known keys: ingest, operate, predict, read)" in (
        first.stderr
    )
    path.write_text(
        MINIMAL
        + '[server]\ntls_certfile = "cert.pem"\n'
        + '[auth.token_files]\nread = ["nowhere"]\n[auth.tokens]\noperate = ["x"]\n'
    )
    second = _check_config(path)
    assert second.returncode == 2
    assert "3 error(s)" in second.stderr
    for expected in (
        "server.tls_certfile: got only one of tls_certfile and tls_keyfile, expected both",
        "auth.tokens.operate[0]: got a token shorter than 16 characters",
        f"auth.token_files.read[0]: cannot read {str(tmp_path / 'nowhere')!r}",
    ):
        assert expected in second.stderr, second.stderr


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftd", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_remote_bind_is_allowed_with_scoped_tokens_only(tmp_path: Path) -> None:
    (tmp_path / "ingest").write_text(TOKEN_A + "\n")
    remote = MINIMAL + '[server]\nhost = "0.0.0.0"\n'
    assert load_text(remote + f'[auth.tokens]\nread = ["{TOKEN_B}"]\n').server.host == "0.0.0.0"
    files = remote + f'[auth.token_files]\ningest = ["{tmp_path / "ingest"}"]\n'
    assert load_text(files).scope_tokens()["ingest"] == (TOKEN_A,)
    with pytest.raises(ConfigError) as err:
        load_text(remote + "[auth]\nopen_probes = false\n")
    assert err.value.errors[0].startswith("server.host: got '0.0.0.0' without a token")


def test_tls_needs_a_readable_certificate_and_its_own_key(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed_cert(other)

    def tls(certfile: Path | str, keyfile: Path | str) -> str:
        return MINIMAL + f'[server]\ntls_certfile = "{certfile}"\ntls_keyfile = "{keyfile}"\n'

    path = tmp_path / "d.toml"
    path.write_text(tls("cert.pem", "key.pem"))  # relative to the config file
    assert load(path, env={}).server.tls_keyfile == "key.pem"
    with pytest.raises(ConfigError) as err:
        load_text(tls(tmp_path / "none.pem", tmp_path / "key.pem"))
    assert err.value.errors == [
        f"server.tls_certfile: cannot read {str(tmp_path / 'none.pem')!r}"
        " (No such file or directory)"
    ]
    with pytest.raises(ConfigError) as err:
        load_text(tls(cert, other_key))
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith(
        f"server.tls_certfile: {str(cert)!r} and {str(other_key)!r} are not a PEM certificate"
        " and its unencrypted private key"
    )
    with pytest.raises(ConfigError) as err:
        load_text(tls(key, cert))
    assert "are not a PEM certificate" in err.value.errors[0]


def test_an_encrypted_tls_key_is_refused_rather_than_prompted_for(tmp_path: Path) -> None:
    """OpenSSL would ask for the passphrase on a terminal the daemon does not have."""
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    args = ["req", "-x509", "-days", "2", "-subj", "/CN=localhost", "-passout", "pass:secret"]
    args += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run(
        [openssl, *args, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    text = MINIMAL + f'[server]\ntls_certfile = "{cert}"\ntls_keyfile = "{key}"\n'
    with pytest.raises(ConfigError) as err:
        load_text(text)
    assert "its unencrypted private key" in err.value.errors[0]


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


def test_the_source_section_defaults_to_none_and_derives_subjects_and_consumer() -> None:
    cfg = load_text(MINIMAL)
    assert cfg.source.kind == "none"
    cfg = load_text(MINIMAL + '[source]\nkind = "nats"\nmodel = "fraud"\n')
    assert cfg.source.subjects == ("driftd.fraud.records", "driftd.fraud.labels")
    assert cfg.source.consumer == "driftd-fraud"
    assert cfg.file == "<memory>"  # the file's path is not the [source] section
    env = {"DRIFTD_SOURCE_URL": "nats://a:4222, nats://b:4222"}
    assert load_text(MINIMAL, env=env).source.servers == ["nats://a:4222", "nats://b:4222"]


def test_source_names_that_nats_would_refuse_are_listed_without_echoing_the_url() -> None:
    text = MINIMAL + (
        '[source]\nkind = "nats"\nurl = "http://user:secret@host"\nstream = "a.b"\n'
        'subject_prefix = "driftd.>"\nmodel = "x y"\nbackoff_min_seconds = 60.0\n'
    )
    with pytest.raises(ConfigError) as err:
        load_text(text)
    keys = [e.split(":")[0] for e in err.value.errors]
    assert keys == [
        "source.subject_prefix",
        "source.stream",
        "source.model",
        "source.url",
        "source.backoff_min_seconds",
    ]
    assert not any("secret" in e for e in err.value.errors)


def test_a_nats_source_without_nats_py_installed_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nats", None)  # what an interpreter without it finds
    assert load_text(MINIMAL).source.kind == "none"  # the embedded default never needs it
    with pytest.raises(ConfigError) as err:
        load_text(MINIMAL + '[source]\nkind = "nats"\n')
    assert err.value.errors == [
        "source.kind: 'nats' needs the nats-py package, which is not installed"
        " (pip install 'driftd[nats]')"
    ]
