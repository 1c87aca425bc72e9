"""`slidr daily --clicks F --customers F --registry DIR`: the whole daily retrain.

Exit codes (slidr/exits.py, docs/cli.md): 0 published, 1 failed, 2 bad input (a missing or
unreadable file, a bad flag or guardrail config), 3 refused by a data guardrail, 4 refused by a
model guardrail. A refusal keeps the current model and prints which check failed and why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from slidr.defaults import CALIBRATION, COMMON, GUARDRAILS, TRAINING
from slidr.exits import CommandError
from slidr.options import add

# The limits that are also flags (the rest only in --guardrail-config FILE.toml).
GUARDRAIL_FLAGS = ("max_psi", "ivr_band", "fpr_tolerance", "min_slice_clicks",
                   "min_slice_purchases")
STAGES = ("data guardrails", "features", "train", "calibrate", "model guardrails", "publish")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "daily", help="guardrails -> train -> calibrate -> guardrails -> publish or refuse",
        description="The daily retrain. Exit 0 published (and promoted), 2 bad input, "
                    "3 refused by a data guardrail, 4 refused by a model guardrail, 1 failed. "
                    "The registry is changed only by an atomic publish and pointer swap.")
    add(p, COMMON["clicks"])
    add(p, COMMON["customers"])
    add(p, COMMON["registry"])
    p.add_argument("--work", type=Path, default=None, metavar="DIR",
                   help="work directory, kept (default: a temporary directory, removed after "
                        "a publish)")
    for name in ("fpr_budget", "min_coverage", "slice_min_coverage", "min_purchasing"):
        add(p, CALIBRATION[name])
    add(p, CALIBRATION["method"], choices=("slice", "global", "auto"), help="published thresholds: slice (slice-level), global "
                                       "(global@budget), auto (slice-level unless "
                                       "leave-one-day-out evidence says global@budget is "
                                       "better)")
    add(p, TRAINING["k"])
    add(p, TRAINING["epochs"])
    add(p, TRAINING["val_days"])
    add(p, TRAINING["newest_day"])
    add(p, COMMON["seed"])
    for name in GUARDRAIL_FLAGS:
        add(p, GUARDRAILS[name], config_default=True)
    p.add_argument("--guardrail-config", type=Path, default=None, metavar="FILE.toml",
                   help="TOML file setting any guardrail limit by name (a [guardrails] table; "
                        "docs/cli.md lists them); flags given on the command line win (default: "
                        "none)")
    add(p, TRAINING["refit"])
    add(p, TRAINING["weighting"])
    add(p, TRAINING["training"])
    add(p, TRAINING["ensemble"])
    add(p, TRAINING["newest_weight"])
    add(p, TRAINING["train_sample"])
    add(p, TRAINING["engine"])
    add(p, TRAINING["spark_master"])
    add(p, TRAINING["memory_budget"])
    p.add_argument("--sign-key", type=Path, default=None, metavar="FILE",
                   help="sign the published bundle with the key in FILE (HMAC-SHA256, at least "
                        "32 bytes); daemons given the same key (bundle_key) refuse unsigned or "
                        "altered bundles (default: unsigned)")
    p.add_argument("--check-config", action="store_true",
                   help="check the flags and the guardrail config, print the settings the job "
                        "would run with as JSON and exit (0 valid, 2 not)")
    p.set_defaults(func=run)


def guardrail_config(args: argparse.Namespace) -> Any:
    """GuardrailConfig: declared defaults <- --guardrail-config file <- flags."""
    from . import guardrails as gr
    values: dict[str, Any] = {}
    if args.guardrail_config is not None:
        values.update(gr.load_config_file(args.guardrail_config))
        if Path(args.guardrail_config).suffix == ".json" and not args.quiet:
            print(f"{args._prog}: note: " + gr.JSON_NOTE.format(path=args.guardrail_config),
                  file=sys.stderr, flush=True)
    for name in GUARDRAIL_FLAGS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return gr.GuardrailConfig(**values)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from slidr import progress

    from . import daily
    g = guardrail_config(args)
    cfg = daily.DailyConfig(fpr_budget=args.fpr_budget, min_coverage=args.min_coverage,
                            slice_min_coverage=args.slice_min_coverage,
                            min_purchasing=args.min_purchasing, k=args.k, epochs=args.epochs,
                            seed=args.seed, val_days=args.val_days,
                            newest_day=args.newest_day, guard=g, method=args.method,
                            refit=args.refit, weighting=args.weighting,
                            training=args.training, ensemble=args.ensemble,
                            newest_weight=args.newest_weight, train_sample=args.train_sample,
                            engine=args.engine, spark_master=args.spark_master,
                            memory_budget=args.memory_budget)
    if args.sign_key is not None:
        from slidr.registry import load_key
        cfg.sign_key = load_key(args.sign_key)
    if args.check_config:
        out = dataclasses.asdict(cfg)
        out.pop("progress", None)
        out["sign_key"] = str(args.sign_key) if args.sign_key is not None else None  # never the key
        json.dump(out, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return 0
    # Inputs a person can mistype are checked before anything starts (exit 2, one line).
    for what, path in (("click log", args.clicks), ("customers table", args.customers)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(2, f"{what} not found", str(path))

    def note(m: str) -> None:
        if not args.quiet:  # "daily: ..." from the job reads as the command's own note
            m = f"{args._prog}: {m[len('daily: '):]}" if m.startswith("daily: ") else m
            print(m, file=sys.stderr, flush=True)

    with progress.job(getattr(args, "_prog", "slidr daily"), STAGES) as job:
        res = daily.run_daily(args.clicks, args.customers, args.registry, args.work, cfg,
                              log=note)
        code = int(res["exit_code"])
        if code != daily.EXIT_PUBLISHED:
            job.stop()
    if args.json:
        out = daily._clean(res)
        out.pop("traceback", None)
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    elif code in (daily.EXIT_PUBLISHED, daily.EXIT_DATA, daily.EXIT_MODEL):
        print(f"{res['status']}: {res['reason']}")
        sel = (res.get("calibration") or {}).get("selection") or {}
        if sel:
            print(f"calibration method: {sel.get('chosen')} ({sel.get('mode')}): "
                  f"{sel.get('reason')}")
        for c in res["checks"]:
            mark = "ok  " if c["passed"] else "FAIL"
            print(f"  [{mark}] {c['kind']:<5} {c['name']:<26} {c['message'][:160]}")
        print(f"current model: {res.get('current')}")
        if code != daily.EXIT_PUBLISHED and res["work"]:
            print(f"work directory kept for inspection: {res['work']}")
    if code == daily.EXIT_PUBLISHED:
        return code
    if args.debug and res.get("traceback"):
        print(res["traceback"], file=sys.stderr, end="")
    where = f" (run log: {res['run_log']})" if res.get("run_log") else ""
    raise CommandError(f"{res['reason']}{where}", code)
