"""Walk-forward backtest of the calibration on held-out days (`slidr backtest`;
docs/calibration.md, "Held-out days").

Input: one or more training runs trained with a long validation window (`slidr train
--val-days N`), so that every scored day in their scores.parquet lies outside the model's
training days. For each run, each scored day t after the first K (`val_days`) and each FPR
budget, thresholds are fitted on the K scored days before t with `calibrate.calibrate`
exactly as `slidr calibrate` runs it on a run trained with `--val-days K`, and evaluated on
day t. Nothing of day t or later enters the fit (the rows record `fit_days`).

Per (run, day t, budget) the rows hold, for each method, the clicks invalidated on day t per
slice (all of them, purchasing ones, heuristic-robotic ones, true robots when the log has
them) next to the slice populations of day t:

  slice           slice-level thresholds
  global_budget   the one threshold whose FPR on the fitted days equals the budget
  chosen          what CalibConfig.method "auto" publishes (slice, or global_budget where the
                  leave-one-day-out evidence on the fitted days says slice-level is worse)
  global_knee     the knee of the global curve on the fitted days (ignores the budget)
  global_matched  one threshold set on day t itself to slice-level's realised FPR there (an
                  oracle for global: it sees day t; reported, never deployable)

A day's FPR is a handful of purchasing clicks, so the statistic that matters is over the
whole held-out period: the counts are summed over days (per budget, over all runs and per
run) and the ratios taken on the sums (`pooled`): IVR = invalidated / clicks, FPR =
invalidated purchasing / purchasing clicks, coverage = invalidated heuristic-robotic /
heuristic-robotic clicks, per slice and overall; a slice's coverage floor is met on the
pooled period iff its pooled coverage >= its minimum coverage. A bootstrap over held-out days
(resampling (run, day) units with replacement) gives 90% intervals of the pooled IVR gain of
slice-level over global@budget and of the pooled FPR ratio. The per-day rows and an honest
per-day count (on how many days slice-level had the higher IVR, an FPR <= global@budget's,
both, its floors met) stay alongside.

`win_gate` is the `--require-win` rule: at every budget, pooled slice-level has a higher IVR than
pooled global@budget at an FPR <= global@budget's and meets every slice's coverage floor on the
pooled period.

The result is a plain record (rows, pooled counts, bootstrap, gate); offline/backtest_report.py
draws the text, figures and backtest.html from it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from . import calibrate as cal

# Deployable methods whose thresholds come out of a fit, and the oracle.
EVAL_METHODS = ("slice", "global_budget", "global_knee", "global_matched")
POOLED_METHODS = ("slice", "global_budget", "chosen", "global_knee", "global_matched")
LABELS = {"slice": "slice-level", "global_budget": "global@budget", "chosen": "auto (chosen)",
          "global_knee": "global knee", "global_matched": "global@matched (oracle)"}
# Counts per slice. population: the clicks of day t; invalidated: those above the threshold.
COUNT_FIELDS = ("clicks", "purchasing", "heuristic", "robots")
EXIT_NO_WIN = 5
GATE_RULE = ("at every budget, pooled over the held-out days: slice-level IVR > global@budget "
             "IVR, slice-level FPR <= global@budget FPR, and every slice's coverage floor met "
             "(pooled slice coverage >= its minimum coverage)")


# ---------------------------------------------------------------- input

def parse_budgets(text: str | Sequence[float]) -> list[float]:
    """"0.005,0.01" -> [0.005, 0.01]; every budget must be in (0, 1)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[float] = []
    for it in items:
        try:
            b = float(it)
        except (TypeError, ValueError):
            raise ValueError(f"--budgets expects comma-separated numbers in (0, 1), "
                             f"got {it!r}") from None
        if not 0.0 < b < 1.0:
            raise ValueError(f"--budgets: every FPR budget must be in (0, 1), got {b:g}")
        if b not in out:
            out.append(b)
    if not out:
        raise ValueError("--budgets: no budget given")
    return sorted(out)


