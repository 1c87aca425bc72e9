"""One retrain as `slidr evaluate` runs it (window 8, the newest day trained on, weighting
'label', staged training), then the share caught at one threshold spending exactly the FPR
budget on the scored day (the oracle threshold: the model's ranking without calibration
noise), overall and per new family.

    python one_retrain.py NAME SEED [T=18] [rep=DAY] [extra=FILE.npz]

DATA (env): the dump.py file (default w6t_all.npz). extra=FILE.npz: append its `share`
column as a stage-1 feature to a dump made with feature spec 4 (the IP's logged-in share
from ip_logged_in.py, before the kernel computed it). T: the newest training day; rep: the day scored (default T + 1).
"""
import os
import sys

import numpy as np
import torch

from slidr.featurespec import FEATURE_NAMES
from slidr.offline import metrics, train

torch.set_num_threads(1)
name, seed = sys.argv[1], int(sys.argv[2])
opt = dict(a.split("=", 1) for a in sys.argv[3:])
d = np.load(os.environ.get("DATA", "w6t_all.npz"))
x, y, day, fam, pur = d["x"], d["y"], d["day"], d["fam"], d["pur"]
if "extra" in opt:
    x = np.concatenate([x, np.load(opt["extra"])["share"].astype(np.float32)[:, None]], axis=1)
    # a spec-4 dump: its stage-1 columns end at ip_tz_switch_1d; the share joins them
    train.STAGE1_COLS = (*range(FEATURE_NAMES.index("ip_tz_switch_1d") + 1), x.shape[1] - 1)
T = int(opt.get("T", 18))
cells = train.weight_cells(d["ts"], None, d["li"], y, "label")
lo = T - 7
win = (day >= lo) & (day <= T)
split = train.time_split(day[win] - lo, val_days=None, newest="auto")
tr, va = (np.flatnonzero(win)[split[k]] for k in ("train", "val"))
fit = train.fit_mlp(x[tr], y[tr], train.sample_weights(cells[tr]), x[va], y[va],
                    train.sample_weights(cells[va]), training="staged", hidden=(64, 32),
                    epochs=20, seed=seed, progress=False, label="mlp")
m = day == int(opt.get("rep", T + 1))
s = train.predict(fit.model, x[m]).astype(np.float64)
th = metrics.threshold_for_fpr(s, pur[m], 0.01)
rob = fam[m] != "human"
out = {"auc": metrics.roc_auc(s, rob), "oracle": float((s[rob] > th).mean())}
for f in ("mimic", "proxy_rotator", "ad_stacker", "injector"):
    if (fam[m] == f).any():
        out[f] = float((s[fam[m] == f] > th).mean())
print(name, seed, " ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)
