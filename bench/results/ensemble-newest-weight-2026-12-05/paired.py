"""Paired differences of `python -m slidr.bench.daily_seeds ROOT --json` tables on the same
stock logs: recall at 1 % FPR on the test day (MLP, logistic), and the published-threshold
FPR, precision and recall where both published.

    python paired.py A.json B.json      # A minus B
"""
import json
import sys

import numpy as np


def rows(p: str) -> dict[int, dict]:
    return {r["seed"]: r for r in json.load(open(p))}


if __name__ == "__main__":
    a, b = rows(sys.argv[1]), rows(sys.argv[2])
    seeds = sorted(set(a) & set(b))
    for k in ("model", "logistic"):
        d = np.array([a[s]["recall_at_1pct"][k] - b[s]["recall_at_1pct"][k] for s in seeds])
        print(f"recall @1% {k}: {d.mean() * 100:+.2f} points (s.e. "
              f"{d.std(ddof=1) / np.sqrt(d.size) * 100:.2f}, n {d.size}); per seed "
              + " ".join(f"{x * 100:+.1f}" for x in d))
    pub = [s for s in seeds if a[s]["status"] == b[s]["status"] == "published"]
    for k in ("published_fpr", "precision", "recall"):
        d = np.array([a[s][k] - b[s][k] for s in pub])
        print(f"{k} (both published, n {d.size}): {d.mean() * 100:+.2f} points "
              f"(s.e. {d.std(ddof=1) / np.sqrt(d.size) * 100:.2f})")
    print("published: A " + f"{sum(a[s]['status'] == 'published' for s in seeds)}/{len(seeds)}, "
          f"B {sum(b[s]['status'] == 'published' for s in seeds)}/{len(seeds)}")
