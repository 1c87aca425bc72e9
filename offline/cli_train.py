"""`slidr train --clicks F --customers F --out DIR`: labels, features, model, baselines,
metrics, report (torch and matplotlib are imported only when the command runs)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="train and evaluate a model from a click log",
                       description="Replay the click log through the feature kernel, build "
                                   "weak labels, train the MLP and the baselines on a time "
                                   "split, and write model.onnx, metrics.json, report.html, "
                                   "scores.parquet into DIR (atomically).")
    p.add_argument("--clicks", required=True, help="click log (Parquet or CSV), sorted by ts")
    p.add_argument("--customers", default=None,
                   help="customers table (user_id, recency_days, frequency, monetary); "
                        "omit for logs that have none (e.g. TalkingData): labels are then "
                        "purchase-only")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--k", type=int, default=20,
                   help="robotic-coverage heuristic: more than K clicks of a session in one "
                        "UTC hour (default 20)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs (early stopping)")
    p.add_argument("--fpr-target", type=float, default=0.01,
                   help="overall FPR at which scorers are compared (default 0.01)")
    p.add_argument("--val-days", type=int, default=None,
                   help="days before the test day held out for validation (early stopping and "
                        "calibration; default: 3 on logs of 9+ days, keeping >= 5 training "
                        "days, 2 on 8 days, 1 on shorter logs)")
    p.add_argument("--redis", default=None,
                   help="replay through a Redis store at this URL instead of the embedded one")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from . import pipeline

    cfg = pipeline.TrainConfig(k=args.k, seed=args.seed, epochs=args.epochs,
                               fpr_target=args.fpr_target, val_days=args.val_days,
                               progress=not args.quiet)
    store = None
    if args.redis:
        from slidr.store_redis import RedisStore  # type: ignore[import-not-found]
        store = RedisStore(args.redis)
    try:
        res = pipeline.run(args.clicks, args.customers, args.out, cfg, store=store)
    finally:
        if store is not None:
            store.close()
    if args.json:
        from .report import clean
        json.dump(clean(res), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    m = res["metrics"]
    print(f"trained on {res['n_clicks']:,} clicks in {res['timings']['total_s']:.1f} s "
          f"(replay {res['timings']['replay_s']:.1f} s)")
    print(f"test day at overall FPR target {args.fpr_target:g}:")
    def f(v: float, digits: int = 3) -> str:
        return "n/a" if v is None or v != v else f"{v:.{digits}f}"

    for name in pipeline.SCORERS:
        o = m[name]
        extra = (f"  precision {f(o['precision'])}  recall {f(o['recall'])}"
                 if "precision" in o else "")
        print(f"  {name:<9} IVR {f(o['ivr'], 4)}  FPR {f(o['fpr'], 4)}  coverage "
              f"{f(o['coverage'])}  AUC {f(o['auc'])}{extra}")
    print("model beats both baselines overall and in every slice: "
          f"{'yes' if res['comparison']['model_beats_all_everywhere'] else 'NO'}")
    print(f"report: {res['report']}")
    return 0
