"""Per-seed comparison of two or more daily_seeds JSON files (python -m slidr.bench.daily_seeds
ROOT --json X.json), e.g. spec 4 vs spec 3 (same logs) vs spec 2 (the spec-2 table's logs).

    python compare.py NAME=seeds.json NAME=other.json ...

A refused seed has no published numbers; its candidate's test-day numbers under the
published (slice) method are shown in brackets when ROOT is given as NAME=seeds.json@ROOT.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def candidate(root: Path, s: int) -> dict | None:
    p = root / f"work{s}" / "candidate" / "calibration.json"
    if not p.exists():
        return None
    c = json.loads(p.read_text())
    ev = c["evaluation"]
    meth = "slice" if "slice" in ev else next(iter(ev))
    t = ev[meth]["test"]["overall"]
    return {"published_fpr": t["fpr"], "precision": t["precision"], "recall": t["recall"]}


def main(argv: list[str]) -> int:
    runs = []
    for a in argv:
        name, spec = a.split("=", 1)
        path, _, root = spec.partition("@")
        rows = {r["seed"]: r for r in json.loads(Path(path).read_text())}
        if root:
            for s, r in rows.items():
                if r["status"] != "published":
                    cand = candidate(Path(root), s)
                    if cand:
                        r["_candidate"] = cand
        runs.append((name, rows))
    names = " / ".join(n for n, _ in runs)
    cols = [("published FPR", "published_fpr", 4), ("precision", "precision", 3),
            ("recall", "recall", 3), ("recall @1% MLP", ("recall_at_1pct", "model"), 3),
            ("recall @1% logistic", ("recall_at_1pct", "logistic"), 3)]

    def get(r, key):
        if isinstance(key, tuple):
            return (r.get(key[0]) or {}).get(key[1]), False
        v = r.get(key)
        if v is None and "_candidate" in r:
            return r["_candidate"][key], True
        return v, False

    print("| seed | " + " | ".join(f"{c} {names}" for c, _, _ in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    seeds = sorted(set.intersection(*(set(rows) for _, rows in runs)))
    for s in seeds:
        cells = []
        for _, key, nd in cols:
            parts = []
            for _, rows in runs:
                v, cand = get(rows[s], key)
                t = "-" if v is None else f"{v:.{nd}f}"
                parts.append(f"({t})" if cand else t)
            cells.append(" / ".join(parts))
        print(f"| {s} | " + " | ".join(cells) + " |")
    cells = []
    for _, key, nd in cols:
        parts = []
        for _, rows in runs:
            vals = [get(rows[s], key)[0] for s in seeds]
            vals = [v for v in vals if v is not None]
            parts.append(f"{statistics.mean(vals):.{nd}f}" + ("" if len(vals) == len(seeds)
                                                               else f" ({len(vals)} seeds)"))
        cells.append(" / ".join(parts))
    print("| mean | " + " | ".join(cells) + " |")
    print()
    base = runs[0]
    for name, rows in runs[1:]:
        print(f"Per-seed differences, {base[0]} minus {name}: mean (s.d.; range), seeds where both have a value")
        for label, key, nd in cols:
            d = []
            for s in seeds:
                a, b = get(base[1][s], key)[0], get(rows[s], key)[0]
                if a is not None and b is not None:
                    d.append(a - b)
            if d:
                print(f"- {label}: {statistics.mean(d):+.{nd}f} ({statistics.stdev(d):.{nd}f}; "
                      f"{min(d):+.{nd}f} to {max(d):+.{nd}f}; n={len(d)})")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
