"""`slidrd serve`: command line, logging, uvloop, and the --workers N process supervisor."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from slidr.command import Parser, add_version, finish_tree, parse_and_run
from slidr.defaults import GLOBAL
from slidr.options import add

from . import config as config_mod
from .config import Config, ConfigError
from .notify import Notifier

log = logging.getLogger("slidrd")

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="slidrd", description="slidr real-time scoring daemon (docs/daemon.md; "
                                          "conventions and exit codes: docs/cli.md)")
    add_version(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("serve", help="serve decisions on a msgpack-RPC port",
                       description="Every option is a key of the TOML config (--config) and a "
                                   "flag; a flag given overrides the file, which overrides the "
                                   "default shown.")
    s.add_argument("--config", metavar="FILE.toml",
                   help="TOML config: the keys below, at the top level or under [slidrd] "
                        "(default: none, the defaults and flags only)")
    for opt in config_mod.OPTIONS.values():
        add(s, opt, config_default=True)
    s.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print it as JSON and exit (0 valid, 2 not)")
    add(s, GLOBAL["json"], help="log records as JSON lines on stderr (for log shippers)")
    add(s, GLOBAL["quiet"], help="log warnings and errors only")
    s.set_defaults(func=cmd_serve)
    finish_tree(p, ())
    return p


def load_config(args: argparse.Namespace) -> Config:
    file_values: dict[str, Any] = {}
    name = "config"
    if args.config:
        file_values = config_mod.load_toml(args.config)
        name = args.config
    overrides = {key: getattr(args, key) for key in config_mod.OPTIONS}
    return config_mod.build(file_values, overrides, file_name=name)


class _JsonLines(logging.Formatter):
    """One JSON object per log record (for log shippers): ts, level, pid, worker, message."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        import json
        d: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                             "pid": os.getpid(), "message": record.getMessage()}
        if self.worker is not None:
            d["worker"] = self.worker
        if record.exc_info:
            d["exception"] = self.formatException(record.exc_info)
        return json.dumps(d)


def _setup_logging(level: str, worker: int | None = None, json_lines: bool = False) -> None:
    tag = f"slidrd[{os.getpid()}]" + (f" w{worker}" if worker is not None else "")
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format=f"%(asctime)s {tag} %(levelname)s %(message)s", force=True)
    if json_lines:
        for h in logging.getLogger().handlers:
            h.setFormatter(_JsonLines(worker))


def _run_one(cfg: Config, notifier: Notifier | None, worker: int, ready_fd: int | None) -> int:
    import uvloop

    from slidr.redis_topology import TopologyError

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
        print(f"slidrd serve: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"slidrd serve: error: cannot bind or open: {e}", file=sys.stderr)
        return 2
    except TopologyError as e:  # --redis does not fit --redis-mode, or no map to serve by
        log.error("cannot start: %s", e)
        print(f"slidrd serve: error: {e}", file=sys.stderr)
        return 2
    return 0


def _supervise(cfg: Config, json_lines: bool = False) -> int:
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
            _setup_logging(cfg.log_level, i, json_lines=json_lines)
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
        print(f"slidrd serve: config error: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        import json
        print(json.dumps(cfg.as_dict(), indent=2, sort_keys=True))
        return 0
    if args.quiet and cfg.log_level in ("debug", "info"):
        cfg.log_level = "warning"
    _setup_logging(cfg.log_level, json_lines=args.json)
    if cfg.workers > 1:
        return _supervise(cfg, json_lines=args.json)
    return _run_one(cfg, Notifier(), 0, None)


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
