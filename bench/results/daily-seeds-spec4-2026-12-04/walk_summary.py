"""Pooled realised FPR of `slidr evaluate` walks, with intervals, and each new family's share
caught per scored day.

    python walk_summary.py walk30-*.json
    python walk_summary.py --paired A.json B.json     # A minus B, day by day (same log)

Pooled FPR = flagged purchasing clicks / purchasing clicks over the scored days. Intervals
for the pooled ratio to the budget: exact binomial (Clopper-Pearson) on the pooled count,
normal approximation (as the spec-2 table gives), and a bootstrap over days (5,000 resamples
of the scored days, seed 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import beta

NEW = ("ad_stacker", "injector", "mimic", "proxy_rotator")


def _counts(p: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    days = json.loads(Path(p).read_text())["days"]
    return ([x["scored_day"] for x in days],
            np.array([round(x["fpr"] * x["purchasing"]) for x in days]),
            np.array([x["purchasing"] for x in days]))


def paired(a: str, b: str, budget: float = 0.01) -> int:
    """Flagged purchasing clicks per day of two walks on one log, and the difference of their
    pooled ratios to the budget with a bootstrap over days (5,000 resamples, seed 0)."""
    da, ka, n = _counts(a)
    db, kb, nb = _counts(b)
    assert da == db and (n == nb).all(), "not the same scored days and purchasing clicks"
    print("day            " + " ".join(f"{d:3d}" for d in da))
    print("flagged, A     " + " ".join(f"{k:3d}" for k in ka))
    print("flagged, B     " + " ".join(f"{k:3d}" for k in kb))
    idx = np.random.default_rng(0).integers(0, len(n), size=(5000, len(n)))
    diff = (ka[idx].sum(1) - kb[idx].sum(1)) / n[idx].sum(1) / budget
    lo, hi = np.quantile(diff, [0.025, 0.975])
    print(f"pooled ratio A - B: {(ka.sum() - kb.sum()) / n.sum() / budget:+.3f} "
          f"({ka.sum()} vs {kb.sum()} of {n.sum():,}); day bootstrap 95% {lo:+.2f} to {hi:+.2f}")
    return 0


def main(paths: list[str]) -> int:
    if paths and paths[0] == "--paired":
        return paired(paths[1], paths[2])
    for p in paths:
        d = json.loads(Path(p).read_text())
        days = d["days"]
        b = d["summary"]["fpr_budget"]
        n = np.array([x["purchasing"] for x in days])
        k = np.array([round(x["fpr"] * x["purchasing"]) for x in days])
        K, N = int(k.sum()), int(n.sum())
        p_hat = K / N
        lo, hi = beta.ppf(0.025, K, N - K + 1), beta.ppf(0.975, K + 1, N - K)
        se = (p_hat * (1 - p_hat) / N) ** 0.5
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(days), size=(5000, len(days)))
        boot = k[idx].sum(1) / n[idx].sum(1)
        blo, bhi = np.quantile(boot, [0.025, 0.975])
        fprs = [x["fpr"] for x in days]
        print(f"{Path(p).name}: refit={d['config']['refit']} scored days {len(days)} "
              f"({days[0]['scored_day']}..{days[-1]['scored_day']}); pooled FPR {p_hat:.5f} "
              f"= {K} / {N:,}; ratio {p_hat / b:.3f} (summary {d['summary']['fpr_ratio']:.3f}); "
              f"95% exact binomial {lo / b:.2f}-{hi / b:.2f}; normal "
              f"{(p_hat - 1.96 * se) / b:.2f}-{(p_hat + 1.96 * se) / b:.2f}; day bootstrap "
              f"{blo / b:.2f}-{bhi / b:.2f}; single days {min(fprs):.4f}-{max(fprs):.4f}; "
              f"mean recall {np.mean([x['recall'] for x in days]):.3f}, mean precision "
              f"{np.mean([x['precision'] for x in days]):.3f}; in-sample ratio "
              f"{min(x['in_sample_ratio'] for x in days):.1f}-"
              f"{max(x['in_sample_ratio'] for x in days):.1f}; seconds {d['seconds']}")
        for f in NEW:
            first = d["summary"]["families"].get(f, {}).get("first_day")
            if first is None:
                continue
            row = [x["caught"][f] for x in days if x["scored_day"] >= 18 and f in x["caught"]]
            print(f"  {f}: " + " ".join(f"{v:.2f}".lstrip("0") for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
