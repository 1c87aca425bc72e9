"""Daemon configuration: defaults, TOML file, command-line overrides, validation at start.

Every key has a type and a range; an unknown key, a wrong type or a value out of range stops the
daemon before it binds anything, with one line that names the key and the source.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# key -> (type, default, (min, max) or None, help)
_SPEC: dict[str, tuple[type, Any, tuple[float, float] | None, str]] = {
    "registry": (str, "", None, "model registry directory"),
    "host": (str, "127.0.0.1", None, "public listen address"),
    "port": (int, 7411, (0, 65535), "public TCP port (0 = any free port)"),
    "redis": (str, "", None, "Redis URL for the shared counter store (empty = embedded store)"),
    "redis_prefix": (str, "slidr:", None, "key prefix in Redis"),
    "redis_timeout_ms": (int, 50, (1, 60_000), "Redis socket timeout"),
    "embedded_capacity": (int, 1 << 20, (1024, 1 << 31),
                          "keys per counter table the embedded store is sized for at start "
                          "(growing past it rehashes the table: a one-off pause of tens of ms)"),
    "workers": (int, 1, (1, 256), "worker processes sharing the port (SO_REUSEPORT)"),
    "admin_socket": (str, "", None, "Unix socket for admin methods (empty = none)"),
    "metrics_port": (int, -1, (-1, 65535), "Prometheus HTTP port (-1 = off, 0 = any)"),
    "metrics_host": (str, "127.0.0.1", None, "Prometheus HTTP address"),
    "decision_log": (str, "", None, "directory for the decision log (empty = off)"),
    "decision_log_max_bytes": (int, 256 << 20, (4096, 1 << 40), "rotate log files at this size"),
    "decision_log_features": (bool, True, None, "include the feature vector in each record"),
    "deadline_ms": (float, 4.0, (0.05, 60_000), "per-click deadline; later = fail-open"),
    "max_batch": (int, 512, (1, 65_536), "largest micro-batch"),
    "max_wait_us": (int, 500, (0, 1_000_000), "longest a click waits for a busy pipeline"),
    "busy_poll_us": (int, 0, (0, 10_000_000), "keep polling the sockets this long after the "
                     "last request instead of sleeping (0 = off): spends a core to skip the "
                     "VM's wake-up latency; see docs/daemon.md"),
    "pipeline_depth": (int, 4, (1, 64), "batches in flight at once on the pipelined Redis "
                       "connection (Redis runs them in order; embedded store: always 1)"),
    "max_message_bytes": (int, 1 << 20, (64, 1 << 30), "largest msgpack message"),
    "max_connections": (int, 4096, (1, 1_000_000), "open public connections"),
    "max_inflight_per_conn": (int, 16_384, (1, 10_000_000), "unanswered clicks per connection"),
    "max_inflight_total": (int, 65_536, (1, 100_000_000), "unanswered clicks in the process"),
    "max_score_many": (int, 10_000, (1, 10_000_000), "clicks in one score_many call"),
    "idle_timeout_s": (float, 300.0, (0.1, 86_400 * 7), "close connections idle this long"),
    "drain_timeout_s": (float, 10.0, (0.0, 3600), "SIGTERM: longest wait for in-flight work"),
    "backend": (str, "auto", None, "scorer backend: auto, onnxruntime, tensorrt"),
    "log_level": (str, "info", None, "debug, info, warning, error"),
}
_CHOICES = {
    "backend": ("auto", "onnxruntime", "tensorrt"),
    "log_level": ("debug", "info", "warning", "error"),
}


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where the value came from."""


@dataclass
class Config:
    registry: str = ""
    host: str = "127.0.0.1"
    port: int = 7411
    redis: str = ""
    redis_prefix: str = "slidr:"
    redis_timeout_ms: int = 50
    embedded_capacity: int = 1 << 20
    workers: int = 1
    admin_socket: str = ""
    metrics_port: int = -1
    metrics_host: str = "127.0.0.1"
    decision_log: str = ""
    decision_log_max_bytes: int = 256 << 20
    decision_log_features: bool = True
    deadline_ms: float = 4.0
    max_batch: int = 512
    max_wait_us: int = 500
    busy_poll_us: int = 0
    pipeline_depth: int = 4
    max_message_bytes: int = 1 << 20
    max_connections: int = 4096
    max_inflight_per_conn: int = 16_384
    max_inflight_total: int = 65_536
    max_score_many: int = 10_000
    idle_timeout_s: float = 300.0
    drain_timeout_s: float = 10.0
    backend: str = "auto"
    log_level: str = "info"

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


assert {f.name for f in fields(Config)} == set(_SPEC), "Config and _SPEC disagree"


def keys() -> dict[str, tuple[type, Any, tuple[float, float] | None, str]]:
    return dict(_SPEC)


def _coerce(key: str, value: Any, source: str) -> Any:
    typ, _default, rng, _help = _SPEC[key]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, not {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, not {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, not {value!r}")
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, not {value!r}")
    if rng is not None and not (rng[0] <= value <= rng[1]):
        raise ConfigError(f"{source}: '{key}' = {value!r} is out of range [{rng[0]}, {rng[1]}]")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{source}: '{key}' must be one of {', '.join(_CHOICES[key])}, "
                          f"not {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    # Accept either top-level keys or a [slidrd] table.
    if set(data) == {"slidrd"} and isinstance(data["slidrd"], dict):
        data = data["slidrd"]
    return data


def build(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
          file_name: str = "config") -> Config:
    """Defaults <- file values <- command-line overrides (None = not given); then validate."""
    cfg = Config()
    for source, values in ((file_name, file_values or {}), ("command line", overrides or {})):
        for key, value in values.items():
            if key not in _SPEC:
                near = [k for k in _SPEC if k.split("_")[0] == key.split("_")[0]]
                hint = f" (did you mean {', '.join(near)}?)" if near else ""
                raise ConfigError(f"{source}: unknown key '{key}'{hint}")
            if value is None:
                continue
            setattr(cfg, key, _coerce(key, value, source))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-key checks that a single key's range cannot express."""
    if not cfg.registry:
        raise ConfigError("'registry' is required (--registry DIR or registry = \"DIR\")")
    if not Path(cfg.registry).is_dir():
        raise ConfigError(f"registry directory not found: {cfg.registry}")
    if cfg.workers > 1 and not cfg.redis:
        raise ConfigError(
            f"workers = {cfg.workers} needs a shared store: the embedded store lives inside one "
            "process, so N workers would each count 1/N of the traffic. Use --redis URL, or "
            "workers = 1")
    if cfg.workers > 1 and cfg.port == 0:
        raise ConfigError("workers > 1 needs a fixed port (SO_REUSEPORT), not port = 0")
    if cfg.redis and not cfg.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"'redis' must be a redis://, rediss:// or unix:// URL, not {cfg.redis!r}")
    if cfg.max_inflight_per_conn > cfg.max_inflight_total:
        raise ConfigError("'max_inflight_per_conn' must not exceed 'max_inflight_total'")
    if cfg.max_score_many > cfg.max_inflight_per_conn:
        raise ConfigError("'max_score_many' must not exceed 'max_inflight_per_conn'")
