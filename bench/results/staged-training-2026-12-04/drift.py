"""Validation-to-test drift of a `slidr daily` work directory's model: the threshold that
flags 1% of the validation days' purchasing clicks, and the share of the test day's
purchasing clicks it flags, for stage 1 alone and for the staged net (shipped default).

    python drift.py WORK [STAGE2_EPOCHS]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "normal-traffic-ablation-2026-12-04"))
from ablate_features import load_days  # noqa: E402
from slidr.offline import featurestore, metrics, train  # noqa: E402

F = featurestore.FEATURES

if __name__ == "__main__":
    work = sys.argv[1]
    e2 = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    tr, va, te, w_tr, w_va = load_days(work)
    fs = featurestore.FeatureStore(f"{work}/features")
    days = fs.days
    sd = train.time_split(days.astype(np.int32), val_days=train.auto_val_days(int(days.size)))
    v = fs.load([F, "purchased"], days=days[sd["val"]])
    r = train.fit_mlp(tr[F], (1 - tr["weak_label"]).astype(np.int8), w_tr, va[F],
                      (1 - va["weak_label"]).astype(np.int8), w_va, epochs=(20, e2), seed=7,
                      progress=False)
    s1 = train.merge([(r.stages[0].model, train.STAGE1_COLS)])
    pv, pt = v["purchased"].astype(bool), te["purchased"].astype(bool)
    robot = te["is_robot"].astype(bool)
    for name, m in (("stage 1", s1), ("staged", r.model)):
        sv, st = train.predict(m, v[F]), train.predict(m, te[F])
        thr = metrics.threshold_for_fpr(sv, pv, 0.01)
        own = metrics.threshold_for_fpr(st, pt, 0.01)
        print(f"{name}: test-day FPR at the validation days' 1% threshold "
              f"{float((st[pt] > thr).mean()):.4f}; recall at 1% FPR "
              f"{float(((st > own) & robot).sum() / robot.sum()):.4f}")
