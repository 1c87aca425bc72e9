"""Per scored day of `slidr evaluate` runs: ROC-AUC, recall at one threshold spending exactly
the budget on that day (the oracle: model quality without calibration noise), the realised FPR
and recall at the calibrated thresholds, and each family's share caught at the oracle
threshold.

    python oracle_days.py EVALUATE_DIR_OR_JSON [...]
"""
import json
import sys

for n in sys.argv[1:]:
    r = json.load(open(n if n.endswith(".json") else n + "/evaluate.json"))
    for d in r["days"]:
        print(f"{n[-22:]:22s} {d['scored_day']} auc {d['auc']:.4f} oracle {d['oracle_recall']:.3f} "
              f"fpr {d['fpr']:.4f} recall {d['recall']:.3f} | "
              + " ".join(f"{k[:5]} {v:.3f}" for k, v in d["oracle_caught"].items()))
