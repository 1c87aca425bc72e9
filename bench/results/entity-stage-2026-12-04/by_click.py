"""A campaign family's share caught by the position of the click in its session, after one
retrain that saw a day of it (train days 0-6 and 8, validate on 7, score 9; one threshold at
1% FPR on the scored day), for stage 1 alone and for second stages on different columns.

    python by_click.py LOG WORK TRAINING_SEED [FAMILY [STAGE2,...]]

LOG: a `slidr simulate --new-families all --appear-day 8 --days 10` folder (clicks.parquet,
truth.parquet); WORK: the `slidr daily` work directory of that log; STAGE2: entities, all44
(default: both) or entities+all44 (a third stage on all 44 after the entity one). One JSON line
per variant, stage 1 alone first.
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from slidr.offline import featurestore, metrics, train

from slidr.featurespec import N_FEATURES

F = featurestore.FEATURES
NEW = ("ad_stacker", "injector", "mimic", "proxy_rotator")
# stage 2 columns: the 15 entity features (the user's gap regularity, ads, (IP, ad) pairs,
# user agents) or all 44 (`slidr daily`'s second stage)
STAGE2 = {"entities": list(range(len(train.STAGE1_COLS), N_FEATURES)),
          "all44": list(range(N_FEATURES))}

if __name__ == "__main__":
    log, work, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    family = sys.argv[4] if len(sys.argv) > 4 else "proxy_rotator"
    which = sys.argv[5].split(",") if len(sys.argv) > 5 else ["entities", "all44"]
    fs = featurestore.FeatureStore(f"{work}/features")
    a = fs.load([F, "day", "weak_label", "cell", "purchased", "is_robot"], days=None)
    days = fs.days
    split = {"tr": np.concatenate([days[:7], days[8:9]]), "va": days[7:8], "te": days[9:10]}
    P = {}
    for k, ds in split.items():
        m = np.isin(a["day"], ds)
        P[k] = {c: a[c][m] for c in (F, "weak_label", "cell", "purchased", "is_robot")}
        P[k]["rows"] = m
    w = {k: train.sample_weights(P[k]["cell"].astype(np.int64),
                                 fs.day_cells[np.isin(days, split[k])].sum(axis=0))
         for k in ("tr", "va")}
    y = {k: (1 - P[k]["weak_label"]).astype(np.int8) for k in ("tr", "va")}
    te = P["te"]
    fam = pq.read_table(f"{log}/truth.parquet", columns=["family"]).to_pandas()["family"]
    fam = np.asarray(fam.astype(str))[te["rows"]]
    sess = pq.read_table(f"{log}/clicks.parquet", columns=["session_id"]).to_pandas()
    pos = sess[te["rows"]].groupby("session_id").cumcount().to_numpy()
    b = list(train.STAGE1_COLS)
    s1 = train.fit(P["tr"][F], y["tr"], w["tr"], P["va"][F], y["va"], w["va"], seed=seed,
                   progress=False, cols=b).model
    pur, rob = te["purchased"].astype(bool), te["is_robot"].astype(bool)
    f_m = fam == family

    def row(name, net):
        s = train.predict(net, te[F])
        hit = s > metrics.threshold_for_fpr(s, pur, 0.01)
        out = {"log": log, "training_seed": seed, "stage2": name, "family": family,
               **{k: round(float(hit[fam == k].mean()), 3) for k in NEW},
               "stock": round(float(hit[rob & ~np.isin(fam, NEW)].mean()), 4),
               "by_position": [round(float(hit[f_m & (pos == i)].mean()), 3)
                               for i in range(int(pos[f_m].max()) + 1)],
               "clicks_by_position": [int((f_m & (pos == i)).sum())
                                      for i in range(int(pos[f_m].max()) + 1)]}
        print(json.dumps(out), flush=True)

    def stage(parts, c2):
        """One more net on columns c2 over the fixed sum of `parts`, as stage 2 trains."""
        return train.fit(P["tr"][F], y["tr"], w["tr"], P["va"][F], y["va"], w["va"],
                         hidden=train.STAGE2_HIDDEN, weight_decay=train.STAGE2_WEIGHT_DECAY,
                         seed=seed, progress=False, cols=c2, base=train.merge(parts), epochs=20,
                         early_stopping=False).model

    row("none (stage 1 alone)", train.merge([(s1, b)]))
    for name in which:
        if name == "entities+all44":  # a third stage on all 44 after the entity stage
            parts = [(s1, b), (stage([(s1, b)], STAGE2["entities"]), STAGE2["entities"])]
            parts.append((stage(parts, STAGE2["all44"]), STAGE2["all44"]))
        else:
            parts = [(s1, b), (stage([(s1, b)], STAGE2[name]), STAGE2[name])]
        row(name, train.merge(parts))
