"""The deviation monitor on synthetic counters: fires on a sustained deviation and not on noise,
keeps its cooldown, never fires twice for one version; the registry's rejected bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slidr.slidrd.metrics import Metrics
from slidr.slidrd.monitor import Monitor, Reference, expected_from_manifest

from slidr.featurespec import N_FEATURES
from slidr.registry import Registry, RegistryError

SLICES = ("desktop/in", "desktop/out", "mobile/in", "mobile/out", "app/in", "app/out")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def feed(m: Metrics, rng: np.random.Generator, clicks: int, ivr: float | dict[str, float],
         fail_open: int = 0) -> None:
    """`clicks` decisions spread evenly over the slices, each invalid with its slice's IVR."""
    per = clicks // len(SLICES)
    for s in SLICES:
        p = ivr[s] if isinstance(ivr, dict) else ivr
        m.decisions[s] += per
        m.invalid[s] += int(rng.binomial(per, p))
    m.fail_open["deadline"] += fail_open


def make(mode: str = "rollback", **kw: object) -> tuple[Monitor, Metrics, Clock]:
    m, clock = Metrics(), Clock()
    args: dict[str, object] = dict(window_clicks=6000, window_s=1.0, ivr_ratio=1.5,
                                   ivr_abs=0.02, min_slice_clicks=500, sustain=2,
                                   fail_open_max=0.05, cooldown_s=60.0)
    args.update(kw)
    mon = Monitor(m, mode, clock=clock, **args)  # type: ignore[arg-type]
    return mon, m, clock


def window(mon: Monitor, m: Metrics, clock: Clock, rng: np.random.Generator,
           ivr: float | dict[str, float], clicks: int = 6000, fail_open: int = 0) -> object:
    feed(m, rng, clicks, ivr, fail_open)
    clock.t += 1.0
    return mon.tick()


def served_good(mon: Monitor, m: Metrics, clock: Clock, rng: np.random.Generator,
                windows: int = 3, ivr: float = 0.05) -> None:
    mon.on_swap("good", None, old_rejected=False)
    for _ in range(windows):
        assert window(mon, m, clock, rng, ivr) is None


def test_window_needs_clicks_and_time() -> None:
    rng = np.random.default_rng(0)
    mon, m, clock = make()
    mon.on_swap("v1", None, old_rejected=False)
    feed(m, rng, 6000, 0.05)
    assert mon.tick() is None and mon.windows == 0  # enough clicks, no time yet
    clock.t += 0.5
    assert mon.tick() is None and mon.windows == 0
    clock.t += 0.6
    mon.tick()
    assert mon.windows == 1 and mon.last is not None and mon.last.clicks == 6000
    clock.t += 5.0
    feed(m, rng, 3000, 0.05)
    mon.tick()
    assert mon.windows == 1  # time, but not enough clicks


def test_fires_on_sustained_deviation_against_previous_live() -> None:
    rng = np.random.default_rng(1)
    mon, m, clock = make()
    served_good(mon, m, clock, rng)
    mon.on_swap("bad", None, old_rejected=False)
    assert mon.reference is not None and mon.reference.source == "previous_live"
    assert mon.reference.ivr == pytest.approx(0.05, abs=0.01)
    assert window(mon, m, clock, rng, 0.15) is None  # one window: not yet (sustain 2)
    assert mon.deviating == 1
    ev = window(mon, m, clock, rng, 0.15)
    assert ev is not None and ev.kind == "rollback" and ev.version == "bad"
    assert ev.clicks == 12000 and "2 windows in a row" in ev.reason and "IVR" in ev.reason
    assert "previous model's live figures" in ev.reason
    assert mon.counts["rollback"] == 1 and mon.ratios["all"] > 2.0
    # Never twice for one version, whatever follows.
    for _ in range(5):
        assert window(mon, m, clock, rng, 0.3) is None
    assert mon.counts["rollback"] == 1


