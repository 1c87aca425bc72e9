"""The deviation monitor: watches live decisions and rolls back a model that deviates sharply.

The article's disaster recovery: "quick rollbacks to a previously stable model when a sharp
metric deviation is observed". The monitor costs the hot path nothing: every `tick_s` it
reads the daemon's own counters (decisions and invalidations per slice, fail-open clicks by
cause; slidrd/metrics.py) and closes a window once it holds `monitor_window_clicks` clicks and
`monitor_window_s` seconds have passed. A closed window's IVR, overall and per slice, is
compared with a reference:

  (a) the live figures of the bundle served before the last swap (its last `REFERENCE_WINDOWS`
      full windows together), or,
      when there is none (the daemon started with this bundle),
  (b) what the current bundle's own calibration expects (its manifest's held-out test IVR).

A window deviates when its IVR is more than `monitor_ivr_ratio` times the reference's, or
less than the reference divided by it, AND differs from it by more than `monitor_ivr_abs`
(so a slice with a tiny IVR cannot trip it on noise); slices with fewer than
`monitor_min_slice_clicks` clicks in the window are not judged. `monitor_sustain` deviating
windows in a row fire the monitor: with `monitor = "rollback"` the daemon rolls the registry
back (the bundle is marked rejected with the reason) and reloads; with "alert" it only logs and
counts. After firing, the monitor is quiet for `monitor_cooldown_s` and never fires twice for
one version, so it cannot flap. A fail-open share above `monitor_fail_open_max` in a window is
alerted (a store or capacity problem that a rollback would not fix), never rolled back, at
most once per `monitor_cooldown_s`.

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

MODES = ("rollback", "alert", "off")
REFERENCE_WINDOWS = 5  # the previous bundle's last windows that make the live reference


@dataclass
class Window:
    """Counts of one closed window."""
    clicks: int
    invalid: int
    fail_open: int
    seconds: float
    by_slice: dict[str, tuple[int, int]] = field(default_factory=dict)  # slice -> (clicks, inv)

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


@dataclass
class Reference:
    source: str  # "previous_live" | "calibration"
    ivr: float
    by_slice: dict[str, float] = field(default_factory=dict)


class Monitor:
    """The deviation monitor of one daemon process; `tick()` about every 0.5 s, `on_swap()` at
    every model swap. Reads only the Metrics counters (the hot path does not know it exists)."""

    def __init__(self, metrics: Any, mode: str = "rollback", window_clicks: int = 20_000,
                 window_s: float = 30.0, ivr_ratio: float = 2.0, ivr_abs: float = 0.02,
                 min_slice_clicks: int = 1_000, sustain: int = 2, fail_open_max: float = 0.05,
                 cooldown_s: float = 300.0, clock: Any = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"monitor must be one of {', '.join(MODES)}, got {mode!r}")
        if ivr_ratio <= 1.0 or window_clicks < 1 or sustain < 1:
            raise ValueError("monitor needs ivr_ratio > 1, window_clicks >= 1, sustain >= 1")
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
        self.clock = clock
        self.version = ""
        self.reference: Reference | None = None
        self.expected: Reference | None = None  # (b), kept for stats even when (a) is used
        self.last: Window | None = None  # the current version's last closed window
        self.recent: list[Window] = []  # the current version's last REFERENCE_WINDOWS windows
        self.stable: Window | None = None  # those of the last version not rejected, merged
        self.deviating = 0
        self.fired: set[str] = set()
        self.quiet_until = -math.inf
        self.fail_open_quiet_until = -math.inf
        self.events: list[Event] = []
        self.counts = {"rollback": 0, "alert": 0, "fail_open": 0, "rollback_failed": 0}
        self.windows = 0
        self.ratios: dict[str, float] = {}  # "all" and per slice: last window / reference
        self.last_ratio = 1.0
        self._since_swap_clicks = 0
        self._since_swap_t = clock()
        self.served_since = time.time()
        self._mark()

    # ---- counters
    def _snapshot(self) -> tuple[dict[str, int], dict[str, int], int]:
        return (dict(self.m.decisions), dict(self.m.invalid), sum(self.m.fail_open.values()))

    def _mark(self) -> None:
        self._d0, self._i0, self._f0 = self._snapshot()
        self._t0 = self.clock()

    # ---- model swaps
    def on_swap(self, version: str, expected: Reference | None, old_rejected: bool) -> None:
        """A new bundle is served. The old one's last window becomes the reference unless the
        old one was rejected (then the reference stays what it was before it)."""
        if version == self.version:
            return  # a reload of the same bundle: nothing changed
        if self.recent and not old_rejected:
            self.stable = merged(self.recent)
        self.expected = expected
        if self.stable is not None:
            self.reference = Reference(
                "previous_live", self.stable.ivr,
                {s: self.stable.slice_ivr(s) for s, (c, _) in self.stable.by_slice.items()
                 if c >= self.min_slice_clicks})
        else:
            self.reference = expected
        self.version = version
        self.last = None
        self.recent = []
        self.deviating = 0
        self.ratios = {}
        self.last_ratio = 1.0
        self._since_swap_clicks = 0
        self._since_swap_t = self.clock()
        self.served_since = time.time()
        self._mark()

    # ---- the periodic check
    def tick(self) -> Event | None:
        """Close the window when it is full; judge it. Returns an event when one fires."""
        if self.mode == "off":
            return None
        now = self.clock()
        d, i, f = self._snapshot()
        clicks = sum(d.values()) - sum(self._d0.values())
        fo = f - self._f0
        if clicks + fo < self.window_clicks or now - self._t0 < self.window_s:
            return None
        by = {s: (d[s] - self._d0.get(s, 0), i.get(s, 0) - self._i0.get(s, 0)) for s in d}
        w = Window(clicks, sum(v[1] for v in by.values()), fo, now - self._t0,
                   {s: v for s, v in by.items() if v[0]})
        self._mark()
        self.windows += 1
        self.last = w
        self.recent = [*self.recent[-(REFERENCE_WINDOWS - 1):], w]
        self._since_swap_clicks += clicks + fo
        return self._judge(w, now)

    def _deviates(self, live: float, ref: float) -> bool:
        hi = live > ref * self.ivr_ratio and live - ref > self.ivr_abs
        lo = live < ref / self.ivr_ratio and ref - live > self.ivr_abs
        return hi or lo

    def _event(self, kind: str, reason: str, now: float) -> Event:
        e = Event(kind, self.version, reason, self._since_swap_clicks,
                  round(now - self._since_swap_t, 3))
        self.events.append(e)
        del self.events[:-100]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return e

    def _judge(self, w: Window, now: float) -> Event | None:
        total = w.clicks + w.fail_open
        fail_open_event = None
        if total and w.fail_open / total > self.fail_open_max \
                and now >= self.fail_open_quiet_until:
            self.fail_open_quiet_until = now + self.cooldown_s
            fail_open_event = self._event(
                "fail_open", f"fail-open share {w.fail_open / total:.1%} > "
                f"{self.fail_open_max:.1%} over {total:,} clicks", now)
        ref = self.reference
        if ref is None or w.clicks == 0:
            return fail_open_event
        ratios = {"all": _ratio(w.ivr, ref.ivr)}
        why = []
        if self._deviates(w.ivr, ref.ivr):
            why.append(f"IVR {w.ivr:.2%} vs {ref.ivr:.2%}")
        for s, (c, _) in sorted(w.by_slice.items()):
            if c >= self.min_slice_clicks and s in ref.by_slice:
                ratios[s] = _ratio(w.slice_ivr(s), ref.by_slice[s])
                if self._deviates(w.slice_ivr(s), ref.by_slice[s]):
                    why.append(f"{s} IVR {w.slice_ivr(s):.2%} vs {ref.by_slice[s]:.2%}")
        self.ratios = ratios
        self.last_ratio = ratios["all"]
        self.deviating = self.deviating + 1 if why else 0
        if self.deviating < self.sustain or now < self.quiet_until \
                or self.version in self.fired:
            return fail_open_event
        self.fired.add(self.version)
        self.quiet_until = now + self.cooldown_s
        kind = "rollback" if self.mode == "rollback" else "alert"
        return self._event(kind, f"{self.deviating} windows in a row against the "
                           f"{ref.source.replace('_', ' ')} reference: " + "; ".join(why), now)

    def rollback_failed(self, why: str) -> Event:
        """The registry refused the rollback (nothing to roll back to): an alert instead."""
        return self._event("rollback_failed", why, self.clock())

    def stats(self) -> dict[str, Any]:
        ref, exp = self.reference, self.expected
        return {"mode": self.mode, "version": self.version, "windows": self.windows,
                "served_since": self.served_since,
                "served_clicks": self._since_swap_clicks,
                "deviating_windows": self.deviating,
                "window": {"clicks": self.window_clicks, "seconds": self.window_s,
                           "ivr_ratio": self.ivr_ratio, "ivr_abs": self.ivr_abs,
                           "sustain": self.sustain},
                "reference": None if ref is None else {"source": ref.source, "ivr": ref.ivr,
                                                       "slices": ref.by_slice},
                "expected": None if exp is None else {"ivr": exp.ivr, "slices": exp.by_slice},
                "ratios": self.ratios,
                "last_window": None if self.last is None else {
                    "clicks": self.last.clicks, "ivr": self.last.ivr,
                    "fail_open": self.last.fail_open, "seconds": round(self.last.seconds, 3)},
                "counts": dict(self.counts),
                "last_event": self.events[-1].as_dict() if self.events else None,
                "events": [e.as_dict() for e in self.events[-20:]]}


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
