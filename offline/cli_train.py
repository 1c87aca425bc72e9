"""`slidr train --clicks F --customers F --out DIR`: labels, features, model, baselines,
metrics, report (torch and matplotlib are imported only when the command runs)."""

from __future__ import annotations

import argparse
import json
import sys

from slidr.defaults import CALIBRATION, COMMON, TRAINING
from slidr.options import add


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and evaluate a model from a click log",
                       description="Replay the click log through the feature kernel, build "
                                   "weak labels, train the MLP and the baselines on a time "
                                   "split, and write model.onnx, metrics.json, report.html, "
                                   "scores.parquet into DIR (atomically).")
    add(p, COMMON["clicks"])
    add(p, COMMON["customers"])
    add(p, COMMON["out"], help="output directory (replaced atomically)")
    add(p, TRAINING["k"])
    add(p, COMMON["seed"])
    add(p, TRAINING["epochs"])
    add(p, CALIBRATION["fpr_budget"], help="overall FPR at which the model and the baselines "
                                           "are compared")
    add(p, TRAINING["val_days"])
    add(p, TRAINING["newest_day"])
    add(p, COMMON["redis"], help="replay through a Redis store at this URL instead of the "
                                 "embedded one")
    add(p, COMMON["redis_mode"])
    add(p, TRAINING["refit"])
    add(p, TRAINING["weighting"])
    add(p, TRAINING["training"])
    add(p, TRAINING["ensemble"])
    add(p, TRAINING["newest_weight"])
    add(p, TRAINING["train_sample"])
    add(p, TRAINING["memory_budget"])
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from . import pipeline

    cfg = pipeline.TrainConfig(k=args.k, seed=args.seed, epochs=args.epochs,
                               fpr_target=args.fpr_budget, val_days=args.val_days,
                               newest_day=args.newest_day, refit=args.refit,
                               weighting=args.weighting,
                               training=args.training, ensemble=args.ensemble,
                               newest_weight=args.newest_weight,
                               train_sample=args.train_sample,
                               memory_budget=args.memory_budget)
    store = None
    if args.redis:
        from slidr.store_cluster import open_redis_store
        store = open_redis_store(args.redis, args.redis_mode, timeout_s=5.0)
    from slidr import progress
    try:
        with progress.job(getattr(args, "_prog", "slidr train"), pipeline.STAGES):
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
    print(f"test day at overall FPR budget {args.fpr_budget:g}:")
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
