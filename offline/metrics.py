"""Offline metrics (docs/offline.md), numpy only.

Conventions used everywhere in offline/:
- A score is a robot score: higher = more robotic.
- A click is invalidated when ``score > threshold`` (strictly greater).
- IVR = invalidated clicks / all clicks.
- FPR = invalidated purchasing clicks / purchasing clicks (purchasers are taken to be human).
- Robotic coverage = invalidated heuristic-robotic clicks / heuristic-robotic clicks, where a
  click is heuristic-robotic when its session has more than k ad clicks in the same UTC clock
  hour (bucket ``ts // 3_600_000``), counting every click of the log (see `session_hour_heuristic`).
- With ground truth (`is_robot`, simulated data only): precision and recall of the invalidated
  set against it.
- AUC: ROC-AUC of the robot score against the weak label (positive = weak label non-human),
  rank based with ties counted half (Mann-Whitney U).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

HOUR_MS = 3_600_000


def session_hour_heuristic(session_key: np.ndarray, ts: np.ndarray, k: int) -> np.ndarray:
    """bool (n,): the click's session has more than k clicks in its UTC clock hour.

    session_key: any integer identity of the session (e.g. the kernel's 64-bit session hash).
    """
    n = session_key.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    hour = (np.asarray(ts, dtype=np.int64) // HOUR_MS).astype(np.uint64)
    # Combine (session, hour) into one sortable record without a Python loop.
    pairs = np.empty(n, dtype=[("s", np.uint64), ("h", np.uint64)])
    pairs["s"] = np.asarray(session_key).astype(np.uint64)
    pairs["h"] = hour
    _, inverse, counts = np.unique(pairs, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > k


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of `score` for the boolean `positive`; NaN when a class is empty."""
    score = np.asarray(score, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    # Average ranks over ties (1-based).
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _rate(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def evaluate(score: np.ndarray, threshold: float, purchased: np.ndarray,
             heuristic: np.ndarray, weak_label: np.ndarray | None = None,
             is_robot: np.ndarray | None = None) -> dict[str, Any]:
    """All metrics of one scorer at one threshold on one set of clicks."""
    inv = np.asarray(score) > threshold
    purchased = np.asarray(purchased, dtype=bool)
    heuristic = np.asarray(heuristic, dtype=bool)
    n = inv.size
    out: dict[str, Any] = {
        "n": int(n),
        "n_purchasing": int(purchased.sum()),
        "n_heuristic": int(heuristic.sum()),
        "invalidated": int(inv.sum()),
        "ivr": _rate(inv.sum(), n),
        "fpr": _rate((inv & purchased).sum(), purchased.sum()),
        "coverage": _rate((inv & heuristic).sum(), heuristic.sum()),
    }
    if weak_label is not None:
        wl = np.asarray(weak_label).astype(bool)  # True = human by weak label
        out["auc"] = roc_auc(score, ~wl)
        # Weak-label "precision/recall": what the pipeline can see without ground truth.
        out["weak_precision"] = _rate((inv & ~wl).sum(), inv.sum())
        out["weak_recall"] = _rate((inv & ~wl).sum(), (~wl).sum())
    if is_robot is not None:
        r = np.asarray(is_robot, dtype=bool)
        out["precision"] = _rate((inv & r).sum(), inv.sum())
        out["recall"] = _rate((inv & r).sum(), r.sum())
        out["auc_true"] = roc_auc(score, r)
        out["robot_share"] = _rate(r.sum(), n)
    return out


def threshold_for_fpr(score: np.ndarray, purchased: np.ndarray, target: float) -> float:
    """The lowest threshold whose FPR (score > threshold among purchasing clicks) is <= target.

    With ties in the purchasing scores the achieved FPR may be below the target.
    """
    p = np.sort(np.asarray(score, dtype=np.float64)[np.asarray(purchased, dtype=bool)])[::-1]
    if p.size == 0:
        raise ValueError("no purchasing clicks: FPR and its threshold are undefined")
    m = int(np.floor(target * p.size + 1e-9))  # purchasing clicks we may invalidate
    if m >= p.size:
        return float(np.nextafter(p[-1], -np.inf))
    return float(p[m])


def ivr_fpr_curve(score: np.ndarray, purchased: np.ndarray, heuristic: np.ndarray | None = None,
                  n_points: int = 200, max_fpr: float = 1.0) -> dict[str, np.ndarray]:
    """Threshold sweep. Thresholds are quantiles of the purchasing clicks' scores, so the FPR
    axis is covered evenly; returns arrays threshold, fpr, ivr (and coverage)."""
    score = np.asarray(score, dtype=np.float64)
    purchased = np.asarray(purchased, dtype=bool)
    ps = np.sort(score[purchased])
    if ps.size == 0:
        raise ValueError("no purchasing clicks: cannot draw an IVR-FPR curve")
    fprs = np.linspace(0.0, max_fpr, n_points)
    thr = np.quantile(ps, np.clip(1.0 - fprs, 0.0, 1.0))
    sorted_all = np.sort(score)
    n = score.size
    inv_all = n - np.searchsorted(sorted_all, thr, side="right")
    inv_p = ps.size - np.searchsorted(ps, thr, side="right")
    out = {"threshold": thr, "fpr": inv_p / ps.size, "ivr": inv_all / n}
    if heuristic is not None:
        hs = np.sort(score[np.asarray(heuristic, dtype=bool)])
        out["coverage"] = ((hs.size - np.searchsorted(hs, thr, side="right")) / hs.size
                           if hs.size else np.full(thr.size, np.nan))
    return out


def ivr_at_fpr(score: np.ndarray, purchased: np.ndarray, target: float) -> tuple[float, float, float]:
    """(threshold, achieved FPR, IVR) when the threshold is set on these clicks for `target`."""
    t = threshold_for_fpr(score, purchased, target)
    inv = np.asarray(score) > t
    return t, float(inv[np.asarray(purchased, dtype=bool)].mean()), float(inv.mean())


def evaluate_sliced(score: np.ndarray, threshold: float, cols: Mapping[str, np.ndarray],
                    slices: np.ndarray, fpr_target: float) -> dict[str, Any]:
    """{"overall": {...}, "slices": {name: {...}}} at one common threshold; each block also
    carries ivr_at_fpr_target: the IVR when that block's own threshold gives FPR = fpr_target
    (the equal-FPR comparison inside a slice)."""
    def block(mask: np.ndarray | None) -> dict[str, Any]:
        sel = (lambda a: a) if mask is None else (lambda a: a[mask])
        m = evaluate(sel(score), threshold, sel(cols["purchased"]), sel(cols["heuristic"]),
                     sel(cols["weak_label"]) if cols.get("weak_label") is not None else None,
                     sel(cols["is_robot"]) if cols.get("is_robot") is not None else None)
        if m["n_purchasing"] > 0:
            sc, pu = sel(score), sel(cols["purchased"])
            t, f, ivr = ivr_at_fpr(sc, pu, fpr_target)
            m["own_threshold"] = t
            m["fpr_at_own_threshold"] = f
            m["ivr_at_fpr_target"] = ivr
            # Sampling noise of the FPR estimate itself: with m = target x purchasers allowed
            # false positives, the count is uncertain by about sqrt(m); the IVR at FPR =
            # target x (1 -+ 1/sqrt(m)) brackets what another day could show.
            allowed = fpr_target * m["n_purchasing"]
            if allowed >= 1:
                rel = 1.0 / np.sqrt(allowed)
                m["ivr_band"] = [ivr_at_fpr(sc, pu, fpr_target * max(1 - rel, 0.0))[2],
                                 ivr_at_fpr(sc, pu, fpr_target * (1 + rel))[2]]
            if cols.get("is_robot") is not None:
                inv = sc > t
                r = sel(cols["is_robot"])
                m["precision_at_fpr_target"] = _rate((inv & r).sum(), inv.sum())
                m["recall_at_fpr_target"] = _rate((inv & r).sum(), r.sum())
        else:
            m["ivr_at_fpr_target"] = float("nan")
        return m

    out: dict[str, Any] = {"threshold": float(threshold), "overall": block(None), "slices": {}}
    for name in sorted(set(slices.tolist())):
        out["slices"][name] = block(slices == name)
    return out
