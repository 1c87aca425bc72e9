#!/usr/bin/env python
"""Slice-level vs global calibration on many held-out days (docs/calibration.md, "Held-out days").

Reads the scores.parquet of one or more training runs trained with a long validation window
(`slidr train --val-days N`): every scored day is then outside the model's training days. For
each scored day t after the first `--val-days` ones, thresholds are fitted on the `--val-days`
days before t and evaluated on day t (never seen by the fit), with `calibrate.calibrate`
exactly as `slidr calibrate` runs it. Per (run, day, budget) it reports:

  slice        slice-level IVR and FPR on day t, coverage floors met
  g@budget     the global threshold whose fitted-days FPR equals the budget (same budget)
  chosen       what CalibConfig.method "auto" publishes (slice-level, or global@budget where
               the leave-one-day-out evidence on the fitted days says slice-level is worse)
  g@matched    the global threshold set on day t itself to the slice-level's realised FPR on
               day t (or just below): equal realised FPR, an oracle for global
  ceiling      (--ceiling) the best per-slice allocation on day t in hindsight (exact DP over
               purchasing clicks, no floors) at g@matched's FPR: what a perfect fit could reach

    scripts/calib_heldout.py RUN_DIR... [--val-days 3] [--budgets 0.005,0.01,0.02,0.03]
        [--min-coverage 0.5] [--slice-min-coverage '*/in=0'] [--refine-iters 8]
        [--floor-every-day 0|1] [--budget-correction lodo|none]
        [--fpr-estimate order_stat|empirical] [--select-fpr-tolerance 0.05] [--jobs N]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from slidr.offline import calibrate as cal


def load(run: Path, score_col: str) -> tuple[dict[str, Any], np.ndarray]:
    import pyarrow.parquet as pq
    cols = cal.load_scores(run, score_col)
    day = pq.read_table(run / "scores.parquet", columns=["day"]).column("day").to_numpy()
    return cols, day.astype(np.int64)


def _dp_ceiling(c: dict[str, Any], k_total: int) -> float:
    """max over per-slice counts k_s (sum k_s <= k_total) of the clicks invalidated when slice s
    invalidates exactly its k_s highest-scoring purchasing clicks; as an IVR."""
    best = np.zeros(k_total + 1)
    for s in sorted(set(c["slice"].tolist())):
        m = c["slice"] == s
        ps = np.sort(c["score"][m][c["purchased"][m]])[::-1]
        ss = np.sort(c["score"][m])
        g = ss.size - np.searchsorted(ss, np.append(ps, -np.inf)[: k_total + 1], side="right")
        new = np.full(k_total + 1, -np.inf)
        for j, gj in enumerate(g):
            new[j:] = np.maximum(new[j:], best[: k_total + 1 - j] + gj)
        best = new
    return float(best.max() / c["score"].size)


def evaluate_run(run: Path, cfg_kw: dict[str, Any], budgets: list[float], val_days: int,
                 ceiling: bool) -> list[dict[str, Any]]:
    cols, day = load(run, cfg_kw.get("score_col", "score_model"))
    days = np.unique(day)
    rows = []
    for t in days[val_days:]:
        fit_days = days[(days < t)][-val_days:]
        keep = (day == t) | np.isin(day, fit_days)
        c = cal.subset(cols, keep)
        c["split"] = np.where(day[keep] == t, "test", "val")
        te = cal.subset(c, c["split"] == "test")
        for b in budgets:
            cfg = cal.CalibConfig(fpr_budget=b, **cfg_kw)
            row: dict[str, Any] = {"run": str(run), "test_day": int(t),
                                   "fit_days": [int(d) for d in fit_days], "budget": b}
            try:
                r = cal.calibrate(c, cfg)
            except cal.CalibrationInfeasible as e:
                row["infeasible"] = e.details.get("min_budget")
                rows.append(row)
                continue
            ev = r["evaluation"]
            for name in ("slice", "global_budget", "global_matched", "global_knee"):
                o = ev[name]["test"]["overall"]
                row[name] = {"ivr": o["ivr"], "fpr": o["fpr"], "coverage": o["coverage"]}
            row["chosen_method"] = r["calibration"]["method"]
            row["chosen"] = dict(row["slice" if row["chosen_method"] == "slice"
                                     else "global_budget"])
            row["selection_reason"] = r["calibration"]["selection"].get("reason")
            row["floors_met"] = all(v is not False
                                    for v in ev["slice"]["test"]["coverage_floors_met"].values())
            row["floors_met_global_budget"] = all(
                v is not False for v in ev["global_budget"]["test"]["coverage_floors_met"].values())
            row["fitted_slices"] = sum("fit" in v for v in r["calibration"]["slices"].values())
            if ceiling:
                k = int(np.floor(row["global_matched"]["fpr"] * te["purchased"].sum() + 1e-9))
                row["ceiling_ivr"] = _dp_ceiling(te, k)
            rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in sorted({r["budget"] for r in rows}):
        rs = [r for r in rows if r["budget"] == b and "slice" in r]
        if not rs:
            continue
        sl = np.array([r["slice"]["ivr"] for r in rs])
        gb = np.array([r["global_budget"]["ivr"] for r in rs])
        gm = np.array([r["global_matched"]["ivr"] for r in rs])
        fs = np.array([r["slice"]["fpr"] for r in rs])
        fb = np.array([r["global_budget"]["fpr"] for r in rs])
        ch = np.array([r["chosen"]["ivr"] for r in rs])
        fc = np.array([r["chosen"]["fpr"] for r in rs])
        pick_g = np.array([r["chosen_method"] == "global" for r in rs])
        # days where global was picked and slice-level did in fact lose (lower IVR or higher FPR)
        sl_lost = (sl <= gb) | (fs > fb)
        out.append({
            "budget": b, "days": len(rs),
            "infeasible": sum(1 for r in rows if r["budget"] == b and "infeasible" in r),
            "slice_ivr": float(sl.mean()), "slice_fpr": float(fs.mean()),
            "gbudget_ivr": float(gb.mean()), "gbudget_fpr": float(fb.mean()),
            "gmatched_ivr": float(gm.mean()),
            "chosen_ivr": float(ch.mean()), "chosen_fpr": float(fc.mean()),
            "picks_global": int(pick_g.sum()),
            "picks_global_slice_lost": int((pick_g & sl_lost).sum()),
            "picks_slice_slice_lost": int((~pick_g & sl_lost).sum()),
            "gain_vs_matched": float((sl / gm - 1).mean()),
            "wins_vs_matched": int((sl > gm).sum()),
            "wins_vs_budget_at_le_fpr": int(((sl > gb) & (fs <= fb)).sum()),
            "slice_fpr_le_gbudget": int((fs <= fb).sum()),
            "wins_vs_budget": int((sl > gb).sum()),
            "gain_vs_budget": float((sl / gb - 1).mean()),
            "slice_fpr_ratio": float(fs.mean() / b), "gbudget_fpr_ratio": float(fb.mean() / b),
            "floors_met": int(sum(r["floors_met"] for r in rs)),
            "floors_met_global_budget": int(sum(r["floors_met_global_budget"] for r in rs)),
            "ceiling_ivr": float(np.mean([r["ceiling_ivr"] for r in rs]))
            if all("ceiling_ivr" in r for r in rs) else None,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="training output directories")
    ap.add_argument("--val-days", type=int, default=3,
                    help="days each fit uses (default 3, as `slidr train` on logs of 9+ days)")
    ap.add_argument("--budgets", default="0.005,0.01,0.02,0.03")
    ap.add_argument("--min-coverage", type=float, default=0.5)
    ap.add_argument("--slice-min-coverage", action="append", default=None)
    ap.add_argument("--min-purchasing", type=int, default=None)
    ap.add_argument("--fpr-prior", type=float, default=None)
    ap.add_argument("--fit-range", type=float, default=None)
    ap.add_argument("--fit-min-fpr", type=float, default=None)
    ap.add_argument("--refine-iters", type=int, default=None,
                    help="local refinement rounds (CalibConfig.refine_iters; 0 = one wide quadratic)")
    ap.add_argument("--floor-every-day", type=int, choices=(0, 1), default=None,
                    help="1: coverage floors met on every fitted day (CalibConfig.floor_every_day)")
    ap.add_argument("--budget-correction", choices=("none", "lodo"), default=None,
                    help="CalibConfig.budget_correction (default lodo: leave one fitted day out)")
    ap.add_argument("--fpr-estimate", choices=("empirical", "order_stat"), default=None,
                    help="CalibConfig.fpr_estimate (default order_stat)")
    ap.add_argument("--select-fpr-tolerance", type=float, default=None,
                    help="CalibConfig.select_fpr_tolerance (method auto)")
    ap.add_argument("--jobs", type=int, default=1, help="runs evaluated in parallel")
    ap.add_argument("--refine-window", type=float, default=None)
    ap.add_argument("--refine-min-width", type=float, default=None)
    ap.add_argument("--ceiling", action="store_true", help="also the hindsight ceiling (slow)")
    ap.add_argument("--json", type=Path, default=None, help="write every row here")
    a = ap.parse_args(argv)
    budgets = [float(x) for x in a.budgets.split(",")]
    cfg_kw: dict[str, Any] = {
        "min_coverage": a.min_coverage,
        "slice_min_coverage": cal.parse_slice_coverage(a.slice_min_coverage or ["*/in=0"])}
    if a.fpr_prior is not None:
        cfg_kw["fpr_prior"] = a.fpr_prior
    for k in ("fit_range", "fit_min_fpr", "refine_iters", "refine_window", "refine_min_width",
              "budget_correction", "fpr_estimate", "select_fpr_tolerance"):
        if getattr(a, k) is not None:
            cfg_kw[k] = getattr(a, k)
    if a.floor_every_day is not None:
        cfg_kw["floor_every_day"] = bool(a.floor_every_day)
    if a.min_purchasing is not None:
        cfg_kw["min_purchasing"] = a.min_purchasing
    rows = []
    if a.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(a.jobs) as ex:
            for part in ex.map(evaluate_run, a.runs, [cfg_kw] * len(a.runs),
                               [budgets] * len(a.runs), [a.val_days] * len(a.runs),
                               [a.ceiling] * len(a.runs)):
                rows += part
    else:
        for run in a.runs:
            rows += evaluate_run(run, cfg_kw, budgets, a.val_days, a.ceiling)
    print(f"{'run':<10} {'day':>3} {'budget':>6} {'slice IVR':>9} {'@FPR':>7} {'g@budg IVR':>10} "
          f"{'@FPR':>7} {'g@match IVR':>11} {'@FPR':>7} {'floors':>6} {'chosen':>6}"
          + (f" {'ceiling':>7}" if a.ceiling else ""))
    for r in rows:
        if "slice" not in r:
            print(f"{Path(r['run']).name:<10} {r['test_day']:>3} {r['budget']:>6.3f} infeasible "
                  f"(min budget {r['infeasible']:.4f})")
            continue
        print(f"{Path(r['run']).name:<10} {r['test_day']:>3} {r['budget']:>6.3f} "
              f"{r['slice']['ivr']:>9.4f} {r['slice']['fpr']:>7.4f} "
              f"{r['global_budget']['ivr']:>10.4f} {r['global_budget']['fpr']:>7.4f} "
              f"{r['global_matched']['ivr']:>11.4f} {r['global_matched']['fpr']:>7.4f} "
              f"{'yes' if r['floors_met'] else 'NO':>6} {r['chosen_method']:>6}"
              + (f" {r['ceiling_ivr']:>7.4f}" if a.ceiling else ""))
    print()
    summ = summarise(rows)
    for s in summ:
        print(f"budget {s['budget']:.3f}: {s['days']} held-out days ({s['infeasible']} infeasible); "
              f"mean IVR slice {s['slice_ivr']:.4f} @ FPR {s['slice_fpr']:.4f}, global@budget "
              f"{s['gbudget_ivr']:.4f} @ {s['gbudget_fpr']:.4f}, global@matched "
              f"{s['gmatched_ivr']:.4f}; slice vs matched {s['gain_vs_matched']:+.1%} "
              f"(wins {s['wins_vs_matched']}/{s['days']}); beats global@budget at <= FPR "
              f"{s['wins_vs_budget_at_le_fpr']}/{s['days']} (IVR {s['gain_vs_budget']:+.1%}, higher on "
              f"{s['wins_vs_budget']}, FPR <= on {s['slice_fpr_le_gbudget']}; FPR/budget slice "
              f"{s['slice_fpr_ratio']:.2f}x, global@budget {s['gbudget_fpr_ratio']:.2f}x); floors met {s['floors_met']}/"
              f"{s['days']} (global@budget {s['floors_met_global_budget']}/{s['days']})" + (f"; ceiling {s['ceiling_ivr']:.4f}" if s["ceiling_ivr"] else ""))
        print(f"  auto: picks global@budget on {s['picks_global']}/{s['days']} days (slice-level "
              f"lost, lower IVR or higher FPR, on {s['picks_global_slice_lost']} of them; kept "
              f"slice on {s['picks_slice_slice_lost']} days it lost); chosen IVR "
              f"{s['chosen_ivr']:.4f} @ FPR {s['chosen_fpr']:.4f} vs always-slice "
              f"{s['slice_ivr']:.4f} @ {s['slice_fpr']:.4f} vs always-global@budget "
              f"{s['gbudget_ivr']:.4f} @ {s['gbudget_fpr']:.4f}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "summary": summ}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
