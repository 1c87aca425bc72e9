"""The deviation monitor at its default settings against daily swaps: a candidate that passed
`slidr daily`'s IVR guardrails (at their defaults) against the current model raises no alarm on
the next day's live windows, compared with the current model on the same clicks; a bundle made
with a far too high FPR budget and relaxed guardrails is rolled back in `sustain` windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from slidr.offline import guardrails as gr
from slidr.slidrd.config import Config
from slidr.slidrd.metrics import Metrics
from slidr.slidrd.monitor import Monitor

from slidr.contract import SLICE_BY_CODE

# The current model's IVR per slice (what a daily model of the simulator decides: robots are
# most of logged-out traffic, few logged-in clicks are invalidated).
CURRENT = {"desktop/out": 0.20, "desktop/in": 0.04, "mobile/out": 0.25, "mobile/in": 0.045,
           "app/out": 0.30, "app/in": 0.05}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Scorer:
    name = "uniform"

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0].astype(np.float32)


class Model:
    """A bundle whose IVR in each slice is `ivr[slice]` (scores are uniform in [0, 1])."""

    def __init__(self, version: str, ivr: dict[str, float]) -> None:
        self.version = version
        self.ivr = ivr
        self.scorer = Scorer()
        self.thresholds = np.array([1.0 - ivr[s] for s in SLICE_BY_CODE])

    def th(self) -> dict[str, Any]:
        return {"default": 0.5, "slices": {s: 1.0 - v for s, v in self.ivr.items()}}


class Batch:
    def __init__(self, codes: np.ndarray) -> None:
        self.device = (codes // 2).astype(np.uint8)
        self.logged_in = (codes % 2).astype(np.uint8)


def monitor_at_defaults(clock: Clock) -> tuple[Monitor, Metrics]:
    """The Monitor as slidrd builds it from its configuration's defaults."""
    c, m = Config(), Metrics()
    mon = Monitor(m, c.monitor, c.monitor_window_clicks, c.monitor_window_s,
                  c.monitor_ivr_ratio, c.monitor_ivr_abs, c.monitor_min_slice_clicks,
                  c.monitor_sustain, c.monitor_fail_open_max, c.monitor_cooldown_s,
                  c.monitor_judge_windows, clock, ivr_band=c.monitor_ivr_band,
                  slice_ivr_band=c.monitor_slice_ivr_band,
                  slice_ivr_abs_slack=c.monitor_slice_ivr_abs_slack, z=c.monitor_z)
    return mon, m


def serving_current(clock: Clock, cur: Model, rng: np.random.Generator
                    ) -> tuple[Monitor, Metrics, list[Any]]:
    """A monitor at its defaults that has served `cur` (version "current") for three
    windows: the monitor, its metrics and those windows' events."""
    mon, m = monitor_at_defaults(clock)
    mon.on_swap("current", None, old_rejected=False)
    return mon, m, [live_window(mon, m, clock, cur, rng) for _ in range(3)]


def held_out_checks(cand: Model, cur: Model, rng: np.random.Generator,
                    guard: gr.GuardrailConfig, n: int = 60_000) -> dict[str, bool]:
    """`slidr daily`'s IVR guardrails, candidate vs current on the same held-out clicks."""
    codes = rng.integers(0, len(SLICE_BY_CODE), n)
    score = rng.random(n)
    cols = {"slice": np.array(SLICE_BY_CODE)[codes], "purchased": np.zeros(n, bool),
            "heuristic": np.zeros(n, bool), "weak_label": rng.random(n) < 0.5}
    checks = gr.check_model(score, cand.th(), cols, score, cur.th(), guard)
    return {c.name: c.passed for c in checks
            if c.name in ("ivr_vs_current", "slice_ivr_vs_current", "ivr_ceiling")}


