"""Calibration settings replayed on a `slidr evaluate` walk without retraining.

    python calib_variants.py capture LOG CAP.npz   # the walk (window 8, from day 7, seed 0),
                                                   # keeping each retrain's calibration input
                                                   # and the next day's scores
    python calib_variants.py replay CAP.npz LOG    # pooled next-day FPR / budget, mean recall

Each setting calibrates every retrain's validation and test rows again and applies the
thresholds to the next day's scores, as `slidr evaluate` does; with the settings the walk ran
with, the pooled FPR equals its evaluate.json's.
"""
import sys

import numpy as np
import pyarrow.parquet as pq

from slidr.offline import calibrate as cal
from slidr.offline import evaluate as ev
from slidr.offline import metrics, train

COLS = ("score", "slice", "day", "purchased", "heuristic", "split", "is_robot")
SETTINGS = {
    "order_stat + lodo": {"fpr_estimate": "order_stat"},
    "order_stat, no correction": {"fpr_estimate": "order_stat", "budget_correction": "none"},
    "empirical + lodo": {"fpr_estimate": "empirical"},
    "empirical, no correction": {"fpr_estimate": "empirical", "budget_correction": "none"},
    "global@budget (order_stat)": {"fpr_estimate": "order_stat", "method": "global"},
    "auto (order_stat)": {"fpr_estimate": "order_stat", "method": "auto"},
}


def capture(log: str, out: str) -> None:
    store: dict[str, np.ndarray] = {}
    k, depth = [0], [0]
    calibrate, apply = cal.calibrate, ev._apply

    def cap_cal(cols, cfg, *a, **kw):  # the walk's own call, not the leave-one-day-out ones
        if depth[0] == 0:
            for c in COLS:
                v = np.asarray(cols[c])
                store[f"c{k[0]}_{c}"] = v.astype(str) if v.dtype == object else v
        depth[0] += 1
        try:
            return calibrate(cols, cfg, *a, **kw)
        finally:
            depth[0] -= 1

    def cap_apply(sc, slices, th):
        store[f"n{k[0]}_score"] = sc
        store[f"n{k[0]}_slice"] = np.asarray(slices).astype(str)
        k[0] += 1
        return apply(sc, slices, th)

    cal.calibrate, ev._apply = cap_cal, cap_apply
    cfg = ev.EvalConfig(window=8, from_day=7, weighting="label", seed=0, refit=False)
    res = ev.walk(f"{log}/clicks.parquet", f"{log}/customers.parquet", cfg, log=lambda s: None)
    for i, d in enumerate(res["days"]):
        store[f"n{i}_day"] = np.array(d["scored_day"])
    np.savez_compressed(out, n=np.array(k[0]), **store)


def replay(cap: str, log: str) -> None:
    z = np.load(cap)
    t = pq.read_table(f"{log}/clicks.parquet", columns=["ts", "purchased", "is_robot"])
    day = train.day_index(t.column("ts").to_numpy())
    pur = t.column("purchased").to_numpy(zero_copy_only=False)
    rob = t.column("is_robot").to_numpy(zero_copy_only=False)
    for name, kw in SETTINGS.items():
        flagged = purchasing = 0
        recall = []
        for i in range(int(z["n"])):
            cols = {c: z[f"c{i}_{c}"] for c in COLS}
            try:
                th = cal.calibrate(cols, cal.CalibConfig(fpr_budget=0.01, **kw))["thresholds"]
            except cal.CalibrationInfeasible:
                va = cols["split"] == "val"
                th = {"default": float(metrics.threshold_for_fpr(
                    cols["score"][va], cols["purchased"][va], 0.01)), "slices": {}}
            m = day == int(z[f"n{i}_day"])
            inv = ev._apply(z[f"n{i}_score"], z[f"n{i}_slice"], th)
            flagged += int(inv[pur[m]].sum())
            purchasing += int(pur[m].sum())
            recall.append(float(inv[rob[m]].mean()))
        print(f"{cap}: {name}: pooled FPR {flagged / purchasing / 0.01:.3f} x the budget "
              f"({flagged} / {purchasing}), mean recall {np.mean(recall):.3f}", flush=True)


if __name__ == "__main__":
    {"capture": capture, "replay": replay}[sys.argv[1]](*sys.argv[2:])
