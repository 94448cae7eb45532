"""Typed settings from a TOML file, with ``DRIFTD_<SECTION>_<KEY>`` environment overrides.

One :class:`Config` object is built at start-up and passed to every component; nothing else
reads the file or the environment. Every problem is collected and reported at once, naming
the key, the bad value and what was expected. Every key is documented in
``daemon/example.toml``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from driftd._credentials import read_token_file, tls_problem, token_problem, unreadable
from driftd._settings import build
from driftd.alerts import AlertsConfig
from driftd.errors import ConfigError
from driftd.ingest.schema import Feature, Schema
from driftd.monitor.config import MonitorConfig
from driftd.retrain.config import (
    BootstrapConfig,
    GuardConfig,
    ModelConfig,
    RetrainConfig,
    RetrainSettings,
    TrainingConfig,
)
from driftd.retrain.gate import GateConfig
from driftd.retrain.pool import PoolConfig
from driftd.store.postgres import NAMESPACE_PATTERN

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "SCOPES",
    "AuthConfig",
    "Config",
    "DemoConfig",
    "FeatureConfig",
    "LogConfig",
    "SchemaConfig",
    "Scope",
    "ScopeTokens",
    "ServerConfig",
    "SourceConfig",
    "StateConfig",
    "StoreConfig",
    "load",
    "load_text",
]

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "r2")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

Scope = Literal["ingest", "predict", "operate", "read"]
#: What a token may do: post records and labels, predict, retrain and roll back, read.
SCOPES: tuple[Scope, ...] = ("ingest", "predict", "operate", "read")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata={"min": 0, "max": 65535})
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata={"min": 1024})
    max_batch_size: int = field(default=10_000, metadata={"min": 1})
    token: str | None = None
    allow_unauthenticated_remote: bool = False
    shutdown_timeout_seconds: float = field(default=10.0, metadata={"min": 0})
    read_timeout_seconds: float = field(default=30.0, metadata={"min": 0.1})
    read_idle_seconds: float = field(default=10.0, metadata={"min": 0.1})
    tls_certfile: str | None = None
    tls_keyfile: str | None = None

    def validate(self) -> list[str]:
        errors = []
        if self.token is not None and (problem := token_problem(self.token)) is not None:
            errors.append(f"token: {problem}")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            errors.append(
                "tls_certfile: got only one of tls_certfile and tls_keyfile, expected both"
                " (TLS) or neither (plain HTTP)"
            )
        return errors

    def tls_errors(self, resolve: Callable[[str], Path]) -> list[str]:
        """Problems with the TLS pair: both files readable, and a certificate with its key."""
        cert, key = self.tls_certfile, self.tls_keyfile
        if cert is None or key is None:
            return []
        missing = [
            f"tls_{name}: {problem}"
            for name, path in (("certfile", cert), ("keyfile", key))
            if (problem := unreadable(resolve(path))) is not None
        ]
        problem = None if missing else tls_problem(resolve(cert), resolve(key))
        return missing + ([f"tls_certfile: {problem}"] if problem else [])


@dataclass(frozen=True, slots=True)
class ScopeTokens:
    """One list for each scope: tokens in ``[auth.tokens]``, file paths in
    ``[auth.token_files]``."""

    ingest: list[str] = field(default_factory=list)
    predict: list[str] = field(default_factory=list)
    operate: list[str] = field(default_factory=list)
    read: list[str] = field(default_factory=list)

    def of(self, scope: Scope) -> list[str]:
        return {
            "ingest": self.ingest,
            "predict": self.predict,
            "operate": self.operate,
            "read": self.read,
        }[scope]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Bearer tokens by scope. Once any token exists (here or ``[server] token``, which holds
    every scope), every route needs one of its scope, except the probes while ``open_probes``."""

    tokens: ScopeTokens = field(default_factory=ScopeTokens)
    token_files: ScopeTokens = field(default_factory=ScopeTokens)
    open_probes: bool = True

    def validate(self) -> list[str]:
        return [
            f"tokens.{scope}[{i}]: {problem}"
            for scope in SCOPES
            for i, token in enumerate(self.tokens.of(scope))
            if (problem := token_problem(token)) is not None
        ]

    def configured(self) -> bool:
        return any(self.tokens.of(scope) or self.token_files.of(scope) for scope in SCOPES)

    def read(
        self, every: list[str], resolve: Callable[[str], Path]
    ) -> tuple[dict[Scope, tuple[str, ...]], list[str]]:
        """Each scope's tokens (its own, the lines of its files, then ``every``) and the
        problems with the files."""
        tokens: dict[Scope, tuple[str, ...]] = {}
        errors: list[str] = []
        for scope in SCOPES:
            found = list(self.tokens.of(scope))
            for i, name in enumerate(self.token_files.of(scope)):
                lines, problems = read_token_file(resolve(name))
                found += lines
                errors += [f"token_files.{scope}[{i}]: {p}" for p in problems]
            tokens[scope] = (*found, *every)
        return tokens, errors


