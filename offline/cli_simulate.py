"""`slidr simulate --out DIR`: a simulated click log with ground truth and a customers table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slidr.defaults import COMMON
from slidr.options import add


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="simulated click log (with ground truth) and customers table",
        description="Write DIR/clicks.parquet (and/or clicks.csv) sorted by ts in the click "
                    "contract plus purchased and is_robot, DIR/customers.parquet (RFM) and "
                    "DIR/manifest.json (seed, params, counts, robot share per family and slice "
                    "per day). Deterministic for a given seed and parameters; the directory "
                    "appears only when complete.")
    add(p, COMMON["out"], help="output directory (replaced if present)")
    add(p, COMMON["days"])
    add(p, COMMON["clicks_per_day"])
    add(p, COMMON["seed"])
    p.add_argument("--start", default=None, metavar="YYYY-MM-DD",
                   help="first UTC day (default: 2026-11-02)")
    p.add_argument("--format", choices=("parquet", "csv", "both"), default="parquet",
                   help="click log format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .simulate import DEFAULT_START, SimParams, simulate, write_outputs

    params = SimParams(days=args.days, clicks_per_day=args.clicks_per_day, seed=args.seed,
                       start=args.start or DEFAULT_START)
    res = simulate(params, progress=True)
    files = write_outputs(res, args.out, args.format)
    m = res.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    c = m["counts"]
    print(f"{c['clicks']:,} clicks over {params.days} days, {c['sessions']:,} sessions, "
          f"{c['customers']:,} customers; robot share {m['robot_share']:.1%}; human purchase "
          f"rate {m['purchase_rate_human']:.2%}; simulated in {m['seconds']:.1f} s")
    print("robot share by family: " + ", ".join(
        f"{f} {v:.1%}" for f, v in m["family_share"].items() if f != "human"))
    for name in files.values():
        print(f"-> {Path(args.out) / name}")
    print(f"-> {Path(args.out) / 'manifest.json'}")
    return 0
