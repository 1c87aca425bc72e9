"""`slidr calibrate`: global and slice-level thresholds from a training run's scores.parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from slidr.defaults import CALIBRATION, COMMON
from slidr.exits import REFUSED_MODEL, CommandError
from slidr.options import add

EXIT_INFEASIBLE = REFUSED_MODEL


def add_calibration_options(p: argparse.ArgumentParser, *,
                            skip: tuple[str, ...] = ()) -> None:
    """The calibration options (slidr.defaults.CALIBRATION) as flags; `calibrate` and
    `backtest` take all of them, `daily` and `demo` the main ones."""
    for name, opt in CALIBRATION.items():
        if name not in skip:
            add(p, opt)


def calib_config(args: argparse.Namespace, **fixed):
    """CalibConfig from the parsed calibration flags (the ones the parser has)."""
    from . import calibrate as cal
    kw = {k: getattr(args, k) for k in CALIBRATION if hasattr(args, k)}
    if kw.get("method") == "global_knee":  # fitted as global; the knee is written to --out
        kw["method"] = "global"
    if kw.get("slice_min_coverage") is None:
        kw.pop("slice_min_coverage", None)
    return cal.CalibConfig(**{**kw, **fixed})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="global and slice-level thresholds (cvxpy) from validation scores",
        description="Fit thresholds on the validation day of a training run and compare global "
                    "(knee) and slice-level calibration on the held-out test day. Writes "
                    "thresholds.json (--out) and, beside it, calibration.json, calibration.html "
                    "and PNGs. Exit 4 (refused: model) when the FPR budget cannot meet the coverage floors.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scores", type=Path, metavar="FILE",
                     help="scores.parquet of a training run")
    src.add_argument("--train-dir", type=Path, metavar="DIR",
                     help="training output DIR (uses DIR/scores.parquet)")
    add(p, COMMON["out"], help="thresholds.json to write (the report files go beside it)")
    add_calibration_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from slidr import progress

    from . import calibrate as cal
    from . import calibrate_report as report
    path = args.scores if args.scores is not None else args.train_dir / "scores.parquet"
    cfg = calib_config(args)
    out = Path(args.out)
    knee = args.method == "global_knee"
    with progress.job(getattr(args, "_prog", "slidr calibrate"), ("read scores", "fit", "report")) as job:
        job.stage("read scores")
        cols = cal.load_scores(path, args.score_col)
        job.stage("fit")
        try:
            result = cal.calibrate(cols, cfg)
        except cal.CalibrationInfeasible as e:
            job.stop()
            if args.json:
                print(cal.to_json({"feasible": False, "message": str(e), **e.details}))
            raise CommandError(f"calibration infeasible: {e}", EXIT_INFEASIBLE) from None
        job.stage("report")
        files = report.write_outputs(result, out.parent, method="global_knee" if knee else None,
                                     thresholds_name=out.name,
                                     training_report=Path(path).parent / "report.html")
    method = args.method if knee else cal.chosen_method(result)
    if args.json:
        print(cal.to_json({"feasible": True, "files": files, **cal.summary(result),
                           "method": method}))
    else:
        print(report.table_text(result))
        print(f"\n{report.selection_text(result)}")
        print(f"thresholds ({method}) -> {files['thresholds']}\nreport -> {files['html']}")
    return 0