@dataclass(frozen=True, slots=True)
class StateConfig:
    dir: str = "./var"


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    name: str
    kind: Literal["numeric", "categorical"] = "numeric"


@dataclass(frozen=True, slots=True)
class SchemaConfig:
    features: list[FeatureConfig]
    task: Literal["classification", "regression"] = "classification"
    target: str = "label"
    id_field: str | None = None
    timestamp_field: str | None = None
    max_string_length: int = field(default=256, metadata={"min": 1, "max": 1_000_000})
    label_type: Literal["integer", "string"] | None = None
    max_timestamp_ahead_seconds: float = field(default=3600.0, metadata={"min": 0})

    def validate(self) -> list[str]:
        errors = []
        if not self.features:
            errors.append("features: got an empty list, expected at least one feature")
        names = [f.name for f in self.features]
        errors += [
            f"features: feature {name!r} is declared more than once"
            for name in sorted({n for n in names if names.count(n) > 1})
        ]
        errors += [
            f"features: got name {name!r}, expected 1 to 128 characters"
            for name in names
            if not name or len(name) > 128
        ]
        reserved = {n for n in (self.target, self.id_field, self.timestamp_field) if n}
        errors += [
            f"features: {name!r} is also the target, id or timestamp field"
            for name in sorted(reserved & set(names))
        ]
        return errors

    def build(self) -> Schema:
        return Schema(
            features=tuple(Feature(f.name, f.kind) for f in self.features),
            task=self.task,
            target=self.target,
            id_field=self.id_field,
            timestamp_field=self.timestamp_field,
            max_string_length=self.max_string_length,
            label_type=self.label_type if self.task == "classification" else None,
            max_timestamp_ahead=self.max_timestamp_ahead_seconds,
        )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where records live: SQLite in the state directory (the default), or PostgreSQL at
    ``url``, in the schema ``namespace`` (one per model), for several daemons of one model."""

    url: str | None = None
    namespace: str = "driftd"
    retention_rows: int | None = field(default=1_000_000, metadata={"min": 1000})
    retention_seconds: float | None = field(default=None, metadata={"min": 60})
    retention_interval_seconds: float = field(default=30.0, metadata={"min": 0.1})

    def validate(self) -> list[str]:
        errors = []
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            errors.append(
                f"url: got {_redacted(self.url)!r}, expected a PostgreSQL URL"
                " (postgresql://user@host:5432/database); omit it for SQLite in state.dir"
            )
        if not NAMESPACE_PATTERN.match(self.namespace):
            errors.append(
                f"namespace: got {self.namespace!r}, expected a lower-case identifier"
                " (letters, digits and _, at most 63, not starting with a digit)"
            )
        return errors


@dataclass(frozen=True, slots=True)
class DemoConfig:
    stream: Literal["agrawal", "sea", "stagger"] = "agrawal"
    concepts: list[int] = field(default_factory=lambda: [0, 2, 4])
    segment: int = field(default=6000, metadata={"min": 100})
    rate: float = field(default=400.0, metadata={"min": 1})
    batch: int = field(default=20, metadata={"min": 1})
    label_delay_seconds: float = field(default=1.0, metadata={"min": 0})
    corrupt_start: int | None = field(default=None, metadata={"min": 0})
    corrupt_rows: int = field(default=1500, metadata={"min": 1})
    seed: int = 7

    def validate(self) -> list[str]:
        top = {"agrawal": 9, "sea": 3, "stagger": 2}[self.stream]
        bad = [c for c in self.concepts if not 0 <= c <= top]
        if not self.concepts or bad:
            return [
                f"concepts: got {self.concepts!r}, expected a non-empty list of 0..{top}"
                f" for {self.stream}"
            ]
        return []


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a JetStream stream / consumer name, a subject token


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Traffic consumed from a broker beside HTTP ingest (``service/jetstream.py``).

    With ``kind = "nats"`` records and labels are pulled from the durable JetStream consumer
    ``durable`` (default ``driftd-<model>``) on stream ``stream`` (created when missing),
    subjects ``<subject_prefix>.<model>.records`` and ``<subject_prefix>.<model>.labels``.
    """

    kind: Literal["none", "nats"] = "none"
    url: str = "nats://127.0.0.1:4222"
    stream: str = "DRIFTD"
    subject_prefix: str = "driftd"
    model: str = "default"
    durable: str | None = None
    batch: int = field(default=100, metadata={"min": 1, "max": 10_000})
    ack_wait_seconds: float = field(default=30.0, metadata={"min": 1})
    nak_delay_seconds: float = field(default=5.0, metadata={"min": 0})
    lag_interval_seconds: float = field(default=5.0, metadata={"min": 0.1})
    backoff_min_seconds: float = field(default=0.5, metadata={"min": 0.01})
    backoff_max_seconds: float = field(default=30.0, metadata={"min": 0.01})

    @property
    def subjects(self) -> tuple[str, str]:
        """The records and the labels subject."""
        base = f"{self.subject_prefix}.{self.model}"
        return f"{base}.records", f"{base}.labels"

    @property
    def servers(self) -> list[str]:
        """The URLs in ``url`` (one, or several separated by commas: a cluster)."""
        return [u.strip() for u in self.url.split(",")]

    @property
    def consumer(self) -> str:
        return self.durable or f"driftd-{self.model}"

    def validate(self) -> list[str]:
        errors = []
        if not all(_NAME.match(t) for t in self.subject_prefix.split(".")):
            errors.append(
                f"subject_prefix: got {self.subject_prefix!r}, expected dot-separated tokens"
                " of letters, digits, '_' and '-' (no wildcard)"
            )
        named = {"stream": self.stream, "model": self.model, "durable": self.durable}
        errors += [
            f"{key}: got {value!r}, expected 1 to 64 letters, digits, '_' or '-'"
            for key, value in named.items()
            if value is not None and not _NAME.match(value)
        ]
        if not all(u.startswith(("nats://", "tls://")) for u in self.servers):
            errors.append("url: expected a nats:// or tls:// URL, or several separated by commas")
        if self.backoff_min_seconds > self.backoff_max_seconds:
            errors.append(
                f"backoff_min_seconds: got {self.backoff_min_seconds:g}, expected at most"
                f" backoff_max_seconds ({self.backoff_max_seconds:g})"
            )
        if self.kind == "nats" and importlib.util.find_spec("nats") is None:
            errors.append(
                "kind: 'nats' needs the nats-py package, which is not installed"
                " (pip install 'driftd[nats]')"
            )
        return errors


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of one daemon. Build it with :func:`load`."""

    schema: SchemaConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    state: StateConfig = field(default_factory=StateConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    #: The file the settings were read from (``<memory>`` for a string): the anchor of
    #: relative paths and what a reload reads again. Not a section.
    file: str = field(default="<memory>", compare=False)

    def validate(self) -> list[str]:
        errors = []
        metrics = (
            CLASSIFICATION_METRICS if self.schema.task == "classification" else REGRESSION_METRICS
        )
        if self.model.metric not in metrics:
            errors.append(
                f"model.metric: got {self.model.metric!r}, expected one of "
                + ", ".join(repr(m) for m in metrics)
                + f" for task {self.schema.task!r}"
            )
        if (
            self.server.host not in LOOPBACK
            and self.server.token is None
            and not self.auth.configured()
            and not self.server.allow_unauthenticated_remote
        ):
            errors.append(
                f"server.host: got {self.server.host!r} without a token, expected a loopback"
                " address, a token ([server] token, [auth.tokens] or [auth.token_files]),"
                " or allow_unauthenticated_remote = true"
            )
        return errors

    def scope_tokens(self) -> dict[Scope, tuple[str, ...]]:
        """Every token each scope accepts: ``[auth.tokens]``, the lines of ``[auth.token_files]``
        (read now: the daemon calls this at start-up) and ``[server] token`` in every scope.
        Raises :class:`ConfigError` when a file cannot be read or holds a bad token."""
        every = [self.server.token] if self.server.token is not None else []
        tokens, errors = self.auth.read(every, self.resolve)
        if errors:
            raise ConfigError([f"auth.{e}" for e in errors])
        return tokens

    @property
    def state_dir(self) -> Path:
        """``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``) wins over the file."""
        env = os.environ.get("STATE_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        path = Path(self.state.dir)
        if not path.is_absolute() and self.file not in ("<memory>", ""):
            path = Path(self.file).parent / path
        return path

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        return _resolve(self.file, value)

    def schema_obj(self) -> Schema:
        return self.schema.build()

    def retrain_settings(self) -> RetrainSettings:
        """The sections the retrainer works from."""
        return RetrainSettings(
            self.model,
            self.training,
            self.retrain,
            self.gate,
            self.guard,
            escalate_after=self.alerts.escalate_after,
            pool=self.pool,
        )


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config file; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the file is not valid UTF-8"]) from None
    return load_text(text, source=str(path), env=env)


def load_text(
    text: str, *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Config:
    """Like :func:`load`, from a string (``source`` names it in messages and anchors paths)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML ({exc})"]) from None
    errors: list[str] = []
    _apply_env(data, os.environ if env is None else env, errors)
    config = build(Config, data, "", errors)
    errors += _file_errors(data, source)
    if errors or config is None:
        raise ConfigError(errors)
    return dataclasses.replace(config, file=source)


