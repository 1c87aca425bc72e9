"""`slidrd serve`: command line, logging, uvloop, and the --workers N process supervisor."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from . import config as config_mod
from .config import Config, ConfigError
from .notify import Notifier

log = logging.getLogger("slidrd")

# command-line flag -> config key (each flag is optional; None = not given)
_FLAGS: list[tuple[str, str, type]] = [
    ("--registry", "registry", str), ("--host", "host", str), ("--port", "port", int),
    ("--redis", "redis", str), ("--redis-prefix", "redis_prefix", str),
    ("--redis-timeout-ms", "redis_timeout_ms", int), ("--workers", "workers", int),
    ("--embedded-capacity", "embedded_capacity", int),
    ("--admin-socket", "admin_socket", str), ("--metrics-port", "metrics_port", int),
    ("--metrics-host", "metrics_host", str), ("--decision-log", "decision_log", str),
    ("--decision-log-max-bytes", "decision_log_max_bytes", int),
    ("--deadline-ms", "deadline_ms", float), ("--max-batch", "max_batch", int),
    ("--max-wait-us", "max_wait_us", int), ("--busy-poll-us", "busy_poll_us", int),
    ("--pipeline-depth", "pipeline_depth", int),
    ("--max-message-bytes", "max_message_bytes", int),
    ("--max-connections", "max_connections", int),
    ("--max-inflight-per-conn", "max_inflight_per_conn", int),
    ("--max-inflight-total", "max_inflight_total", int),
    ("--max-score-many", "max_score_many", int),
    ("--idle-timeout-s", "idle_timeout_s", float), ("--drain-timeout-s", "drain_timeout_s", float),
    ("--backend", "backend", str),
    ("--log-level", "log_level", str),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slidrd", description="slidr real-time scoring daemon")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("serve", help="serve decisions on a msgpack-RPC port")
    s.add_argument("--config", metavar="FILE.toml", help="TOML config (flags override it)")
    spec = config_mod.keys()
    for flag, key, typ in _FLAGS:
        s.add_argument(flag, dest=key, type=typ, default=None, help=spec[key][3])
    s.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print it as JSON and exit")
    return p


def load_config(args: argparse.Namespace) -> Config:
    file_values: dict[str, Any] = {}
    name = "config"
    if args.config:
        file_values = config_mod.load_toml(args.config)
        name = args.config
    overrides = {key: getattr(args, key) for _f, key, _t in _FLAGS}
    return config_mod.build(file_values, overrides, file_name=name)


def _setup_logging(level: str, worker: int | None = None) -> None:
    tag = f"slidrd[{os.getpid()}]" + (f" w{worker}" if worker is not None else "")
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format=f"%(asctime)s {tag} %(levelname)s %(message)s", force=True)


def _run_one(cfg: Config, notifier: Notifier | None, worker: int, ready_fd: int | None) -> int:
    import uvloop

    from .model import ModelLoadError
    from .server import serve

    def on_ready(_d: Any) -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"R")
            os.close(ready_fd)

    try:
        uvloop.run(serve(cfg, notifier, worker, on_ready))
    except ModelLoadError as e:
        log.error("cannot start: %s", e)
        print(f"slidrd: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"slidrd: error: cannot bind or open: {e}", file=sys.stderr)
        return 2
    return 0


def _supervise(cfg: Config) -> int:
    """--workers N: fork N single-process daemons sharing the port (SO_REUSEPORT); forward
    SIGHUP/SIGTERM; READY=1 once every worker is ready; restart a worker that dies."""
    notifier = Notifier()
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(i: int) -> tuple[int, int]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            os.environ.pop("NOTIFY_SOCKET", None)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            _setup_logging(cfg.log_level, i)
            os._exit(_run_one(cfg, None, i, w))
        os.close(w)
        children[pid] = i
        return pid, r

    pipes = [spawn(i)[1] for i in range(cfg.workers)]
    for r in pipes:
        got = os.read(r, 1)
        os.close(r)
        if got != b"R":
            print("slidrd: error: a worker failed to start", file=sys.stderr)
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            return 2

    def on_term(_s: int, _f: Any) -> None:
        nonlocal stopping
        stopping = True
        notifier.stopping()
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    def on_hup(_s: int, _f: Any) -> None:
        notifier.reloading()
        for pid in children:
            os.kill(pid, signal.SIGHUP)
        notifier.ready("reload forwarded to workers")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    notifier.ready(f"{cfg.workers} workers on port {cfg.port}")
    next_wd = time.monotonic()
    while children:
        if notifier.watchdog_s and time.monotonic() >= next_wd:
            notifier.watchdog()
            next_wd = time.monotonic() + notifier.watchdog_s / 2
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
            continue
        i = children.pop(pid)
        if not stopping:
            log.error("worker %d (pid %d) exited with status %d; restarting", i, pid, status)
            time.sleep(1.0)  # no hot crash loop
            _pid, r = spawn(i)
            os.read(r, 1)
            os.close(r)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"slidrd: config error: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        import json
        print(json.dumps(cfg.as_dict(), indent=2, sort_keys=True))
        return 0
    _setup_logging(cfg.log_level)
    if cfg.workers > 1:
        return _supervise(cfg)
    return _run_one(cfg, Notifier(), 0, None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
