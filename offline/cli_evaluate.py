"""`slidr evaluate --clicks F --customers F --out DIR`: walk a simulated scenario day by day
(retrain, publish, score the next day) and report the share of each robot family caught over
time, with a plot (offline/evaluate.py)."""

from __future__ import annotations

import argparse
import json
import sys

from slidr.defaults import CALIBRATION, COMMON, TRAINING
from slidr.options import add


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="walk a simulated scenario day by day: share of each robot family "
                         "caught over time",
        description="For each day t from --from-day on: train on the --window days ending at t "
                    "as `slidr daily` does (weak labels only), calibrate, and score day t + 1; "
                    "report per robot family (truth.parquet from `slidr simulate`) the share "
                    "caught, true precision and recall, the realised FPR, and the trivial rule "
                    "'more than 10 clicks in the session's past hour'. Writes DIR/evaluate.json, "
                    "DIR/evaluate.txt and DIR/caught.png.")
    add(p, COMMON["clicks"])
    add(p, COMMON["customers"])
    add(p, COMMON["out"], help="output directory for evaluate.json, evaluate.txt, caught.png")
    p.add_argument("--window", type=int, default=8, metavar="N",
                   help="days of log each retrain sees, ending at the day it runs on "
                        "(default: 8)")
    p.add_argument("--from-day", type=int, default=None, metavar="N",
                   help="first day the walk retrains on (default: window - 1)")
    add(p, TRAINING["epochs"])
    add(p, CALIBRATION["fpr_budget"])
    add(p, TRAINING["refit"])
    add(p, TRAINING["weighting"])
    add(p, TRAINING["training"])
    add(p, TRAINING["ensemble"])
    add(p, TRAINING["newest_weight"])
    add(p, TRAINING["newest_day"])
    add(p, COMMON["seed"])
    p.add_argument("--label-scope", choices=("click", "session", "ip_day"), default="click",
                   help="what a weak label 1 (human) covers: the purchasing click (click, the "
                        "article's rule), every click of its session (session), or in addition "
                        "every logged-out click of its IP that UTC day (ip_day) (default: click)")
    p.add_argument("--crowded-ip-sessions", type=int, default=0, metavar="N",
                   help="give the logged-out clicks of an IP-day with at least N sessions and "
                        "no purchase weight cells of their own (0: off; default: 0)")
    p.add_argument("--starved-ads", type=float, default=0.0, metavar="P",
                   help="weigh more the logged-out label-0 clicks of an ad-day whose clicks "
                        "jumped (>= 3x its 7-day median) while its purchases did not follow "
                        "(Poisson lower tail below P against the day's logged-out purchase "
                        "share) (0: off; default: 0)")
    p.add_argument("--starved-weight", type=float, default=20.0, metavar="X",
                   help="with --starved-ads: those clicks weigh X times as much in their "
                        "weight cells (0: weight cells of their own; default: 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slidr.util import write_json

    from . import evaluate as ev
    from .report import clean
    if not 0.0 <= args.starved_ads < 1.0:
        raise ValueError(f"--starved-ads must be in [0, 1), got {args.starved_ads}")
    if args.starved_weight < 0:
        raise ValueError(f"--starved-weight must be >= 0, got {args.starved_weight}")
    if args.window < 4:
        raise ValueError("--window must be >= 4 days (training, validation and guardrail days)")
    cfg = ev.EvalConfig(window=args.window, from_day=args.from_day, epochs=args.epochs,
                        fpr_budget=args.fpr_budget, refit=args.refit, weighting=args.weighting,
                        training=args.training, newest_day=args.newest_day, seed=args.seed,
                        label_scope=args.label_scope,
                        crowded_ip_sessions=args.crowded_ip_sessions,
                        ensemble=args.ensemble, newest_weight=args.newest_weight,
                        starved_ads=args.starved_ads,
                        starved_weight=args.starved_weight)

    def note(m: str) -> None:
        if not args.quiet:
            print(m, file=sys.stderr, flush=True)

    res = ev.walk(args.clicks, args.customers, cfg, log=note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluate.json", clean(res))
    text = ev.table(res)
    (out / "evaluate.txt").write_text(text + "\n")
    ev.plot(res, out / "caught.png")
    if args.json:
        json.dump(clean(res), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)
        print(f"-> {out / 'evaluate.json'}, {out / 'caught.png'}")
    return 0
