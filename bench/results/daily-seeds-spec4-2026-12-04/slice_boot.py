"""One slice's test-day IVR, MLP against the logistic model, at the threshold that lets exactly
k purchasing clicks through (k = 0, 1, 2: a slice with under 100 purchasing clicks has no FPR
band), with true recall and precision, and a 95% bootstrap over sessions (2,000 resamples of
the slice's test-day sessions, seed 0) of the margin MLP minus logistic.

    python slice_boot.py WORK/train/scores.parquet app/out

WORK is a `slidr daily --work` folder (scores.parquet with session_hash and is_robot).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq


def main(path: str, sn: str) -> int:
    t = pq.read_table(path, columns=["split", "slice", "purchased", "session_hash", "is_robot",
                                     "score_model", "score_logistic"]).to_pandas()
    d = t[(t["split"] == "test") & (t["slice"] == sn)].reset_index(drop=True)
    sess, inv = np.unique(d["session_hash"].to_numpy(), return_inverse=True)
    pur = d["purchased"].to_numpy(bool)
    rob = d["is_robot"].to_numpy(bool)
    sc = {w: d[f"score_{w}"].to_numpy(np.float64) for w in ("model", "logistic")}

    def ivr(idx: np.ndarray, w: str, k: int) -> float:
        s = sc[w][idx]
        ps = np.sort(s[pur[idx]])[::-1]
        return float((s > ps[k]).mean()) if k < ps.size else float("nan")

    print(f"{sn}: {len(d)} clicks, {sess.size} sessions, {pur.sum()} purchasing, "
          f"{rob.sum()} robotic (truth)")
    for k in (0, 1, 2):
        for w in ("model", "logistic"):
            f = sc[w] > np.sort(sc[w][pur])[::-1][k]
            print(f"k={k} {w}: IVR {f.mean():.3f}, true recall {(f & rob).sum() / rob.sum():.3f}, "
                  f"true precision {(f & rob).sum() / max(f.sum(), 1):.3f}")
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(sess.size + 1))
    members = [order[bounds[i]:bounds[i + 1]] for i in range(sess.size)]
    rng = np.random.default_rng(0)
    res: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _ in range(2000):
        idx = np.concatenate([members[i] for i in rng.integers(0, sess.size, sess.size)])
        for k in res:
            res[k].append(ivr(idx, "model", k) - ivr(idx, "logistic", k))
    every = np.arange(len(d))
    for k, v in res.items():
        a = np.array(v)
        a = a[~np.isnan(a)]
        lo, hi = np.quantile(a, [0.025, 0.975])
        print(f"k={k}: margin {ivr(every, 'model', k) - ivr(every, 'logistic', k):+.4f}, "
              f"95% session bootstrap {lo:+.4f} to {hi:+.4f}, P(margin < 0) {np.mean(a < 0):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