def _scores_path(run: Path) -> Path:
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"run directory not found: {run}")
    p = run / "scores.parquet" if run.is_dir() else run
    if not p.exists():
        raise FileNotFoundError(f"{run}: no scores.parquet (expected the output directory of "
                                "`slidr train --val-days N`)")
    return p


def scored_days(run: Path) -> np.ndarray:
    """The distinct `day` values of a run's scores.parquet (reads that column only)."""
    import pyarrow.parquet as pq
    p = _scores_path(run)
    names = pq.read_schema(p).names
    if "day" not in names:
        raise ValueError(f"{p}: lacks the 'day' column a backtest walks over "
                         f"(has: {', '.join(names)})")
    return np.unique(pq.read_table(p, columns=["day"]).column("day").to_numpy()).astype(np.int64)


def walk(days: Iterable[int], val_days: int) -> list[tuple[int, list[int]]]:
    """[(t, fit days)]: every scored day t after the first `val_days`, fitted on the
    `val_days` scored days before it."""
    d = np.unique(np.asarray(list(days), dtype=np.int64))
    return [(int(t), [int(x) for x in d[d < t][-val_days:]]) for t in d[val_days:]]


def check_runs(runs: Sequence[Path], val_days: int) -> dict[str, list[tuple[int, list[int]]]]:
    """Validate every run before any fit: scores.parquet present with a day column, and more
    scored days than the fit window. Returns {run: walk}."""
    if val_days < 1:
        raise ValueError(f"--val-days must be >= 1, got {val_days}")
    if not runs:
        raise ValueError("no training run given")
    plan: dict[str, list[tuple[int, list[int]]]] = {}
    for run in runs:
        if str(run) in plan:
            raise ValueError(f"run given twice: {run}")
        days = scored_days(run)
        if days.size <= val_days:
            raise ValueError(
                f"{run}: {days.size} scored day(s) ({', '.join(str(int(x)) for x in days)}) but "
                f"--val-days {val_days} needs at least {val_days + 1} ({val_days} to fit, one to "
                f"hold out); train it with a longer validation window (`slidr train "
                f"--val-days N`, N >= {val_days})")
        plan[str(run)] = walk(days, val_days)
    return plan


def load(run: Path, score_col: str) -> tuple[dict[str, Any], np.ndarray]:
    cols = cal.load_scores(_scores_path(run), score_col)
    if cols.get("day") is None:
        raise ValueError(f"{run}: scores.parquet lacks the 'day' column")
    return cols, np.asarray(cols["day"], dtype=np.int64)


# ---------------------------------------------------------------- one held-out day

def _counts(te: Mapping[str, Any], hit: np.ndarray) -> dict[str, dict[str, int]]:
    """Per slice, among the clicks where `hit`: clicks, purchasing, heuristic-robotic and (if
    known) robot clicks."""
    sl = te["slice"]
    rob = te.get("is_robot")
    out: dict[str, dict[str, int]] = {}
    for s in sorted(set(sl.tolist())):
        m = (sl == s) & hit
        out[s] = {"clicks": int(m.sum()), "purchasing": int((m & te["purchased"]).sum()),
                  "heuristic": int((m & te["heuristic"]).sum())}
        if rob is not None:
            out[s]["robots"] = int((m & rob).sum())
    return out


