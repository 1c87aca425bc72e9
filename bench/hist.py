"""Latency histograms for the bench: HdrHistogram in microseconds, merged via encoded form.

Values are recorded in whole microseconds from 1 us to 10 minutes with 3 significant digits
(0.1% resolution), so p99.9 of a 5 ms target is resolved to ~5 us. Processes exchange
histograms as HdrHistogram's standard base64 encoding (a str), never as pickled objects, so a
JSON report carries the full distribution and can be re-merged or re-plotted later.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes: a stuck request is still recorded, not clipped
SIG_FIGS = 3

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIG_FIGS)


def record_ns(h: HdrHistogram, values_ns: np.ndarray) -> None:
    """Record an array of nanosecond durations (negative clipped to 0) in bulk.

    Quantised to microseconds and grouped with np.unique so a million samples cost one call
    per distinct value, not one per sample."""
    if values_ns.size == 0:
        return
    us = np.clip(np.asarray(values_ns, dtype=np.int64) // 1000, LOWEST_US, HIGHEST_US)
    vals, counts = np.unique(us, return_counts=True)
    for v, c in zip(vals.tolist(), counts.tolist(), strict=True):
        h.record_value(v, c)


def encode(h: HdrHistogram) -> str:
    if h.get_total_count() == 0:
        return ""
    return h.encode().decode("ascii")


def decode(s: str) -> HdrHistogram:
    if not s:
        return new()
    return HdrHistogram.decode(s.encode("ascii"))


def merge(encoded: Iterable[str]) -> HdrHistogram:
    out = new()
    for s in encoded:
        if s:
            out.add(decode(s))
    return out


def summary(h: HdrHistogram) -> dict[str, Any]:
    """Percentiles in milliseconds (floats), count, mean and max."""
    n = h.get_total_count()
    if n == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": int(n)}
    for p in PERCENTILES:
        out[_pkey(p)] = h.get_value_at_percentile(p) / 1000.0
    out["max"] = h.get_max_value() / 1000.0
    out["min"] = h.get_min_value() / 1000.0
    out["mean"] = h.get_mean_value() / 1000.0
    return out


def _pkey(p: float) -> str:
    return "p" + (f"{p:g}".replace(".", "_") if p != int(p) else str(int(p)))


def percentile_curve(h: HdrHistogram, max_nines: int = 5) -> tuple[list[float], list[float]]:
    """(percentile, latency ms) points evenly spaced on the 1/(1-p) 'nines' axis."""
    n = h.get_total_count()
    if n == 0:
        return [], []
    ps: list[float] = []
    x = 0.0
    while x <= max_nines:
        p = 100.0 * (1.0 - 10.0 ** (-x))
        ps.append(p)
        x += 0.05
    ps.append(100.0)
    return ps, [h.get_value_at_percentile(p) / 1000.0 for p in ps]
