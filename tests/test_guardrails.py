"""Guardrails: a purchase-label outage is refused before training; a broken candidate model is
refused before publishing and the current model keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slidr.offline import calibrate as cal
from slidr.offline import guardrails as gr
from slidr.offline.daily import gate

from slidr.featurespec import SPEC_HASH, spec_dict
from slidr.registry import Registry

HOUR = 3_600_000


def fake_log(days: int = 4, per_hour: int = 1500, seed: int = 0) -> dict:
    """Columns as read_log_columns returns them: a diurnal click volume, 2% purchases."""
    rng = np.random.default_rng(seed)
    t0 = 1_767_225_600_000  # 2026-01-01T00:00Z
    hours = np.arange(days * 24)
    vol = (per_hour * (0.4 + 0.6 * np.sin(np.pi * (hours % 24) / 24) ** 2)).astype(int)
    ts = np.concatenate([t0 + h * HOUR + rng.integers(0, HOUR, v) for h, v in zip(hours, vol, strict=True)])
    ts.sort()
    n = ts.size
    dev = rng.choice(np.array(["desktop", "mobile", "app"]), n)
    li = rng.random(n) < 0.5
    cols = ["click_id", "ts", "session_id", "user_id", "ip", "device", "logged_in",
            "tz_offset_min", "purchased"]
    return {"_columns": cols, "_nulls": {c: 0 for c in cols}, "_n": n, "ts": ts, "device": dev,
            "logged_in": li, "purchased": rng.random(n) < 0.02}


def test_clean_log_passes() -> None:
    checks = gr.check_log(fake_log())
    assert all(c.passed for c in checks), gr.explain(checks)


@pytest.mark.parametrize("start_h,length", [(30, 3), (61, 4), (80, 2)])
def test_purchase_label_outage_is_refused(start_h: int, length: int) -> None:
    cols = fake_log()
    h = (cols["ts"] - cols["ts"].min()) // HOUR
    cols["purchased"] = np.where((h >= start_h) & (h < start_h + length), False,
                                 cols["purchased"])
    checks = gr.check_log(cols)
    bad = {c.name: c for c in checks if not c.passed}
    assert "human_density_hourly" in bad, gr.explain(checks)
    c = bad["human_density_hourly"]
    assert len(c.details["bad_hours"]) >= length - 1
    assert "purchase labels look missing" in c.message and "Z" in c.message


def test_schema_nulls_and_slice_volume() -> None:
    cols = fake_log()
    cols["_columns"] = [c for c in cols["_columns"] if c != "ip"]
    checks = gr.check_log(cols)
    assert not checks[0].passed and "ip" in checks[0].message
    cols = fake_log()
    cols["_nulls"]["session_id"] = 12
    assert "session_id (12 rows)" in gr.explain(gr.check_log(cols))
    cols = fake_log()
    cols["device"] = np.where(cols["device"] == "app", "mobile", cols["device"])
    c = {c.name: c for c in gr.check_log(cols)}["slice_volume"]
    assert not c.passed and "app/in (0 clicks" in c.message


def test_feature_drift_psi() -> None:
    rng = np.random.default_rng(1)
    names = ["a", "b"]
    x = rng.normal(size=(20_000, 2))
    ref = gr.feature_stats(x, names)
    same = gr.check_drift(rng.normal(size=(20_000, 2)), names, ref)
    assert same.passed and same.value < 0.05
    y = rng.normal(size=(20_000, 2))
    y[:, 1] += 1.0
    moved = gr.check_drift(y, names, ref)
    assert not moved.passed and "b PSI" in moved.message and "a PSI" not in moved.message
    assert gr.check_drift(y, names, None).passed  # first run: nothing to compare


# ---------------------------------------------------------------- model guardrails

@pytest.fixture(scope="module")
def heldout():
    d = cal.synthetic_scores(120_000, seed=5)
    r = cal.calibrate(d, cal.CalibConfig(fpr_budget=0.01, min_coverage=0.3))
    te = cal.subset(d, d["split"] == "test")
    te["weak_label"] = (~te["heuristic"] & (te["purchased"] | (te["score"] < 0.3))).astype(int)
    return te, r["thresholds"]


def test_good_candidate_passes(heldout) -> None:
    te, th = heldout
    cfg = gr.GuardrailConfig(min_coverage=0.3)
    checks = gr.check_model(te["score"], th, te, te["score"] * 0.98, th, cfg)
    assert all(c.passed for c in checks), gr.explain(checks)


def test_shuffled_label_model_is_refused(heldout) -> None:
    te, th = heldout
    rng = np.random.default_rng(0)
    broken = rng.permutation(te["score"])  # what a model trained on shuffled labels amounts to
    checks = gr.check_model(broken, th, te, te["score"], th, gr.GuardrailConfig(min_coverage=0.3))
    failed = {c.name for c in checks if not c.passed}
    assert {"auc_weak_label", "auc_heuristic"} <= failed
    assert failed & {"fpr_budget", "coverage_floors", "slice_ivr_vs_current"}


def test_degenerate_scores_are_refused(heldout) -> None:
    te, th = heldout
    const = np.full(te["score"].size, 0.99)
    failed = {c.name for c in gr.check_model(const, th, te) if not c.passed}
    assert {"score_spread", "identical_scores", "fpr_budget", "ivr_ceiling"} <= failed


def _bundle_src(d: Path, tag: str) -> Path:
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"model-" + tag.encode())
    (d / "thresholds.json").write_text(json.dumps({"method": "global", "default": 0.5}))
    (d / "feature_spec.json").write_text(json.dumps({**spec_dict(), "spec_hash": SPEC_HASH}))
    return d


def test_refused_candidate_keeps_current_model(heldout, tmp_path: Path) -> None:
    te, th = heldout
    reg = Registry(tmp_path / "reg")
    v1 = reg.publish(_bundle_src(tmp_path / "good", "good"), promote=True)
    const = np.full(te["score"].size, 0.5)
    checks = gr.check_model(const, th, te, te["score"], th)
    assert gate(reg, _bundle_src(tmp_path / "bad", "bad"), checks) is None
    assert reg.current().version == v1 and reg.list() == [v1]
    summary = gr.summarize(checks)
    assert not summary["passed"] and "score_spread" in summary["failed"]
    json.dumps(summary)  # structured and serialisable
