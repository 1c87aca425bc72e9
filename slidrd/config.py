"""Daemon configuration: defaults, TOML file, command-line overrides, validation at start.

Every key has a type and a range; an unknown key, a wrong type or a value out of range stops the
daemon before it binds anything, with one line that names the key and the source.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from slidr import options
from slidr.defaults import COMMON, GUARDRAILS
from slidr.options import Opt, OptionError, field_from, option, options_of

# What one click of the contract takes in a score_many message, ids and user agent included:
# max_score_many of them must fit in max_message_bytes.
TYPICAL_CLICK_BYTES = 256


class ConfigError(OptionError):
    """A configuration problem; the message names the key and where the value came from."""


# The one declaration of every daemon option: name and type (the field), default, range and
# help (option()). The TOML loader, the `slidrd serve` flags and the table in docs/daemon.md
# all come from it (options_of(Config)); tests/test_cli_convention.py holds the docs to it.
@dataclass
class Config:
    registry: str = option("", "model registry directory (required)", metavar="DIR")
    host: str = option("127.0.0.1", "public listen address")
    port: int = option(7411, "public TCP port (0 = any free port)", lo=0, hi=65535)
    redis: str = option("", "Redis URL for the shared counter store (empty = embedded store)",
                        metavar="URL")
    redis_mode: str = field_from(COMMON["redis_mode"])
    redis_prefix: str = option("slidr:", "key prefix in Redis")
    redis_timeout_ms: int = option(50, "Redis socket timeout (ms)", lo=1, hi=60_000)
    embedded_capacity: int = option(
        1 << 20, "keys per counter table the embedded store is sized for at start (growing "
        "past it rehashes the table: a one-off pause of tens of ms)", lo=1024, hi=1 << 31)
    workers: int = option(1, "worker processes sharing the port (SO_REUSEPORT)", lo=1, hi=256)
    admin_socket: str = option(
        "", "Unix socket for admin methods (empty = none)", metavar="PATH",
        per_command={"admin": ("/run/slidrd/admin.sock", "where the packaged unit's config "
                                                         "puts it; $SLIDRD_ADMIN_SOCKET "
                                                         "overrides")})
    metrics_port: int = option(-1, "Prometheus HTTP port (-1 = off, 0 = any)", lo=-1, hi=65535)
    metrics_host: str = option("127.0.0.1", "Prometheus HTTP address")
    decision_log: str = option("", "directory for the decision log (empty = off)",
                               metavar="DIR")
    decision_log_max_bytes: int = option(256 << 20, "rotate log files at this size (bytes)",
                                         lo=4096, hi=1 << 40)
    decision_log_features: bool = option(True, "include the feature vector in each record")
    decision_log_max_total_mb: int = option(
        10_240, "delete the oldest decision-log files beyond this total size (MiB; 0 = no "
                "limit)", lo=0, hi=1 << 30)
    decision_log_max_age_h: float = option(
        168.0, "delete decision-log files older than this (hours; 0 = no limit)", lo=0,
        hi=1e6)
    deadline_ms: float = option(4.0, "per-click deadline (ms); later = fail-open", lo=0.05,
                                hi=60_000)
    max_batch: int = option(512, "largest micro-batch", lo=1, hi=65_536)
    max_wait_us: int = option(500, "longest a click waits for a busy pipeline (us)", lo=0,
                              hi=1_000_000)
    busy_poll_us: int = option(
        0, "keep polling the sockets this long after the last request instead of sleeping "
        "(us; 0 = off): spends a core to skip the VM's wake-up latency; see docs/daemon.md",
        lo=0, hi=10_000_000)
    pipeline_depth: int = option(
        4, "batches in flight at once on the pipelined Redis connection (Redis runs them in "
        "order; embedded store: always 1)", lo=1, hi=64)
    max_message_bytes: int = option(1 << 20, "largest msgpack message (bytes)", lo=64,
                                    hi=1 << 30)
    max_connections: int = option(4096, "open public connections", lo=1, hi=1_000_000)
    max_inflight_per_conn: int = option(
        4096, "unanswered clicks per connection (the default leaves 16 connections at this "
        "limit room within max_inflight_total)", lo=1, hi=10_000_000)
    max_inflight_total: int = option(65_536, "unanswered clicks in the process", lo=1,
                                     hi=100_000_000)
    max_score_many: int = option(4096, "clicks in one score_many call (max_score_many x 256 "
                                 "bytes must fit in max_message_bytes)", lo=1, hi=10_000_000)
    idle_timeout_s: float = option(300.0, "close connections idle this long (s)", lo=0.1,
                                   hi=86_400 * 7)
    drain_timeout_s: float = option(10.0, "SIGTERM: longest wait for in-flight work (s)",
                                    lo=0.0, hi=3600)
    backend: str = option("auto", "scorer backend", choices=("auto", "onnxruntime", "tensorrt"))
    log_level: str = option("info", "log level", choices=("debug", "info", "warning", "error"))
    monitor: str = option(
        "rollback", "deviation monitor: rollback = roll the registry back to the previous "
        "stable bundle on a sharp, sustained IVR deviation; alert = log and count only; off",
        choices=("rollback", "alert", "off"))
    monitor_window_clicks: int = option(20_000, "a monitor window closes after at least "
                                        "this many clicks and monitor_window_s seconds", lo=100, hi=1 << 40)
    monitor_window_s: float = option(30.0, "a monitor window lasts at least this long (s)", lo=0.0,
                                     hi=86_400.0)
    monitor_ivr_ratio: float = option(
        1.5, "a window deviates when an IVR (overall or a slice's) lies beyond the shift the "
        "daily guardrails allow (monitor_ivr_band, monitor_slice_ivr_band) by more than this "
        "factor and by monitor_ivr_abs, and by monitor_z standard errors", lo=1.0, hi=1000.0)
    monitor_ivr_abs: float = option(0.02, "a deviation must also lie this far (absolute IVR) "
                                    "beyond the guardrails' allowance (0.02 = 2 points)",
                                    lo=0.0, hi=1.0)
    monitor_min_slice_clicks: int = option(1_000, "slices with fewer clicks in a window are "
                                           "not judged on their own", lo=1, hi=1 << 40)
    monitor_sustain: int = option(2, "deviating windows in a row before the monitor fires",
                                  lo=1, hi=1000)
    monitor_fail_open_max: float = option(0.05, "alert (never roll back) when a window's "
                                          "fail-open share is above this", lo=0.0, hi=1.0)
    monitor_cooldown_s: float = option(300.0, "after firing, the monitor stays quiet this "
                                       "long (s); it never fires twice for one version",
                                       lo=0.0, hi=86_400.0 * 7)
    monitor_judge_windows: int = option(
        10, "windows a newly served bundle is judged for (against the previous bundle on the "
        "same clicks); then it is settled", lo=1, hi=1_000_000)
    max_clock_skew_s: float = option(
        300.0, "refuse a click stamped further ahead of the daemon's clock than this (s; "
        "0 = off): one far-future click would otherwise move the counters' clock", lo=0,
        hi=86_400 * 366)
    max_click_age_s: float = option(
        0.0, "refuse a click stamped further behind the daemon's clock than this (s; 0 = off, "
        "e.g. to replay old logs)", lo=0, hi=86_400 * 366 * 100)
    max_errors_per_conn: int = option(
        64, "protocol errors one connection may earn before it is closed", lo=1,
        hi=100_000_000)
    write_buffer_bytes: int = option(
        256 << 10, "answers queued for a connection that is not reading them: over this the "
        "daemon stops reading its requests", lo=4096, hi=1 << 30)
    write_stall_s: float = option(
        10.0, "close a connection whose answers stayed unread (over write_buffer_bytes) this "
        "long (s)", lo=0.1, hi=86_400)
    frame_timeout_s: float = option(
        10.0, "close a connection whose message takes longer than this from its first byte to "
        "its last (s): trickling clients", lo=0.1, hi=86_400)
    embedded_max_mb: int = option(
        1536, "memory cap of the embedded store (MiB; 0 = none): at the cap, expired keys "
        "first, then the least recently seen are evicted", lo=0, hi=1 << 30)
    bundle_key: str = option(
        "", "file with the key bundles must be signed with (HMAC-SHA256, `slidr daily "
        "--sign-key`); unsigned or altered bundles are refused (empty = not checked)",
        metavar="FILE")
    monitor_ivr_band: float = option(
        GUARDRAILS["ivr_band"].default, "the relative change of the overall IVR a daily "
        "candidate may make and pass its guardrails (set to `slidr daily`'s ivr_band): the "
        "monitor's band starts there", lo=0.0, hi=100.0)
    monitor_slice_ivr_band: float = option(
        GUARDRAILS["slice_ivr_band"].default, "the same per slice (`slidr daily`'s "
        "slice_ivr_band)", lo=0.0, hi=100.0)
    monitor_slice_ivr_abs_slack: float = option(
        GUARDRAILS["slice_ivr_abs_slack"].default, "plus this absolute IVR per slice "
        "(`slidr daily`'s slice_ivr_abs_slack)", lo=0.0, hi=1.0)
    monitor_z: float = option(
        3.0, "standard errors of a window's counts (its IVR's and the reference's) a "
        "deviation must clear: sampling noise never fires the monitor", lo=0.0, hi=100.0)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


OPTIONS: dict[str, Opt] = options_of(Config)


def keys() -> dict[str, Opt]:
    """Every daemon option's declaration, in order (name -> Opt)."""
    return dict(OPTIONS)


