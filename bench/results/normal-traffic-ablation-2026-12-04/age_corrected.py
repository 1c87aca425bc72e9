"""The four rate ratios corrected for each entity key's age in the store, computed offline from
a `slidr daily` work directory's features and the log (first seen per ad and user agent from
the clicks, a key idle for 2 days starting afresh, as the store's logical expiry), then the same
training and test as ablate_features.py: all four corrected ("age"), the 1-hour ratios set to
0 ("age_no1h"), the week ratios set to 0 ("age_no7d").

    python age_corrected.py SEED        # reads simSEED/clicks.parquet, workSEED/features

Corrected ratio of a short window s against a long one l, for a key of age a in the store:
ln((c_s + 1) / W(tau_s)) - ln((c_l + 1) / W(tau_l)), W(tau) = tau (1 - exp(-max(a, 1 s) / tau))
(0 when c_l = 0): 0 for a key clicked at a steady rate at any age. The counts come back from
the features (ad_clicks_1h/1d, ua_clicks_1h, and the ratios themselves).
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from ablate_features import F, recall_at, split
from slidr.offline import featurestore, train

from slidr.featurespec import FEATURE_NAMES

TTL = 2 * 86400.0
IX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def first_seen(keys, ts):
    order = np.argsort(keys, kind="stable")
    k, t = keys[order], ts[order]
    new = np.ones(k.size, bool)
    new[1:] = (k[1:] != k[:-1]) | (t[1:] - t[:-1] > TTL)
    start = t[new][np.cumsum(new) - 1]
    out = np.empty_like(ts)
    out[order] = start
    return out


def window(tau, age):
    return -tau * np.expm1(-np.maximum(age, 1.0) / tau)


def corrected(c_s, c_l, tau_s, tau_l, age):
    r = np.log((c_s + 1) / window(tau_s, age)) - np.log((c_l + 1) / window(tau_l, age))
    return np.where(c_l > 0, r, 0.0).astype(np.float32)


def patch(x, ts, first_ad, first_ua):
    x64 = x.astype(np.float64)
    a1h, a1d = np.expm1(x64[:, IX["ad_clicks_1h"]]), np.expm1(x64[:, IX["ad_clicks_1d"]])
    a7d = 7 * (a1d + 1) / np.exp(x64[:, IX["ad_rate_ratio_7d"]]) - 1
    g1h = np.expm1(x64[:, IX["ua_clicks_1h"]])
    g1d = 24 * (g1h + 1) / np.exp(x64[:, IX["ua_rate_ratio"]]) - 1
    g7d = 7 * (g1d + 1) / np.exp(x64[:, IX["ua_rate_ratio_7d"]]) - 1
    age_a, age_g = ts - first_ad, ts - first_ua
    y = x.copy()
    y[:, IX["ad_rate_ratio"]] = corrected(a1h, a1d, 3600.0, 86400.0, age_a)
    y[:, IX["ad_rate_ratio_7d"]] = corrected(a1d, a7d, 86400.0, 604800.0, age_a)
    y[:, IX["ua_rate_ratio"]] = corrected(g1h, g1d, 3600.0, 86400.0, age_g)
    y[:, IX["ua_rate_ratio_7d"]] = corrected(g1d, g7d, 86400.0, 604800.0, age_g)
    return y


def load(sim, work):
    """(features, their 44 columns, the same with the ratios age-corrected, day, labels)."""
    fs = featurestore.FeatureStore(f"{work}/features")
    c = pq.read_table(f"{sim}/clicks.parquet", columns=["ts", "ad_id", "user_agent"])
    ts = c["ts"].to_numpy().astype(np.float64) / 1000.0
    fa = first_seen(np.asarray(c["ad_id"].to_pandas().astype(str)), ts)
    fg = first_seen(np.asarray(c["user_agent"].to_pandas().astype(str)), ts)
    allf = fs.load([F, "ts", "day"], days=None)
    fts = allf["ts"].astype(np.float64)
    fts = fts / 1000.0 if fts.max() > 1e11 else fts
    if allf["ts"].size != ts.size or np.abs(fts - ts).max() > 1e-3:
        raise SystemExit("the features' rows are not the log's, in its order")
    lab = fs.load(["weak_label", "cell", "purchased", "is_robot"], days=None)
    return fs, allf[F], patch(allf[F], ts, fa, fg), allf["day"], lab


def fit_score(fs, M, day, lab, d_tr, d_va, d_te, seed=7, wd=1e-4):
    """Train on days d_tr (early stopping on d_va); the scores of d_te's rows and their mask."""
    y = (1 - lab["weak_label"]).astype(np.int8)
    m_tr, m_va, m_te = (np.isin(day, d) for d in (d_tr, d_va, d_te))
    w_tr = train.sample_weights(lab["cell"][m_tr].astype(np.int64),
                                fs.day_cells[np.isin(fs.days, d_tr)].sum(axis=0))
    w_va = train.sample_weights(lab["cell"][m_va].astype(np.int64),
                                fs.day_cells[np.isin(fs.days, d_va)].sum(axis=0))
    f = train.fit(M[m_tr], y[m_tr], w_tr, M[m_va], y[m_va], w_va, seed=seed, weight_decay=wd,
                  progress=False)
    return train.predict(f.model, M[m_te]), m_te


def run(sim, work, seed=7):
    fs, raw, X, day, lab = load(sim, work)
    d_tr, d_va, d_te = split(fs)
    variants = {"age": X}
    for name, cols in (("age_no1h", ["ad_rate_ratio", "ua_rate_ratio"]),
                       ("age_no7d", ["ad_rate_ratio_7d", "ua_rate_ratio_7d"])):
        variants[name] = X.copy()
        variants[name][:, [IX[n] for n in cols]] = 0.0
    out = {}
    for name, M in variants.items():
        s, m_te = fit_score(fs, M, day, lab, d_tr, d_va, d_te, seed)
        out[name] = recall_at(s, lab["purchased"][m_te].astype(bool),
                              lab["is_robot"][m_te].astype(bool))
    for n in ("ad_rate_ratio", "ad_rate_ratio_7d", "ua_rate_ratio_7d"):
        j = IX[n]
        out[n + "_daymeans_old"] = [round(float(raw[day == d, j].mean()), 3) for d in fs.days]
        out[n + "_daymeans_new"] = [round(float(X[day == d, j].mean()), 3) for d in fs.days]
    return out


if __name__ == "__main__":
    s = sys.argv[1]
    print(json.dumps({"seed": s, **run(f"sim{s}", f"work{s}")}), flush=True)
