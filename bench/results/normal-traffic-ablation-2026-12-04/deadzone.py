"""Rate ratios with a dead zone: max(r - d, 0), on the raw and on the age-corrected ratios."""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from ablate_features import F, recall_at, split
from age_corrected import IX, first_seen, patch
from slidr.offline import featurestore, train

R1 = [IX["ad_rate_ratio"], IX["ua_rate_ratio"]]
R7 = [IX["ad_rate_ratio_7d"], IX["ua_rate_ratio_7d"]]


def dz(x, d1, d7):
    y = x.copy()
    y[:, R1] = np.maximum(y[:, R1] - d1, 0)
    y[:, R7] = np.maximum(y[:, R7] - d7, 0)
    return y


def load(sim, work):
    fs = featurestore.FeatureStore(f"{work}/features")
    c = pq.read_table(f"{sim}/clicks.parquet", columns=["ts", "ad_id", "user_agent"])
    ts = c["ts"].to_numpy().astype(np.float64) / 1000.0
    fa = first_seen(np.asarray(c["ad_id"].to_pandas().astype(str)), ts)
    fg = first_seen(np.asarray(c["user_agent"].to_pandas().astype(str)), ts)
    allf = fs.load([F, "day"], days=None)
    lab = fs.load(["weak_label", "cell", "purchased", "is_robot"], days=None)
    return fs, allf[F], patch(allf[F], ts, fa, fg), allf["day"], lab


def fit_score(fs, M, day, lab, d_tr, d_va, d_te, seed=7):
    y = (1 - lab["weak_label"]).astype(np.int8)
    m_tr, m_va, m_te = (np.isin(day, d) for d in (d_tr, d_va, d_te))
    w_tr = train.sample_weights(lab["cell"][m_tr].astype(np.int64),
                                fs.day_cells[np.isin(fs.days, d_tr)].sum(axis=0))
    w_va = train.sample_weights(lab["cell"][m_va].astype(np.int64),
                                fs.day_cells[np.isin(fs.days, d_va)].sum(axis=0))
    f = train.fit(M[m_tr], y[m_tr], w_tr, M[m_va], y[m_va], w_va, seed=seed, progress=False)
    return train.predict(f.model, M[m_te]), m_te


VARIANTS = {
    "raw_dz": ("raw", 1.0, 0.5),
    "age_dz": ("age", 1.0, 0.3),
}

if __name__ == "__main__":
    s = sys.argv[1]
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(VARIANTS)
    fs, raw, age, day, lab = load(f"sim{s}", f"work{s}")
    d_tr, d_va, d_te = split(fs)
    out = {"seed": s}
    for n in names:
        base, d1, d7 = VARIANTS[n]
        M = dz(raw if base == "raw" else age, d1, d7)
        sc, m_te = fit_score(fs, M, day, lab, d_tr, d_va, d_te)
        out[n] = recall_at(sc, lab["purchased"][m_te].astype(bool), lab["is_robot"][m_te].astype(bool))
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out), flush=True)
