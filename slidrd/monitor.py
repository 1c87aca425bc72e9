"""The deviation monitor: watches live decisions and rolls back a model that deviates sharply.

The article's disaster recovery: "quick rollbacks to a previously stable model when a sharp
metric deviation is observed". Every 0.5 s, off the hot path, the monitor reads the daemon's own
counters (decisions and invalidations per slice, fail-open clicks; slidrd/metrics.py) and
closes a window once it holds `monitor_window_clicks` clicks and `monitor_window_s` seconds have
passed. For the first `monitor_judge_windows` windows after a bundle starts serving, a closed
window's IVR, overall and per slice, is compared with a reference, the first that applies of:

  (a) the bundle served before the swap, on the same clicks: while the new bundle is judged, the
      batcher hands each decided batch to a `Shadow` sampler; the previous bundle (kept loaded
      for that long) scores the sampled clicks' features on a worker thread, so the comparison is
      model against model on identical traffic, whatever the hour, the day or the robots do;
  (a') the previous bundle's live figures (its last `REFERENCE_WINDOWS` windows together), when
      there is no previous model object to score with;
  (b) what the bundle's own calibration expects (the held-out test IVR `slidr daily` records in
      its manifest), when the daemon started with this bundle. Live traffic differs from the
      test day by hour and by day, so (b) is judged on the overall IVR only and only ever
      alerts; it never rolls back.

A window deviates when an IVR lies outside its band around the reference. The band starts from
the shift `slidr daily`'s own guardrails let a candidate make against the current model on the
held-out day (`monitor_ivr_band`, relative, overall; `monitor_slice_ivr_band` plus
`monitor_slice_ivr_abs_slack` per slice: the guardrails' ivr_band, slice_ivr_band and
slice_ivr_abs_slack, at their defaults), since a model that passed them may legitimately move
IVR that far; it is then widened for the change from the held-out day to live traffic (beyond
the allowance by more than `monitor_ivr_ratio` times AND by more than `monitor_ivr_abs`), and
for sampling noise: the live IVR must lie beyond that limit by `monitor_z` standard errors of
the window's counts (the live IVR's and the reference's, which the limit moves with). With
the defaults a slice may go from 5 % to 0 % or to 16.5 % and the overall IVR from 10 % to 3 %
or 22.5 %, before noise. Slices with fewer than `monitor_min_slice_clicks` clicks (sampled
clicks for (a)) are judged only within the overall figure; (a') and (b) compare different
traffic (another hour, another day) and are judged on the overall IVR only.
`monitor_sustain` deviating windows
in a row fire the monitor: with `monitor = "rollback"` the daemon rolls the registry back (the
bundle is marked rejected with the reason) and reloads; with "alert" it only logs and counts.
After firing, the monitor is quiet for `monitor_cooldown_s` and never fires twice for one
version; the bundle a rollback returns to is the stable one and is not judged again (judging it
against figures from another time could roll back further): no loops, no flapping. After its judged windows a version is settled: slow drift is the
daily job's concern (its guardrails compare each candidate with the current model). A
fail-open share above `monitor_fail_open_max` in any window is alerted (a store or capacity
problem that a rollback would not fix), never rolled back, at most once per cooldown.

The figures are per daemon process: with several workers or daemons each judges its own share
of the traffic, and the first to fire moves the registry pointer (Registry.rollback with the
version it saw, so a second one only confirms the mark); the others see their version rejected
in the registry and reload.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidr.defaults import GUARDRAILS

MODES = ("rollback", "alert", "off")
REFERENCE_WINDOWS = 5  # the previous bundle's last windows that make the live reference (a')
SHADOW_MAX_PENDING = 1 << 17  # sampled clicks waiting for the previous model (then dropped)


@dataclass
class Window:
    """Counts of one closed window."""
    clicks: int
    invalid: int
    fail_open: int
    seconds: float
    by_slice: dict[str, tuple[int, int]] = field(default_factory=dict)  # slice -> (clicks, inv)
    # (a): slice -> (sampled clicks, invalid by this bundle, invalid by the previous one)
    shadow: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def ivr(self) -> float:
        return self.invalid / self.clicks if self.clicks else 0.0

    def slice_ivr(self, s: str) -> float:
        c, i = self.by_slice.get(s, (0, 0))
        return i / c if c else 0.0


def merged(windows: list[Window]) -> Window:
    """One window of the counts of several (a steadier reference than one window)."""
    by: dict[str, tuple[int, int]] = {}
    for w in windows:
        for s, (c, i) in w.by_slice.items():
            c0, i0 = by.get(s, (0, 0))
            by[s] = (c0 + c, i0 + i)
    return Window(sum(w.clicks for w in windows), sum(w.invalid for w in windows),
                  sum(w.fail_open for w in windows), sum(w.seconds for w in windows), by)


@dataclass
class Event:
    kind: str  # "rollback" | "alert" | "fail_open" | "rollback_failed"
    version: str
    reason: str
    clicks: int  # clicks served by this version until the event
    seconds: float  # seconds served by this version until the event

    at: float = field(default_factory=time.time)  # unix time

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Shadow:
    """Same-traffic comparison of a newly served bundle with the one before it.

    `sample` runs in the batcher after a batch is answered: it keeps references to the batch's
    features, slice columns, scores and thresholds (one append per batch). `score` runs on a
    worker thread: this bundle's decisions, and the previous bundle's on the same features with
    its own thresholds. `add` folds
    the result into per-slice counters that the monitor reads like the metrics counters."""

    def __init__(self, version: str, previous: Any) -> None:
        self.version = version
        self.previous = previous  # a slidrd.model.ServingModel (scorer + thresholds)
        self.pending: list[tuple[Any, ...]] = []
        self.pending_rows = 0
        self.dropped = 0
        self.n: dict[str, int] = {}
        self.inv_new: dict[str, int] = {}
        self.inv_old: dict[str, int] = {}

    def sample(self, feats: np.ndarray, batch: Any, scores: np.ndarray, model: Any) -> None:
        # The hot path: references only (the batcher makes fresh arrays for every batch and
        # never writes them again; the decision log keeps them the same way).
        if model.version != self.version:
            return
        n = feats.shape[0]
        if self.pending_rows >= SHADOW_MAX_PENDING:
            self.dropped += n
            return
        self.pending.append((feats, batch.device, batch.logged_in, scores, model.thresholds))
        self.pending_rows += n

    def take(self) -> list[tuple[Any, ...]]:
        rows, self.pending, self.pending_rows = self.pending, [], 0
        return rows

    def score(self, rows: list[tuple[Any, ...]]) -> dict[str, tuple[int, int, int]]:
        """(worker thread) per slice: sampled clicks, invalid now, invalid by the previous."""
        if not rows:
            return {}
        from slidr.contract import SLICE_BY_CODE
        x = np.concatenate([r[0] for r in rows]).astype(np.float32, copy=False)
        codes = np.concatenate([np.asarray(r[1], dtype=np.intp) * 2
                                + np.asarray(r[2], dtype=np.intp) for r in rows])
        new = np.concatenate([np.asarray(r[3]) > r[4][np.asarray(r[1], dtype=np.intp) * 2
                                                       + np.asarray(r[2], dtype=np.intp)]
                              for r in rows])
        # In pieces no larger than the largest batch (a TensorRT engine has a batch ceiling).
        step = max(max(r[0].shape[0] for r in rows), 1)
        scores = np.concatenate([self.previous.scorer.infer(np.ascontiguousarray(x[i:i + step]))
                                 for i in range(0, x.shape[0], step)])
        old = scores > self.previous.thresholds[codes]
        k = len(SLICE_BY_CODE)
        n = np.bincount(codes, minlength=k)
        a = np.bincount(codes, weights=new, minlength=k)
        b = np.bincount(codes, weights=old, minlength=k)
        return {SLICE_BY_CODE[c]: (int(n[c]), int(a[c]), int(b[c])) for c in range(k) if n[c]}

    def add(self, counts: dict[str, tuple[int, int, int]]) -> None:
        for s, (n, a, b) in counts.items():
            self.n[s] = self.n.get(s, 0) + n
            self.inv_new[s] = self.inv_new.get(s, 0) + a
            self.inv_old[s] = self.inv_old.get(s, 0) + b

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        return {s: (n, self.inv_new.get(s, 0), self.inv_old.get(s, 0))
                for s, n in self.n.items()}


@dataclass
class Reference:
    source: str  # "previous_live" | "calibration"
    ivr: float
    by_slice: dict[str, float] = field(default_factory=dict)


class Monitor:
    """The deviation monitor of one daemon process; `tick()` about every 0.5 s, `on_swap()` at
    every model swap. Reads only counters (the hot path does not know it exists, except for the
    Shadow sampler that the daemon hands the batcher while a new bundle is judged)."""

    def __init__(self, metrics: Any, mode: str = "rollback", window_clicks: int = 20_000,
                 window_s: float = 30.0, ivr_ratio: float = 1.5, ivr_abs: float = 0.02,
                 min_slice_clicks: int = 1_000, sustain: int = 2, fail_open_max: float = 0.05,
                 cooldown_s: float = 300.0, judge_windows: int = 10,
                 clock: Any = time.monotonic,
                 ivr_band: float = GUARDRAILS["ivr_band"].default,
                 slice_ivr_band: float = GUARDRAILS["slice_ivr_band"].default,
                 slice_ivr_abs_slack: float = GUARDRAILS["slice_ivr_abs_slack"].default,
                 z: float = 3.0) -> None:
        if mode not in MODES:
            raise ValueError(f"monitor must be one of {', '.join(MODES)}, got {mode!r}")
        if ivr_ratio < 1.0 or window_clicks < 1 or sustain < 1 or judge_windows < sustain:
            raise ValueError("monitor needs ivr_ratio >= 1, window_clicks >= 1, sustain >= 1 "
                             "and judge_windows >= sustain")
        if min(ivr_band, slice_ivr_band, slice_ivr_abs_slack, z, ivr_abs) < 0:
            raise ValueError("monitor bands, slack, ivr_abs and z must not be negative")
        self.m = metrics
        self.mode = mode
        self.window_clicks = window_clicks
        self.window_s = window_s
        self.ivr_ratio = ivr_ratio
        self.ivr_abs = ivr_abs
        self.min_slice_clicks = min_slice_clicks
        self.sustain = sustain
        self.fail_open_max = fail_open_max
        self.cooldown_s = cooldown_s
        self.judge_windows = judge_windows
        self.ivr_band = ivr_band
        self.slice_ivr_band = slice_ivr_band
        self.slice_ivr_abs_slack = slice_ivr_abs_slack
        self.z = z
        self.clock = clock
        self.version = ""
        self.reference: Reference | None = None  # (a') or (b); (a) is built per window
        self.expected: Reference | None = None  # (b), kept for stats even when (a) is used
        self.shadow: Shadow | None = None
        self.last: Window | None = None  # the current version's last closed window
        self.recent: list[Window] = []  # the current version's last REFERENCE_WINDOWS windows
        self.stable: Window | None = None  # those of the last version not rejected, merged
        self.stable_version = ""  # ... and its version
        self.judged = 0  # windows of the current version judged so far
        self.deviating = 0
        self.fired: set[str] = set()
        self.quiet_until = -math.inf
        self.fail_open_quiet_until = -math.inf
        self.events: list[Event] = []
        self.counts = {"rollback": 0, "alert": 0, "fail_open": 0, "rollback_failed": 0}
        self.windows = 0
        self.ratios: dict[str, float] = {}  # "all" and per slice: last window / reference
        self.ref_ivr: dict[str, float] = {}  # the last judged window's reference IVRs
        self.window_ivr: dict[str, float] = {}  # the last judged window's IVRs
        self.bands: dict[str, tuple[float, float]] = {}  # the last judged window's bands
        self.limits: dict[str, tuple[float, float]] = {}  # ... widened by monitor_z s.e.
        self.restored = False  # serving the bundle a rollback returned to (not judged)
        self.ref_source = ""
        self.last_ratio = 1.0
        self._since_swap_clicks = 0
        self._since_swap_t = clock()
        self.served_since = time.time()
        self._mark()

    # ---- counters
    def _snapshot(self) -> tuple[dict[str, int], dict[str, int], int,
                                 dict[str, tuple[int, int, int]]]:
        sh = self.shadow.snapshot() if self.shadow is not None else {}
        return (dict(self.m.decisions), dict(self.m.invalid), sum(self.m.fail_open.values()), sh)

    def _mark(self) -> None:
        self._d0, self._i0, self._f0, self._s0 = self._snapshot()
        self._t0 = self.clock()

    @property
    def judging(self) -> bool:
        """The current version is still being judged (not settled, not fired)."""
        return (self.mode != "off" and self.judged < self.judge_windows
                and self.version not in self.fired and not self.restored)

    # ---- model swaps
    def on_swap(self, version: str, expected: Reference | None, old_rejected: bool,
                previous: Any = None) -> Shadow | None:
        """A new bundle is served. `previous`: the model served before it (a ServingModel),
        compared on the same clicks while the new one is judged unless it was rejected.
        Returns the Shadow sampler for the batcher (None when there is nothing to compare)."""
        if version == self.version:
            return self.shadow  # a reload of the same bundle: nothing changed
        if self.recent and not old_rejected:
            self.stable = merged(self.recent)
            self.stable_version = self.version
        self.expected = expected
        if self.stable is not None:
            self.reference = Reference(
                "previous_live", self.stable.ivr,
                {s: self.stable.slice_ivr(s) for s, (c, _) in self.stable.by_slice.items()
                 if c >= self.min_slice_clicks})
        else:
            self.reference = expected
        self.shadow = (Shadow(version, previous) if previous is not None and not old_rejected
                       and previous.version != version and self.mode != "off" else None)
        self.version = version
        self.last = None
        self.recent = []
        # Away from a rejected bundle (a rollback, here or by another daemon or an operator)
        # back to the stable one served before it: it is not judged again.
        self.restored = old_rejected and version == self.stable_version
        self.judged = 0
        self.deviating = 0
        self.ratios = {}
        self.ref_ivr = {}
        self.window_ivr = {}
        self.bands = {}
        self.limits = {}
        self.ref_source = ""
        self.last_ratio = 1.0
        self._since_swap_clicks = 0
        self._since_swap_t = self.clock()
        self.served_since = time.time()
        self._mark()
        return self.shadow

    def end_shadow(self) -> None:
        """The judged windows are over: the previous model is let go."""
        self.shadow = None
        self._s0 = {}

    # ---- the periodic check
    def tick(self) -> Event | None:
        """Close the window when it is full; judge it. Returns an event when one fires."""
        if self.mode == "off":
            return None
        now = self.clock()
        d, i, f, sh = self._snapshot()
        clicks = sum(d.values()) - sum(self._d0.values())
        fo = f - self._f0
        if clicks + fo < self.window_clicks or now - self._t0 < self.window_s:
            return None
        by = {s: (d[s] - self._d0.get(s, 0), i.get(s, 0) - self._i0.get(s, 0)) for s in d}
        s0 = self._s0
        shadow = {s: (v[0] - s0.get(s, (0, 0, 0))[0], v[1] - s0.get(s, (0, 0, 0))[1],
                      v[2] - s0.get(s, (0, 0, 0))[2]) for s, v in sh.items()}
        w = Window(clicks, sum(v[1] for v in by.values()), fo, now - self._t0,
                   {s: v for s, v in by.items() if v[0]}, {s: v for s, v in shadow.items()
                                                            if v[0]})
        self._mark()
        self.windows += 1
        self.last = w
        self.recent = [*self.recent[-(REFERENCE_WINDOWS - 1):], w]
        self._since_swap_clicks += clicks + fo
        ev = self._judge(w, now)
        if not self.judging and self.shadow is not None:
            self.end_shadow()
        return ev

    def band(self, ref: float, is_slice: bool) -> tuple[float, float, float, float]:
        """The limits of a window's IVR around a reference IVR: (low, high, d low/d ref,
        d high/d ref). The guardrails' allowance, widened by monitor_ivr_ratio and
        monitor_ivr_abs (whichever is wider); a low limit <= 0 is never crossed."""
        b, slack = ((self.slice_ivr_band, self.slice_ivr_abs_slack) if is_slice
                    else (self.ivr_band, 0.0))
        hi_allow = ref * (1 + b) + slack
        lo_allow = ref * (1 - b) - slack
        r, a = self.ivr_ratio, self.ivr_abs
        hi, d_hi = ((hi_allow * r, (1 + b) * r) if hi_allow * r >= hi_allow + a
                    else (hi_allow + a, 1 + b))
        if lo_allow <= 0:
            return -math.inf, hi, 0.0, d_hi
        lo, d_lo = ((lo_allow / r, (1 - b) / r) if lo_allow / r <= lo_allow - a
                    else (lo_allow - a, 1 - b))
        return lo, hi, d_lo, d_hi

    def _deviates(self, live: float, ref: float, n: int, n_ref: float, is_slice: bool
                  ) -> tuple[bool, tuple[float, float], tuple[float, float]]:
        """Is `live` (IVR of n clicks) beyond the band of `ref` (IVR of n_ref clicks; inf: an
        exact figure) by more than monitor_z standard errors? Also returns the band and the
        limits (the band widened by the standard errors: what `live` was held to)."""
        lo, hi, d_lo, d_hi = self.band(ref, is_slice)
        var_live = live * (1 - live) / max(n, 1)
        var_ref = ref * (1 - ref) / n_ref if n_ref > 0 and math.isfinite(n_ref) else 0.0
        hi_z = hi + self.z * math.sqrt(var_live + d_hi * d_hi * var_ref)
        lo_z = lo - self.z * math.sqrt(var_live + d_lo * d_lo * var_ref)
        return live > hi_z or live < lo_z, (lo, hi), (lo_z, hi_z)

    def _event(self, kind: str, reason: str, now: float) -> Event:
        e = Event(kind, self.version, reason, self._since_swap_clicks,
                  round(now - self._since_swap_t, 3))
        self.events.append(e)
        del self.events[:-100]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return e

    def _compare(self, w: Window
                 ) -> tuple[str, dict[str, tuple[float, float, int, float]]] | None:
        """The reference of a window: source and {"all" | slice: (live IVR, reference IVR,
        clicks, reference clicks)} (reference clicks inf: a figure without sampling noise of
        its own); None when there is nothing to compare with."""
        n_sh = sum(v[0] for v in w.shadow.values())
        if n_sh >= min(self.min_slice_clicks, self.window_clicks):
            out = {"all": (sum(v[1] for v in w.shadow.values()) / n_sh,
                           sum(v[2] for v in w.shadow.values()) / n_sh, n_sh, float(n_sh))}
            for s, (n, a, b) in w.shadow.items():
                out[s] = (a / n, b / n, n, float(n))
            return "previous_same_clicks", out
        ref = self.reference
        if ref is None or w.clicks == 0:
            return None
        # Another time's traffic (the previous bundle's last windows, or the test day): the
        # overall IVR only; a slice's IVR moves with the hour and the day's robots.
        n_ref = (float(self.stable.clicks) if ref.source == "previous_live"
                 and self.stable is not None else math.inf)
        return ref.source, {"all": (w.ivr, ref.ivr, w.clicks, n_ref)}

    def _judge(self, w: Window, now: float) -> Event | None:
        total = w.clicks + w.fail_open
        fail_open_event = None
        if total and w.fail_open / total > self.fail_open_max \
                and now >= self.fail_open_quiet_until:
            self.fail_open_quiet_until = now + self.cooldown_s
            fail_open_event = self._event(
                "fail_open", f"fail-open share {w.fail_open / total:.1%} > "
                f"{self.fail_open_max:.1%} over {total:,} clicks", now)
        if not self.judging:
            return fail_open_event
        cmp = self._compare(w)
        if cmp is None:
            return fail_open_event
        self.judged += 1
        source, figs = cmp
        self.ref_source = source
        self.ratios = {k: _ratio(v[0], v[1]) for k, v in figs.items()}
        self.ref_ivr = {k: v[1] for k, v in figs.items()}
        self.window_ivr = {k: v[0] for k, v in figs.items()}
        self.last_ratio = self.ratios["all"]
        self.bands = {}
        self.limits = {}
        why = []
        for k, (live, ref, n, n_ref) in sorted(figs.items(), key=lambda kv: kv[0] != "all"):
            if k != "all" and n < self.min_slice_clicks:
                continue
            out, (lo, hi), self.limits[k] = self._deviates(live, ref, n, n_ref, k != "all")
            self.bands[k] = (lo, hi)
            if out:
                why.append(f"{'IVR' if k == 'all' else k + ' IVR'} {live:.2%} vs {ref:.2%} "
                           f"(band {max(lo, 0.0):.2%}-{hi:.2%}, {n:,} clicks)")
        self.deviating = self.deviating + 1 if why else 0
        if self.deviating < self.sustain or now < self.quiet_until:
            return fail_open_event
        self.fired.add(self.version)
        self.quiet_until = now + self.cooldown_s
        # The calibration only sets expectations: live traffic is not the test day.
        kind = "rollback" if self.mode == "rollback" and source != "calibration" else "alert"
        return self._event(kind, f"{self.deviating} windows in a row against "
                           f"{_SOURCES[source]}: " + "; ".join(why), now)

    def rollback_failed(self, why: str) -> Event:
        """The registry refused the rollback (nothing to roll back to): an alert instead."""
        return self._event("rollback_failed", why, self.clock())

    def stats(self) -> dict[str, Any]:
        ref, exp = self.reference, self.expected
        return {"mode": self.mode, "version": self.version, "windows": self.windows,
                "served_since": self.served_since,
                "served_clicks": self._since_swap_clicks,
                "judging": self.judging, "judged_windows": self.judged,
                "comparing_with_previous_model": self.shadow is not None,
                "deviating_windows": self.deviating,
                "restored": self.restored,
                "window": {"clicks": self.window_clicks, "seconds": self.window_s,
                           "ivr_ratio": self.ivr_ratio, "ivr_abs": self.ivr_abs,
                           "ivr_band": self.ivr_band, "slice_ivr_band": self.slice_ivr_band,
                           "slice_ivr_abs_slack": self.slice_ivr_abs_slack, "z": self.z,
                           "sustain": self.sustain, "judge_windows": self.judge_windows},
                "window_ivr": dict(self.window_ivr),
                "bands": {k: [max(lo, 0.0), hi] for k, (lo, hi) in self.bands.items()},
                "limits": {k: [max(lo, 0.0), hi] for k, (lo, hi) in self.limits.items()},
                "reference": None if not self.ref_source else {
                    "source": self.ref_source, "ivr": self.ref_ivr.get("all"),
                    "slices": {k: v for k, v in self.ref_ivr.items() if k != "all"}},
                "previous_live": None if ref is None or ref.source != "previous_live" else {
                    "ivr": ref.ivr, "slices": ref.by_slice},
                "expected": None if exp is None else {"ivr": exp.ivr, "slices": exp.by_slice},
                "ratios": self.ratios,
                "last_window": None if self.last is None else {
                    "clicks": self.last.clicks, "ivr": self.last.ivr,
                    "judged_ivr": self.window_ivr.get("all"),
                    "fail_open": self.last.fail_open, "seconds": round(self.last.seconds, 3)},
                "counts": dict(self.counts),
                "last_event": self.events[-1].as_dict() if self.events else None,
                "events": [e.as_dict() for e in self.events[-20:]]}


_SOURCES = {"previous_same_clicks": "the previous model on the same clicks",
            "previous_live": "the previous model's live figures",
            "calibration": "the bundle's calibration"}


def _ratio(live: float, ref: float) -> float:
    if ref > 0:
        return live / ref
    return math.inf if live > 0 else 1.0


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def expected_from_manifest(manifest: dict[str, Any]) -> Reference | None:
    """(b): the bundle's held-out test IVR as `slidr daily` records it in the manifest
    (metrics.test.ivr overall, metrics.test_slices.<slice>.ivr per slice when present)."""
    metrics = manifest.get("metrics") or {}
    if not isinstance(metrics, dict):
        return None
    test = metrics.get("test") or {}
    ivr = test.get("ivr") if isinstance(test, dict) else None
    if not isinstance(ivr, int | float) or not _finite(ivr):
        return None
    slices = metrics.get("test_slices") or (test.get("slices") if isinstance(test, dict)
                                            else None) or {}
    by = {str(s): float(v["ivr"]) for s, v in slices.items()
          if isinstance(v, dict) and _finite(v.get("ivr"))} if isinstance(slices, dict) else {}
    return Reference("calibration", float(ivr), by)
