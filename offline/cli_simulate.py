"""`slidr simulate --out DIR`: a simulated click log with ground truth and a customers table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="simulated click log (with ground truth) and customers table",
        description="Write DIR/clicks.parquet (and/or clicks.csv) sorted by ts in the click "
                    "contract plus purchased and is_robot, DIR/customers.parquet (RFM) and "
                    "DIR/manifest.json (seed, params, counts, robot share per family and slice "
                    "per day). Deterministic for a given seed and parameters; the directory "
                    "appears only when complete.")
    p.add_argument("--out", type=Path, required=True, help="output directory (replaced if present)")
    p.add_argument("--days", type=int, default=8, help="UTC days to simulate (default 8)")
    p.add_argument("--clicks-per-day", type=int, default=200_000,
                   help="about this many clicks per day (default 200000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--start", default=None, help="first UTC day, YYYY-MM-DD (default 2026-11-02)")
    p.add_argument("--format", choices=("parquet", "csv", "both"), default="parquet",
                   help="click log format (default parquet)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .simulate import DEFAULT_START, SimParams, simulate, write_outputs

    if args.days < 1 or args.days > 366:
        raise ValueError(f"--days must be in 1..366, got {args.days}")
    if args.clicks_per_day < 100 or args.clicks_per_day > 50_000_000:
        raise ValueError(f"--clicks-per-day must be in 100..50000000, got {args.clicks_per_day}")
    params = SimParams(days=args.days, clicks_per_day=args.clicks_per_day, seed=args.seed,
                       start=args.start or DEFAULT_START)
    res = simulate(params, progress=not args.quiet and not args.json)
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
    print(f"-> {Path(args.out) / 'manifest.json'}", file=sys.stdout)
    return 0