def population(te: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per slice: clicks, purchasing, heuristic-robotic and (if known) robot clicks."""
    return _counts(te, np.ones(te["score"].size, dtype=bool))


def invalidated(te: Mapping[str, Any], thr_by_slice: Mapping[str, float],
                default: float) -> dict[str, dict[str, int]]:
    """Per slice: how many of those clicks have score > the slice's threshold."""
    return _counts(te, cal.invalid_mask(te, thr_by_slice, float(default)))


def _dp_ceiling(c: Mapping[str, Any], k_total: int) -> float:
    """Hindsight ceiling on one day: max over per-slice counts k_s (sum k_s <= k_total) of the
    clicks invalidated when slice s invalidates exactly its k_s highest-scoring purchasing
    clicks; as an IVR (exact DP, no floors)."""
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


def evaluate_day(cols: Mapping[str, Any], day: np.ndarray, run: str, t: int,
                 fit_days: Sequence[int], budgets: Sequence[float], calib: Mapping[str, Any],
                 ceiling: bool = False) -> list[dict[str, Any]]:
    """Fit on `fit_days`, evaluate on day t; one row per budget."""
    if t in fit_days or any(d >= t for d in fit_days):
        raise ValueError(f"fit days {list(fit_days)} must all be before the held-out day {t}")
    keep = (day == t) | np.isin(day, np.asarray(fit_days, dtype=np.int64))
    c = cal.subset(cols, keep)
    c["split"] = np.where(day[keep] == t, "test", "val")
    te = cal.subset(c, c["split"] == "test")
    pop = population(te)
    rows = []
    for b in budgets:
        # "chosen" is what method=auto would publish; slice and global@budget are evaluated
        # on every row whatever the method.
        cfg = cal.CalibConfig(fpr_budget=float(b), **{**calib, "method": "auto"})
        row: dict[str, Any] = {"run": run, "run_name": Path(run).name, "test_day": int(t),
                               "fit_days": [int(d) for d in fit_days], "budget": float(b),
                               "population": pop}
        t0 = time.perf_counter()
        try:
            r = cal.calibrate(c, cfg)
        except cal.CalibrationInfeasible as e:
            row["infeasible"] = {"min_budget": e.details.get("min_budget"), "message": str(e)}
            row["fit_s"] = time.perf_counter() - t0
            rows.append(row)
            continue
        row["fit_s"] = time.perf_counter() - t0
        ev = r["evaluation"]
        calib_ = r["calibration"]
        for name in EVAL_METHODS:
            blk = ev[name]["test"]
            thr = {s: v["threshold"] for s, v in blk["slices"].items()}
            default = blk["overall"].get("threshold", calib_["global_budget_threshold"])
            row[name] = {"invalidated": invalidated(te, thr, default)}
        row["thresholds"] = {
            "slice": dict(r["slice_thresholds"]["slices"]),
            "default": calib_["global_budget_threshold"],
            "global_budget": calib_["global_budget_threshold"],
            "global_knee": calib_["global_knee_threshold"],
            "global_matched": ev["global_matched"]["test"]["overall"]["threshold"]}
        row["chosen_method"] = "slice" if cal.chosen_method(r) == "slice" else "global_budget"
        sel = calib_.get("selection") or {}
        row["selection_reason"] = sel.get("reason")
        bc = calib_.get("budget_correction") or {}
        row["budget_correction"] = {k: bc.get(k) for k in ("method", "raw_ratio", "ratio",
                                                           "budget_solved") if k in bc}
        row["fitted_slices"] = sorted(s for s, v in calib_["slices"].items() if "fit" in v)
        if ceiling:
            f_m = ratios(total(row["global_matched"]["invalidated"]), total(pop))["fpr"]
            k = int(np.floor(f_m * te["purchased"].sum() + 1e-9))
            row["ceiling_ivr"] = _dp_ceiling(te, k)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- counts and ratios

def total(by_slice: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in by_slice.values():
        for k, v in c.items():
            out[k] = out.get(k, 0) + int(v)
    return out


def _add(into: dict[str, dict[str, int]], by_slice: Mapping[str, Mapping[str, int]]) -> None:
    for s, c in by_slice.items():
        d = into.setdefault(s, {})
        for k, v in c.items():
            d[k] = d.get(k, 0) + int(v)


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def ratios(inv: Mapping[str, int], pop: Mapping[str, int]) -> dict[str, float]:
    out = {"ivr": _div(inv.get("clicks", 0), pop.get("clicks", 0)),
           "fpr": _div(inv.get("purchasing", 0), pop.get("purchasing", 0)),
           "coverage": _div(inv.get("heuristic", 0), pop.get("heuristic", 0))}
    if "robots" in pop:
        out["precision"] = _div(inv.get("robots", 0), inv.get("clicks", 0))
        out["recall"] = _div(inv.get("robots", 0), pop.get("robots", 0))
    return out


def method_counts(row: Mapping[str, Any], method: str) -> dict[str, dict[str, int]]:
    """Per-slice invalidated counts of one method on one row ("chosen": slice or
    global_budget, whichever the auto rule picked)."""
    if method == "chosen":
        method = row["chosen_method"]
    return row[method]["invalidated"]


def floors(inv: Mapping[str, Mapping[str, int]], pop: Mapping[str, Mapping[str, int]],
           calib: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per slice: coverage, its minimum (CalibConfig.min_coverage / slice_min_coverage) and
    whether it is met (None: no heuristic-robotic click to judge)."""
    mc = float(calib.get("min_coverage", cal.CalibConfig.min_coverage))
    smc = calib.get("slice_min_coverage") or {}
    out = {}
    for s, p in pop.items():
        target = cal.coverage_target(mc, smc, s)
        cov = _div(inv.get(s, {}).get("heuristic", 0), p["heuristic"])
        out[s] = {"coverage": cov, "min_coverage": target,
                  "met": bool(cov >= target - 1e-9) if p["heuristic"] else None}
    return out


def day_view(row: Mapping[str, Any], method: str, calib: Mapping[str, Any]) -> dict[str, Any]:
    """One method on one held-out day: overall IVR/FPR/coverage and its floors."""
    inv = method_counts(row, method)
    fl = floors(inv, row["population"], calib)
    return {**ratios(total(inv), total(row["population"])),
            "floors_met": all(v["met"] is not False for v in fl.values()),
            "floors": {s: v["met"] for s, v in fl.items()}}


def feasible(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if "infeasible" not in r]


def pool(rows: Sequence[Mapping[str, Any]], budget: float, calib: Mapping[str, Any],
         run: str | None = None, slice_counts: bool = True) -> list[dict[str, Any]]:
    """Pooled rows (one per method) over the feasible held-out days of one budget (of one run
    when `run` is given): counts summed over days, then the ratios. slice_counts=False keeps
    only each slice's coverage and floor (smaller JSON for the per-run rows)."""
    sel = [r for r in rows if r["budget"] == budget and (run is None or r["run"] == run)]
    ok = feasible(sel)
    pop: dict[str, dict[str, int]] = {}
    for r in ok:
        _add(pop, r["population"])
    out = []
    for m in POOLED_METHODS:
        inv: dict[str, dict[str, int]] = {}
        for r in ok:
            _add(inv, method_counts(r, m))
        fl = floors(inv, pop, calib)
        slices = {s: ({"population": pop[s], "invalidated": inv.get(s, {}),
                       **ratios(inv.get(s, {}), pop[s])} if slice_counts
                      else {"coverage": fl[s]["coverage"]})
                  | {"min_coverage": fl[s]["min_coverage"], "floor_met": fl[s]["met"]}
                  for s in sorted(pop)}
        # A floor of 0 (e.g. '*/in=0') is no floor: not counted as met or judged.
        judged = [v["met"] for v in fl.values()
                  if v["met"] is not None and v["min_coverage"] > 0]
        tot_inv, tot_pop = total(inv), total(pop)
        rr = ratios(tot_inv, tot_pop)
        out.append({"budget": budget, "run": run, "method": m, "days": len(ok),
                    "infeasible_days": len(sel) - len(ok), **rr,
                    "fpr_over_budget": _div(rr["fpr"], budget),
                    "population": tot_pop, "invalidated": tot_inv,
                    "floors_met": sum(judged), "floors_judged": len(judged),
                    "all_floors_met": bool(ok) and all(judged), "slices": slices})
    gb = next(x for x in out if x["method"] == "global_budget")
    for x in out:
        x["ivr_gain_vs_global_budget"] = _div(x["ivr"], gb["ivr"]) - 1.0
        x["fpr_ratio_vs_global_budget"] = _div(x["fpr"], gb["fpr"])
    return out


def per_day_summary(rows: Sequence[Mapping[str, Any]], budget: float,
                    calib: Mapping[str, Any]) -> dict[str, Any]:
    """Day-by-day counts for one budget (all runs): on how many feasible held-out days
    slice-level had the higher IVR, an FPR <= global@budget's, both, its floors met, ..."""
    sel = [r for r in rows if r["budget"] == budget]
    ok = feasible(sel)
    v = {m: [day_view(r, m, calib) for r in ok] for m in POOLED_METHODS}
    sl, gb, gm = v["slice"], v["global_budget"], v["global_matched"]
    higher = [a["ivr"] > b["ivr"] for a, b in zip(sl, gb, strict=True)]
    fpr_le = [a["fpr"] <= b["fpr"] for a, b in zip(sl, gb, strict=True)]
    both = [h and f for h, f in zip(higher, fpr_le, strict=True)]
    fl = [a["floors_met"] for a in sl]
    pick_g = [r["chosen_method"] == "global_budget" for r in ok]
    lost = [not b for b in both]
    n = len(ok)

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    return {
        "budget": budget, "days": n, "infeasible_days": len(sel) - n,
        "slice_ivr_higher": sum(higher), "slice_fpr_le": sum(fpr_le), "slice_both": sum(both),
        "slice_both_and_floors": sum(b and f for b, f in zip(both, fl, strict=True)),
        "slice_floors_met": sum(fl),
        "global_budget_floors_met": sum(a["floors_met"] for a in gb),
        "chosen_floors_met": sum(a["floors_met"] for a in v["chosen"]),
        "auto_picks_global": sum(pick_g),
        "auto_picks_global_slice_lost": sum(p and lo for p, lo in zip(pick_g, lost, strict=True)),
        "auto_picks_slice_slice_lost": sum((not p) and lo
                                           for p, lo in zip(pick_g, lost, strict=True)),
        "slice_wins_vs_matched": sum(a["ivr"] > b["ivr"] for a, b in zip(sl, gm, strict=True)),
        "mean_over_days": {
            **{f"{m}_{k}": mean([a[k] for a in v[m]]) for m in POOLED_METHODS
               for k in ("ivr", "fpr")},
            "slice_gain_vs_global_budget": mean([a["ivr"] / b["ivr"] - 1
                                                 for a, b in zip(sl, gb, strict=True)
                                                 if b["ivr"] > 0]),
            "slice_gain_vs_matched": mean([a["ivr"] / b["ivr"] - 1
                                           for a, b in zip(sl, gm, strict=True) if b["ivr"] > 0]),
            "ceiling_ivr": mean([r["ceiling_ivr"] for r in ok])
            if ok and all("ceiling_ivr" in r for r in ok) else None},
    }


def bootstrap(rows: Sequence[Mapping[str, Any]], budget: float, n_boot: int = 2000,
              seed: int = 0, level: float = 0.9) -> dict[str, Any]:
    """Bootstrap over held-out days of one budget: resample the feasible (run, day) units with
    replacement, pool each resample, and take the `level` percentile interval of the pooled
    IVR gain (method / global@budget - 1) and of the pooled FPR ratio (method /
    global@budget), for slice-level and the auto choice. `p_win`: share of resamples where
    the gain is > 0 and the FPR ratio <= 1."""
    ok = feasible(r for r in rows if r["budget"] == budget)
    out: dict[str, Any] = {"budget": budget, "days": len(ok), "n_boot": int(n_boot),
                           "level": level, "unit": "held-out (run, day)", "seed": seed}
    if not ok:
        return out

    def arr(m: str) -> np.ndarray:  # [days, (invalidated clicks, invalidated purchasing)]
        tots = [total(method_counts(r, m)) for r in ok]
        return np.array([[t.get("clicks", 0), t.get("purchasing", 0)] for t in tots],
                        dtype=np.float64)

    g = arr("global_budget")
    rng = np.random.default_rng([int(seed), int(round(budget * 1e6))])
    idx = rng.integers(0, len(ok), size=(int(n_boot), len(ok))) if n_boot > 0 else None
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    for m in ("slice", "chosen"):
        a = arr(m)
        # Clicks and purchasing clicks are the same for both methods on the same days, so the
        # ratio of pooled IVRs (FPRs) is the ratio of the invalidated (purchasing) sums.
        gain = _div(a[:, 0].sum(), g[:, 0].sum()) - 1.0
        fr = _div(a[:, 1].sum(), g[:, 1].sum())
        res: dict[str, Any] = {"ivr_gain": gain, "fpr_ratio": fr}
        if idx is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                bg = a[idx, 0].sum(axis=1) / g[idx, 0].sum(axis=1) - 1.0
                bf = a[idx, 1].sum(axis=1) / g[idx, 1].sum(axis=1)
            res["ivr_gain_interval"] = [float(np.nanpercentile(bg, lo_q)),
                                        float(np.nanpercentile(bg, hi_q))]
            res["fpr_ratio_interval"] = [float(np.nanpercentile(bf, lo_q)),
                                         float(np.nanpercentile(bf, hi_q))]
            res["p_ivr_higher"] = float(np.mean(bg > 0))
            res["p_fpr_le"] = float(np.mean(bf <= 1.0))
            res["p_win"] = float(np.mean((bg > 0) & (bf <= 1.0)))
        out[m] = res
    return out


def win_gate(pooled: Sequence[Mapping[str, Any]], budgets: Sequence[float]) -> dict[str, Any]:
    """The --require-win rule (GATE_RULE) on pooled rows (`pool` output over all runs)."""
    res = []
    for b in budgets:
        by = {p["method"]: p for p in pooled if p["budget"] == b and p.get("run") is None}
        sl, gb = by.get("slice"), by.get("global_budget")
        why: list[str] = []
        if sl is None or gb is None or not sl.get("days"):
            why.append("no feasible held-out day")
        else:
            if not sl["ivr"] > gb["ivr"]:
                why.append(f"pooled IVR {sl['ivr']:.4f} not higher than global@budget's "
                           f"{gb['ivr']:.4f}")
            if not sl["fpr"] <= gb["fpr"]:
                why.append(f"pooled FPR {sl['fpr']:.5f} above global@budget's {gb['fpr']:.5f}")
            missed = [f"{s} {v['coverage']:.3f} < {v['min_coverage']:.2f}"
                      for s, v in sorted(sl.get("slices", {}).items()) if v["floor_met"] is False]
            if missed:
                why.append("coverage floor missed on the pooled days: " + ", ".join(missed))
        res.append({"budget": b, "passed": not why, "reasons": why})
    return {"rule": GATE_RULE, "passed": bool(res) and all(x["passed"] for x in res),
            "budgets": res}


# ---------------------------------------------------------------- the run

_CACHE: dict[str, tuple[dict[str, Any], np.ndarray]] = {}


def _unit(task: str) -> str:
    """One (run, held-out day), every budget. JSON in, JSON out (worker processes)."""
    from .report import clean
    a = json.loads(task)
    if a["run"] not in _CACHE:
        _CACHE.clear()  # one run at a time per process (they are large)
        _CACHE[a["run"]] = load(Path(a["run"]), a["calib"].get("score_col", "score_model"))
    cols, day = _CACHE[a["run"]]
    t0 = time.perf_counter()
    rows = evaluate_day(cols, day, a["run"], a["test_day"], a["fit_days"], a["budgets"],
                        a["calib"], a["ceiling"])
    return json.dumps(clean({"rows": rows, "wall_s": time.perf_counter() - t0}))


class BacktestResult(TypedDict):
    """The result record of run_backtest(), written as backtest.json and drawn by
    offline/backtest_report.py."""

    config: dict[str, Any]                 # runs, val_days, budgets, calibration settings
    methods: dict[str, str]                # method key -> label
    plan: dict[str, list[dict[str, Any]]]  # run -> [{test_day, fit_days}]
    pooled: list[dict[str, Any]]           # per budget and method, over every held-out day
    pooled_by_run: list[dict[str, Any]]
    per_day_summary: list[dict[str, Any]]  # per budget: days won, floors met, ...
    bootstrap: list[dict[str, Any]]        # per budget: 90% intervals of gain and FPR ratio
    gate: dict[str, Any]                   # the --require-win rule and its verdict
    rows: list[dict[str, Any]]             # one per (run, held-out day, budget)
    wall_s: float


def run_backtest(runs: Sequence[Path | str], budgets: Sequence[float], val_days: int = 3,
                 calib: Mapping[str, Any] | None = None, jobs: int = 1, ceiling: bool = False,
                 n_boot: int = 2000, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> BacktestResult:
    """The whole backtest. `calib`: CalibConfig keyword arguments except fpr_budget."""
    calib = dict(calib or {})
    budgets = parse_budgets(list(budgets))
    cal.CalibConfig(fpr_budget=budgets[0], **calib)  # unknown / bad knobs fail here, early
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if n_boot < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {n_boot}")
    names = [str(r) for r in runs]
    plan = check_runs([Path(r) for r in names], val_days)
    tasks = [json.dumps({"run": r, "test_day": t, "fit_days": fd, "budgets": budgets,
                         "calib": calib, "ceiling": ceiling})
             for r in names for t, fd in plan[r]]
    say = log or (lambda s: None)
    say(f"backtest: {len(names)} run(s), {len(tasks)} held-out day(s) x {len(budgets)} "
        f"budget(s), fit window {val_days} day(s), jobs {min(jobs, len(tasks))}")
    t0 = time.perf_counter()
    parts: list[dict[str, Any]] = []

    def done(res: str) -> None:
        p = json.loads(res)
        parts.append(p)
        r0 = p["rows"][0]
        el = time.perf_counter() - t0
        eta = el / len(parts) * (len(tasks) - len(parts))
        say(f"backtest: [{len(parts)}/{len(tasks)}] {r0['run_name']} day {r0['test_day']} "
            f"(fit on {','.join(map(str, r0['fit_days']))}): {p['wall_s']:.1f} s; "
            f"elapsed {el:.0f} s, ETA {eta:.0f} s")

    if jobs > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(min(jobs, len(tasks))) as ex:
            for f in as_completed([ex.submit(_unit, t) for t in tasks]):
                done(f.result())
    else:
        for t in tasks:
            done(_unit(t))
        _CACHE.clear()
    order = {r: i for i, r in enumerate(names)}
    rows = sorted((r for p in parts for r in p["rows"]),
                  key=lambda r: (order[r["run"]], r["test_day"], r["budget"]))
    cfg = cal.CalibConfig(fpr_budget=budgets[0], **calib)
    return {  # type: ignore[return-value]  # the keys of BacktestResult, summarise's included
        "config": {"runs": names, "val_days": val_days, "budgets": budgets, "calib": calib,
                   "min_coverage": cfg.min_coverage,
                   "slice_min_coverage": dict(cfg.slice_min_coverage),
                   "ceiling": ceiling, "bootstrap": n_boot, "seed": seed, "jobs": jobs},
        "methods": {m: LABELS[m] for m in POOLED_METHODS},
        "plan": {r: [{"test_day": t, "fit_days": fd} for t, fd in plan[r]] for r in names},
        **summarise(rows, names, budgets, calib, n_boot, seed),
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }


def summarise(rows: Sequence[Mapping[str, Any]], runs: Sequence[str], budgets: Sequence[float],
              calib: Mapping[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Everything computed from the per-day rows: pooled (all runs, per run), per-day
    summary, bootstrap, gate. Deterministic (seeded), so backtest.json's rows reproduce it."""
    pooled = [p for b in budgets for p in pool(rows, b, calib)]
    return {"pooled": pooled,
            "pooled_by_run": [p for r in runs for b in budgets
                              for p in pool(rows, b, calib, run=r, slice_counts=False)],
            "per_day_summary": [per_day_summary(rows, b, calib) for b in budgets],
            "bootstrap": [bootstrap(rows, b, n_boot, seed) for b in budgets],
            "gate": win_gate(pooled, budgets)}


def _pooled(result: Mapping[str, Any], b: float, m: str) -> Mapping[str, Any]:
    return next(p for p in result["pooled"] if p["budget"] == b and p["method"] == m)


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