def live_window(mon: Monitor, m: Metrics, clock: Clock, model: Model,
                rng: np.random.Generator, clicks: int = 20_000) -> Any:
    """One live window: batches decided by `model` (counters, then the Shadow sampler, as the
    batcher does), the previous model scores the sample on the side, the clock moves 30 s."""
    for _ in range(clicks // 500):
        codes = rng.integers(0, len(SLICE_BY_CODE), 500)
        x = np.zeros((500, 8), np.float32)
        x[:, 0] = rng.random(500)
        scores = x[:, 0].copy()
        inv = scores > model.thresholds[codes]
        for c, s in enumerate(SLICE_BY_CODE):
            m.decisions[s] += int((codes == c).sum())
            m.invalid[s] += int(inv[codes == c].sum())
        if mon.shadow is not None:
            mon.shadow.sample(x, Batch(codes), scores, model)
    sh = mon.shadow
    if sh is not None:
        sh.add(sh.score(sh.take()))
    clock.t += 30.0
    return mon.tick()


def edge(f: dict[str, float]) -> dict[str, float]:
    return {s: min(max(v * f.get(s, f.get("*", 1.0)) + f.get(s + "+", 0.0), 0.0), 1.0)
            for s, v in CURRENT.items()}


# Candidates at the edges of what the default guardrails let through: the overall IVR up or down
# by almost half, one slice doubled plus the slack while another drops to nothing.
NORMAL = {
    "overall +45%": edge({"*": 1.45}),
    "overall -48%": edge({"*": 0.52}),
    "slices apart": edge({"desktop/in": 1.95, "mobile/in": 0.0, "app/in": 1.9,
                          "app/out": 0.8}),
    "logged-in doubled": edge({"desktop/in": 1.95, "mobile/in": 1.95, "app/in": 1.95,
                               "*": 1.0}),
}


@pytest.mark.parametrize("name", sorted(NORMAL))
def test_a_swap_within_the_guardrails_raises_no_alarm(name: str) -> None:
    rng = np.random.default_rng(sorted(NORMAL).index(name))
    cur, cand = Model("current", CURRENT), Model("candidate", NORMAL[name])
    passed = held_out_checks(cand, cur, rng, gr.GuardrailConfig())
    assert all(passed.values()), passed  # the daily job would publish it
    clock = Clock()
    mon, m, first = serving_current(clock, cur, rng)
    assert first == [None, None, None]
    assert mon.on_swap("candidate", None, old_rejected=False, previous=cur) is not None
    for _ in range(mon.judge_windows):
        assert live_window(mon, m, clock, cand, rng) is None, mon.stats()
        assert mon.ref_source == "previous_same_clicks"
    assert not mon.judging and mon.counts["rollback"] == 0 and mon.counts["alert"] == 0
    # The band holds the allowance of every judged figure, with room for the next day.
    assert mon.bands["all"][1] >= 1.5 * 1.5 * mon.ref_ivr["all"] * 0.99


def test_a_bad_daily_bundle_is_rolled_back_in_sustain_windows() -> None:
    """A bundle calibrated to an FPR budget far too high: the default guardrails refuse it,
    relaxed ones let it through, and the monitor rolls it back after `sustain` windows."""
    rng = np.random.default_rng(11)
    cur = Model("current", CURRENT)
    bad = Model("bad", {s: 0.45 if s.endswith("/in") else 0.55 for s in CURRENT})
    assert not all(held_out_checks(bad, cur, rng, gr.GuardrailConfig()).values())
    relaxed = gr.GuardrailConfig(ivr_band=5, slice_ivr_band=50, max_ivr=0.9)
    assert all(held_out_checks(bad, cur, rng, relaxed).values())
    clock = Clock()
    mon, m, _ = serving_current(clock, cur, rng)
    mon.on_swap("bad", None, old_rejected=False, previous=cur)
    assert live_window(mon, m, clock, bad, rng) is None
    ev = live_window(mon, m, clock, bad, rng)
    assert ev is not None and ev.kind == "rollback" and ev.version == "bad"
    assert ev.clicks == 2 * 20_000 and "previous model on the same clicks" in ev.reason
    assert "desktop/in IVR" in ev.reason  # 4 % -> 45 %: far beyond 2 x 4 % + 1 point
    # The bundle the rollback returns to is not judged again: no loop.
    assert mon.on_swap("current", None, old_rejected=True, previous=bad) is None
    for _ in range(mon.judge_windows + 2):
        assert live_window(mon, m, clock, cur, rng) is None
    assert mon.counts["rollback"] == 1 and not mon.judging


def test_a_sharp_overall_shift_just_past_the_band_fires_and_one_inside_does_not() -> None:
    """Where the default band lies: the guardrails' +50 % times monitor_ivr_ratio (1.5) on
    the overall IVR, x2.25: logged-out traffic x2.6 (overall x2.5) fires, x2.0 (overall x2.0)
    does not; every slice stays inside its own band."""
    rng = np.random.default_rng(12)
    cur = Model("current", CURRENT)
    for f, fires in ((2.0, False), (2.6, True)):
        ivr = {s: v * f if s.endswith("/out") else min(v * 1.9, 2 * v + 0.01)
               for s, v in CURRENT.items()}
        clock = Clock()
        mon, m, _ = serving_current(clock, cur, rng)
        mon.on_swap("cand", None, old_rejected=False, previous=cur)
        events = [live_window(mon, m, clock, Model("cand", ivr), rng) for _ in range(3)]
        assert any(e is not None for e in events) is fires, (f, mon.stats()["ratios"])