def test_one_deviating_slice_fires_and_low_side_too() -> None:
    rng = np.random.default_rng(2)
    mon, m, clock = make()
    good = FakeModel("good", 0.55)
    bad = FakeModel("bad-slice", 0.55)
    bad.thresholds[4] = 0.1  # app/out (code 4): IVR 10 % -> 82 %, overall 10 % -> 22 %
    mon.on_swap("good", None, old_rejected=False)
    for _ in range(3):
        shadow_window(mon, m, clock, good, rng, 0.1)
    mon.on_swap("bad-slice", None, old_rejected=False, previous=good)
    assert shadow_window(mon, m, clock, bad, rng, 0.1) is None
    ev = shadow_window(mon, m, clock, bad, rng, 0.1)
    assert ev is not None and "app/out IVR" in ev.reason and "IVR 2" not in ev.reason
    # The previous model's live figures (another hour's traffic) are judged overall only: a
    # slice's IVR moves with the hour and the day's robots.
    mon1, m1, clock1 = make()
    served_good(mon1, m1, clock1, rng)
    mon1.on_swap("slice-live", None, old_rejected=False)
    one = {s: 0.05 for s in SLICES} | {"app/out": 0.4}  # overall 0.108, inside its band
    for _ in range(5):
        assert window(mon1, m1, clock1, rng, one) is None
    assert set(mon1.ratios) == {"all"}
    # A model that stops catching anything deviates low.
    mon2, m2, clock2 = make()
    served_good(mon2, m2, clock2, rng, ivr=0.1)
    mon2.on_swap("blind", None, old_rejected=False)
    window(mon2, m2, clock2, rng, 0.0)
    ev = window(mon2, m2, clock2, rng, 0.0)
    assert ev is not None and ev.kind == "rollback"


def test_no_fire_on_noise_or_a_single_spike() -> None:
    rng = np.random.default_rng(3)
    mon, m, clock = make()
    served_good(mon, m, clock, rng)
    mon.on_swap("next-day", None, old_rejected=False)
    for _ in range(200):  # binomial noise around the same IVR, and a fair day-to-day drift
        assert window(mon, m, clock, rng, float(rng.uniform(0.04, 0.065))) is None
    # One spiking window between normal ones: not sustained.
    for _ in range(10):
        assert window(mon, m, clock, rng, 0.2) is None
        assert window(mon, m, clock, rng, 0.05) is None
    # A small IVR doubling (0.5% -> 1.2%) stays inside the absolute band.
    mon2, m2, clock2 = make()
    served_good(mon2, m2, clock2, rng, ivr=0.005)
    mon2.on_swap("tiny", None, old_rejected=False)
    for _ in range(20):
        assert window(mon2, m2, clock2, rng, 0.012) is None
    assert mon.counts["rollback"] == 0 and mon2.counts["rollback"] == 0


def test_cooldown_and_rejected_version_not_a_reference() -> None:
    rng = np.random.default_rng(4)
    mon, m, clock = make(cooldown_s=60.0)
    served_good(mon, m, clock, rng)
    mon.on_swap("bad1", None, old_rejected=False)
    window(mon, m, clock, rng, 0.2)
    assert window(mon, m, clock, rng, 0.2).kind == "rollback"  # type: ignore[union-attr]
    # Rolled back: the good bundle serves again; the bad one's figures are no reference.
    mon.on_swap("good", None, old_rejected=True)
    assert mon.reference is not None and mon.reference.ivr == pytest.approx(0.05, abs=0.01)
    for _ in range(3):
        assert window(mon, m, clock, rng, 0.05) is None
    # Another bad bundle inside the cooldown: counted as deviating, not fired.
    mon.on_swap("bad2", None, old_rejected=False)
    for _ in range(5):
        assert window(mon, m, clock, rng, 0.2) is None
    assert mon.deviating == 5
    clock.t += 60.0
    ev = window(mon, m, clock, rng, 0.2)
    assert ev is not None and ev.version == "bad2"
    assert mon.counts["rollback"] == 2