def load_toml(path: str | Path) -> dict[str, Any]:
    """A daemon config file: keys at the top level or under [slidrd]. Values are checked in
    build()."""
    try:
        return options.load_toml(path, "slidrd")
    except OptionError as e:
        raise ConfigError(str(e)) from None


def build(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
          file_name: str = "config") -> Config:
    """Defaults <- file values <- command-line overrides (None = not given); then validate."""
    try:
        cfg = options.build_config(Config, OPTIONS, [(file_name, file_values or {}),
                                                     ("command line", overrides or {})])
    except OptionError as e:
        raise ConfigError(str(e)) from None
    validate(cfg)
    return cfg


def validate(cfg: Config, check_registry: bool = True) -> None:
    """Cross-key checks that a single key's range cannot express (check_registry=False: all
    but the registry's existence, for checking a config file away from its machine)."""
    if not cfg.registry:
        raise ConfigError("'registry' is required (--registry DIR or registry = \"DIR\")")
    if check_registry and not Path(cfg.registry).is_dir():
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
    if "," in cfg.redis and cfg.redis_mode == "standalone":
        raise ConfigError("several comma-separated 'redis' URLs are seeds of a cluster; "
                          "redis_mode = standalone takes one URL")
    if cfg.max_inflight_per_conn > cfg.max_inflight_total:
        raise ConfigError("'max_inflight_per_conn' must not exceed 'max_inflight_total'")
    if cfg.monitor_judge_windows < cfg.monitor_sustain:
        raise ConfigError("'monitor_judge_windows' must be at least 'monitor_sustain' (a "
                          "bundle must be judged for as many windows as it takes to fire)")
    if cfg.max_score_many > cfg.max_inflight_per_conn:
        raise ConfigError("'max_score_many' must not exceed 'max_inflight_per_conn'")
    if cfg.bundle_key and check_registry:
        from slidr.registry import RegistryError, load_key
        try:
            load_key(cfg.bundle_key)
        except RegistryError as e:
            raise ConfigError(f"'bundle_key': {e}") from None
    if cfg.max_score_many * TYPICAL_CLICK_BYTES > cfg.max_message_bytes:
        raise ConfigError(
            f"'max_score_many' = {cfg.max_score_many} clicks of ~{TYPICAL_CLICK_BYTES} bytes do "
            f"not fit in 'max_message_bytes' = {cfg.max_message_bytes}: raise "
            f"max_message_bytes to {cfg.max_score_many * TYPICAL_CLICK_BYTES} or lower "
            f"max_score_many to {cfg.max_message_bytes // TYPICAL_CLICK_BYTES}")
