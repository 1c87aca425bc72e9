"""slidr train: time split, sample weights, ONNX parity, atomic output, bad-input errors, and
one small end-to-end run on a synthetic log made here (independent of the simulator)."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from slidr.offline import baselines, pipeline, train

from slidr.cli import main as cli_main
from slidr.featurespec import N_FEATURES

T0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC
DAY = 86_400_000


def make_log(path: Path, days: int = 4, per_day: int = 2500, seed: int = 0,
             purchase_rate: float = 0.08, customers: Path | None = None) -> pa.Table:
    """Tiny log: humans in short diurnal sessions, robots in fast bursts at any hour."""
    rng = np.random.default_rng(seed)
    rows = []
    sid = 0
    for day in range(days):
        n_day = 0
        while n_day < per_day:
            sid += 1
            robot = rng.random() < 0.08
            if robot:
                start = T0 + day * DAY + int(rng.integers(0, DAY - 3_600_000))
                n = int(rng.integers(20, 60))
                ts = start + np.cumsum(rng.exponential(3_000, n)).astype(np.int64)
                li = rng.random() < 0.15
                dev = ("desktop", "mobile", "app")[int(rng.integers(0, 3))]
                ip = f"10.0.{rng.integers(0, 4)}.{rng.integers(1, 50)}"
            else:
                hour = float(np.clip(rng.normal(15, 4), 0, 22.5))
                start = T0 + day * DAY + int(hour * 3_600_000)
                n = int(rng.integers(1, 5))
                ts = start + np.cumsum(rng.exponential(90_000, n)).astype(np.int64)
                li = rng.random() < 0.5
                dev = ("desktop", "mobile", "app")[int(rng.integers(0, 3))]
                ip = f"192.168.{rng.integers(0, 250)}.{rng.integers(1, 250)}"
            uid = f"user{rng.integers(0, 400)}" if li else None
            for t in ts:
                rows.append((int(t), f"s{sid}", uid, ip, dev, li, robot,
                             (not robot) and rng.random() < purchase_rate))
            n_day += n
    rows.sort(key=lambda r: r[0])
    c = list(zip(*rows, strict=True))
    tbl = pa.table({
        "click_id": [f"c{i}" for i in range(len(rows))],
        "ts": pa.array(c[0], pa.int64()), "session_id": list(c[1]),
        "user_id": pa.array(c[2], pa.string()), "ip": list(c[3]), "device": list(c[4]),
        "logged_in": pa.array(c[5], pa.bool_()),
        "tz_offset_min": pa.array(np.zeros(len(rows), np.int32)),
        "purchased": pa.array(c[7], pa.bool_()), "is_robot": pa.array(c[6], pa.bool_())})
    pq.write_table(tbl, path)
    if customers is not None:
        pq.write_table(pa.table({"user_id": [f"user{i}" for i in range(400)],
                                 "recency_days": rng.integers(0, 365, 400),
                                 "frequency": rng.integers(0, 50, 400),
                                 "monetary": rng.gamma(2.0, 50.0, 400)}), customers)
    return tbl


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    d = tmp_path_factory.mktemp("log")
    make_log(d / "clicks.parquet", customers=d / "customers.parquet")
    return d


@pytest.fixture(scope="module")
def trained(log, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    cfg = pipeline.TrainConfig(k=10, epochs=4, progress=False)
    res = pipeline.run(log / "clicks.parquet", log / "customers.parquet", out, cfg)
    return out, res


# ---------------------------------------------------------------- split and weights

def test_time_split_is_by_day_never_random():
    rng = np.random.default_rng(0)
    ts = np.sort(T0 + rng.integers(0, 5 * DAY, 5000))
    day = train.day_index(ts)
    s = train.time_split(day)
    assert day[s["train"]].max() <= 2 and set(day[s["val"]]) == {3} and set(day[s["test"]]) == {4}
    assert (s["train"] ^ s["val"] ^ s["test"]).all()
    # Same days -> same split, whatever the order or seed: it is a function of time only.
    perm = rng.permutation(ts.size)
    s2 = train.time_split(train.day_index(ts[perm]))
    assert (s2["test"] == s["test"][perm]).all()
    # Every training click is earlier than every validation click, and those than test.
    assert ts[s["train"]].max() < ts[s["val"]].min() <= ts[s["val"]].max() < ts[s["test"]].min()


def test_time_split_needs_three_days():
    with pytest.raises(ValueError, match="at least 3"):
        train.time_split(train.day_index(np.array([T0, T0 + DAY])))


def test_sample_weights_balance_the_cells():
    rng = np.random.default_rng(1)
    n = 20_000
    ts = T0 + rng.integers(0, 7 * DAY, n)
    hour_bias = rng.random(n) < 0.7  # most clicks in the afternoon
    ts = np.where(hour_bias, ts - ts % DAY + 15 * 3_600_000, ts)
    li = rng.random(n) < 0.2
    y = (rng.random(n) < 0.1).astype(np.int8)
    cells = train.weight_cells(ts, np.zeros(n, np.int16), li, y)
    assert cells.min() >= 0 and cells.max() < 672
    w = train.sample_weights(cells)
    totals = np.bincount(cells, weights=w)
    nz = totals[totals > 0]
    assert np.allclose(nz, nz[0], rtol=1e-5)
    assert w.mean() == pytest.approx(1.0, rel=1e-5)
    # Label balance follows: robot and human halves weigh the same when both exist per cell.
    both = (np.bincount(cells[y == 0] // 2, minlength=336) > 0) & (
        np.bincount(cells[y == 1] // 2, minlength=336) > 0)
    keep = both[cells // 2]
    assert w[keep & (y == 1)].sum() == pytest.approx(w[keep & (y == 0)].sum(), rel=1e-4)


def test_label_weighting_balances_logged_in_x_label_only():
    """'label' weighting: 4 cells; a robot that adds clicks in a few hours keeps its weight per
    click (the article's hour x day-of-week cells would divide it away)."""
    rng = np.random.default_rng(2)
    n = 20_000
    ts = T0 + rng.integers(0, 7 * DAY, n)
    li = rng.random(n) < 0.3
    y = (rng.random(n) < 0.9).astype(np.int8)
    cells = train.weight_cells(ts, np.zeros(n, np.int16), li, y, "label")
    assert set(np.unique(cells).tolist()) == {0, 1, 2, 3}
    w = train.sample_weights(cells)
    totals = np.bincount(cells, weights=w)
    assert np.allclose(totals, totals[0], rtol=1e-5)
    # A burst of extra robot-labelled clicks in one hour: under 'label' each keeps the weight
    # of any other robot-labelled click; under 'cells' its hour's clicks share one cell's weight.
    burst = T0 + 3 * DAY + 3 * 3_600_000 + rng.integers(0, 3_600_000, 2_000)
    ts2 = np.concatenate([ts, burst])
    li2 = np.concatenate([li, np.zeros(2_000, bool)])
    y2 = np.concatenate([y, np.ones(2_000, np.int8)])
    wl_ = train.sample_weights(train.weight_cells(ts2, np.zeros(ts2.size, np.int16), li2, y2,
                                                  "label"))
    wc = train.sample_weights(train.weight_cells(ts2, np.zeros(ts2.size, np.int16), li2, y2))
    other = (~li2) & (y2 == 1)
    other[n:] = False
    assert wl_[n:].mean() == pytest.approx(wl_[other].mean(), rel=1e-5)
    assert wc[n:].mean() < 0.3 * wc[other].mean()
    with pytest.raises(ValueError, match="weighting"):
        train.weight_cells(ts, np.zeros(n, np.int16), li, y, "hours")


def test_weight_cells_use_local_time():
    ts = np.array([T0 + 23 * 3_600_000])  # 23:00 UTC Wednesday
    c_utc = train.weight_cells(ts, np.array([0]), np.array([0]), np.array([0]))
    c_plus2 = train.weight_cells(ts, np.array([120]), np.array([0]), np.array([0]))
    assert c_utc[0] != c_plus2[0]  # 01:00 Thursday local


# ---------------------------------------------------------------- model and ONNX

def _toy(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32) * 3 + 5  # far from standardised
    y = (x[:, 0] * x[:, 1] > 25).astype(np.int8)
    return x, y, np.ones(n, np.float32)


def test_onnx_matches_torch_on_raw_features(tmp_path):
    x, y, w = _toy()
    fr = train.fit(x[:2000], y[:2000], w[:2000], x[2000:], y[2000:], w[2000:], epochs=2,
                   progress=False)
    par = train.export_onnx(fr.model, tmp_path / "m.onnx", x[2000:])
    assert par["max_abs_diff"] <= 1e-4 and par["rows"] == 1000
    import onnx
    m = onnx.load(tmp_path / "m.onnx")
    assert [i.name for i in m.graph.input] == ["features"]
    assert [o.name for o in m.graph.output] == ["robot_prob"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == N_FEATURES
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7):  # dynamic batch, 1-D output
        out = sess.run(["robot_prob"], {"features": x[:n]})[0]
        assert out.shape == (n,) and ((out >= 0) & (out <= 1)).all()
    with pytest.raises(RuntimeError, match="disagrees"):
        train.export_onnx(fr.model, tmp_path / "m2.onnx", x[2000:], tol=-1.0)


def test_fit_is_deterministic_and_decays_hidden_layers_only():
    x, y, w = _toy(1500)
    a = train.fit(x[:1000], y[:1000], w[:1000], x[1000:], y[1000:], w[1000:], epochs=2,
                  progress=False, seed=3)
    b = train.fit(x[:1000], y[:1000], w[:1000], x[1000:], y[1000:], w[1000:], epochs=2,
                  progress=False, seed=3)
    pa_, pb = train.predict(a.model, x), train.predict(b.model, x)
    assert np.array_equal(pa_, pb)
    assert [tuple(lin.weight.shape) for lin in a.model.hidden] == [(64, N_FEATURES), (32, 64)]


# ---------------------------------------------------------------- end to end

def test_end_to_end_outputs(trained):
    out, res = trained
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "metrics.json", "report.html", "feature_spec.json",
            "training_meta.json", "scores.parquet", "ivr_fpr_overall.png"} <= names
    m = json.loads((out / "metrics.json").read_text())
    assert m["fpr_target"] == 0.01
    for k in ("model", "logistic", "velocity"):
        o = m[k]["overall"]
        assert {"ivr", "fpr", "coverage", "auc", "precision", "recall"} <= set(o)
        assert o["fpr"] <= 0.01
        assert m[k]["slices"]
    sc = pq.read_table(out / "scores.parquet")
    assert {"ts", "day", "split", "slice", "device", "logged_in", "purchased", "weak_label",
            "robot_heuristic", "is_robot", "score_model", "score_logistic",
            "score_velocity"} <= set(sc.column_names)
    assert set(sc.column("split").to_pylist()) == {"val", "test"}
    meta = json.loads((out / "training_meta.json").read_text())
    assert meta["onnx_parity"]["max_abs_diff"] <= 1e-4
    # A 4-day log: 'auto' holds the newest day out as the test day.
    assert meta["split"]["test_day"] == 3 and meta["split"]["val_day"] == 2
    assert meta["split"]["newest_day"] == "test"
    spec = json.loads((out / "feature_spec.json").read_text())
    from slidr.featurespec import SPEC_HASH
    assert spec["spec_hash"] == SPEC_HASH
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_failure_leaves_no_output_and_keeps_the_old_one(log, tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    from slidr.offline import report

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "write", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pipeline.run(log / "clicks.parquet", log / "customers.parquet", out,
                     pipeline.TrainConfig(epochs=1, progress=False))
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no half-written sibling


# ---------------------------------------------------------------- bad input

def _cli(tmp_path, clicks, customers=None, capsys=None):
    argv = ["train", "--clicks", str(clicks), "--out", str(tmp_path / "o"), "--quiet"]
    if customers:
        argv += ["--customers", str(customers)]
    rc = cli_main(argv)
    return rc, capsys.readouterr().err if capsys else ""


def test_bad_inputs_fail_early_with_a_clear_message(log, tmp_path, capsys):
    tbl = pq.read_table(log / "clicks.parquet")
    cases = {
        "missing column": (tbl.drop(["ip"]), "'ip' column is missing"),
        "missing purchased": (tbl.drop(["purchased"]), "'purchased' column is missing"),
        "bad type": (tbl.set_column(tbl.column_names.index("ts"), "ts",
                                    pa.array([str(v) for v in tbl.column("ts").to_pylist()])),
                     "must be integer epoch milliseconds"),
        "unsorted": (tbl.take(np.r_[1, 0, np.arange(2, tbl.num_rows)]), "must be sorted by ts"),
        "no purchases": (tbl.set_column(tbl.column_names.index("purchased"), "purchased",
                                        pa.array(np.zeros(tbl.num_rows, bool))),
                         "no purchasing clicks"),
        "two days": (tbl.filter(pa.compute.less(tbl.column("ts"), T0 + 2 * DAY)),
                     "at least 3"),
    }
    for name, (t, msg) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.parquet"
        pq.write_table(t, p)
        rc, err = _cli(tmp_path, p, capsys=capsys)
        assert rc == 2, name
        assert msg in err, (name, err)
        assert not (tmp_path / "o").exists(), name
    rc, err = _cli(tmp_path, tmp_path / "nope.parquet", capsys=capsys)
    assert rc == 2 and "not found" in err
    bad_cust = tmp_path / "cust.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "frequency": [1]}), bad_cust)
    rc, err = _cli(tmp_path, log / "clicks.parquet", bad_cust, capsys=capsys)
    assert rc == 2 and "recency_days" in err


def test_cli_json_summary(log, tmp_path, capsys):
    rc = cli_main(["train", "--clicks", str(log / "clicks.parquet"), "--customers",
                   str(log / "customers.parquet"), "--out", str(tmp_path / "m"), "--json",
                   "--quiet", "--epochs", "1", "--k", "10"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["report"].endswith("report.html") and (tmp_path / "m" / "model.onnx").exists()
    assert set(res["metrics"]) == {"model", "logistic", "velocity"}


def test_talkingdata_like_log_without_customers_or_truth(tmp_path):
    """An imported real log: no customers, no is_robot, almost every key seen once."""
    rng = np.random.default_rng(9)
    n = 4000
    ts = np.sort(T0 + rng.integers(0, 4 * DAY, n)).astype(np.int64)
    tbl = pa.table({
        "click_id": [f"c{i}" for i in range(n)], "ts": ts,
        "session_id": [f"td{v}" for v in rng.integers(0, 10**9, n)],
        "user_id": pa.array([None] * n, pa.string()),
        "ip": [f"10.{a}.{b}.{c}" for a, b, c in rng.integers(0, 256, (n, 3))],
        "device": [("desktop", "mobile", "app")[v] for v in rng.integers(0, 3, n)],
        "logged_in": pa.array(np.zeros(n, bool)),
        "purchased": pa.array(rng.random(n) < 0.05)})
    d = tmp_path / "td"
    d.mkdir()
    pq.write_table(tbl, d / "clicks.parquet")
    (d / "manifest.json").write_text(json.dumps({"source": "talkingdata", "rows": n}))
    out = tmp_path / "out"
    res = pipeline.run(d / "clicks.parquet", None, out,
                       pipeline.TrainConfig(epochs=1, progress=False))
    assert res["source"] == "talkingdata"
    page = (out / "report.html").read_text()
    assert "NOT comparable" in page and "185M" in page
    m = json.loads((out / "metrics.json").read_text())
    assert "precision" not in m["model"]["overall"] and m["label_quality"] is None
    assert not (out / "scores_by_truth.png").exists()


def test_margin_row_against_the_noise_band():
    clear = baselines.margin_row(0.20, 0.10, [0.18, 0.22], [0.09, 0.12])
    assert clear["margin"] == pytest.approx(0.10)
    assert clear["band_gap"] == pytest.approx(0.06)
    assert clear["margin_exceeds_noise"] is True and clear["within_noise"] is False
    close = baselines.margin_row(0.105, 0.10, [0.09, 0.12], [0.085, 0.115])
    assert close["margin"] > 0 and close["margin_exceeds_noise"] is False
    assert close["within_noise"] is True
    lose = baselines.margin_row(0.05, 0.10, [0.04, 0.06], [0.09, 0.11])
    assert lose["margin"] < 0 and lose["margin_exceeds_noise"] is False
    assert lose["within_noise"] is False
    few = baselines.margin_row(0.2, 0.1, None, [0.09, 0.11])
    assert few["margin_exceeds_noise"] is None and few["within_noise"] is None
    assert np.isnan(baselines.margin_row(float("nan"), 0.1, None, None)["margin"])


def test_fit_keeps_the_moving_average_of_the_weights():
    x, y, w = _toy(1500)
    args = (x[:1000], y[:1000], w[:1000], x[1000:], y[1000:], w[1000:])
    on = train.fit(*args, epochs=2, progress=False, seed=3, ema=0.9)
    off = train.fit(*args, epochs=2, progress=False, seed=3, ema=0.0)
    assert not np.array_equal(train.predict(on.model, x), train.predict(off.model, x))
    assert len(on.history) == 2 and all(np.isfinite(h["val_loss"]) for h in on.history)


def test_time_split_val_days():
    rng = np.random.default_rng(0)
    ts = np.sort(T0 + rng.integers(0, 6 * DAY, 6000))
    day = train.day_index(ts)
    s = train.time_split(day, val_days=2)
    assert set(day[s["train"]]) == {0, 1, 2} and set(day[s["val"]]) == {3, 4}
    assert set(day[s["test"]]) == {5} and (s["train"] ^ s["val"] ^ s["test"]).all()
    with pytest.raises(ValueError, match="at least 7"):
        train.time_split(day, val_days=5)
    with pytest.raises(ValueError, match="val_days"):
        train.time_split(day, val_days=0)


def test_time_split_newest_day_trained_on():
    """newest='train': the newest day joins the training days; the day before it is test and
    the val_days before that validation, so calibration and guardrails still see only days
    the model did not train on."""
    rng = np.random.default_rng(0)
    ts = np.sort(T0 + rng.integers(0, 7 * DAY, 7000))
    day = train.day_index(ts)
    s = train.time_split(day, val_days=2, newest="train")
    assert set(day[s["train"]]) == {0, 1, 2, 6} and set(day[s["val"]]) == {3, 4}
    assert set(day[s["test"]]) == {5} and (s["train"] ^ s["val"] ^ s["test"]).all()
    # Auto: 5 training days, the newest among them (7 days: 1 validation day).
    s = train.time_split(day, val_days=None, newest="train")
    assert set(day[s["val"]]) == {4} and set(day[s["test"]]) == {5}
    assert set(day[s["train"]]) == {0, 1, 2, 3, 6}
    with pytest.raises(ValueError, match="at least 6 .*newest day trained on"):
        train.time_split(day[day < 5], val_days=3, newest="train")
    with pytest.raises(ValueError, match="newest must be one of"):
        train.time_split(day, newest="val")
    # 'auto': trained on from 8 days, held out below.
    assert [train.resolve_newest("auto", n) for n in (4, 7, 8, 30)] == ["test", "test",
                                                                        "train", "train"]
    assert set(day[train.time_split(day, newest="auto")["test"]]) == {6}


def test_auto_val_days_keeps_five_training_days():
    assert [train.auto_val_days(n) for n in (3, 4, 6, 7, 8, 9, 16)] == [1, 1, 1, 1, 2, 3, 3]
    rng = np.random.default_rng(0)
    for n, val in ((6, {4}), (9, {5, 6, 7})):
        ts = np.sort(T0 + rng.integers(0, n * DAY, 9000))
        day = train.day_index(ts)
        s = train.time_split(day, val_days=None)
        assert set(day[s["val"]]) == val and len(set(day[s["train"]])) >= min(5, n - 2)


# ---------------------------------------------------------------- stratified training sample

def test_stratified_sample_keeps_rare_strata_and_weights_undo_it():
    rng = np.random.default_rng(3)
    # One huge stratum, one medium, one rare (smaller than the per-stratum minimum).
    strata = np.repeat([0, 1, 2], [90_000, 9_800, 200])
    rng.shuffle(strata)
    idx, inv_p = train.stratified_sample(strata, 10_000, seed=1)
    assert np.all(np.diff(idx) > 0) and idx.size == inv_p.size
    kept = np.bincount(strata[idx], minlength=3)
    assert kept[2] == 200  # a rare stratum is kept whole, weight 1
    assert kept[1] >= train.MIN_PER_STRATUM and abs(kept[0] - 9_000) <= 1
    assert 9_000 <= idx.size <= 10_000 + train.MIN_PER_STRATUM + 200
    # Weighted, every stratum weighs exactly its size in the full data.
    np.testing.assert_allclose(np.bincount(strata[idx], weights=inv_p, minlength=3),
                               [90_000, 9_800, 200])
    np.testing.assert_allclose(inv_p[strata[idx] == 2], 1.0)
    # Deterministic per seed, different across seeds; a small input is kept whole.
    assert np.array_equal(idx, train.stratified_sample(strata, 10_000, seed=1)[0])
    assert not np.array_equal(idx, train.stratified_sample(strata, 10_000, seed=2)[0])
    all_idx, w = train.stratified_sample(strata[:500], 10_000, seed=1)
    assert np.array_equal(all_idx, np.arange(500)) and np.all(w == 1)


def test_training_on_a_sample_is_recorded_and_close(log, trained, tmp_path):
    """--train-sample: the model trains on the sample (recorded in training_meta.json) and its
    held-out AUC stays close to training on every click."""
    out = tmp_path / "model"
    cfg = pipeline.TrainConfig(k=10, epochs=4, progress=False, train_sample=2000)
    pipeline.run(log / "clicks.parquet", log / "customers.parquet", out, cfg)
    meta = json.loads((out / "training_meta.json").read_text())
    s = meta["train_sample"]
    assert s["of"] == meta["split"]["n_train"] and s["rows"] < s["of"] and s["strata"] > 10
    full = json.loads((trained[0] / "training_meta.json").read_text())
    assert full["train_sample"] is None
    auc = json.loads((out / "metrics.json").read_text())["model"]["overall"]["auc"]
    auc_full = json.loads((trained[0] / "metrics.json").read_text())["model"]["overall"]["auc"]
    assert auc > 0.5 and abs(auc - auc_full) < 0.1, (auc, auc_full)


def test_merge_is_the_sum_of_its_parts_and_exports_as_one_mlp(tmp_path):
    x, y, w = _toy(1500)
    a_cols, b_cols = list(range(0, 20)), list(range(20, N_FEATURES))
    a = train.fit(x[:1000], y[:1000], w[:1000], x[1000:], y[1000:], w[1000:], epochs=1,
                  progress=False, cols=a_cols)
    b = train.fit(x[:1000], y[:1000], w[:1000], x[1000:], y[1000:], w[1000:], epochs=1,
                  progress=False, cols=b_cols, hidden=(8, 4))
    net = train.merge([(a.model, a_cols), (b.model, b_cols)])
    want = train.logits(a.model, x[:, a_cols]) + train.logits(b.model, x[:, b_cols])
    assert np.allclose(train.logits(net, x), want, atol=1e-5)
    assert [tuple(lin.weight.shape) for lin in net.hidden] == [(72, N_FEATURES), (36, 72)]
    par = train.export_onnx(net, tmp_path / "m.onnx", x)
    assert par["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="depths"):
        train.merge([(a.model, a_cols), (train.fit(x[:500], y[:500], w[:500], x[500:600],
                                                   y[500:600], w[500:600], epochs=1,
                                                   hidden=(4,), progress=False).model,
                                         b_cols)])


def test_fit_staged_second_stage_learns_only_what_the_first_cannot():
    """y depends on column 0 (a base column) and, for a tenth of the rows, on column 30 (a
    second-stage column): stage 2 must move those rows; where the second-stage columns are
    pure noise, it must not cost the ranking stage 1 found."""
    rng = np.random.default_rng(1)
    n = 12_000
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int8)
    burst = x[:, 30] > 1.3
    y[burst] = 1
    w = np.ones(n, np.float32)
    base = list(train.STAGE1_COLS)
    assert 30 not in base
    fr = train.fit_staged(x[:8000], y[:8000], w[:8000], x[8000:], y[8000:], w[8000:], base,
                          epochs=6, progress=False, seed=2, batch_size=256)
    s1 = train.merge([(fr.stages[0].model, base)])
    extra = train.logits(fr.model, x[8000:]) - train.logits(s1, x[8000:])
    low = x[8000:, 0] <= 0.5
    hit = burst[8000:] & low
    # Stage 1 sees a 10 % robot share among low x0 rows it cannot tell apart: stage 2 raises
    # the bursts and lowers the rest of them.
    assert extra[hit].mean() > 2.0 and extra[~burst[8000:] & low].mean() < -0.2
    assert {h["stage"] for h in fr.history} == {1, 2} and len(fr.stages) == 2
    # No signal in the second-stage columns: it barely moves a score.
    y2 = (x[:, 0] > 0.5).astype(np.int8)
    fr2 = train.fit_staged(x[:8000], y2[:8000], w[:8000], x[8000:], y2[8000:], w[8000:], base,
                           epochs=6, progress=False, seed=2, batch_size=256)
    s1b = train.merge([(fr2.stages[0].model, base)])

    def auc(s, yy):
        r = np.argsort(np.argsort(s)) + 1.0
        pos = yy == 1
        return (r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())

    a1 = auc(train.logits(s1b, x[8000:]), y2[8000:])
    a2 = auc(train.logits(fr2.model, x[8000:]), y2[8000:])
    assert a1 > 0.95 and a2 > a1 - 0.01


def test_newest_day_trained_on_moves_the_test_day_back(log, tmp_path):
    """--newest-day train: the log's newest day is a training day, the day before it is the
    held-out test day the metrics and guardrails use, and the meta says so ('auto' on this
    4-day log holds the newest day out: test_end_to_end_outputs)."""
    cfg = pipeline.TrainConfig(k=10, epochs=1, progress=False, newest_day="train")
    pipeline.run(log / "clicks.parquet", log / "customers.parquet", tmp_path / "n", cfg)
    meta = json.loads((tmp_path / "n" / "training_meta.json").read_text())
    sp, days = meta["split"], meta["days"]
    assert sp["newest_day"] == "train" and days[-1] in sp["train_days"]
    assert sp["test_day"] == days[-2] and sp["val_days"][-1] == days[-3]
    assert not set(sp["val_days"]) & set(sp["train_days"])
    assert sp["rule"].startswith("by UTC day: last day = train, the day before = test")
    t = pq.read_table(tmp_path / "n" / "scores.parquet", columns=["split", "day"])
    test_days = set(t.filter(pc.equal(t.column("split"), "test")).column("day").to_pylist())
    assert test_days == {days[-2]}


def test_newest_day_weighs_newest_weight_times_each_other_day(log, tmp_path):
    """--newest-weight X: when the training days include the log's newest day, its clicks
    carry X times the weight they would carry with X = 1 (the mean weight kept); the same
    days without the newest one are weighted as before, whole or sampled."""
    fs = pipeline.build_features(log / "clicks.parquet", None, tmp_path / "f",
                                 pipeline.TrainConfig(progress=False))
    plan = pipeline.MemoryPlan.for_budget(4.0)
    days = fs.days
    per_day = [fs.rows_in(days[i:i + 1]) for i in range(days.size)]

    def weights(ds, x, cap=10**9):
        cfg = pipeline.TrainConfig(progress=False, newest_weight=x)
        return pipeline._training_set(fs, ds, cap, cfg, plan, explicit=False)[2]

    w1, w3 = weights(days, 1.0), weights(days, 3.0)
    last = np.arange(w1.size) >= w1.size - per_day[-1]
    assert np.isclose(w3.mean(), w1.mean(), rtol=1e-5)
    r = (w3 / w1).astype(np.float64)
    assert np.allclose(r[last] / r[~last].mean(), 3.0, rtol=1e-4)
    assert np.allclose(r[~last], r[~last][0], rtol=1e-5)
    older = days[:-1]
    assert np.array_equal(weights(older, 3.0), weights(older, 1.0))
    # A stratified sample (cap below the clicks) weighs the newest day the same way: the
    # same rows are drawn, and theirs (a suffix, the log being in time order) weigh 3x.
    cap = int(sum(per_day) * 0.6)
    ws1, ws3 = weights(days, 1.0, cap), weights(days, 3.0, cap)
    assert ws1.size == ws3.size < w1.size
    rs = (ws3 / ws1).astype(np.float64)
    hi = rs > rs.min() * 1.5
    assert hi.any() and hi[np.argmax(hi):].all()
    assert np.allclose(rs[hi] / rs[~hi].mean(), 3.0, rtol=1e-4)


def test_ensemble_publishes_the_members_mean_logit():
    """ensemble=K trains K nets as --training says, member j from seed + step * j, and the
    published net (one plain MLP, members side by side) gives their mean logit; the members
    differ, so the mean is not one net repeated."""
    x, y, w = _toy(3000)
    kw = {"epochs": 3, "progress": False, "batch_size": 256, "hidden": (8, 4)}
    fr = train.fit_mlp(x[:2000], y[:2000], w[:2000], x[2000:], y[2000:], w[2000:],
                       training="joint", ensemble=3, seed=5, **kw)
    members = [train.fit_mlp(x[:2000], y[:2000], w[:2000], x[2000:], y[2000:], w[2000:],
                             training="joint", seed=5 + train.ENSEMBLE_SEED_STEP * j, **kw)
               for j in range(3)]
    xt = x[2000:]
    each = np.stack([train.logits(m.model, xt) for m in members])
    assert fr.hidden == (24, 12) and fr.model.hidden[0].out_features == 24
    assert np.allclose(train.logits(fr.model, xt), each.mean(axis=0), atol=1e-5)
    assert np.abs(each[0] - each[1]).max() > 1e-3
    staged = train.fit_mlp(x[:2000], y[:2000], w[:2000], x[2000:], y[2000:], w[2000:],
                           training="staged", ensemble=2, seed=5, epochs=2,
                           progress=False, batch_size=256)
    assert len(staged.stages) == 6
    assert staged.hidden == train.published_widths("staged", (64, 32), 2) == (384, 192)
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        train.fit_mlp(x, y, w, None, None, None, ensemble=0)


def test_parallel_second_stages_each_learn_on_stage_one_alone():
    """extra2: a second stage on its own columns beside stage 2, fit on stage 1's logit alone
    (the same net as a fit with only stage 1 as base), reading nothing outside its columns;
    the published net's logit is the three parts' sum."""
    rng = np.random.default_rng(3)
    n = 6_000
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = ((x[:, 0] > 0.5) | (x[:, 35] > 1.5)).astype(np.int8)
    w = np.ones(n, np.float32)
    base = list(train.STAGE1_COLS)
    ent = list(train.ENTITY_COLS)
    # 20 epochs: the entity net has learnt its column on every seed tried (raise 2.0-4.4 for
    # seeds 4-7); at 8 it had on some seeds only (0.2-1.2)
    kw = {"epochs": 20, "progress": False, "seed": 4, "batch_size": 128}
    fr = train.fit_staged(x[:4000], y[:4000], w[:4000], x[4000:], y[4000:], w[4000:], base,
                          hidden=(8, 4), hidden2=(6, 3), cols2=range(N_FEATURES),
                          extra2=(ent,), **kw)
    assert len(fr.stages) == 3 and fr.hidden == (8 + 2 * 6, 4 + 2 * 3)
    s1 = train.merge([(fr.stages[0].model, base)])
    alone = train.fit(x[:4000], y[:4000], w[:4000], x[4000:], y[4000:], w[4000:],
                      hidden=(6, 3), cols=ent, base=s1, early_stopping=False, **kw)
    import torch
    for a, b in zip(alone.model.parameters(), fr.stages[2].model.parameters(), strict=True):
        assert torch.equal(a, b)
    parts = train.merge([(fr.stages[0].model, base),
                         (fr.stages[1].model, list(range(N_FEATURES))),
                         (fr.stages[2].model, ent)])
    xt = x[4000:]
    assert np.allclose(train.logits(fr.model, xt), train.logits(parts, xt), atol=1e-5)
    ent_rows = fr.model.hidden[0].weight.detach().numpy()[8 + 6:]
    assert not ent_rows[:, base].any() and ent_rows[:, ent].any()
    # The entity part raises the rows its column explains, whatever their base columns.
    e = train.logits(train.merge([(fr.stages[2].model, ent)]), xt)
    assert e[xt[:, 35] > 1.5].mean() > e[xt[:, 35] < 0].mean() + 1.0


def test_published_net_follows_the_training(log, trained, tmp_path):
    """The default (staged) publishes stage 1 and its two second stages side by side,
    45-192-96-1, and says so; --ensemble 2 publishes two of those side by side, 45-384-192-1;
    --training joint publishes one 45-64-32-1 net. All pass the ONNX parity check."""
    import onnx
    out, _ = trained
    meta = json.loads((out / "training_meta.json").read_text())
    assert meta["config"]["training"] == "staged" and "staged" in meta["model"]["arch"]
    assert meta["config"]["ensemble"] == 1 and "such nets" not in meta["model"]["arch"]
    shapes = [list(i.dims) for i in onnx.load(out / "model.onnx").graph.initializer
              if i.name.startswith("W")]
    assert shapes[:2] == [[192, N_FEATURES], [96, 192]]
    assert tuple(s[0] for s in shapes[:2]) == train.published_widths()
    cfg = pipeline.TrainConfig(k=10, epochs=1, progress=False, ensemble=2)
    pipeline.run(log / "clicks.parquet", log / "customers.parquet", tmp_path / "e", cfg)
    meta = json.loads((tmp_path / "e" / "training_meta.json").read_text())
    assert meta["config"]["ensemble"] == 2 and "2 such nets" in meta["model"]["arch"]
    shapes = [list(i.dims) for i in onnx.load(tmp_path / "e" / "model.onnx").graph.initializer
              if i.name.startswith("W")]
    assert shapes[:2] == [[384, N_FEATURES], [192, 384]]
    assert {h["stage"] for h in meta["model"]["history"]} == {1, 2}
    assert {h.get("part") for h in meta["model"]["history"]} == {None, 1, 2}
    assert "entity features" in meta["model"]["arch"]
    cfg = pipeline.TrainConfig(k=10, epochs=2, progress=False, training="joint")
    pipeline.run(log / "clicks.parquet", log / "customers.parquet", tmp_path / "j", cfg)
    meta = json.loads((tmp_path / "j" / "training_meta.json").read_text())
    assert meta["config"]["training"] == "joint" and "staged" not in meta["model"]["arch"]
    assert "such nets" not in meta["model"]["arch"]
    shapes = [list(i.dims) for i in onnx.load(tmp_path / "j" / "model.onnx").graph.initializer
              if i.name.startswith("W")]
    assert shapes[:2] == [[64, N_FEATURES], [32, 64]]
    with pytest.raises(ValueError, match="training must be one of"):
        train.fit_mlp(np.zeros((4, N_FEATURES), np.float32), np.zeros(4, np.int8),
                      np.ones(4, np.float32), None, None, None, training="both")


def test_streamed_validation_with_a_base_equals_the_in_memory_one():
    """A second stage validated batch by batch (the base's offsets computed on the first epoch
    and kept) records the same losses and returns the same net as one validated in memory; a
    val_batches that changes its batches between epochs is refused."""
    x, y, w = _toy(2400)
    k1 = len(train.STAGE1_COLS)
    cols = list(range(k1, N_FEATURES))
    s1 = train.fit(x[:1600], y[:1600], w[:1600], x[1600:], y[1600:], w[1600:], epochs=1,
                   progress=False, cols=list(range(k1)))
    base = train.merge([(s1.model, list(range(k1)))])
    kw = dict(epochs=3, progress=False, cols=cols, base=base, early_stopping=False, seed=3)
    mem = train.fit(x[:1600], y[:1600], w[:1600], x[1600:], y[1600:], w[1600:], **kw)

    def batches():
        for a in range(1600, 2400, 300):
            yield x[a:a + 300], y[a:a + 300], w[a:a + 300]
    st = train.fit(x[:1600], y[:1600], w[:1600], None, None, None, val_batches=batches, **kw)
    assert np.allclose([h["val_loss"] for h in st.history],
                       [h["val_loss"] for h in mem.history], rtol=1e-5)
    assert np.array_equal(train.logits(st.model, x[:, cols]), train.logits(mem.model, x[:, cols]))
    calls = iter(range(100))

    def shifting():
        k = 100 * next(calls)  # each call starts at another row: batches of other sizes
        for a in range(1600 + k, 2400, 300):
            yield x[a:a + 300], y[a:a + 300], w[a:a + 300]
    with pytest.raises(ValueError, match="same batches"):
        train.fit(x[:1600], y[:1600], w[:1600], None, None, None, val_batches=shifting, **kw)