def test_alert_mode_and_off() -> None:
    rng = np.random.default_rng(5)
    mon, m, clock = make("alert")
    served_good(mon, m, clock, rng)
    mon.on_swap("bad", None, old_rejected=False)
    window(mon, m, clock, rng, 0.2)
    ev = window(mon, m, clock, rng, 0.2)
    assert ev is not None and ev.kind == "alert" and mon.counts["rollback"] == 0
    off, m2, clock2 = make("off")
    off.on_swap("v", Reference("calibration", 0.01), old_rejected=False)
    for _ in range(5):
        assert window(off, m2, clock2, rng, 0.5) is None
    assert off.windows == 0
    with pytest.raises(ValueError, match="monitor must be one of"):
        Monitor(Metrics(), "panic")


def test_fail_open_share_alerts_never_rolls_back() -> None:
    rng = np.random.default_rng(6)
    mon, m, clock = make()
    served_good(mon, m, clock, rng)
    ev = window(mon, m, clock, rng, 0.05, fail_open=1000)  # 1000 of 7000: 14 %
    assert ev is not None and ev.kind == "fail_open" and "fail-open share" in ev.reason
    # Once per cooldown, and the IVR judgement goes on meanwhile.
    assert window(mon, m, clock, rng, 0.05, fail_open=1000) is None
    assert mon.counts == {"rollback": 0, "alert": 0, "fail_open": 1, "rollback_failed": 0}


def test_calibration_reference_when_no_previous_live() -> None:
    rng = np.random.default_rng(7)
    mon, m, clock = make()
    manifest = {"metrics": {"test": {"ivr": 0.05, "fpr": 0.01},
                            "test_slices": {s: {"ivr": 0.05} for s in SLICES}}}
    exp = expected_from_manifest(manifest)
    assert exp is not None and exp.source == "calibration" and exp.by_slice["app/in"] == 0.05
    mon.on_swap("fresh", exp, old_rejected=False)
    assert window(mon, m, clock, rng, 0.06) is None
    window(mon, m, clock, rng, 0.25)
    ev = window(mon, m, clock, rng, 0.25)
    # The calibration sets expectations only (live traffic is not the test day): an alert.
    assert ev is not None and ev.kind == "alert" and "the bundle's calibration" in ev.reason
    assert mon.counts["rollback"] == 0 and "app/in" not in ev.reason  # overall only
    assert expected_from_manifest({"metrics": {"test": {"ivr": float("nan")}}}) is None
    assert expected_from_manifest({}) is None


def test_metrics_export_monitor_state() -> None:
    rng = np.random.default_rng(8)
    mon, m, clock = make()
    m.monitor = mon
    served_good(mon, m, clock, rng)
    mon.on_swap("bad", None, old_rejected=False)
    window(mon, m, clock, rng, 0.2)
    window(mon, m, clock, rng, 0.2)
    text = m.render()
    assert "slidr_monitor_rollbacks_total 1" in text
    assert "slidr_monitor_alerts_total 0" in text
    ratio = [ln for ln in text.splitlines() if ln.startswith('slidr_monitor_ivr_ratio{slice="all"}')]
    assert ratio and float(ratio[0].split()[-1]) > 2.0

    def gauge(name: str) -> float:
        line = [ln for ln in text.splitlines() if ln.startswith(name + '{slice="all"}')]
        return float(line[0].split()[-1])
    # The alert rule's comparison: the window's IVR above the limit it was held to.
    hi = gauge("slidr_monitor_limit_high")
    assert gauge("slidr_monitor_window_ivr") > hi > 0.05 * 1.5 * 1.5
    # Low: min(reference x 0.5 / 1.5, reference x 0.5 - 2 points) less 3 s.e.: none here.
    assert gauge("slidr_monitor_limit_low") == 0.0 and "slidr_monitor_limit_low" in text


# ---------------------------------------------------------------- registry: rejected bundles

