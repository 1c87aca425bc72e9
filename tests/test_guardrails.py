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
    # A slice absent from the log (a real log without app traffic) is reported and left to
    # the global threshold, not refused.
    cols = fake_log()
    cols["device"] = np.where(cols["device"] == "app", "mobile", cols["device"])
    c = {c.name: c for c in gr.check_log(cols)}["slice_volume"]
    assert c.passed and "absent from the log: app/in, app/out" in c.message
    assert "global threshold" in c.message and c.details["global_threshold"] == ["app/in",
                                                                                 "app/out"]
    # A thin slice is left to the global threshold too; a log too thin for any model refuses
    # and says how much more it needs.
    cols = fake_log()
    keep = (cols["device"] != "desktop") | (np.arange(cols["_n"]) % 50 == 0)
    for k in ("ts", "device", "logged_in", "purchased"):
        cols[k] = cols[k][keep]
    cols["_n"] = int(keep.sum())
    c = {c.name: c for c in gr.check_log(cols)}["slice_volume"]
    assert c.passed and "too thin for a threshold of their own" in c.message
    assert "desktop/in (" in c.message
    small = gr.slice_volume(np.array(["mobile/out"] * 300), np.zeros(300, dtype=bool),
                            gr.GuardrailConfig())
    assert not small.passed
    assert "200 more clicks and 20 more purchases" in small.message


def test_coverage_floor_allows_for_noise() -> None:
    """Held-out coverage a hair below the floor is sampling noise, not a refusal; a shortfall
    chance cannot explain refuses, and the message shows the counts behind both numbers."""
    rng = np.random.default_rng(3)
    n = 40_000
    sl = np.where(rng.random(n) < 0.5, "mobile/out", "desktop/out")
    heur = rng.random(n) < 0.1
    pur = ~heur & (rng.random(n) < 0.02)
    cols = {"slice": sl, "purchased": pur, "heuristic": heur,
            "weak_label": (pur | (~heur & (rng.random(n) < 0.5))).astype(int)}
    cfg = gr.GuardrailConfig(min_coverage=0.2, slice_min_coverage={}, coverage_slack=0.15)

    def scored(cover: dict[str, float]) -> np.ndarray:
        s = np.where(heur, 0.6, 0.1) + rng.random(n) * 0.01
        for name, share in cover.items():
            m = heur & (sl == name)
            hit = np.flatnonzero(m)[: int(round(share * m.sum()))]
            s[np.flatnonzero(m)] = 0.4
            s[hit] = 0.9
        return s

    th = {"default": 0.5, "slices": {}}
    noisy = {c.name: c for c in gr.check_model(scored({"mobile/out": 0.0485}), th, cols,
                                                 cfg=cfg)}["coverage_floors"]
    assert noisy.passed, noisy.message
    assert "within sampling noise" in noisy.message and "mobile/out (" in noisy.message
    assert "< floor 0.0500" in noisy.message and " = 0.048" in noisy.message
    low = {c.name: c for c in gr.check_model(scored({"mobile/out": 0.03}), th, cols,
                                               cfg=cfg)}["coverage_floors"]
    assert not low.passed and "mobile/out" in low.message and "not chance" in low.message
    k, n_h = low.details["short"]["mobile/out"]["covered"], low.details["short"]["mobile/out"][
        "heuristic"]
    assert f"{k}/{n_h} = " in low.message
    assert 0.0 < gr.binom_cdf(5, 100, 0.1) < gr.binom_cdf(10, 100, 0.1) < 1.0
    assert abs(gr.binom_cdf(10, 100, 0.1) - 0.5832) < 1e-3


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


