"""`slidr` command line. Each subcommand lives in its own module exposing `register(sub)`;
this table is the only place that lists them (module imports stay light: heavy libraries are
imported inside the command functions)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "simulate": "slidr.offline.cli_simulate",
    "import": "slidr.offline.cli_import",
    "train": "slidr.offline.cli_train",
    "calibrate": "slidr.offline.cli_calibrate",
    "backtest": "slidr.offline.cli_backtest",
    "models": "slidr.offline.cli_models",
    "daily": "slidr.offline.cli_daily",
    "replay": "slidr.offline.cli_replay",
    "admin": "slidr.slidrd.cli_admin",
    "bench": "slidr.bench.cli",
    "demo": "slidr.demo",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slidr", description="slice-level detection of robotic ad clicks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in COMMANDS.values():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue  # not built yet
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Contract errors, bad paths and refused jobs: one clear line, no traceback.
        if getattr(args, "debug", False):
            raise
        print(f"slidr {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
