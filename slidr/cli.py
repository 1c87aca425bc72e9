"""`slidr` command line. Each subcommand lives in its own module exposing `register(sub)`;
this table is the only place that lists them (module imports stay light: heavy libraries are
imported inside the command functions). slidr/command.py holds what every command shares:
the switches, `--version`, exit codes and one-line errors (docs/cli.md)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .command import Parser, add_version, finish_tree, parse_and_run

COMMANDS: dict[str, str] = {
    "simulate": "slidr.offline.cli_simulate",
    "import": "slidr.offline.cli_import",
    "train": "slidr.offline.cli_train",
    "calibrate": "slidr.offline.cli_calibrate",
    "backtest": "slidr.offline.cli_backtest",
    "models": "slidr.offline.cli_models",
    "daily": "slidr.offline.cli_daily",
    "evaluate": "slidr.offline.cli_evaluate",
    "replay": "slidr.offline.cli_replay",
    "check-config": "slidr.cli_check_config",
    "admin": "slidr.slidrd.cli_admin",
    "bench": "slidr.bench.cli",
    "demo": "slidr.demo",
}

# Commands whose work can take more than a few seconds: they get --progress (docs/cli.md).
LONG_RUNNING = ("simulate", "import", "train", "calibrate", "backtest", "daily", "evaluate", "replay",
                "demo", "bench kernel", "bench run", "bench sweep", "bench echo",
                "bench hiccup", "bench cost", "bench micro", "bench side", "bench batch")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="slidr", description="slice-level detection of robotic ad clicks "
                                         "(docs/cli.md: conventions, exit codes, options)")
    add_version(p)
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
    finish_tree(p, LONG_RUNNING)
    return p


def main(argv: list[str] | None = None) -> int:
    return parse_and_run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
