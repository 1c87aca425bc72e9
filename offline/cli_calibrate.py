"""`slidr calibrate`: global and slice-level thresholds from a training run's scores.parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INFEASIBLE = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="global and slice-level thresholds (cvxpy) from validation scores",
        description="Fit thresholds on the validation day of a training run and compare global "
                    "(knee) and slice-level calibration on the held-out test day. Writes "
                    "thresholds.json (--out) and, beside it, calibration.json, calibration.html "
                    "and PNGs. Exit 3 when the FPR budget cannot meet the coverage floors.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", type=Path, help="scores.parquet of a training run")
    src.add_argument("--train-dir", type=Path, help="training output DIR (uses DIR/scores.parquet)")
    p.add_argument("--out", type=Path, required=True, help="thresholds.json to write")
    p.add_argument("--fpr-budget", type=float, default=0.01,
                   help="overall FPR budget on purchasing clicks (default 0.01)")
    p.add_argument("--min-coverage", type=float, default=0.5,
                   help="minimum robotic coverage per slice (default 0.5)")
    p.add_argument("--slice-min-coverage", action="append", metavar="SLICE=VALUE",
                   help="per-slice minimum coverage overriding --min-coverage; fnmatch "
                        "patterns allowed, e.g. '*/in=0' (repeatable)")
    p.add_argument("--min-purchasing", type=int, default=200,
                   help="slices with fewer purchasing clicks use the global fallback (default 200)")
    p.add_argument("--refine-iters", type=int, default=8,
                   help="rounds of local refinement of each slice's quadratic around its "
                        "operating point (default 8; 0 = one quadratic over [0, F_s])")
    p.add_argument("--coverage-margin", type=float, default=0.0,
                   help="fit the coverage floors at min coverage + this margin (default 0)")
    p.add_argument("--budget-correction", choices=("lodo", "none"), default="lodo",
                   help="lodo (default): measure the slice-level overspend on each validation "
                        "day left out of a fit and solve with budget / that ratio; none: the "
                        "budget as given")
    p.add_argument("--fpr-estimate", choices=("order_stat", "empirical"), default="order_stat",
                   help="slice FPR at a threshold with k of n purchasing clicks above: "
                        "(k+1)/(n+1) (default) or k/n")
    p.add_argument("--score-col", default="score_model", help="score column (default score_model)")
    p.add_argument("--method", choices=("auto", "slice", "global", "global_knee"),
                   default="slice",
                   help="which thresholds go into --out. slice (default): slice-level; global: "
                        "global@budget; global_knee: the global knee; auto: slice-level unless "
                        "on the validation days left out one at a time it is below one global "
                        "threshold at the same FPR, or spends more than --select-fpr-tolerance "
                        "more FPR than global@budget, then global@budget")
    p.add_argument("--select-fpr-tolerance", type=float, default=0.05,
                   help="auto: slice-level's mean left-out FPR may exceed global@budget's by "
                        "this fraction (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import calibrate as cal
    path = args.scores if args.scores is not None else args.train_dir / "scores.parquet"
    cols = cal.load_scores(path, args.score_col)
    cfg = cal.CalibConfig(fpr_budget=args.fpr_budget, min_coverage=args.min_coverage,
                          slice_min_coverage=cal.parse_slice_coverage(args.slice_min_coverage),
                          min_purchasing=args.min_purchasing, score_col=args.score_col,
                          refine_iters=args.refine_iters, coverage_margin=args.coverage_margin,
                          budget_correction=args.budget_correction,
                          fpr_estimate=args.fpr_estimate,
                          method="global" if args.method == "global_knee" else args.method,
                          select_fpr_tolerance=args.select_fpr_tolerance)
    try:
        result = cal.calibrate(cols, cfg)
    except cal.CalibrationInfeasible as e:
        print(f"slidr calibrate: {e}", file=sys.stderr)
        if args.json:
            print(cal.to_json({"feasible": False, "message": str(e), **e.details}))
        return EXIT_INFEASIBLE
    out = Path(args.out)
    knee = args.method == "global_knee"
    files = cal.write_outputs(result, out.parent, method="global_knee" if knee else None,
                              thresholds_name=out.name)
    method = args.method if knee else cal.chosen_method(result)
    if args.json:
        print(cal.to_json({"feasible": True, "files": files, **cal.summary(result),
                           "method": method}))
    else:
        print(cal.table_text(result))
        print(f"\n{cal.selection_text(result)}")
        print(f"thresholds ({method}) -> {files['thresholds']}\nreport -> {files['html']}")
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience
    ap = argparse.ArgumentParser(prog="slidr")
    register(ap.add_subparsers())
    args = ap.parse_args(["calibrate", *(argv or sys.argv[1:])])
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
