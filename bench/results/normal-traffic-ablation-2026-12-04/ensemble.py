"""Mean of K MLPs' robot probabilities (training seeds 7..7+K-1), all 44 features."""
import json
import sys

import numpy as np
from ablate_features import F, recall_at, split
from slidr.offline import featurestore, train


def run(work, k, ratios_zero=False):
    fs = featurestore.FeatureStore(f"{work}/features")
    d_tr, d_va, d_te = split(fs)

    def cc(ds):
        return fs.day_cells[np.isin(fs.days, ds)].sum(axis=0)

    tr = fs.load([F, "weak_label", "cell"], days=d_tr)
    va = fs.load([F, "weak_label", "cell"], days=d_va)
    te = fs.load([F, "purchased", "is_robot"], days=d_te)
    w_tr = train.sample_weights(tr["cell"].astype(np.int64), cc(d_tr))
    w_va = train.sample_weights(va["cell"].astype(np.int64), cc(d_va))
    p, r = te["purchased"].astype(bool), te["is_robot"].astype(bool)
    acc = np.zeros(te[F].shape[0])
    out = {}
    for i in range(k):
        m = train.fit(tr[F], (1 - tr["weak_label"]).astype(np.int8), w_tr, va[F],
                      (1 - va["weak_label"]).astype(np.int8), w_va, seed=7 + i, progress=False)
        s = train.predict(m.model, te[F])
        out[f"single_seed{7 + i}"] = recall_at(s, p, r)
        acc += s
        out[f"ens{i + 1}"] = recall_at(acc / (i + 1), p, r)
        print(json.dumps(out), file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps({"work": sys.argv[1], **run(sys.argv[1], int(sys.argv[2]))}), flush=True)
