"""Global and slice-level calibration of the robot score (docs/calibration.md).

Operating rule (shared with offline/metrics.py and the daemon): a click is invalidated when
``score > threshold``.

Global: one threshold at the *knee* of the overall IVR-FPR curve on the validation day, over the
operating range FPR in [0, knee_max_fpr] (default 0.1; nobody operates beyond it, and over the
full [0, 1] range the knee of a weak model lands at absurd FPRs). The knee is the point of
maximum distance between the curve and its chord from (0, IVR(0)) to (F, IVR(F)) (the Kneedle
definition): there the marginal slope dIVR/dFPR has fallen to the chord's average slope, and
beyond it each unit of FPR buys less IVR than on average over the range. The
global threshold whose validation FPR equals the budget is also reported ("global@budget"): it
is the fair, equal-FPR comparison for the slice-level solution.

Slice-level, per slice s on the validation days (all of them pooled; `slidr train` holds out
3 validation days on logs of 9+ days):
  w_s = share of clicks, p_s = share of purchasing clicks,
  IVR_s(f) ~= a_s + b_s f + c_s f^2 with c_s <= 0 (concave; least squares on the empirical curve
  sampled evenly in f over a fit range; when the unconstrained fit is convex the constraint is
  active and the fit is the linear one). First over [0, F_s], F_s = max(4 budget, 2 floor_s,
  0.02) capped at 1; then (refine_iters rounds, default 8) locally: each slice's quadratic is
  refitted on [f_s / 2, max(2 f_s, f_s + 0.004)] around its current FPR f_s and the problem
  below is solved again with f_s kept inside that window (sequential quadratic programming
  with a trust region; it converges to equal marginal IVR per unit of FPR across slices). The
  round with the highest IVR on the validation days is kept, and its fits are reported,
  floor_s = FPR at which slice s reaches the minimum robotic coverage (largest threshold whose
  coverage of the slice's heuristic-robotic clicks is >= min_coverage; 0 when the slice has none;
  with floor_every_day, the largest threshold meeting it on every validation day separately).
  maximise sum_s w_s IVR_s(f_s)  s.t.  sum_s p_s f_s <= budget,  floor_s <= f_s <= F_s
  (cvxpy, Clarabel; OSQP/SCS as fallbacks). Each f_s maps back to a threshold on that slice's
  purchasing clicks (slidr.offline.metrics.threshold_for_fpr).
  Slices with fewer than `min_purchasing` purchasing clicks are not fitted: they get the
  global@budget threshold, and the FPR they spend there (p_s * FPR_s on validation) is taken
  off the budget first; their coverage floor is reported but not enforced (it could only be
  bought with an FPR too noisy to measure).
  Infeasible (sum_s p_s floor_s > budget): CalibrationInfeasible names every slice's coverage
  floor, the budget it costs and the minimum feasible budget.

Everything is fitted on split == "val" and evaluated on split == "test" (held-out day). The
comparison also has "global_matched": on each evaluated day, the one global threshold set on that
day itself to the FPR the slice-level thresholds realised there (equal realised FPR; it sees the
held-out day, so it favours global). `slidr backtest` (offline/backtest.py) repeats the
comparison over many held-out days and pools them (docs/calibration.md, "Held-out days"): on
simulated logs, fitted on the 3 days before each held-out day with local refinement,
slice-level gained +2..+5% IVR over global_matched and won on 16-19 of 21 days before the
held-out FPR correction below (+1..+5%, 12-18 of 21 days with it); one wide quadratic fitted
on one day gained -2..+1.4%.

Held-out FPR (docs/calibration.md "Held-out FPR correction"): fitted exactly to the budget on
the fitted days, slice-level thresholds can overspend it on new days: the optimiser prefers
slices whose fitted FPR happens to be low, and a threshold placed just above a slice's (k+1)-th
highest purchasing click passes about (k+1)/(n+1) of new ones, not k/n. Two corrections:
  budget_correction="lodo" (default): with >= 2 fitted days, each day is left out in turn, the
  slices are fitted on the others and the slice-level FPR realised on the left-out day is
  measured; the final solve on all fitted days uses budget / mean(realised / budget) (ratio
  clipped to [1, 2]; never below what the coverage floors need);
  fpr_estimate="order_stat": each slice's FPR at a threshold is (k+1)/(n+1) (default
  "empirical", k/n: with a model trained on the log's newest day the margin left the published
  thresholds at 0.73-0.84x the budget pooled over 22 held-out days of two 30-day walks, against
  0.99-1.19x without it).

Optional: cfg.fpr_prior shrinks each slice's FPR curve towards the pooled one (SliceFPR); off by
default because it measured worse on held-out days.

`calibrate()` returns a plain result record; offline/calibrate_report.py draws the table, the
figures and calibration.html from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from slidr.contract import SLICES
from slidr.defaults import CALIBRATION
from slidr.options import field_from

from .metrics import threshold_for_fpr

KNEE_METHOD = ("max distance above the chord from (0, IVR(0)) to (F, IVR(F)) of the overall "
               "validation IVR-FPR curve over FPR in [0, F = knee_max_fpr] (Kneedle): there "
               "dIVR/dFPR has fallen to the chord's average slope")


class CalibrationInfeasible(ValueError):
    """No thresholds meet every slice's coverage floor within the FPR budget."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class CalibConfig:
    # Defaults, bounds and help of the settings a person can change: slidr/defaults.py
    # (CALIBRATION), shared with the command-line flags and docs/cli.md.
    fpr_budget: float = field_from(CALIBRATION["fpr_budget"])
    min_coverage: float = field_from(CALIBRATION["min_coverage"])
    # Per-slice overrides of min_coverage; keys are slice names or fnmatch patterns ("*/in").
    slice_min_coverage: dict[str, float] = field_from(CALIBRATION["slice_min_coverage"])
    min_purchasing: int = field_from(CALIBRATION["min_purchasing"])
    # Pseudo purchasing clicks of the pooled FPR curve added to each slice's (SliceFPR);
    # 0 = every slice on its own clicks only.
    fpr_prior: float = field_from(CALIBRATION["fpr_prior"])
    fit_points: int = 41
    # Each slice's quadratic is fitted over FPR in [0, F_s], F_s = max(fit_range * budget,
    # 2 * floor_s, fit_min_fpr): the operating range, not the whole curve.
    fit_range: float = field_from(CALIBRATION["fit_range"])
    fit_min_fpr: float = field_from(CALIBRATION["fit_min_fpr"])
    # Local refinement (sequential quadratic programming with a trust region): after the first
    # solve, each slice's quadratic is refitted on [f_s / refine_window, f_s * refine_window]
    # (at least refine_min_width wide) around its current FPR f_s and the problem is solved
    # again with f_s kept inside that window; refine_iters rounds, the round with the highest
    # IVR on the fitted days wins. 0 = one quadratic per slice over [0, F_s].
    refine_iters: int = field_from(CALIBRATION["refine_iters"])
    # Coverage floors: with a `day` column, the floor threshold must meet min_coverage on each
    # fitted day separately (the lowest per-day floor threshold), not only on their pool.
    floor_every_day: bool = field_from(CALIBRATION["floor_every_day"])
    # Floors are fitted at min_coverage + coverage_margin (slices with a floor > 0) and judged
    # at min_coverage on the held-out day.
    coverage_margin: float = field_from(CALIBRATION["coverage_margin"])
    # Held-out FPR correction of the slice-level budget. "lodo" (leave one day out): with >= 2
    # fitted days, refit on all but day d (same config, no correction) and measure the
    # slice-level FPR realised on day d; ratio = mean over days of realised / budget, clipped
    # to [1, lodo_max_ratio]; the slices are then solved with budget / ratio on all fitted
    # days. "none": solve with the budget as given.
    budget_correction: str = field_from(CALIBRATION["budget_correction"])
    lodo_max_ratio: float = 2.0
    # Which thresholds are published (result["thresholds"]): "slice" (the default),
    # "global" (global@budget: one threshold whose FPR on the fitted days equals the budget) or
    # "auto": with >= 2 fitted days, each day is left out in turn and slice-level (its budget
    # corrected with the overspend measured on the other left-out days) and global@budget,
    # both fitted on the other days, are measured on it; slice-level is chosen iff its mean IVR
    # over the left-out days is higher than that of one global threshold set on each left-out
    # day to slice-level's realised FPR there (equal FPR) and its mean FPR is at most
    # (1 + select_fpr_tolerance) x global@budget's, else global@budget. Without that evidence
    # (< 2 fitted days, every left-out fit infeasible) "auto" keeps slice-level. The default
    # is "slice" because, over 63 held-out simulated days at two log sizes, "auto" spent more
    # FPR than either method alone (docs/calibration.md, "the published method").
    method: str = field_from(CALIBRATION["method"])
    select_fpr_tolerance: float = field_from(CALIBRATION["select_fpr_tolerance"])
    # Each slice's FPR at a threshold with k of its n purchasing clicks above: "empirical"
    # k / n; "order_stat" (k + 1) / (n + 1), the expected FPR on new clicks of a threshold
    # placed just above a purchasing click (the (k+1)-th highest of n).
    fpr_estimate: str = field_from(CALIBRATION["fpr_estimate"])
    refine_window: float = field_from(CALIBRATION["refine_window"])
    refine_min_width: float = field_from(CALIBRATION["refine_min_width"])
    knee_max_fpr: float = 0.1
    score_col: str = field_from(CALIBRATION["score_col"])
    solver: str = "CLARABEL"
    slices: tuple[str, ...] = field(default_factory=lambda: tuple(SLICES))


