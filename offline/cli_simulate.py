"""`slidr simulate --out DIR`: a simulated click log with ground truth and a customers table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slidr.defaults import COMMON
from slidr.options import add

TARGET_ADS = 5  # SimParams.target_ads (the simulator's modules load only when it runs)


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
    p.add_argument("--new-families", default="", metavar="LIST",
                   help="comma-separated robot families absent from stock logs to add "
                        "(proxy_rotator, mimic, injector, ad_stacker, or 'all'; default: none)")
    p.add_argument("--appear-day", type=int, default=0, metavar="N",
                   help="first UTC day (0-based) of the new families; they persist after it "
                        "(default: 0)")
    p.add_argument("--new-share", type=float, default=0.03, metavar="X",
                   help="share of an average day's clicks per new family (default: 0.03)")
    p.add_argument("--target-ads", type=int, default=TARGET_ADS, metavar="N",
                   help="ads in the campaign each campaign-targeting new family (proxy_rotator, "
                        "injector) clicks on, drawn per seed from the mid-popularity inventory; "
                        f"0: by human popularity like the other families (default: "
                        f"{TARGET_ADS})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .simulate import DEFAULT_START, NEW_FAMILIES, SimParams, simulate, write_outputs
    new = [f.strip() for f in args.new_families.split(",") if f.strip()]
    if new == ["all"]:
        new = list(NEW_FAMILIES)
    bad = [f for f in new if f not in NEW_FAMILIES]
    if bad:
        raise ValueError(f"--new-families: unknown famil{'y' if len(bad) == 1 else 'ies'} "
                         f"{', '.join(bad)} (known: {', '.join(NEW_FAMILIES)}, all)")
    if not 0.0 <= args.new_share < 0.5:
        raise ValueError(f"--new-share must be in [0, 0.5), got {args.new_share}")
    from .sim_world import MAX_TARGET_ADS
    if not 0 <= args.target_ads <= MAX_TARGET_ADS:
        raise ValueError(f"--target-ads must be in [0, {MAX_TARGET_ADS}], got {args.target_ads}")
    base = SimParams()
    params = SimParams(days=args.days, clicks_per_day=args.clicks_per_day, seed=args.seed,
                       start=args.start or DEFAULT_START,
                       robot_share={**base.robot_share, **{f: args.new_share for f in new}},
                       appear_day={f: args.appear_day for f in new},
                       target_ads=args.target_ads)
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