def _file_errors(data: dict[str, Any], source: str) -> list[str]:
    """Problems with the files the server's sections name (token files, the TLS pair).

    The two sections are built again on their own, so that their files are checked even when
    another key is wrong and every error is listed at once; their own key errors are already
    in the build of the whole config.
    """
    reported: list[str] = []
    server = build(ServerConfig, data.get("server", {}), "server", reported)
    auth = build(AuthConfig, data.get("auth", {}), "auth", reported)
    resolve = functools.partial(_resolve, source)
    errors = [] if server is None else [f"server.{e}" for e in server.tls_errors(resolve)]
    if auth is not None:
        errors += [f"auth.{e}" for e in auth.read([], resolve)[1]]
    return errors


def _resolve(source: str, value: str) -> Path:
    path = Path(value)
    if path.is_absolute() or source in ("<memory>", ""):
        return path
    return Path(source).parent / path


_SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "file"]


def _apply_env(data: dict[str, Any], env: Mapping[str, str], errors: list[str]) -> None:
    """Apply ``DRIFTD_<SECTION>_<KEY>=value``; the value is read as TOML, else as a string."""
    for name, raw in sorted(env.items()):
        if not name.startswith("DRIFTD_"):
            continue
        rest = name[len("DRIFTD_") :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :]
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            errors.append(f"{name}: section {section!r} in the file is not a table")
            continue
        table[key] = _env_value(raw)


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _redacted(url: str) -> str:
    """``url`` without the password a connection URL may carry."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.rpartition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"
