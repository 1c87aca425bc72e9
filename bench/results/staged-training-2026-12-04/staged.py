"""Two-stage training variants against one joint fit, on a `slidr daily` work directory's
features: recall at 1% FPR on the test day against the truth.

    python staged.py WORK VARIANT[,VARIANT...] [TRAINING_SEED]

Rows, weights and the split as `slidr daily` makes them (ablate_features.load_days in
../normal-traffic-ablation-2026-12-04); "joint" is the shipped single fit over 44 features.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "normal-traffic-ablation-2026-12-04"))
from ablate_features import load_days, recall_at  # noqa: E402
from slidr.offline import featurestore, train  # noqa: E402

F = featurestore.FEATURES
BASE = list(range(29))  # feature spec 3's columns; stage 2 takes the 15 spec-4 ones

ALL = list(range(44))
# name: (stage-2 hidden widths, stage-2 weight decay[, stage-2 columns]); None = the joint fit.
# Stage 2 sees the 15 spec-4 columns unless it names its columns (ALL: every column, so it can
# learn an entity feature's interaction with the user, session and IP features).
VARIANTS = {
    "joint": None,
    "stage1": (),  # stage 1 alone: the 29 spec-3 columns
    "staged": ((16, 8), 1e-3),
    "staged_wd4": ((16, 8), 1e-4),
    "staged_wd2": ((16, 8), 1e-2),
    "staged_small": ((8, 4), 1e-3),
    "staged_wide": ((32, 16), 1e-3),
    "staged_all": ((16, 8), 1e-3, ALL),
    "staged_all_wd4": ((16, 8), 1e-4, ALL),
    "staged_all_wide": ((32, 16), 1e-4, ALL),
    # stage 2 for a fixed number of epochs at the full step (no early stopping: the validation
    # days precede a new family, so their loss cannot say when stage 2 has learnt it)
    "staged_fixed": ((16, 8), 1e-3, None, 10),
    "staged_all_fixed": ((16, 8), 1e-3, ALL, 10),
    # stage 2 as wide as stage 1
    "staged_all_big": ((64, 32), 1e-4, ALL),
    "staged_ent_big": ((64, 32), 1e-4, None),
    "staged_all_mid": ((32, 16), 1e-4, ALL, 8),
    "staged_all_big_fixed": ((64, 32), 1e-4, ALL, 10),
    "staged_all_big_fixed6": ((64, 32), 1e-4, ALL, 6),
    "staged_all_big_fixed20": ((64, 32), 1e-4, ALL, 20),  # = `slidr daily`'s default
    "staged_all_big_fixed_wd0": ((64, 32), 0.0, ALL, 10),
    "staged_all_big_fixed20_wd0": ((64, 32), 0.0, ALL, 20),
    "staged_all_big_fixed30": ((64, 32), 1e-4, ALL, 30),
    # the shipped stage 2 with the newest training day weighted 3x in stage 2 (needs the
    # training rows' days: newfam.py only)
    "staged_all_big_fixed20_ldw3": ((64, 32), 1e-4, ALL, 20, 3.0),
    # stage 2 on the 15 spec-4 columns only (user gap regularity, ads, (IP, ad), user agents),
    # 20 epochs without early stopping
    "staged_ent_big_fixed20": ((64, 32), 1e-4, None, 20),
}


def fit_score(tr, va, te, w_tr, w_va, variant, seed, cache=None):
    """Test-day scores of one variant. `cache`: a dict keeping stage 1 (the same for every
    staged variant of one work directory and training seed) between calls."""
    y_tr = (1 - tr["weak_label"]).astype(np.int8)
    y_va = (1 - va["weak_label"]).astype(np.int8)
    if VARIANTS[variant] is None:
        m = train.fit(tr[F], y_tr, w_tr, va[F], y_va, w_va, seed=seed, progress=False)
        return train.predict(m.model, te[F])
    cache = {} if cache is None else cache
    if "s1" not in cache:  # as train.fit_staged's stage 1
        cache["s1"] = train.fit(tr[F], y_tr, w_tr, va[F], y_va, w_va, seed=seed,
                                progress=False, cols=BASE).model
    if variant == "stage1":
        return train.predict(train.merge([(cache["s1"], BASE)]), te[F])
    h2, wd2, *more = VARIANTS[variant]
    c2 = list(range(29, 44)) if not more or more[0] is None else more[0]
    e2 = more[1] if len(more) > 1 else None
    w2 = w_tr
    if len(more) > 2:  # the newest training day weighted more[2] times in stage 2
        w2 = train.recency_weights(w_tr, tr["day"], more[2])
    base = train.merge([(cache["s1"], BASE)])
    s2 = train.fit(tr[F], y_tr, w2, va[F], y_va, w_va, hidden=h2, weight_decay=wd2,
                   seed=seed, progress=False, cols=c2, base=base, epochs=e2 or 20,
                   early_stopping=e2 is None).model
    return train.predict(train.merge([(cache["s1"], BASE), (s2, c2)]), te[F])


if __name__ == "__main__":
    work, names = sys.argv[1], sys.argv[2].split(",")
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    tr, va, te, w_tr, w_va = load_days(work)
    out = {"work": work, "training_seed": seed}
    cache = {}
    for n in names:
        s = fit_score(tr, va, te, w_tr, w_va, n, seed, cache)
        out[n] = recall_at(s, te["purchased"].astype(bool), te["is_robot"].astype(bool))
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out), flush=True)
