"""`slidr backtest RUN_DIR... --out DIR`: slice-level vs global calibration, walked forward
over the held-out days of one or more training runs (offline/backtest.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from slidr.defaults import CALIBRATION, COMMON, TRAINING
from slidr.exits import CHECK_FAILED, BadInput
from slidr.options import add

from .cli_calibrate import add_calibration_options


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
                    "into --out. Exit 0 when it ran, 2 on bad input, 5 (check failed) with "
                    "--require-win when at some budget pooled slice-level does not beat "
                    "global@budget.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="training output directories (with scores.parquet)")
    add(p, COMMON["out"], help="output directory")
    add(p, TRAINING["val_days"], help="scored days each fit uses (default: the training "
                                      "runs' own validation days)")
    p.add_argument("--budgets", default="0.005,0.01,0.02,0.03", metavar="B,B,...",
                   help="comma-separated FPR budgets in (0, 1)")
    add_calibration_options(p, skip=("fpr_budget", "method"))
    p.add_argument("--jobs", type=int, default=1,
                   help="held-out days evaluated in parallel processes")
    p.add_argument("--ceiling", action="store_true",
                   help="also the hindsight ceiling per day (exact DP; slow)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap resamples over held-out days (0 = none)")
    add(p, COMMON["seed"])
    p.add_argument("--require-win", action="store_true",
                   help="exit 5 unless, at every budget, pooled slice-level has a higher IVR "
                        "than global@budget at an FPR <= global@budget's and meets every "
                        "slice's coverage floor on the pooled days")
    p.add_argument("--print-days", action="store_true", help="also print every held-out day")
    p.set_defaults(func=run)


def calib_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """CalibConfig keyword arguments (all but the budget) from the flags."""
    return {k: getattr(args, k) for k in CALIBRATION if k not in ("fpr_budget", "method")}


def runs_val_days(runs: list[Path]) -> int:
    """The validation days the training runs were trained with (training_meta.json)."""
    seen = set()
    for r in runs:
        try:
            meta = json.loads((Path(r) / "training_meta.json").read_text())
            seen.add(int(meta["config"]["val_days"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if len(seen) > 1:
        raise BadInput(f"the runs were trained with different validation days "
                       f"({', '.join(map(str, sorted(seen)))}); choose one with --val-days N")
    return seen.pop() if seen else 3


def run(args: argparse.Namespace) -> int:
    from . import backtest as bt
    from . import backtest_report as report
    from .report import clean
    budgets = bt.parse_budgets(args.budgets)
    val_days = args.val_days if args.val_days is not None else runs_val_days(args.runs)
    result = bt.run_backtest(args.runs, budgets, val_days=val_days,
                             calib=calib_kwargs(args), jobs=args.jobs, ceiling=args.ceiling,
                             n_boot=args.bootstrap, seed=args.seed,
                             log=None if args.quiet else bt.log_stderr)
    files = report.write_outputs(result, args.out)
    if args.json:
        print(json.dumps(clean({k: result[k] for k in ("config", "pooled", "per_day_summary",
                                                        "bootstrap", "gate", "wall_s")}
                               | {"files": files}), indent=2, sort_keys=True))
    else:
        print(report.text_report(result, days=args.print_days))
        print(f"report -> {files['html']}\nrows -> {files['json']}")
    if args.require_win and not result["gate"]["passed"]:
        return CHECK_FAILED
    return 0