def coverage_target(cfg_min: float, overrides: Mapping[str, float], slice_: str) -> float:
    """The minimum robotic coverage of one slice: an exact override, else the first matching
    pattern, else the global minimum."""
    import fnmatch
    if slice_ in overrides:
        return float(overrides[slice_])
    for pat, v in overrides.items():
        if fnmatch.fnmatchcase(slice_, pat):
            return float(v)
    return float(cfg_min)


def parse_slice_coverage(items: list[str] | None) -> dict[str, float]:
    """["*/in=0", "mobile/out=0.6"] -> {"*/in": 0.0, "mobile/out": 0.6} (CLI helper)."""
    out: dict[str, float] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            sep = ""
        if not sep or not k.strip() or not 0.0 <= out.get(k.strip(), -1) <= 1.0:
            raise ValueError(f"--slice-min-coverage expects SLICE=VALUE with VALUE in [0, 1], "
                             f"got {it!r}")
    return out


# ---------------------------------------------------------------- data

def load_scores(path: str | Path, score_col: str = "score_model") -> dict[str, np.ndarray]:
    """scores.parquet (docs/offline.md, "Output directory") -> numpy columns: score, slice, purchased, heuristic, split,
    is_robot (None when absent)."""
    from slidr.files import read_table
    path = Path(path)
    if path.is_dir():
        path = path / "scores.parquet"
    want = ("slice", "purchased", "robot_heuristic", score_col, "split", "day", "is_robot")
    need = ("slice", "purchased", "robot_heuristic", score_col)
    d = _read_parquet_columns(path, want) if path.suffix in (".parquet", ".pq") else None
    if d is None:
        tbl = read_table(path, "scores file")
        d = {c: column_numpy(tbl.column(c)) for c in tbl.column_names if c in want}
        del tbl
    missing = [c for c in need if c not in d]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {', '.join(missing)} "
                         f"(has: {', '.join(d)})")
    if "split" in d:
        split = d["split"].astype(str, copy=False)
    elif "day" in d:  # no split column: last day is the test day, the one before validation
        day = d["day"].astype(np.int64)
        split = np.where(day == day.max(), "test", np.where(day == day.max() - 1, "val", "train"))
    else:
        raise ValueError(f"{path}: needs a 'split' or a 'day' column")
    return {"score": d[score_col].astype(np.float64), "slice": d["slice"].astype(str, copy=False),
            "day": d["day"].astype(np.int64) if "day" in d else None,
            "purchased": d["purchased"].astype(bool), "heuristic": d["robot_heuristic"].astype(bool),
            "split": split,
            "is_robot": d["is_robot"].astype(bool) if "is_robot" in d else None}


