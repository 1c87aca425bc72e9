"""New robot families on a campaign log: share caught on first sight (train days 0-6,
validate on 7, score 8) and after one retrain that saw a day of them (train 0-6 and 8,
validate on 7, score 9), at one threshold spending 1% FPR on the scored day.

    python newfam.py LOG WORK VARIANT[,VARIANT...] [TRAINING_SEED [first|after]]

LOG: a `slidr simulate --new-families all --appear-day 8 --days 10` folder (truth.parquet);
WORK: the `slidr daily` work directory of that log; VARIANT: as in staged.py.
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from staged import VARIANTS, train  # noqa: F401 (VARIANTS: the names this takes)
from staged import fit_score as _fit_score

from slidr.offline import featurestore, metrics

F = featurestore.FEATURES
NEW = ("ad_stacker", "injector", "mimic", "proxy_rotator")

if __name__ == "__main__":
    log, work, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 7
    fs = featurestore.FeatureStore(f"{work}/features")
    allf = fs.load([F, "day", "weak_label", "cell", "purchased", "is_robot"], days=None)
    fam = np.asarray(pq.read_table(f"{log}/truth.parquet", columns=["family"])["family"]
                     .to_pandas().astype(str))
    if fam.size != allf["day"].size:
        raise SystemExit("truth and features differ in length")
    days = fs.days
    splits = {"first": (days[:7], days[7:8], days[8:9]),
              "after": (np.concatenate([days[:7], days[8:9]]), days[7:8], days[9:10])}
    if len(sys.argv) > 5:  # one of the two splits only
        splits = {sys.argv[5]: splits[sys.argv[5]]}
    out = {"log": log, "training_seed": seed}
    caches = {}
    for n in names:
        for when, (d_tr, d_va, d_te) in splits.items():
            part = {}
            for k, ds in (("tr", d_tr), ("va", d_va), ("te", d_te)):
                m = np.isin(allf["day"], ds)
                part[k] = ({c: allf[c][m] for c in (F, "weak_label", "cell", "purchased",
                                                     "is_robot", "day")}, m)
            w = {k: train.sample_weights(part[k][0]["cell"].astype(np.int64),
                                         fs.day_cells[np.isin(days, ds)].sum(axis=0))
                 for k, ds in (("tr", d_tr), ("va", d_va))}
            sc = _fit_score(part["tr"][0], part["va"][0], part["te"][0], w["tr"], w["va"], n,
                            seed, caches.setdefault(when, {}))
            te, m_te = part["te"]
            thr = metrics.threshold_for_fpr(sc, te["purchased"].astype(bool), 0.01)
            f = fam[m_te]
            hit = sc > thr
            r = {k: round(float(hit[f == k].mean()), 3) for k in NEW}
            stock = te["is_robot"].astype(bool) & ~np.isin(f, NEW)
            r["stock"] = round(float(hit[stock].mean()), 4)
            out[f"{n}/{when}"] = r
            print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out), flush=True)
