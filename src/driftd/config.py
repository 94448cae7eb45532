"""Typed settings from a TOML file, with ``DRIFTD_<SECTION>_<KEY>`` environment overrides.

One :class:`Config` object is built at start-up and passed to every component; nothing else
reads the file or the environment. Every problem is collected and reported at once, naming
the key, the bad value and what was expected. Every key is documented in
``daemon/example.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "Config",
    "DemoConfig",
    "FeatureConfig",
    "LogConfig",
    "SchemaConfig",
    "ServerConfig",
    "StateConfig",
    "StoreConfig",
    "load",
    "load_text",
]

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "r2")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


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

    def validate(self) -> list[str]:
        if self.token is not None and len(self.token) < 16:
            return ["token: got a token shorter than 16 characters, expected at least 16"]
        if (
            self.host not in LOOPBACK
            and self.token is None
            and not self.allow_unauthenticated_remote
        ):
            return [
                f"host: got {self.host!r} without a token, expected a loopback address, a token,"
                " or allow_unauthenticated_remote = true"
            ]
        return []


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
    retention_rows: int | None = field(default=1_000_000, metadata={"min": 1000})
    retention_seconds: float | None = field(default=None, metadata={"min": 60})
    retention_interval_seconds: float = field(default=30.0, metadata={"min": 0.1})


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


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of one daemon. Build it with :func:`load`."""

    schema: SchemaConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = field(default="<memory>", compare=False)

    def validate(self) -> list[str]:
        metrics = (
            CLASSIFICATION_METRICS if self.schema.task == "classification" else REGRESSION_METRICS
        )
        if self.model.metric not in metrics:
            return [
                f"model.metric: got {self.model.metric!r}, expected one of "
                + ", ".join(repr(m) for m in metrics)
                + f" for task {self.schema.task!r}"
            ]
        return []

    @property
    def state_dir(self) -> Path:
        """``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``) wins over the file."""
        env = os.environ.get("STATE_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        path = Path(self.state.dir)
        if not path.is_absolute() and self.source not in ("<memory>", ""):
            path = Path(self.source).parent / path
        return path

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        path = Path(value)
        if path.is_absolute() or self.source in ("<memory>", ""):
            return path
        return Path(self.source).parent / path

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
    if errors or config is None:
        raise ConfigError(errors)
    return dataclasses.replace(config, source=source)


_SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "source"]


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
