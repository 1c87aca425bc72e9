"""New families: first sight (train 0-6, val 7, test 8) and after one retrain (train 0-6+8,
val 7, test 9); per-family recall at one threshold spending 1% FPR on the test day."""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from deadzone import VARIANTS, dz, fit_score, load
from slidr.offline import metrics

NEW = ("ad_stacker", "injector", "mimic", "proxy_rotator")

if __name__ == "__main__":
    log, work, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    fs, raw, age, day, lab = load(log, work)
    fam = np.asarray(pq.read_table(f"{log}/truth.parquet", columns=["family"])["family"]
                     .to_pandas().astype(str))
    days = fs.days
    splits = {"first": (days[:7], days[7:8], days[8:9]),
              "after": (np.concatenate([days[:7], days[8:9]]), days[7:8], days[9:10])}
    out = {"log": log}
    for n in names:
        wd, seed = 1e-4, [7]
        if n == "raw":
            M = raw
        elif n == "noratios":
            M = dz(raw, 1e9, 1e9)  # a dead zone no ratio reaches: all four ratios 0
        elif n == "age":
            M = age
        else:
            base, d1, d7, wd, *seed = VARIANTS[n]
            M = dz(raw if base == "raw" else age, d1, d7)
        for when, (tr, va, te) in splits.items():
            sc, m_te = fit_score(fs, M, day, lab, tr, va, te, seed=(seed or [7])[0], wd=wd)
            p = lab["purchased"][m_te].astype(bool)
            thr = metrics.threshold_for_fpr(sc, p, 0.01)
            f = fam[m_te]
            hit = sc > thr
            r = {k: round(float(hit[f == k].mean()), 3) for k in NEW}
            stock = lab["is_robot"][m_te].astype(bool) & ~np.isin(f, NEW)
            r["stock"] = round(float(hit[stock].mean()), 4)
            out[f"{n}/{when}"] = r
            print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out), flush=True)
