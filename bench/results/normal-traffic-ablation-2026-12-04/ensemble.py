"""Mean of K MLPs' robot probabilities (training seeds 7..7+K-1), all 44 features."""
import json
import sys

import numpy as np
from ablate_features import F, load_days, recall_at
from slidr.offline import train


def run(work, k):
    tr, va, te, w_tr, w_va = load_days(work)
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