def _src(d: Path, tag: str) -> Path:
    from slidr.featurespec import SPEC_HASH, spec_dict
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(b"fake-onnx-" + tag.encode())
    (d / "thresholds.json").write_text(json.dumps({"method": "global", "default": 0.5,
                                                   "slices": {}}))
    (d / "feature_spec.json").write_text(json.dumps({**spec_dict(), "spec_hash": SPEC_HASH}))
    return d


def test_registry_rejects_rolled_back_bundle(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.publish(_src(tmp_path / "a", "a"), version="good", promote=True)
    reg.publish(_src(tmp_path / "b", "b"), version="bad", promote=True)
    assert reg.rollback(reason="monitor: IVR 30% vs 5%", expected_current="bad",
                        clicks=4000) == "good"
    rej = reg.rejected()
    assert rej["bad"]["reason"] == "monitor: IVR 30% vs 5%" and rej["bad"]["clicks"] == 4000
    assert "at" in rej["bad"] and reg.show("bad")["rejected"]["clicks"] == 4000
    # A second daemon that saw the same bad model: no second rollback, the mark is kept.
    assert reg.rollback(reason="other daemon", expected_current="bad") == "good"
    assert reg.current().version == "good"  # type: ignore[union-attr]
    assert reg.rejected()["bad"]["reason"] == "monitor: IVR 30% vs 5%"
    with pytest.raises(RegistryError, match="rejected .*--force"):
        reg.promote("bad")
    assert reg.current().version == "good"  # type: ignore[union-attr]
    # publish(promote=True) (what `slidr daily` does) goes through the same refusal.
    reg.publish(_src(tmp_path / "c", "c"), version="next", promote=True)
    assert reg.previous().version == "good"  # type: ignore[union-attr]
    reg.promote("bad", force=True)
    assert reg.current().version == "bad" and "bad" not in reg.rejected()  # type: ignore[union-attr]
    # The previous pointer never names a rejected bundle.
    reg.reject("next", "operator")
    assert reg.rollback() == "good"


def test_models_cli_force_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slidr.cli import main
    reg = Registry(tmp_path / "reg")
    reg.publish(_src(tmp_path / "a", "a"), version="good", promote=True)
    reg.publish(_src(tmp_path / "b", "b"), version="bad", promote=True)
    assert main(["models", "rollback", "--registry", str(reg.path), "--reason",
                 "IVR doubled"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--registry", str(reg.path)]) == 0
    out = capsys.readouterr().out
    assert "x bad" in out and "IVR doubled" in out
    assert main(["models", "promote", "bad", "--registry", str(reg.path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["models", "promote", "bad", "--force", "--registry", str(reg.path)]) == 0
    assert reg.current().version == "bad"  # type: ignore[union-attr]


def test_settled_after_the_judged_windows() -> None:
    rng = np.random.default_rng(9)
    mon, m, clock = make(judge_windows=4)
    served_good(mon, m, clock, rng)
    mon.on_swap("next", None, old_rejected=False)
    for _ in range(4):
        assert window(mon, m, clock, rng, 0.05) is None
    assert not mon.judging and mon.judged == 4
    for _ in range(5):  # a later change of traffic is not the new model's doing
        assert window(mon, m, clock, rng, 0.3) is None
    assert mon.counts["rollback"] == 0
    with pytest.raises(ValueError, match="judge_windows >= sustain"):
        Monitor(Metrics(), judge_windows=1, sustain=2)


class FakeScorer:
    name = "fake"

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0].astype(np.float32)


class FakeModel:
    def __init__(self, version: str, threshold: float) -> None:
        self.version = version
        self.scorer = FakeScorer()
        self.thresholds = np.full(6, threshold)


class FakeBatch:
    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.device = rng.integers(0, 3, n).astype(np.uint8)
        self.logged_in = rng.integers(0, 2, n).astype(np.uint8)


def decide(m: Metrics, shadow: object, model: FakeModel, rng: np.random.Generator,
           n: int, robot_share: float) -> None:
    """One batch as the batcher decides it: counters, then the shadow sampler."""
    from slidr.contract import SLICE_BY_CODE
    x = np.zeros((n, N_FEATURES), np.float32)
    x[:, 0] = np.where(rng.random(n) < robot_share, rng.uniform(0.6, 1.0, n),
                       rng.uniform(0.0, 0.5, n))
    b = FakeBatch(n, rng)
    scores = x[:, 0].copy()
    codes = b.device.astype(int) * 2 + b.logged_in
    inv = scores > model.thresholds[codes]
    for c in range(6):
        m.decisions[SLICE_BY_CODE[c]] += int((codes == c).sum())
        m.invalid[SLICE_BY_CODE[c]] += int(inv[codes == c].sum())
    if shadow is not None:
        shadow.sample(x, b, scores, model)  # type: ignore[attr-defined]


def shadow_window(mon: Monitor, m: Metrics, clock: Clock, model: FakeModel,
                  rng: np.random.Generator, robot_share: float) -> object:
    for _ in range(30):
        decide(m, mon.shadow, model, rng, 200, robot_share)
    sh = mon.shadow
    if sh is not None:
        sh.add(sh.score(sh.take()))
    clock.t += 1.0
    return mon.tick()


def test_same_clicks_comparison_ignores_traffic_and_catches_the_model() -> None:
    """(a) on the same clicks: the robots' share of traffic swings 3x from window to window
    (an hour of the day, a new botnet): no alarm for a model that decides like its
    predecessor; a model with thresholds far too low is caught in `sustain` windows."""
    rng = np.random.default_rng(10)
    mon, m, clock = make()
    good, next_day, bad = FakeModel("good", 0.55), FakeModel("next", 0.58), FakeModel("bad", 0.1)
    mon.on_swap("good", None, old_rejected=False)
    for share in (0.1, 0.1, 0.1):
        shadow_window(mon, m, clock, good, rng, share)
    assert mon.on_swap("next", None, old_rejected=False, previous=good) is mon.shadow
    for share in (0.3, 0.1, 0.35, 0.05, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1):
        assert shadow_window(mon, m, clock, next_day, rng, share) is None
        assert mon.ref_source == "previous_same_clicks"
    assert mon.counts["rollback"] == 0 and not mon.judging and mon.shadow is None
    mon.on_swap("bad", None, old_rejected=False, previous=next_day)
    assert shadow_window(mon, m, clock, bad, rng, 0.1) is None
    ev = shadow_window(mon, m, clock, bad, rng, 0.1)
    assert ev is not None and ev.kind == "rollback" and ev.version == "bad"
    assert "previous model on the same clicks" in ev.reason
    assert mon.ratios["all"] > 2.0
    # Rolled back: the bad model is no reference and nothing is compared with it.
    assert mon.on_swap("next", None, old_rejected=True, previous=bad) is None


def test_the_bundle_a_rollback_returns_to_is_not_judged_a_new_one_is() -> None:
    """Back on the stable bundle after a rejection: settled at once (judged against another
    time's figures it could be rolled back further: a loop). A new bundle promoted in place of
    the rejected one is judged (against the stable bundle's live figures)."""
    rng = np.random.default_rng(13)
    mon, m, clock = make(cooldown_s=0.0)
    served_good(mon, m, clock, rng)
    mon.on_swap("bad", None, old_rejected=False)
    window(mon, m, clock, rng, 0.3)
    assert window(mon, m, clock, rng, 0.3).kind == "rollback"  # type: ignore[union-attr]
    mon.on_swap("good", None, old_rejected=True)
    assert not mon.judging and mon.stats()["restored"]
    for _ in range(12):  # traffic moves; the stable bundle is not blamed for it
        assert window(mon, m, clock, rng, 0.3) is None
    mon.on_swap("bad", None, old_rejected=False)
    mon.on_swap("other", None, old_rejected=True)  # rejected again, and another one promoted
    assert mon.judging and mon.reference is not None
    assert mon.reference.source == "previous_live"
    window(mon, m, clock, rng, 0.9)
    ev = window(mon, m, clock, rng, 0.9)
    assert ev is not None and ev.kind == "rollback" and ev.version == "other"
