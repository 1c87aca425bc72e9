"""Table of `slidr daily` runs on stock simulated logs, one per seed.

    python -m slidr.bench.daily_seeds ROOT [--seeds 0,1,...] [--json OUT.json]

ROOT holds, per seed s, what this loop leaves (run from ROOT):

    slidr simulate --seed $s --out sim$s
    slidr daily --clicks sim$s/clicks.parquet --customers sim$s/customers.parquet \
        --registry reg$s --work work$s --json > daily$s.json

Columns (markdown on stdout):
- status: `slidr daily`'s status (daily$s.json); a refusal names the failed checks;
- published FPR, precision, recall: the published thresholds on the held-out (test) day,
  against the truth (the bundle's metrics.test);
- recall @1% (MLP / logistic): one overall threshold at 1% FPR on the test day
  (work$s/train/metrics.json, `<scorer>.overall.recall`);
- slices where logistic's IVR is higher: the training report's comparison (IVR at the slice's
  own FPR-target threshold), with the margin and the two IVR bands (IVR at FPR = target x
  (1 -+ 1/sqrt(target x purchasing clicks))); "no interval" when the slice has too few
  purchasing clicks for one;
- coverage_floors: the model guardrail of that name.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _load(p: Path) -> Any:
    with open(p) as f:
        return json.load(f)


def _band(b: list[float] | None) -> str:
    return f"[{b[0]:.3f}, {b[1]:.3f}]" if b else "none"


def seed_row(root: Path, s: int) -> dict[str, Any]:
    d = _load(root / f"daily{s}.json")
    row: dict[str, Any] = {"seed": s, "status": d["status"], "seconds": d.get("seconds")}
    failed = [c["name"] for c in d.get("checks", []) if not c.get("passed", True)]
    row["failed_checks"] = failed
    row["checks"] = {c["name"]: {"passed": c.get("passed"), "value": c.get("value"),
                                 "limit": c.get("limit")} for c in d.get("checks", [])}
    row["failed_messages"] = [c.get("message") for c in d.get("checks", [])
                              if not c.get("passed", True)]
    if d["status"] == "published":
        man = _load(root / f"reg{s}" / "bundles" / d["version"] / "manifest.json")
        t = man["metrics"]["test"]
        row.update(published_fpr=t["fpr"], precision=t.get("precision"),
                   recall=t.get("recall"))
    cov = [c for c in d.get("checks", []) if c["name"] == "coverage_floors"]
    row["coverage_floors"] = ("met" if cov and cov[0]["passed"] else
                              (f"not met: {cov[0]['value']}" if cov else "not checked"))
    mp = root / f"work{s}" / "train" / "metrics.json"
    if mp.exists():
        m = _load(mp)
        row["recall_at_1pct"] = {n: m[n]["overall"]["recall"] for n in ("model", "logistic")}
        worse = []
        for sn, c in sorted(m["comparison"]["logistic"].items()):
            if sn == "overall" or c["model_wins"] is not False:
                continue
            worse.append({"slice": sn, "margin": c["margin"], "within_noise": c["within_noise"],
                          "model_band": m["model"]["slices"][sn].get("ivr_band"),
                          "logistic_band": m["logistic"]["slices"][sn].get("ivr_band"),
                          "n_purchasing": m["model"]["slices"][sn]["n_purchasing"],
                          "model_precision": c.get("model_precision"),
                          "logistic_precision": c.get("baseline_precision"),
                          "model_auc_true": m["model"]["slices"][sn].get("auc_true"),
                          "logistic_auc_true": m["logistic"]["slices"][sn].get("auc_true")})
        if worse:
            ivr_k = _ivr_at_k(root / f"work{s}" / "train" / "scores.parquet",
                              [w["slice"] for w in worse])
            for w in worse:
                w["ivr_at_k_purchasing"] = ivr_k[w["slice"]]
        row["logistic_higher"] = worse
    return row


def _ivr_at_k(path: Path, slices: list[str], ks: tuple[int, ...] = (0, 1, 2)
              ) -> dict[str, dict[str, list[float]]]:
    """Per slice and scorer, the test day's IVR when the threshold lets exactly k purchasing
    clicks through (k = 0, 1, 2): the interval a slice with too few purchasing clicks for an
    FPR band has (1% of 75 purchasing clicks is under one click)."""
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["split", "slice", "purchased", "score_model",
                                     "score_logistic"]).to_pandas()
    t = t[t["split"] == "test"]
    out: dict[str, dict[str, list[float]]] = {}
    for sn in slices:
        d = t[t["slice"] == sn]
        out[sn] = {}
        for who in ("model", "logistic"):
            sc = d[f"score_{who}"].to_numpy(np.float64)
            ps = np.sort(sc[d["purchased"].to_numpy(bool)])[::-1]
            out[sn][who] = [float((sc > ps[k]).mean()) if k < ps.size else float("nan")
                            for k in ks]
    return out


def _f(v: Any, nd: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _worse_text(w: list[dict[str, Any]]) -> str:
    if not w:
        return "none"
    out = []
    for x in w:
        if x["within_noise"] is None:
            k = x.get("ivr_at_k_purchasing") or {}
            note = f"no FPR band: {x['n_purchasing']} purchasing clicks"
            if k:
                note += (f"; IVR with 0/1/2 purchasing clicks flagged: MLP "
                         f"{'/'.join(f'{v:.3f}' for v in k['model'])}, logistic "
                         f"{'/'.join(f'{v:.3f}' for v in k['logistic'])}")
        else:
            note = ("within noise" if x["within_noise"] else "outside noise") + \
                f", MLP {_band(x['model_band'])} vs logistic {_band(x['logistic_band'])}"
        out.append(f"{x['slice']} ({x['margin']:+.4f}, {note})")
    return "; ".join(out)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | status | published FPR | precision | recall | recall @1% (MLP / logistic)"
             " | slices where logistic's IVR is higher (margin, noise) | coverage_floors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["status"] + (f" ({', '.join(r['failed_checks'])})" if r["failed_checks"] else "")
        ra = r.get("recall_at_1pct") or {}
        lines.append(f"| {r['seed']} | {st} | {_f(r.get('published_fpr'))} | "
                     f"{_f(r.get('precision'), 3)} | {_f(r.get('recall'), 3)} | "
                     f"{_f(ra.get('model'), 3)} / {_f(ra.get('logistic'), 3)} | "
                     f"{_worse_text(r.get('logistic_higher', []))} | {r['coverage_floors']} |")

    def mean(vals: list[float]) -> float | None:
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    pub = [r for r in rows if r["status"] == "published"]
    ra = [r["recall_at_1pct"] for r in rows if r.get("recall_at_1pct")]
    lines.append(f"| mean | {len(pub)}/{len(rows)} published | "
                 f"{_f(mean([r['published_fpr'] for r in pub]))} | "
                 f"{_f(mean([r['precision'] for r in pub]), 3)} | "
                 f"{_f(mean([r['recall'] for r in pub]), 3)} | "
                 f"{_f(mean([x['model'] for x in ra]), 3)} / "
                 f"{_f(mean([x['logistic'] for x in ra]), 3)} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--seeds", default=None, help="comma-separated (default: every daily*.json)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.seeds:
        seeds = [int(x) for x in a.seeds.split(",")]
    else:
        seeds = sorted(int(p.stem[5:]) for p in a.root.glob("daily*.json")
                       if p.stem[5:].isdigit() and p.stat().st_size > 0)
    rows = [seed_row(a.root, s) for s in seeds]
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