def _write_log(cols: dict, path: Path) -> Path:
    """A Parquet log of fake_log columns (the other required columns filled in)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = cols["_n"]
    data = {c: pa.array([f"x{i % 97}" for i in range(n)]) for c in cols["_columns"]}
    data["ts"] = pa.array(cols["ts"], pa.int64())
    data["tz_offset_min"] = pa.array(np.zeros(n, np.int64))
    for c in ("device", "logged_in", "purchased"):
        data[c] = pa.array(cols[c])
    pq.write_table(pa.table({c: data[c] for c in cols["_columns"]}), path)
    return path


def _same(path: Path, batch_rows: int = 1000) -> list:
    ref = [c.as_dict() for c in gr.check_log(gr.read_log_columns(path))]
    got = [c.as_dict() for c in gr.check_log_stream(path, batch_rows=batch_rows)]
    assert json.dumps(got, default=str) == json.dumps(ref, default=str)  # NaN == NaN
    assert got == ref or any(c["value"] != c["value"] for c in ref)
    return ref


def test_streamed_check_equals_whole_log(tmp_path: Path) -> None:
    cols = fake_log(days=8, per_hour=600)
    ref = _same(_write_log(cols, tmp_path / "clean.parquet"))
    assert "0 hours of the week judged" not in ref[5]["message"]
    assert [c["name"] for c in ref][-4:] == ["days", "human_density_hourly",
                                            "human_density_week_hours", "slice_volume"]
    assert all(c["passed"] for c in ref)
    # A purchase-label outage of 3 hours: refused, with the same spans and message.
    h = (cols["ts"] - cols["ts"].min()) // HOUR
    cols["purchased"] = np.where((h >= 30) & (h < 33), False, cols["purchased"])
    ref = _same(_write_log(cols, tmp_path / "outage.parquet"), batch_rows=777)
    bad = {c["name"]: c for c in ref if not c["passed"]}
    assert "human_density_hourly" in bad and len(bad["human_density_hourly"]["details"][
        "bad_hours"]) >= 2
    # An absent slice (no logged-in app clicks) and a device outside the contract.
    cols = fake_log(days=8, per_hour=600, seed=1)
    cols["logged_in"] = np.where(cols["device"] == "app", False, cols["logged_in"])
    cols["device"] = np.where(np.arange(cols["_n"]) % 500 == 0, "tv", cols["device"])
    ref = _same(_write_log(cols, tmp_path / "absent.parquet"))
    sv = {c["name"]: c for c in ref}["slice_volume"]
    assert sv["details"]["absent"] == ["app/in"] and sv["passed"]


def test_streamed_check_refuses_like_whole_log(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols = fake_log(days=1, per_hour=100)
    path = _write_log(cols, tmp_path / "log.parquet")
    tbl = pq.read_table(path)
    # Nulls in a required column (in a late batch), a missing column, too few days.
    ts = tbl.column("ts").to_pylist()
    ts[-5] = None
    pq.write_table(tbl.set_column(1, "ts", pa.array(ts, pa.int64())), tmp_path / "null.parquet")
    ref = _same(tmp_path / "null.parquet", batch_rows=100)
    assert {c["name"] for c in ref if not c["passed"]} == {"nulls"}
    pq.write_table(tbl.drop_columns(["ip"]), tmp_path / "noip.parquet")
    ref = _same(tmp_path / "noip.parquet")
    assert {c["name"] for c in ref if not c["passed"]} == {"schema"}
    ref = _same(path, batch_rows=100)
    assert "days" in {c["name"] for c in ref if not c["passed"]}


def test_coverage_floor_counts_sessions_not_clicks() -> None:
    """The heuristic marks whole sessions and a threshold flags a session's clicks together:
    no covered click among 16 heavy-clicking sessions of ~26 clicks is chance at a floor of
    0.05 (0.95^16 = 0.44), while no covered click among 416 one-click sessions is not. Without
    session ids the clicks count as independent draws."""
    rng = np.random.default_rng(5)
    n = 20_000
    sl = np.full(n, "app/out")
    sess = rng.integers(1_000_000, 2_000_000, n).astype(np.uint64)
    heur = np.zeros(n, dtype=bool)
    heur[:416] = True
    clustered = sess.copy()
    clustered[:416] = np.repeat(np.arange(16, dtype=np.uint64), 26)
    pur = ~heur & (rng.random(n) < 0.02)
    score = np.where(heur, 0.2, 0.1) + rng.random(n) * 0.01  # no heuristic click over 0.5
    base = {"slice": sl, "purchased": pur, "heuristic": heur,
            "weak_label": (pur | (~heur & (rng.random(n) < 0.5))).astype(int)}
    cfg = gr.GuardrailConfig(min_coverage=0.05, slice_min_coverage={}, coverage_slack=0.0)
    th = {"default": 0.5, "slices": {}}

    def cov(session_hash):
        cols = {**base, "session_hash": session_hash}
        return {c.name: c for c in gr.check_model(score, th, cols, cfg=cfg)}["coverage_floors"]

    c16 = cov(clustered)
    assert c16.passed, c16.message
    assert "app/out (0/416 = 0.0000" in c16.message and "over 16 effective sessions" in c16.message
    assert c16.details["short"]["app/out"]["effective_sessions"] == 16
    c416 = cov(sess)
    assert not c416.passed and "not chance" in c416.message
    assert c416.details["short"]["app/out"]["effective_sessions"] >= 400
    assert not cov(None).passed
