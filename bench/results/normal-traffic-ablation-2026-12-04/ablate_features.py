"""Ablation on a `slidr daily` work directory's features: recall at 1% FPR on the test day
against the truth, with chosen feature groups set to 0 in training, validation and test rows.

    python ablate_features.py WORK VARIANT[,VARIANT...] [DROP_DAYS] [WEIGHT_DECAY]

Training as `slidr daily` does it (train.fit, label weighting, auto validation days, training
seed 7); "all" with the defaults reproduces work/train/metrics.json's model recall exactly.
"""
import json
import sys

import numpy as np
from slidr.offline import featurestore, metrics, train

from slidr.featurespec import FEATURE_NAMES

F = featurestore.FEATURES
RATIOS = ["ad_rate_ratio", "ua_rate_ratio", "ad_rate_ratio_7d", "ua_rate_ratio_7d"]
GROUPS = {
    "all": [],
    "spec3": list(FEATURE_NAMES[29:]),
    "ratios": RATIOS,
    "r7d": ["ad_rate_ratio_7d", "ua_rate_ratio_7d"],
    "ad": ["ad_clicks_1m", "ad_clicks_1h", "ad_clicks_1d", "ad_rate_ratio", "ad_ips_1d",
           "ad_sessions_1d", "ad_rate_ratio_7d"],
    "ipad": ["ipad_clicks_1h", "ipad_clicks_1d", "ipad_sessions_1d"],
    "ua": ["ua_clicks_1h", "ua_rate_ratio", "ua_ips_1d", "ua_rate_ratio_7d"],
    "ugap": ["u_gap_logsd"],
}


def split(fs):
    days = fs.days
    sd = train.time_split(days.astype(np.int32), val_days=train.auto_val_days(int(days.size)))
    return [days[sd[k]] for k in ("train", "val", "test")]


def recall_at(s, purchased, robot, fpr=0.01):
    thr = metrics.threshold_for_fpr(s, purchased, fpr)
    return float(((s > thr) & robot).sum() / robot.sum())


def load_days(work, drop_days=0):
    """(features, training rows, validation rows, test rows, their weights) of a work
    directory, split as `slidr daily` splits it."""
    fs = featurestore.FeatureStore(f"{work}/features")
    d_tr, d_va, d_te = split(fs)
    d_tr = d_tr[drop_days:]

    def cell_counts(ds):
        return fs.day_cells[np.isin(fs.days, ds)].sum(axis=0)

    tr = fs.load([F, "weak_label", "cell"], days=d_tr)
    va = fs.load([F, "weak_label", "cell"], days=d_va)
    te = fs.load([F, "purchased", "is_robot"], days=d_te)
    w_tr = train.sample_weights(tr["cell"].astype(np.int64), cell_counts(d_tr))
    w_va = train.sample_weights(va["cell"].astype(np.int64), cell_counts(d_va))
    return tr, va, te, w_tr, w_va


def run(work, variants, drop_days=0, wd=1e-4, seed=7):
    tr, va, te, w_tr, w_va = load_days(work, drop_days)
    out = {}
    for v in variants:
        cols = [FEATURE_NAMES.index(n) for n in GROUPS[v]]
        xs = []
        for d in (tr, va, te):
            x = d[F].copy()
            x[:, cols] = 0.0
            xs.append(x)
        m = train.fit(xs[0], (1 - tr["weak_label"]).astype(np.int8), w_tr, xs[1],
                      (1 - va["weak_label"]).astype(np.int8), w_va, weight_decay=wd, seed=seed,
                      progress=False)
        s = train.predict(m.model, xs[2])
        out[v] = recall_at(s, te["purchased"].astype(bool), te["is_robot"].astype(bool))
    return out


if __name__ == "__main__":
    work, variants = sys.argv[1], sys.argv[2].split(",")
    drop = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    wd = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
    print(json.dumps({"work": work, "drop": drop, "wd": wd, **run(work, variants, drop, wd)}),
          flush=True)
