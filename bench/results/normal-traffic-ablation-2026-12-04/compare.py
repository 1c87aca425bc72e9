"""Per-seed difference of each variant's recall at 1% FPR (test day, against the truth) from
feature spec 3's on the same log and training seed, with the mean and its standard error.

    python compare.py SPEC3_SEEDS.json SHIPPED_SEEDS.json RESULTS.jsonl [...]

SPEC3_SEEDS.json / SHIPPED_SEEDS.json: `python -m slidr.bench.daily_seeds --json` tables."""
import json
import sys

import numpy as np


def recall_by_seed(path):
    return {r["seed"]: r["recall_at_1pct"]["model"] for r in json.load(open(path))}


def main(argv):
    s3, shipped = recall_by_seed(argv[0]), recall_by_seed(argv[1])
    rows = {}
    for f in argv[2:]:
        for line in open(f):
            d = json.loads(line)
            s = int(d["work"][4:]) if "work" in d else int(d["seed"])
            rows.setdefault(s, {}).update({k: v for k, v in d.items()
                                           if isinstance(v, float) and k != "wd"})
    seeds = sorted(s for s in rows if s != "shipped")
    for s in seeds:
        rows[s]["shipped (44 features)"] = shipped[s]
    print("| variant | mean difference from spec 3 | s.e. | seeds | per seed (0-9) |")
    print("|---|---|---|---|---|")
    for k in sorted({k for s in seeds for k in rows[s]}):
        d = [rows[s][k] - s3[s] for s in seeds if k in rows[s]]
        print(f"| {k} | {np.mean(d):+.4f} | {np.std(d, ddof=1) / np.sqrt(len(d)):.4f} | "
              f"{len(d)} | {' '.join(f'{x:+.3f}' for x in d)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
