"""Baselines the MLP must beat, on the same split, features and sample weights:

- logistic regression: the training code of offline/train.py with no hidden layer (one linear
  layer on the standardised features, sigmoid), weighted BCE, early stopping, no L2;
- velocity heuristic: no learning at all, a click-rate score read from the kernel's counters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slidr.featurespec import FEATURE_NAMES

from . import train

_IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}


def fit_logistic(x_tr, y_tr, w_tr, x_va, y_va, w_va, seed: int = 0, epochs: int = 20,
                 progress: bool = True) -> train.FitResult:
    return train.fit(x_tr, y_tr, w_tr, x_va, y_va, w_va, hidden=(), weight_decay=0.0,
                     lr=1e-2, epochs=epochs, seed=seed, progress=progress, label="logistic")


def velocity_score(features: np.ndarray) -> np.ndarray:
    """Clicks per minute of the user or the session, whichever is higher, over the last minute
    (decayed count, tau = 60 s), plus the last hour's per-minute rate as a small tie-breaker:
        score = max(u_1m, s_1m) + max(u_1h, s_1h) / 60 / 1000
    The features are log1p(count), so counts are recovered with expm1."""
    f = features
    c = np.expm1(f[:, [_IDX["u_clicks_1m"], _IDX["s_clicks_1m"],
                       _IDX["u_clicks_1h"], _IDX["s_clicks_1h"]]].astype(np.float64))
    per_min = np.maximum(c[:, 0], c[:, 1])
    per_min_hour = np.maximum(c[:, 2], c[:, 3]) / 60.0
    return (per_min + per_min_hour / 1000.0).astype(np.float32)


def margin_row(model_ivr: float, baseline_ivr: float, model_band: list[float] | None,
               baseline_band: list[float] | None) -> dict[str, Any]:
    """How far the model's IVR at the FPR target is above a baseline's, against the noise band.

    `*_band` is metrics.evaluate_sliced's `ivr_band`: the IVR at FPR = target x (1 -+ 1/sqrt(m))
    with m = target x purchasing clicks, i.e. what the sampling noise of the FPR estimate alone
    can move. Returns
    - margin: model_ivr - baseline_ivr (NaN when either is undefined);
    - band_gap: model band low - baseline band high (> 0: even the model's pessimistic IVR beats
      the baseline's optimistic one);
    - margin_exceeds_noise: band_gap > 0 (None without bands: too few purchasing clicks);
    - within_noise: the two bands overlap (None without bands)."""
    ok = np.isfinite(model_ivr) and np.isfinite(baseline_ivr)
    row: dict[str, Any] = {"margin": float(model_ivr - baseline_ivr) if ok else float("nan"),
                           "band_gap": None, "margin_exceeds_noise": None, "within_noise": None}
    if model_band and baseline_band:
        gap = float(model_band[0] - baseline_band[1])
        row["band_gap"] = gap
        row["margin_exceeds_noise"] = bool(gap > 0)
        row["within_noise"] = bool(model_band[0] <= baseline_band[1]
                                   and baseline_band[0] <= model_band[1])
    return row
