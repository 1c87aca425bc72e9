"""`slidr backtest RUN_DIR... --out DIR`: slice-level vs global calibration, walked forward
over the held-out days of one or more training runs (offline/backtest.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backtest", help="slice-level vs global calibration over many held-out days",
        description="For each training run (trained with a long validation window, `slidr "
                    "train --val-days N`), each scored day t after the first --val-days K and "
                    "each FPR budget: fit the thresholds on the K scored days before t exactly "
                    "as `slidr calibrate` does, evaluate them on day t. Reports slice-level, "
                    "global@budget, the auto choice and the global knee pooled over all "
                    "held-out days (counts summed, then the ratios), per run, and day by day, "
                    "with a bootstrap over days. Writes backtest.json, backtest.html and PNGs "
                    "into --out. Exit 0 when it ran, 2 on bad input, 5 with --require-win when "
                    "at some budget pooled slice-level does not beat global@budget.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="training output directories (with scores.parquet)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--val-days", type=int, default=3,
                   help="scored days each fit uses (default 3, as `slidr train` on logs of 9+ "
                        "days)")
    p.add_argument("--budgets", default="0.005,0.01,0.02,0.03",
                   help="comma-separated FPR budgets in (0, 1) (default 0.005,0.01,0.02,0.03)")
    p.add_argument("--min-coverage", type=float, default=0.5,
                   help="minimum robotic coverage per slice (default 0.5, as slidr calibrate)")
    p.add_argument("--slice-min-coverage", action="append", metavar="SLICE=VALUE",
                   help="per-slice override of --min-coverage, fnmatch patterns allowed "
                        "(repeatable; default '*/in=0')")
    p.add_argument("--min-purchasing", type=int, default=None,
                   help="CalibConfig.min_purchasing (default 200)")
    p.add_argument("--refine-iters", type=int, default=None,
                   help="CalibConfig.refine_iters (default 8; 0 = one wide quadratic)")
    p.add_argument("--floor-every-day", type=int, choices=(0, 1), default=None,
                   help="1: coverage floors met on every fitted day (CalibConfig.floor_every_day)")
    p.add_argument("--coverage-margin", type=float, default=None,
                   help="CalibConfig.coverage_margin (default 0)")
    p.add_argument("--budget-correction", choices=("lodo", "none"), default=None,
                   help="CalibConfig.budget_correction (default lodo)")
    p.add_argument("--fpr-estimate", choices=("order_stat", "empirical"), default=None,
                   help="CalibConfig.fpr_estimate (default order_stat)")
    p.add_argument("--select-fpr-tolerance", type=float, default=None,
                   help="CalibConfig.select_fpr_tolerance of the auto choice (default 0.05)")
    p.add_argument("--fpr-prior", type=float, default=None, help="CalibConfig.fpr_prior")
    p.add_argument("--fit-range", type=float, default=None, help="CalibConfig.fit_range")
    p.add_argument("--fit-min-fpr", type=float, default=None, help="CalibConfig.fit_min_fpr")
    p.add_argument("--refine-window", type=float, default=None,
                   help="CalibConfig.refine_window")
    p.add_argument("--refine-min-width", type=float, default=None,
                   help="CalibConfig.refine_min_width")
    p.add_argument("--score-col", default=None, help="score column (default score_model)")
    p.add_argument("--jobs", type=int, default=1,
                   help="held-out days evaluated in parallel processes (default 1)")
    p.add_argument("--ceiling", action="store_true",
                   help="also the hindsight ceiling per day (exact DP; slow)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap resamples over held-out days (default 2000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--require-win", action="store_true",
                   help="exit 5 unless, at every budget, pooled slice-level has a higher IVR "
                        "than global@budget at an FPR <= global@budget's and meets every "
                        "slice's coverage floor on the pooled days")
    p.add_argument("--print-days", action="store_true", help="also print every held-out day")
    p.add_argument("--json", action="store_true",
                   help="print the pooled rows, bootstrap, per-day summary and gate as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


CALIB_KNOBS = ("min_purchasing", "refine_iters", "coverage_margin", "budget_correction",
               "fpr_estimate", "select_fpr_tolerance", "fpr_prior", "fit_range", "fit_min_fpr",
               "refine_window", "refine_min_width", "score_col")


def calib_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from . import calibrate as cal
    if not 0.0 <= args.min_coverage <= 1.0:
        raise ValueError(f"--min-coverage must be in [0, 1], got {args.min_coverage}")
    kw: dict[str, Any] = {
        "min_coverage": args.min_coverage,
        "slice_min_coverage": cal.parse_slice_coverage(args.slice_min_coverage or ["*/in=0"])}
    for k in CALIB_KNOBS:
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    if args.floor_every_day is not None:
        kw["floor_every_day"] = bool(args.floor_every_day)
    return kw


def run(args: argparse.Namespace) -> int:
    from . import backtest as bt
    from .report import clean
    budgets = bt.parse_budgets(args.budgets)
    result = bt.run_backtest(args.runs, budgets, val_days=args.val_days,
                             calib=calib_kwargs(args), jobs=args.jobs, ceiling=args.ceiling,
                             n_boot=args.bootstrap, seed=args.seed,
                             log=None if args.quiet else bt.log_stderr)
    files = bt.write_outputs(result, args.out)
    if args.json:
        print(json.dumps(clean({k: result[k] for k in ("config", "pooled", "per_day_summary",
                                                        "bootstrap", "gate", "wall_s")}
                               | {"files": files}), indent=2, sort_keys=True))
    else:
        print(bt.text_report(result, days=args.print_days))
        print(f"report -> {files['html']}\nrows -> {files['json']}")
    if args.require_win and not result["gate"]["passed"]:
        return bt.EXIT_NO_WIN
    return 0