def _read_parquet_columns(path: Path, want: Sequence[str],
                          batch_rows: int = 1 << 20) -> dict[str, np.ndarray] | None:
    """The columns of `want` that a Parquet file has, read a batch at a time into whole numpy
    arrays (string columns: a numpy str array, through per-row codes of their distinct values);
    None when the file has nulls in them or cannot be read this way (the caller reads the
    table whole)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception:
        return None
    sch = pf.schema_arrow
    cols = [c for c in want if c in sch.names]
    n = int(pf.metadata.num_rows)
    out: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    names: dict[str, dict[str, int]] = {}
    for c in cols:
        t = sch.field(c).type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            codes[c], names[c] = np.empty(n, np.int32), {}
        elif pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
            out[c] = np.empty(n, t.to_pandas_dtype())
        else:
            return None
    k = 0
    for b in pf.iter_batches(batch_size=batch_rows, columns=cols):
        m = b.num_rows
        for c in cols:
            a = b.column(c)
            if a.null_count:
                return None
            if c in codes:
                enc = a if pa.types.is_dictionary(a.type) else pc.dictionary_encode(a)
                local = np.asarray([names[c].setdefault(str(v), len(names[c]))
                                    for v in enc.dictionary.to_pylist()], np.int32)
                codes[c][k:k + m] = local[enc.indices.to_numpy(zero_copy_only=False)]
            else:
                out[c][k:k + m] = a.to_numpy(zero_copy_only=False)
        k += m
    if k != n:
        return None
    for c, code in codes.items():
        out[c] = np.asarray(list(names[c]), dtype=str)[code]
    return out


def column_numpy(col: Any) -> np.ndarray:
    """An Arrow column as numpy; a string column without nulls as a numpy str array built from
    its distinct values (what `.to_numpy(zero_copy_only=False).astype(str)` gives, without a
    Python string per row on the way: ~60 bytes a row on logs of millions of clicks)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    t = col.type
    if col.null_count == 0 and (pa.types.is_string(t) or pa.types.is_large_string(t)
                                or pa.types.is_dictionary(t)):
        enc = col if pa.types.is_dictionary(t) else pc.dictionary_encode(col)
        enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
        if pa.types.is_dictionary(enc.type):
            names = np.asarray([str(v) for v in enc.dictionary.to_pylist()], dtype=str)
            return names[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    return col.to_numpy(zero_copy_only=False)


def subset(cols: Mapping[str, Any], mask: np.ndarray) -> dict[str, Any]:
    return {k: (None if v is None else v[mask]) for k, v in cols.items()}


# ---------------------------------------------------------------- curves and fits

def _exceed(sorted_vals: np.ndarray, thr: np.ndarray | float) -> np.ndarray:
    """fraction of sorted_vals strictly above thr."""
    if sorted_vals.size == 0:
        return np.full(np.shape(thr), np.nan)
    return (sorted_vals.size - np.searchsorted(sorted_vals, thr, side="right")) / sorted_vals.size


def thresholds_for_fprs(ps_desc: np.ndarray, fprs: np.ndarray) -> np.ndarray:
    """Vectorised threshold_for_fpr on purchasing scores sorted descending."""
    m = np.floor(np.asarray(fprs) * ps_desc.size + 1e-9).astype(np.int64)
    out = np.empty(m.shape, dtype=np.float64)
    hi = m >= ps_desc.size
    out[~hi] = ps_desc[m[~hi]]
    out[hi] = np.nextafter(ps_desc[-1], -np.inf)
    return out


def coverage_floor(score: np.ndarray, purchased: np.ndarray, heuristic: np.ndarray,
                   min_coverage: float) -> tuple[float, float]:
    """(threshold, FPR) of the largest threshold whose coverage of heuristic-robotic clicks is
    >= min_coverage. (inf, 0.0) when there are none (no floor)."""
    hs = np.sort(score[heuristic])[::-1]
    if hs.size == 0 or min_coverage <= 0:
        return float("inf"), 0.0
    need = int(np.ceil(min_coverage * hs.size - 1e-9))  # heuristic clicks that must be above
    need = min(max(need, 1), hs.size)
    thr = float(np.nextafter(hs[need - 1], -np.inf))
    ps = np.sort(score[purchased])
    return thr, float(_exceed(ps, thr)) if ps.size else 0.0


def fit_concave_quadratic(f: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares y ~ a + b f + c f^2 subject to c <= 0. The constraint is a single linear
    inequality on a convex problem: if the unconstrained optimum violates it, the optimum lies on
    c = 0 (the linear fit)."""
    X = np.stack([np.ones_like(f), f, f * f], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    constrained = False
    if coef[2] > 0:
        lin, *_ = np.linalg.lstsq(X[:, :2], y, rcond=None)
        coef = np.array([lin[0], lin[1], 0.0])
        constrained = True
    pred = X @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"a": float(coef[0]), "b": float(coef[1]), "c": float(coef[2]),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
            "rmse": float(np.sqrt(ss_res / y.size)), "concavity_active": constrained}


def curve(score: np.ndarray, purchased: np.ndarray, heuristic: np.ndarray | None,
          max_fpr: float = 1.0, n: int = 201) -> dict[str, np.ndarray]:
    ps_desc = np.sort(score[purchased])[::-1]
    fprs = np.linspace(0.0, max_fpr, n)
    thr = thresholds_for_fprs(ps_desc, fprs)
    s = np.sort(score)
    out = {"target_fpr": fprs, "threshold": thr, "fpr": _exceed(ps_desc[::-1], thr),
           "ivr": _exceed(s, thr)}
    if heuristic is not None:
        out["coverage"] = _exceed(np.sort(score[heuristic]), thr)
    return out


def knee(c: Mapping[str, np.ndarray]) -> int:
    """Index of the knee (max distance above the chord between the end points) of an IVR-FPR
    curve. Both axes are scaled to the curve's range first, so the answer does not depend on
    units (Kneedle)."""
    f, y = np.asarray(c["fpr"], dtype=np.float64), np.asarray(c["ivr"], dtype=np.float64)
    fs = (f - f[0]) / max(f[-1] - f[0], 1e-12)
    ys = (y - y[0]) / max(y[-1] - y[0], 1e-12)
    return int(np.argmax(ys - fs))


class SliceFPR:
    """A slice's FPR as a function of the threshold, shrunk towards the pooled FPR:

        FPR_s(t) = (k_s(t) + alpha * FPR_all(t)) / (n_s + alpha)

    k_s(t) = the slice's purchasing clicks scoring above t, n_s = all of them, FPR_all = the
    FPR of all purchasing clicks of the fitted days (every slice) at t. alpha = 0 is the slice's
    own empirical FPR. A slice with a few hundred purchasing clicks measures 1% FPR with a
    handful of clicks; the pseudo-counts borrow the pooled tail there (empirical Bayes, a beta
    prior centred on the pooled rate), so a slice's curve moves away from the pooled one only
    as far as its own clicks show. Thresholds map back through the same function."""

    def __init__(self, score: np.ndarray, purchased: np.ndarray, pooled_ps_desc: np.ndarray,
                 alpha: float, plus_one: bool = False) -> None:
        self.ps_asc = np.sort(score[purchased])
        self.plus_one = 1.0 if plus_one else 0.0
        self.pool_asc = pooled_ps_desc[::-1]
        self.alpha = float(alpha)
        # Candidate thresholds: every purchasing score of the fitted days (FPR_s only changes
        # there), highest first, then one just below the lowest (everything invalid).
        self.cand = np.append(pooled_ps_desc, np.nextafter(pooled_ps_desc[-1], -np.inf))
        self.cand_fpr = self.fpr(self.cand)

    def fpr(self, t: np.ndarray | float) -> np.ndarray:
        n = self.ps_asc.size
        k = n - np.searchsorted(self.ps_asc, t, side="right")
        f_all = _exceed(self.pool_asc, t)
        return (k + self.plus_one + self.alpha * f_all) / (n + self.plus_one + self.alpha)

    def thresholds(self, fprs: np.ndarray | float) -> np.ndarray:
        """Lowest candidate threshold whose FPR_s is <= each target."""
        i = np.searchsorted(self.cand_fpr, np.asarray(fprs) + 1e-12, side="right") - 1
        return self.cand[np.clip(i, 0, self.cand.size - 1)]

    def curve_range(self, lo: float, hi: float, n: int) -> dict[str, np.ndarray]:
        """(fpr, threshold) of the slice at n targets evenly spaced over [lo, hi]; no IVR."""
        thr = self.thresholds(np.linspace(lo, hi, n))
        return {"threshold": thr, "fpr": self.fpr(thr)}

    def curve(self, score: np.ndarray, heuristic: np.ndarray | None, max_fpr: float,
              n: int) -> dict[str, np.ndarray]:
        fprs = np.linspace(0.0, max_fpr, n)
        thr = self.thresholds(fprs)
        out = {"target_fpr": fprs, "threshold": thr, "fpr": self.fpr(thr),
               "ivr": _exceed(np.sort(score), thr)}
        if heuristic is not None:
            out["coverage"] = _exceed(np.sort(score[heuristic]), thr)
        return out


# ---------------------------------------------------------------- calibration

def invalid_mask(cols: Mapping[str, Any], thr_by_slice: Mapping[str, float],
                 default: float) -> np.ndarray:
    """score > the click's slice threshold (`default` for a slice without one)."""
    score, sl = cols["score"], cols["slice"]
    t = np.full(score.size, default, dtype=np.float64)
    for s, v in thr_by_slice.items():
        t[sl == s] = v
    return score > t


def _thresholds_eval(cols: Mapping[str, Any], thr_by_slice: Mapping[str, float],
                     default: float) -> dict[str, Any]:
    """Metrics of per-slice thresholds on a set of clicks: overall and per slice."""
    score, sl = cols["score"], cols["slice"]
    inv = invalid_mask(cols, thr_by_slice, default)

    def block(m: np.ndarray) -> dict[str, Any]:
        p, h = cols["purchased"][m], cols["heuristic"][m]
        i = inv[m]
        out = {"n": int(m.sum()), "n_purchasing": int(p.sum()), "n_heuristic": int(h.sum()),
               "ivr": float(i.mean()) if i.size else float("nan"),
               "fpr": float(i[p].mean()) if p.any() else float("nan"),
               "coverage": float(i[h].mean()) if h.any() else float("nan")}
        if cols.get("is_robot") is not None:
            r = cols["is_robot"][m]
            out["precision"] = float((i & r).sum() / i.sum()) if i.any() else float("nan")
            out["recall"] = float((i & r).sum() / r.sum()) if r.any() else float("nan")
        return out

    res = {"overall": block(np.ones(score.size, dtype=bool)), "slices": {}}
    for s in sorted(set(sl.tolist())):
        res["slices"][s] = block(sl == s)
        res["slices"][s]["threshold"] = float(thr_by_slice.get(s, default))
    return res


def _solve(fits: dict[str, dict[str, Any]], budget: float, solver: str) -> tuple[dict[str, float], dict[str, Any]]:
    import cvxpy as cp
    names = list(fits)
    w = np.array([fits[s]["w"] for s in names])
    p = np.array([fits[s]["p"] for s in names])
    a = np.array([fits[s]["fit"]["a"] for s in names])
    b = np.array([fits[s]["fit"]["b"] for s in names])
    c = np.array([fits[s]["fit"]["c"] for s in names])
    # The box: the coverage floor and the fit range (the trust region when refining).
    lo = np.array([max(fits[s]["floor_fpr"], fits[s].get("fit_min_fpr", 0.0)) for s in names])
    hi = np.array([fits[s]["fit_max_fpr"] for s in names])
    f = cp.Variable(len(names))
    # c <= 0 makes each term concave: the problem is DCP (concave maximisation, linear constraints).
    obj = cp.Maximize(w @ a + (w * b) @ f - cp.sum(cp.multiply(w * -c, cp.square(f))))
    cons = [p @ f <= budget, f >= lo, f <= hi]
    prob = cp.Problem(obj, cons)
    tried = []
    for sv in dict.fromkeys([solver, "CLARABEL", "OSQP", "SCS"]):
        if sv not in cp.installed_solvers():
            continue
        tried.append(sv)
        try:
            prob.solve(solver=sv)
        except cp.error.SolverError:
            continue
        if prob.status in ("optimal", "optimal_inaccurate"):
            break
    if prob.status not in ("optimal", "optimal_inaccurate") or f.value is None:
        raise RuntimeError(f"calibration solver failed: status {prob.status} (tried {tried})")
    val = np.clip(np.asarray(f.value, dtype=np.float64), lo, hi)
    info = {"status": prob.status, "solver": tried[-1], "objective_fitted_ivr": float(prob.value),
            "budget_dual": float(cons[0].dual_value) if cons[0].dual_value is not None else None}
    return {s: float(v) for s, v in zip(names, val, strict=True)}, info


def _fitted_ivr(fits: Mapping[str, Mapping[str, Any]], f: Mapping[str, float]) -> float:
    """Overall IVR (share of all fitted-days clicks of the fitted slices) that the per-slice
    FPRs f buy on the fitted days, through each slice's own thresholds."""
    tot = 0.0
    for s, info in fits.items():
        thr = info["fpr_model"].thresholds(f[s])
        tot += info["w"] * float(_exceed(info["_scores_asc"], thr))
    return tot


def _refine(fits: dict[str, dict[str, Any]], f0: dict[str, float], budget: float,
            cfg: CalibConfig, info0: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Sequential quadratic programming with a trust region (cfg.refine_*).

    One quadratic over [0, F_s] describes a slice's IVR-FPR curve poorly where it matters: the
    curve is steep near 0 and flattens, so the fit's slope at the operating point is off and
    the solver trades budget between slices on wrong marginal rates. Each round refits every
    slice's concave quadratic on a window around its current FPR f_s, [f_s / r, max(f_s r,
    f_s + min_width)], and solves the same cvxpy problem with f_s kept inside that window
    (and above its coverage floor). At a fixed point every slice's fitted marginal IVR per
    unit of FPR, w_s IVR_s'(f_s) / p_s, is equal (or the slice sits on its floor or a bound):
    the optimality condition of the allocation. Starts from the better (on the fitted days)
    of the global@budget allocation and the first solve; returns the round with the highest
    IVR on the fitted days."""
    names = list(fits)
    r, width = max(cfg.refine_window, 1.01), cfg.refine_min_width
    g = {s: max(fits[s]["_start_fpr"], fits[s]["floor_fpr"]) for s in names}
    cands = [f0]
    if sum(fits[s]["p"] * g[s] for s in names) <= budget + 1e-12:
        cands.append(g)
    f = max(cands, key=lambda x: _fitted_ivr(fits, x))
    best_val = _fitted_ivr(fits, f)
    best = (dict(f), {s: (dict(fits[s]["fit"]), fits[s]["fit_min_fpr"], fits[s]["fit_max_fpr"])
                      for s in names}, info0)
    history = [best_val]
    for _ in range(cfg.refine_iters):
        for s in names:
            info = fits[s]
            # Not below the slice's lowest FPR estimate (fpr_estimate "order_stat": 1/(n+1)).
            lo = min(f[s], max(f[s] / r, info["_min_fpr"]))
            hi = min(1.0, max(f[s] * r, f[s] + width))
            c = info["fpr_model"].curve_range(lo, hi, cfg.fit_points)
            info["fit"] = fit_concave_quadratic(c["fpr"], _exceed(info["_scores_asc"],
                                                                  c["threshold"]))
            info["fit_min_fpr"], info["fit_max_fpr"] = float(lo), float(hi)
        fn, sinfo = _solve(fits, budget, cfg.solver)
        val = _fitted_ivr(fits, fn)
        history.append(val)
        if val > best_val:
            best_val = val
            best = (dict(fn), {s: (dict(fits[s]["fit"]), fits[s]["fit_min_fpr"],
                                   fits[s]["fit_max_fpr"]) for s in names}, sinfo)
        moved = max(abs(fn[s] - f[s]) for s in names)
        f = fn
        if moved < 1e-5:
            break
    fbest, fit_best, sinfo = best
    for s in names:
        fits[s]["fit"], fits[s]["fit_min_fpr"], fits[s]["fit_max_fpr"] = fit_best[s]
    return fbest, {**sinfo, "refine": {"rounds": len(history) - 1, "fitted_ivr": history,
                                       "window": r, "min_width": width}}


def _lodo(va: Mapping[str, Any], cfg: CalibConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Leave each fitted day out in turn. Returns (budget correction, method selection).

    cfg.budget_correction == "lodo": calibrate on the other days (no correction) and measure
    the slice-level FPR realised on the left-out day. The mean of realised / budget (clipped to
    [1, cfg.lodo_max_ratio]) is the overspend the fit makes on days it has not seen
    (thresholds on a slice's few hundred purchasing clicks, and the optimiser's preference for
    slices whose fitted FPR happens to be low).

    cfg.method == "auto": on each left-out day d, slice-level as it would be deployed (fitted
    on the other days, its budget divided by the overspend ratio measured on the left-out
    days other than d, so day d's own outcome never sets its budget) against global@budget
    fitted on the same days; see select_method for the rule."""
    if cfg.budget_correction not in ("none", "lodo"):
        raise ValueError(f"budget_correction must be 'none' or 'lodo', got {cfg.budget_correction!r}")
    if cfg.method not in METHOD_CHOICES:
        raise ValueError(f"method must be one of {', '.join(METHOD_CHOICES)}, got {cfg.method!r}")
    want_bc, want_sel = cfg.budget_correction == "lodo", cfg.method == "auto"
    correction: dict[str, Any] = {"method": "lodo" if want_bc else "none"}
    selection: dict[str, Any] = {"mode": cfg.method, "rule": SELECT_RULE,
                                 "fpr_tolerance": cfg.select_fpr_tolerance}
    if cfg.method != "auto":
        selection.update(chosen=cfg.method, reason=f"method={cfg.method} as configured "
                                                   "(--method auto would choose from the "
                                                   "validation days)")
    if not (want_bc or want_sel):
        return correction, selection
    day = va.get("day")
    days = np.unique(day) if day is not None else np.array([])
    if days.size < 2:
        if want_bc:
            correction.update(ratio=1.0, reason="fewer than 2 fitted days")
        if want_sel:
            selection.update(chosen="slice", reason="no held-out evidence (fewer than 2 fitted "
                                                    "days): slice-level kept")
        return correction, selection
    from dataclasses import replace
    sub = replace(cfg, budget_correction="none", method="slice")
    per_day, fits_by_day = [], {}
    for d in days:
        c = dict(va)
        c["split"] = np.where(day == d, "test", "val")
        try:
            r = calibrate(c, sub)
        except CalibrationInfeasible:
            continue
        ev = r["evaluation"]
        fits_by_day[int(d)] = (c, ev)
        per_day.append({"day": int(d), "slice_fpr": ev["slice"]["test"]["overall"]["fpr"],
                        "global_budget_fpr": ev["global_budget"]["test"]["overall"]["fpr"]})
    if not per_day:
        if want_bc:
            correction.update(ratio=1.0, reason="every leave-one-day-out fit infeasible")
        if want_sel:
            selection.update(chosen="slice", reason="no held-out evidence (every "
                                                    "leave-one-day-out fit infeasible): "
                                                    "slice-level kept")
        return correction, selection
    if want_bc:
        raw = float(np.mean([x["slice_fpr"] for x in per_day]) / cfg.fpr_budget)
        correction.update(raw_ratio=raw, ratio=float(min(max(raw, 1.0), cfg.lodo_max_ratio)),
                          days=per_day)
    if not want_sel:
        return correction, selection
    sel_days = []
    for x in per_day:
        d = x["day"]
        c, ev = fits_by_day[d]
        gb = ev["global_budget"]["test"]["overall"]  # at the budget as given
        ratio = 1.0
        if want_bc:
            others = [y["slice_fpr"] for y in per_day if y["day"] != d]
            if others:
                ratio = float(min(max(np.mean(others) / cfg.fpr_budget, 1.0), cfg.lodo_max_ratio))
        budget = cfg.fpr_budget / ratio
        if ratio > 1.0:
            try:
                ev = calibrate(c, replace(sub, fpr_budget=budget))["evaluation"]
            except CalibrationInfeasible:
                continue  # the floors need more than the corrected budget on these days
        sl = ev["slice"]["test"]["overall"]
        gm = ev["global_matched"]["test"]["overall"]  # one threshold at slice's FPR on day d
        sel_days.append({"day": d, "slice_budget": budget, "slice_ivr": sl["ivr"],
                         "slice_fpr": sl["fpr"], "global_ivr": gb["ivr"], "global_fpr": gb["fpr"],
                         "matched_ivr": gm["ivr"], "matched_fpr": gm["fpr"]})
    selection.update(select_method(sel_days, cfg.select_fpr_tolerance))
    return correction, selection


METHOD_CHOICES = ("auto", "slice", "global")
SELECT_RULE = ("slice-level iff, over the left-out days, its mean IVR > the mean IVR of one global "
               "threshold set on each left-out day to slice-level's realised FPR there (equal "
               "FPR: is slice-level's curve above global's?) and its mean FPR <= (1 + tolerance) "
               "x global@budget's; else global@budget")


def select_method(days: list[Mapping[str, Any]], fpr_tolerance: float = 0.05) -> dict[str, Any]:
    """The rule of CalibConfig.method == "auto" on per-left-out-day records (slice_ivr,
    slice_fpr, global_ivr, global_fpr, matched_ivr, matched_fpr):
    {"chosen": "slice"|"global", "reason", means, days}.

    IVR is compared at equal FPR: against `matched_ivr`, one global threshold set on the
    left-out day itself to the FPR slice-level realised there (an oracle for global, so the
    test is strict for slice-level). Comparing with global@budget's IVR instead would punish
    slice-level for spending less FPR: on 28 held-out days of 60k-click logs slice-level spent
    0.91x global@budget's FPR and that rule picked global on 23 of 28 days, publishing 1.22x
    the budget (docs/calibration.md). Records without `matched_ivr` fall back to `global_ivr`."""
    if not days:
        return {"chosen": "slice", "days": [],
                "reason": "no held-out evidence (no feasible left-out fit): slice-level kept"}
    keys = ["slice_ivr", "slice_fpr", "global_ivr", "global_fpr"]
    matched = all("matched_ivr" in x for x in days)
    if matched:
        keys += ["matched_ivr", "matched_fpr"]
    m = {k: float(np.mean([x[k] for x in days])) for k in keys}
    ref = "matched_ivr" if matched else "global_ivr"
    ivr_ok = m["slice_ivr"] > m[ref]
    fpr_ok = m["slice_fpr"] <= m["global_fpr"] * (1.0 + fpr_tolerance) + 1e-12
    won = sum(1 for x in days if x["slice_ivr"] > x[ref])
    vs = (f"one global threshold at the same FPR {m['matched_ivr']:.4f}" if matched else
          f"global@budget {m['global_ivr']:.4f}")
    ev = (f"over {len(days)} left-out day(s) slice-level IVR {m['slice_ivr']:.4f} @ FPR "
          f"{m['slice_fpr']:.4f} vs {vs} (slice IVR higher on {won}/{len(days)}); "
          f"global@budget {m['global_ivr']:.4f} @ {m['global_fpr']:.4f}")
    if ivr_ok and fpr_ok:
        chosen, why = "slice", f"slice-level chosen: {ev}"
    else:
        bad = ([] if ivr_ok else ["mean IVR not higher at equal FPR" if matched else
                                  "mean IVR not higher"]) + (
            [] if fpr_ok else [f"mean FPR more than {fpr_tolerance:.0%} higher"])
        chosen, why = "global", (f"global@budget chosen (slice-level: {' and '.join(bad)}): "
                                 f"{ev}")
    return {"chosen": chosen, "reason": why, "mean": m, "days": list(days)}


class CalibrationResult(TypedDict):
    """The result record of calibrate(): plain data that the report
    (offline/calibrate_report.py), the daily job and `slidr calibrate --json` read."""

    thresholds: dict[str, Any]        # thresholds.json of the published method
    slice_thresholds: dict[str, Any]  # thresholds.json of slice-level, published or not
    calibration: dict[str, Any]       # budget, knee, slice fits, solver, correction, selection
    evaluation: dict[str, Any]        # method -> "val"/"test" -> overall and per-slice metrics
    curves: dict[str, Any]            # the IVR-FPR curves behind the figures
    config: CalibConfig


def calibrate(cols: Mapping[str, Any], cfg: CalibConfig | None = None) -> CalibrationResult:
    """SLIDR's calibration: fit on split=='val', evaluate on split=='test'.

    The steps, as in the article: (1) split the scored clicks; (2) the overall IVR-FPR curve,
    its knee and the one global threshold at the FPR budget; (3) per slice, the coverage floor
    and a concave quadratic fitted to the slice's IVR-FPR curve; (4) the budget left for the
    fitted slices (after slices too small to fit, the held-out FPR correction, feasibility of
    the floors); (5) the FPR per slice that maximises sum_s w_s IVR_s(f_s) subject to
    sum_s p_s f_s <= budget and the floors; (6) each slice's threshold at its FPR; (7) every
    method evaluated on the fitted and the held-out days. Returns a result record:
    `thresholds` (thresholds.json), `slice_thresholds`, `calibration`, `evaluation`, `curves`
    (for the report, offline/calibrate_report.py), `config`."""
    cfg = cfg or CalibConfig()
    va, te = _split(cols, cfg)                                               # (1)
    del cols  # the split's copies are all that is used (a caller may drop its own)
    gcurve, k, t_knee, t_budget = _global_points(va, cfg)                   # (2)
    fits, fallback, slice_curves = _fit_slices(va, cfg, t_budget)           # (3)
    budget = _slice_budget(va, cfg, fits, fallback)                         # (4)
    if fits:                                                                # (5)
        fstar, solve_info = _solve(fits, budget["left"], cfg.solver)
        if cfg.refine_iters > 0:
            fstar, solve_info = _refine(fits, fstar, budget["left"], cfg, solve_info)
    else:
        fstar, solve_info = {}, {"status": "no slice large enough to fit"}
    thr_slice = _slice_thresholds(fits, fallback, fstar, slice_curves)      # (6)
    evals = _evaluate(va, te, cfg, {"global_knee": ({}, t_knee),            # (7)
                                    "global_budget": ({}, t_budget),
                                    "slice": (thr_slice, t_budget)})
    selection = budget["selection"]
    calibration = {
        "fit_on": "val", "evaluated_on": "test", "operating_rule": "invalid iff score > threshold",
        "score_column": cfg.score_col, "fpr_budget": cfg.fpr_budget,
        "min_coverage": cfg.min_coverage, "slice_min_coverage": dict(cfg.slice_min_coverage),
        "min_purchasing": cfg.min_purchasing,
        "knee_method": KNEE_METHOD, "knee_max_fpr": cfg.knee_max_fpr,
        "global_knee_threshold": t_knee,
        "global_knee_val_fpr": float(gcurve["fpr"][k]),
        "global_budget_threshold": t_budget, "budget_after_fallbacks": budget["left"],
        "min_feasible_budget": budget["min_budget"], "solver": solve_info,
        "slices": {s: _public(v) for s, v in {**fits, **fallback}.items()},
        "budget_correction": budget["correction"], "fpr_estimate": cfg.fpr_estimate,
        "selection": selection, "method": selection["chosen"],
        "test": {name: ev["test"]["overall"] for name, ev in evals.items()},
    }
    slice_th = {"method": "slice", "default": t_budget, "slices": thr_slice,
                "calibration": calibration}
    thresholds = slice_th if selection["chosen"] == "slice" else {
        "method": "global", "default": t_budget, "slices": {}, "calibration": calibration}
    return CalibrationResult(
        thresholds=thresholds, slice_thresholds=slice_th, evaluation=evals,
        calibration=calibration,
        curves={"global": gcurve, "global_knee_index": k, "slices": slice_curves}, config=cfg)


def _split(cols: Mapping[str, Any], cfg: CalibConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(1) The fitted (validation) and the held-out (test) clicks; refuses what cannot be
    calibrated."""
    if not 0.0 < cfg.fpr_budget < 1.0:
        raise ValueError(f"--fpr-budget must be in (0, 1), got {cfg.fpr_budget}")
    if not 0.0 <= cfg.min_coverage <= 1.0:
        raise ValueError(f"--min-coverage must be in [0, 1], got {cfg.min_coverage}")
    va = subset(cols, cols["split"] == "val")
    te = subset(cols, cols["split"] == "test")
    if va["score"].size == 0 or te["score"].size == 0:
        raise ValueError("calibration needs a validation and a test split "
                         f"(got {va['score'].size} val and {te['score'].size} test clicks)")
    if not va["purchased"].any():
        raise ValueError("no purchasing clicks on the validation day: FPR cannot be calibrated")
    return va, te


def _global_points(va: Mapping[str, Any], cfg: CalibConfig
                   ) -> tuple[dict[str, np.ndarray], int, float, float]:
    """(2) The overall IVR-FPR curve, its knee (index and threshold) and the one threshold
    whose FPR on the fitted days is the budget (global@budget)."""
    gcurve = curve(va["score"], va["purchased"], va["heuristic"], max_fpr=cfg.knee_max_fpr)
    k = knee(gcurve)
    t_knee = float(gcurve["threshold"][k])
    t_budget = threshold_for_fpr(va["score"], va["purchased"], cfg.fpr_budget)
    return gcurve, k, t_knee, t_budget


def _fit_slices(va: Mapping[str, Any], cfg: CalibConfig, t_budget: float
                ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """(3) Per slice: traffic share w, purchasing share p, the coverage floor (the FPR that
    buys the slice its minimum robotic coverage) and a concave quadratic IVR(FPR). Slices with
    fewer than min_purchasing purchasing clicks take global@budget instead (`fallback`)."""
    n, n_p = va["score"].size, int(va["purchased"].sum())
    pooled_desc = np.sort(va["score"][va["purchased"]])[::-1]
    present = [s for s in cfg.slices if (va["slice"] == s).any()]
    extra = sorted(set(va["slice"].tolist()) - set(present))
    fits: dict[str, dict[str, Any]] = {}
    fallback: dict[str, dict[str, Any]] = {}
    slice_curves: dict[str, Any] = {}
    for s in present + extra:
        m = va["slice"] == s
        sc, pu, he = va["score"][m], va["purchased"][m], va["heuristic"][m]
        w, p = float(m.sum() / n), float(pu.sum() / n_p)
        cov_s = coverage_target(cfg.min_coverage, cfg.slice_min_coverage, s)
        # Fitted with a safety margin: coverage at a fixed threshold moves between days.
        cov_fit = min(1.0, cov_s + cfg.coverage_margin) if cov_s > 0 else 0.0
        floor_t, floor_f = coverage_floor(sc, pu, he, cov_fit)
        days_s = va["day"][m] if cfg.floor_every_day and va.get("day") is not None else None
        if days_s is not None and np.isfinite(floor_t) and np.unique(days_s).size > 1:
            # Meet the floor on every fitted day, not only on their pool: the lowest of the
            # per-day floor thresholds (coverage moves a lot between days).
            for dd in np.unique(days_s):
                k_ = days_s == dd
                if he[k_].any():
                    floor_t = min(floor_t, coverage_floor(sc[k_], pu[k_], he[k_], cov_fit)[0])
            ps_ = np.sort(sc[pu])
            floor_f = float(_exceed(ps_, floor_t)) if ps_.size else 0.0
        info: dict[str, Any] = {"min_coverage": cov_s, "fit_coverage": cov_fit, "w": w, "p": p,
                                "n": int(m.sum()), "n_purchasing": int(pu.sum()),
                                "n_heuristic": int(he.sum()), "floor_fpr": floor_f,
                                "floor_threshold": None if np.isinf(floor_t) else floor_t}
        if pu.sum() < cfg.min_purchasing:
            # Too few purchasing clicks to measure this slice's FPR: its coverage floor is not
            # enforced either (it could be bought only with an unmeasurable FPR).
            fpr_here = float((sc[pu] > t_budget).mean()) if pu.any() else 0.0
            info.update({"fallback": "global@budget", "threshold": t_budget, "fpr": fpr_here,
                         "reason": f"{int(pu.sum())} purchasing clicks < min_purchasing "
                                   f"{cfg.min_purchasing}: too few to fit a curve"})
            fallback[s] = info
            continue
        sf = SliceFPR(sc, pu, pooled_desc, cfg.fpr_prior,
                      plus_one=cfg.fpr_estimate == "order_stat")
        if np.isfinite(floor_t):
            floor_f = float(sf.fpr(floor_t))
            info["floor_fpr"] = floor_f
        fmax = float(min(1.0, max(cfg.fit_range * cfg.fpr_budget, 2 * floor_f,
                                  cfg.fit_min_fpr)))
        c = sf.curve(sc, he, max_fpr=fmax, n=cfg.fit_points)
        info["fit"] = fit_concave_quadratic(c["fpr"], c["ivr"])
        info["fit_min_fpr"] = 0.0
        info["fit_max_fpr"] = fmax
        info["fpr_model"] = sf
        info["_scores_asc"] = np.sort(sc)
        info["_start_fpr"] = float(sf.fpr(t_budget))  # where global@budget puts this slice
        info["_min_fpr"] = float(sf.fpr(np.inf))
        info["_data"] = (sc, he)
        fits[s] = info
        slice_curves[s] = sf.curve(sc, he, max_fpr=fmax, n=101)
    return fits, fallback, slice_curves


def _slice_budget(va: Mapping[str, Any], cfg: CalibConfig, fits: Mapping[str, Any],
                  fallback: Mapping[str, Any]) -> dict[str, Any]:
    """(4) The FPR budget the fitted slices may spend: the budget less what the fallback
    slices spend, divided by the held-out overspend ratio of the budget correction, never
    below what the coverage floors need. Raises CalibrationInfeasible when the floors alone
    cost more than the budget. Also decides the published method (`selection`)."""
    fallback_spend = sum(v["p"] * v["fpr"] for v in fallback.values())
    budget_left = cfg.fpr_budget - fallback_spend
    need = {s: v["p"] * v["floor_fpr"] for s, v in fits.items()}
    min_budget = sum(need.values()) + fallback_spend
    feasible = sum(need.values()) <= budget_left + 1e-12
    if fits and feasible:
        correction, selection = _lodo(va, cfg)
    else:
        correction = {"method": "none"}
        selection = {"mode": cfg.method, "chosen": "slice" if cfg.method == "auto" else cfg.method,
                     "reason": "no fitted slice: slice-level = global@budget"
                     if cfg.method == "auto" else f"method={cfg.method} as configured "
                     "(--method auto would choose from the validation days)"}
    if correction.get("ratio", 1.0) > 1.0:
        # Solve with budget / ratio, but never below what the coverage floors need.
        target = cfg.fpr_budget / correction["ratio"] - fallback_spend
        budget_left = max(target, sum(need.values()))
        correction["floors_bind"] = bool(target < sum(need.values()))
    if "ratio" in correction:
        correction["budget_solved"] = budget_left + fallback_spend
    if sum(need.values()) > budget_left + 1e-12:
        parts = ", ".join(f"{s} needs FPR >= {fits[s]['floor_fpr']:.4f} for "
                          f"{fits[s]['fit_coverage']:.0%} coverage, costing {need[s]:.5f} of "
                          f"the budget (p_s={fits[s]['p']:.3f})"
                          for s in sorted(need, key=lambda k: need[k], reverse=True) if need[s] > 0)
        fb = (f"; slices on the global fallback spend {fallback_spend:.5f}"
              if fallback else "")
        msg = (f"slice calibration infeasible: FPR budget {cfg.fpr_budget:.4f} < minimum feasible "
               f"budget {min_budget:.4f} for the coverage floors. {parts}{fb}. "
               f"Raise --fpr-budget to >= {min_budget:.4f} or lower --min-coverage / "
               "--slice-min-coverage.")
        raise CalibrationInfeasible(msg, {"fpr_budget": cfg.fpr_budget, "min_budget": min_budget,
                                          "cost_by_slice": need,
                                          "floors": {s: v["floor_fpr"] for s, v in fits.items()}})
    return {"left": budget_left, "min_budget": min_budget, "correction": correction,
            "selection": selection}


def _slice_thresholds(fits: dict[str, dict[str, Any]], fallback: Mapping[str, Any],
                      fstar: Mapping[str, float], slice_curves: dict[str, Any]
                      ) -> dict[str, float]:
    """(6) Each fitted slice's threshold at its chosen FPR f*_s (the fallback slices keep
    global@budget); the working fields of the fit are dropped from the record."""
    thr_slice: dict[str, float] = {}
    for s, info in fits.items():
        info["f_star"] = fstar[s]
        sf = info.pop("fpr_model")
        info.pop("_scores_asc")
        info.pop("_start_fpr")
        info.pop("_min_fpr")
        sc_, he_ = info.pop("_data")
        if info["fit_max_fpr"] > slice_curves[s]["target_fpr"][-1]:  # refined past [0, F_s]
            slice_curves[s] = sf.curve(sc_, he_, max_fpr=min(1.0, 1.25 * info["fit_max_fpr"]),
                                       n=101)
        info["threshold"] = float(sf.thresholds(fstar[s]))
        info["fitted_ivr_at_f_star"] = (info["fit"]["a"] + info["fit"]["b"] * fstar[s]
                                        + info["fit"]["c"] * fstar[s] ** 2)
        thr_slice[s] = info["threshold"]
    for s, info in fallback.items():
        thr_slice[s] = info["threshold"]
    return thr_slice


def _evaluate(va: Mapping[str, Any], te: Mapping[str, Any], cfg: CalibConfig,
              methods: Mapping[str, tuple[Mapping[str, float], float]]) -> dict[str, Any]:
    """(7) IVR, FPR, coverage (and precision/recall with ground truth) of each method on the
    fitted and the held-out days, plus global_matched and whether the floors were met."""
    evals = {name: {"val": _thresholds_eval(va, tb, d), "test": _thresholds_eval(te, tb, d)}
             for name, (tb, d) in methods.items()}
    # Equal realised FPR: on each day, the one global threshold set *on that day* to the FPR
    # the slice-level thresholds realised there (or just below). An oracle for the global
    # method (it sees the held-out day), so the comparison favours global.
    evals["global_matched"] = {}
    for split, cols_ in (("val", va), ("test", te)):
        f_sl = evals["slice"][split]["overall"]["fpr"]
        t_m = threshold_for_fpr(cols_["score"], cols_["purchased"], f_sl)
        evals["global_matched"][split] = _thresholds_eval(cols_, {}, t_m)
        evals["global_matched"][split]["overall"]["threshold"] = t_m
    for ev in evals.values():
        for split in ev.values():
            split["coverage_floors_met"] = {
                s: bool(v["coverage"] >= coverage_target(cfg.min_coverage, cfg.slice_min_coverage, s)
                        - 1e-9) if v["n_heuristic"] else None
                for s, v in split["slices"].items()}
    return evals


def global_thresholds(result: Mapping[str, Any], which: str = "budget") -> dict[str, Any]:
    """thresholds.json for one global threshold (method 'global'): global@budget (which=
    "budget") or the global knee (which="knee")."""
    cal = result["calibration"]
    return {"method": "global", "default": cal[f"global_{which}_threshold"], "slices": {},
            "calibration": cal}


def transfer_thresholds(th: Mapping[str, Any], cols: Mapping[str, Any],
                        new_score: np.ndarray, rule: str = "fpr",
                        in_sample_ratio: float = 1.0) -> dict[str, Any]:
    """thresholds.json of a model trained again on every day (`--refit`) from the thresholds
    calibrated on the held-out model's scores: per slice (and for the default), the threshold
    under which the new model's scores pass as many of the fitted days' purchasing clicks as
    the calibrated one did, so each slice keeps the FPR its calibration chose. `cols` are the
    fitted days (split == "val"), `new_score` the new model's scores of the same clicks.

    The new model has trained on these very clicks, so its purchasing clicks score lower here
    than new ones will: `in_sample_ratio` (in_sample_ratio(), >= 1) is how much more FPR the
    same training spends on days it has not seen than on days it trained on; the new threshold
    passes that many times fewer purchasing clicks (rule "fpr")."""
    fit = np.asarray(cols["split"]).astype(str) == "val"
    sl = np.asarray(cols["slice"]).astype(str)[fit]
    pur = np.asarray(cols["purchased"], dtype=bool)[fit]
    old = np.asarray(cols["score"], dtype=np.float64)[fit]
    new = np.asarray(new_score, dtype=np.float64)[fit]

    if rule not in ("fpr", "ivr"):
        raise ValueError(f"transfer rule must be 'fpr' or 'ivr', not {rule!r}")

    def move(t: float, m: np.ndarray) -> float:
        # "fpr": as many purchasing clicks pass; "ivr": as many clicks of any kind (the new
        # model has seen the purchasing clicks of these days, so their scores are in-sample).
        m = m & pur if rule == "fpr" else m
        if not m.any():
            return float(t)
        k = int((old[m] > t).sum())  # purchasing clicks the calibrated threshold passes
        if rule == "fpr":
            k = int(np.floor(k / max(in_sample_ratio, 1.0)))
        ps = np.sort(new[m])[::-1]
        return float(ps[k]) if k < ps.size else max(float(np.nextafter(ps[-1], -np.inf)), 0.0)

    out = {k: v for k, v in th.items() if k not in ("default", "slices")}
    out["default"] = move(float(th["default"]), np.ones(sl.size, dtype=bool))
    out["slices"] = {s: move(float(v), sl == s) for s, v in (th.get("slices") or {}).items()}
    out["refit"] = {"rule": "per slice, the refit model's threshold passing as many of the "
                            "fitted days' " + ("purchasing clicks" if rule == "fpr" else "clicks")
                            + " as the calibrated threshold passed under the held-out model",
                    "in_sample_ratio": float(in_sample_ratio),
                    "held_out_default": th["default"],
                    "held_out_slices": dict(th.get("slices") or {})}
    return out


def in_sample_ratio(score_in: np.ndarray, purchased_in: np.ndarray, score_out: np.ndarray,
                    purchased_out: np.ndarray, budget: float, max_ratio: float = 4.0) -> float:
    """How much more FPR a model spends on days it did not train on than on days it did, at
    the threshold that spends `budget` on the unseen days: FPR(unseen) / FPR(trained-on),
    clipped to [1, max_ratio]. Measured on the held-out model (training days vs validation
    days); a model trained again on every day has the same bias on all of them."""
    from .metrics import threshold_for_fpr
    po = np.asarray(purchased_out, dtype=bool)
    pi = np.asarray(purchased_in, dtype=bool)
    if not po.any() or not pi.any():
        return 1.0
    t = threshold_for_fpr(np.asarray(score_out)[po], np.ones(int(po.sum()), dtype=bool), budget)
    f_out = float((np.asarray(score_out)[po] > t).mean())
    f_in = float((np.asarray(score_in)[pi] > t).mean())
    if f_in <= 0:
        return float(max_ratio)
    return float(min(max(f_out / f_in, 1.0), max_ratio))


def chosen_method(result: Mapping[str, Any]) -> str:
    """"slice" or "global" (global@budget): what result["thresholds"] holds."""
    return str(result["calibration"].get("method", "slice"))


def chosen_eval_key(result: Mapping[str, Any]) -> str:
    """The evaluation key of the published thresholds ("slice" or "global_budget")."""
    return "slice" if chosen_method(result) == "slice" else "global_budget"


def _public(v: Mapping[str, Any]) -> dict[str, Any]:
    return {k: x for k, x in v.items()}


# global_knee: the knee; global_budget: one threshold at the budget on the fitted days;
# global_matched: one threshold set on the evaluated day to slice-level's realised FPR there.
METHODS = ("global_knee", "global_budget", "global_matched", "slice")


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Compact JSON for --json and the daily job."""
    ev = result["evaluation"]
    return {"thresholds": {k: v for k, v in result["thresholds"].items() if k != "calibration"},
            "test": {n: ev[n]["test"]["overall"] for n in ev},
            "test_slices": {n: ev[n]["test"]["slices"] for n in ev},
            "coverage_floors_met_test": ev["slice"]["test"]["coverage_floors_met"],
            "fits": {s: {k: v.get(k) for k in ("w", "p", "floor_fpr", "f_star", "threshold",
                                               "fallback")} | {"r2": v.get("fit", {}).get("r2")}
                     for s, v in result["calibration"]["slices"].items()},
            "solver": result["calibration"]["solver"],
            "method": chosen_method(result),
            "selection": result["calibration"].get("selection")}


# ---------------------------------------------------------------- synthetic data (tests, demos)

SYNTH_SLICES: dict[str, dict[str, float]] = {
    # share of clicks, robot share, human purchase rate, human/robot score separation
    "desktop/in": {"w": 0.20, "robots": 0.05, "buy": 0.08, "sep": 4.0, "shift": 0.0},
    "desktop/out": {"w": 0.20, "robots": 0.35, "buy": 0.02, "sep": 3.5, "shift": -0.5},
    "mobile/in": {"w": 0.20, "robots": 0.04, "buy": 0.07, "sep": 3.5, "shift": 0.8},
    "mobile/out": {"w": 0.20, "robots": 0.20, "buy": 0.02, "sep": 3.0, "shift": 0.6},
    "app/in": {"w": 0.15, "robots": 0.03, "buy": 0.10, "sep": 3.5, "shift": 0.3},
    "app/out": {"w": 0.05, "robots": 0.25, "buy": 0.01, "sep": 3.0, "shift": -0.2},
}


def synthetic_scores(n: int = 200_000, seed: int = 0,
                     slices: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """Scores with known per-slice structure: human logits ~ N(shift, 1), robot logits ~
    N(shift + sep, 1); slices differ in robot share and in how the model's scale drifts
    (`shift`), so one global threshold over- or under-calibrates some of them. Half of
    each split is 'val', half 'test'. 70% of robots and 0.5% of humans are heuristic-robotic."""
    rng = np.random.default_rng(seed)
    slices = slices or SYNTH_SLICES
    parts = []
    for s, c in slices.items():
        m = int(n * c["w"])
        robot = rng.random(m) < c["robots"]
        logit = rng.normal(c["shift"], 1.0, m) + robot * c["sep"] - 2.0
        purchased = ~robot & (rng.random(m) < c["buy"])
        heuristic = np.where(robot, rng.random(m) < 0.7, rng.random(m) < 0.005)
        parts.append((np.full(m, s), 1 / (1 + np.exp(-logit)), purchased, heuristic, robot))
    sl, sc, pu, he, ro = (np.concatenate(x) for x in zip(*parts, strict=True))
    split = np.where(rng.random(sl.size) < 0.5, "val", "test")
    return {"score": sc, "slice": sl.astype(str), "purchased": pu, "heuristic": he,
            "split": split, "is_robot": ro}


def to_json(obj: Any) -> str:
    from .report import clean
    return json.dumps(clean(obj), indent=2, sort_keys=True)


# The report (tables, text, figures, HTML) is drawn by offline/calibrate_report.py from the
# result record; these names stay importable from here for callers of the method module.
_REPORT = ("write_outputs", "selection_text", "table_text", "comparison_rows", "plot",
           "html_fragment", "html_page")


def __getattr__(name: str) -> Any:
    if name in _REPORT:
        from . import calibrate_report
        return getattr(calibrate_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
