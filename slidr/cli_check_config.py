"""`slidr check-config FILE...`: check config files in full without running anything.

Every config file of slidr is TOML and has a declaration of its keys (slidr/options.py):
the daemon's (`[slidrd]`, /etc/slidr/slidrd.toml), the daily job's guardrail limits
(`[guardrails]`, `slidr daily --guardrail-config`) and load-test scenarios (`bench/scenarios/`).
The kind is read from the file's table (`[slidrd]`, `[guardrails]`, `[load]`/`[daemon]`) or given
with --kind. Exit 0 when every file is valid, 2 at the first problem (one line naming the file,
the key and the value).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

KINDS = ("slidrd", "guardrails", "scenario")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="check config files (daemon, guardrails, bench "
                                            "scenarios) in full, run nothing",
                       description=__doc__)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.toml",
                   help="config files to check")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="what the files configure (default: read from the file's tables)")
    p.set_defaults(func=run)


def detect(path: Path) -> str:
    from slidr.options import OptionError
    if path.suffix == ".json":  # the one config read as JSON too (offline/guardrails.py)
        return "guardrails"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(2, "config file not found", str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"{path}: not valid TOML: {e}") from None
    if "slidrd" in data:
        return "slidrd"
    if "guardrails" in data:
        return "guardrails"
    if {"load", "daemon", "sweep", "mode"} & set(data):
        return "scenario"
    raise OptionError(f"{path}: cannot tell what it configures (no [slidrd], [guardrails] or "
                      "[load] table); give --kind " + "|".join(KINDS))


def check(path: Path, kind: str, quiet: bool = False) -> dict[str, Any]:
    """The file's settings as the program would use them (defaults filled in)."""
    if kind == "slidrd":
        # File values only: the registry must exist where the daemon runs, which is checked
        # by `slidrd serve --check-config` on that machine.
        from slidr.options import build_config
        from slidr.slidrd import config as C
        values = C.load_toml(path)
        try:
            cfg = build_config(C.Config, C.OPTIONS, [(str(path), values)])
        except ValueError as e:
            raise C.ConfigError(str(e)) from None
        C.validate(cfg, check_registry=False)
        return cfg.as_dict()
    if kind == "guardrails":
        import dataclasses

        from slidr.offline import guardrails as gr
        settings = dataclasses.asdict(gr.GuardrailConfig(**gr.load_config_file(path)))
        if path.suffix == ".json" and not quiet:
            print(f"slidr check-config: note: {gr.JSON_NOTE.format(path=path)}",
                  file=sys.stderr)
        return settings
    from slidr.bench.cli import load_scenario
    return load_scenario(path)


def run(args: argparse.Namespace) -> int:
    out = {}
    for f in args.files:
        kind = args.kind or detect(f)
        out[str(f)] = {"kind": kind, "settings": check(f, kind, args.quiet)}
        if not args.json and not args.quiet:
            print(f"ok  {f} ({kind})")
    if args.json:
        json.dump(out, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    return 0
