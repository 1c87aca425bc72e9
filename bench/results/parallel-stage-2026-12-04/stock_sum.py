"""Stock logs: recall at 1% FPR on the test day (truth) of stage 1 alone, one second stage on
all 44 features (--training staged-all), one on the 15 entity features, both side by side
("sum": --training staged, the default), the entity one at half weight, and all 44 without the
hour-vs-day rate ratios; rows, weights and split as `slidr daily` makes them.

    OMP_NUM_THREADS=1 python stock_sum.py WORK [TRAINING_SEED]
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "normal-traffic-ablation-2026-12-04"))
from ablate_features import load_days, recall_at  # noqa: E402
from slidr.offline import featurestore, train  # noqa: E402

F = featurestore.FEATURES
B = list(train.STAGE1_COLS)
ENT = list(range(len(B), 44))
ALL = list(range(44))
NOSHORT = [c for c in ALL if c not in (33, 40)]

work, seed = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7
tr, va, te, w_tr, w_va = load_days(work)
y_tr = (1 - tr["weak_label"]).astype(np.int8)
y_va = (1 - va["weak_label"]).astype(np.int8)
s1 = train.fit(tr[F], y_tr, w_tr, va[F], y_va, w_va, seed=seed, progress=False, cols=B).model
base = train.merge([(s1, B)])


def st(c):
    return train.fit(tr[F], y_tr, w_tr, va[F], y_va, w_va, hidden=train.STAGE2_HIDDEN,
                     weight_decay=train.STAGE2_WEIGHT_DECAY, seed=seed, progress=False, cols=c,
                     base=base, epochs=20, early_stopping=False).model


L1 = train.logits(base, te[F])
la = train.logits(train.merge([(s1, B), (st(ALL), ALL)]), te[F])
le = train.logits(train.merge([(s1, B), (st(ENT), ENT)]), te[F])
ln = train.logits(train.merge([(s1, B), (st(NOSHORT), NOSHORT)]), te[F])
pur, rob = te["purchased"].astype(bool), te["is_robot"].astype(bool)
out = {"work": work, "training_seed": seed}
for k, s in (("stage1", L1), ("all44", la), ("entities", le), ("sum", la + le - L1),
             ("sum_half", la + 0.5 * (le - L1)), ("all44_noshort", ln)):
    out[k] = round(float(recall_at(s, pur, rob)), 4)
print(json.dumps(out), flush=True)
