"""`slidr replay`: delayed decisions from the daemon's decision log (written here with the
daemon's own DecisionLog writer, and as JSON lines) or from a click log, through a bundle
from a real registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slidr.cli import main as slidr_main
from slidr.featurespec import FEATURE_NAMES, N_FEATURES
from slidr.kernel import FeatureKernel

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

T0 = 1_700_000_000_000
U1M = FEATURE_NAMES.index("u_clicks_1m")


def make_model(path: Path, bias: float) -> None:
    """p = sigmoid(3 * u_clicks_1m + bias): robotic when a user clicks a lot in a minute."""
    from onnx import TensorProto, helper, numpy_helper
    w = np.zeros((N_FEATURES, 1), np.float32)
    w[U1M, 0] = 3.0
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"])]
    g = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", N_FEATURES])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([bias], np.float32), "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def sigmoid_score(x: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(3.0 * x[:, U1M].astype(np.float64) + bias)))


THRESHOLDS = {"method": "slice", "default": 0.5,
              "slices": {"mobile/out": 0.6, "desktop/in": 0.4}, "calibration": {}}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from slidr.registry import Registry
    root = tmp_path_factory.mktemp("reg")
    reg = Registry(root / "registry")
    for version, bias in (("v1", -6.0), ("v2", -3.0)):
        src = root / f"src-{version}"
        src.mkdir()
        make_model(src / "model.onnx", bias)
        (src / "thresholds.json").write_text(json.dumps(THRESHOLDS))
        reg.publish(src, version=version, promote=True)  # v2 current, v1 previous
    return reg


def make_clicks(n: int = 600, seed: int = 0) -> list[dict]:
    """Humans (a click now and then) and a few robots (bursts), in time order."""
    rng = np.random.default_rng(seed)
    clicks = []
    ts = T0
    for i in range(n):
        ts += int(rng.integers(50, 400))
        robot = rng.random() < 0.3
        sess = f"r{rng.integers(0, 3)}" if robot else f"h{rng.integers(0, 400)}"
        dev = ["desktop", "mobile", "app"][int(rng.integers(0, 3))]
        li = bool(rng.random() < 0.4)
        c = {"click_id": f"c{i}", "ts": ts, "session_id": sess, "ip": f"10.0.{i % 7}.{i % 5}",
             "device": dev, "logged_in": li, "tz_offset_min": 60}
        if li:
            c["user_id"] = f"u-{sess}"
        clicks.append(c)
    return clicks


def threshold(c: dict) -> float:
    sl = f"{c['device']}/{'in' if c['logged_in'] else 'out'}"
    return THRESHOLDS["slices"].get(sl, THRESHOLDS["default"])


@pytest.fixture(scope="module")
def traffic():
    """Clicks, their real-time features and v1's original decisions; every 10th click the
    daemon failed open before computing features (store down)."""
    clicks = make_clicks()
    from slidr.contract import ClickBatch
    x = FeatureKernel().features(ClickBatch.from_clicks(clicks))
    s1 = sigmoid_score(x, -6.0)
    decisions, feats = [], []
    for i, c in enumerate(clicks):
        sl = f"{c['device']}/{'in' if c['logged_in'] else 'out'}"
        if i % 10 == 9:
            decisions.append({"click_id": c["click_id"], "invalid": False, "score": None,
                              "threshold": None, "slice": sl, "model": "v1",
                              "reason": "fail_open:store_down"})
            feats.append(None)
        else:
            thr = threshold(c)
            decisions.append({"click_id": c["click_id"], "invalid": bool(s1[i] > thr),
                              "score": float(s1[i]), "threshold": thr, "slice": sl,
                              "model": "v1", "reason": "model"})
            feats.append(x[i])
    return clicks, x, decisions, feats


def write_daemon_log(d: Path, traffic, batch: int = 64) -> Path:
    """The daemon's own writer, batch by batch, as slidrd does."""
    from slidr.slidrd.decision_log import DecisionLog
    clicks, x, decisions, feats = traffic
    log = DecisionLog(str(d), max_bytes=20_000)  # several rotated files
    for s in range(0, len(clicks), batch):
        e = min(s + batch, len(clicks))
        # fail-open batches carry no features; mixed here per record, so split by kind
        for idx in ([i for i in range(s, e) if feats[i] is not None],
                    [i for i in range(s, e) if feats[i] is None]):
            if not idx:
                continue
            f = np.stack([x[i] for i in idx]) if feats[idx[0]] is not None else None
            log.submit([clicks[i] for i in idx], f, [decisions[i] for i in idx], "v1")
    log.close()
    assert len(list(d.glob("decisions-*.msgpack"))) > 1
    return d


def write_jsonl(path: Path, traffic) -> Path:
    """The flat record shape, as JSON lines."""
    clicks, x, decisions, feats = traffic
    with open(path, "w") as f:
        for c, d, ft in zip(clicks, decisions, feats, strict=True):
            rec = {"click": c, "features": None if ft is None else [float(v) for v in ft],
                   **{k: d[k] for k in ("invalid", "score", "threshold", "slice", "model",
                                        "reason")}}
            f.write(json.dumps(rec) + "\n")
    return path


def read_out(path: Path) -> list[dict]:
    if path.suffix == ".msgpack":
        import msgpack
        with open(path, "rb") as f:
            return list(msgpack.Unpacker(f, raw=False))
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected(traffic, bias: float):
    clicks, x, decisions, feats = traffic
    s = sigmoid_score(x, bias)
    return [bool(s[i] > threshold(c)) for i, c in enumerate(clicks)], s


# ------------------------------------------------------------------ decision logs

def test_daemon_msgpack_log_through_current(tmp_path, registry, traffic, capsys):
    logdir = write_daemon_log(tmp_path / "dlog", traffic)
    out = tmp_path / "delayed.jsonl"
    rc = slidr_main(["replay", "--decisions", str(logdir), "--registry", str(registry.path),
                     "--out", str(out), "--json"])
    assert rc == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    # Progress by default, stderr not a terminal: one line per finished stage, nothing else.
    lines = cap.err.splitlines()
    assert lines and all(ln.startswith("replay") and " in " in ln for ln in lines), cap.err
    clicks, x, decisions, feats = traffic
    rows = read_out(out)
    assert len(rows) == len(clicks) == summary["read"]
    inv2, s2 = expected(traffic, -3.0)
    by_id = {r["click_id"]: r for r in rows}
    n_changed = 0
    for i, c in enumerate(clicks):
        r = by_id[c["click_id"]]
        assert r["replayed_with"] == "v2"
        if feats[i] is None:
            assert r["reason"] == "replay_skipped:no_features" and r["changed"] is False
            continue
        assert set(r) >= {"click_id", "invalid", "score", "threshold", "slice", "model", "reason"}
        assert r["model"] == "v2" and r["reason"] == "model"
        assert r["invalid"] == inv2[i]
        assert r["score"] == pytest.approx(s2[i], abs=1e-6)
        assert r["threshold"] == threshold(c)
        assert r["changed"] == (inv2[i] != decisions[i]["invalid"])
        assert r["original"]["model"] == "v1"
        n_changed += r["changed"]
    assert summary["skipped"] == len(clicks) // 10
    assert summary["changed"] == n_changed > 0
    assert summary["newly_invalid"] == n_changed  # v2 is stricter: only new invalidations
    scored = [i for i in range(len(clicks)) if feats[i] is not None]
    assert summary["ivr_before"] == pytest.approx(
        np.mean([decisions[i]["invalid"] for i in scored]))
    assert summary["ivr_after"] == pytest.approx(np.mean([inv2[i] for i in scored]))
    assert summary["ivr_after"] > summary["ivr_before"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp left


def test_same_model_changes_nothing(tmp_path, registry, traffic):
    from slidr.offline.replay_decisions import load_model, replay_decisions
    logdir = write_daemon_log(tmp_path / "dlog", traffic)
    s = replay_decisions(logdir, load_model(registry=registry.path, version="previous"),
                         tmp_path / "o.msgpack")
    assert s.model == "v1" and s.changed == 0 and s.replayed == len(traffic[0]) - s.skipped
    rows = read_out(tmp_path / "o.msgpack")
    logged = {d["click_id"]: d for d in traffic[2]}
    for r in rows:
        if r["reason"] == "model":
            assert r["score"] == pytest.approx(logged[r["click_id"]]["score"], abs=1e-6)


def test_jsonl_only_fail_open_with_recomputed_features(tmp_path, registry, traffic, capsys):
    src = write_jsonl(tmp_path / "decisions.jsonl", traffic)
    out = tmp_path / "fo.jsonl"
    assert slidr_main(["replay", "--decisions", str(src), "--bundle",
                       str(registry.path / "bundles" / "v2"), "--out", str(out),
                       "--only-fail-open", "--recompute-features"]) == 0
    text = capsys.readouterr().out
    assert "IVR before" in text and "changed" in text
    clicks = traffic[0]
    rows = read_out(out)
    assert [r["click_id"] for r in rows] == [c["click_id"] for i, c in enumerate(clicks)
                                             if i % 10 == 9]
    inv2, s2 = expected(traffic, -3.0)  # recomputed features == real-time features
    for r in rows:
        i = int(r["click_id"][1:])
        assert r["reason"] == "model" and r["original"]["reason"] == "fail_open:store_down"
        assert r["score"] == pytest.approx(s2[i], abs=1e-6)
        assert r["changed"] == inv2[i]  # originally valid (fail-open)
    assert any(r["invalid"] for r in rows)  # robots that got through are caught later


def test_only_fail_open_without_features_skips_them(tmp_path, registry, traffic):
    from slidr.offline.replay_decisions import load_model, replay_decisions
    src = write_jsonl(tmp_path / "d.jsonl", traffic)
    s = replay_decisions(src, load_model(registry=registry.path), tmp_path / "o.jsonl",
                         only_fail_open=True)
    assert s.replayed == 0 and s.skipped == len(traffic[0]) // 10 == s.original_fail_open


def test_click_log_recomputes_features(tmp_path, registry, traffic, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    clicks = traffic[0]
    cols = {k: [c.get(k) for c in clicks] for k in ("click_id", "ts", "session_id", "user_id",
                                                  "ip", "device", "logged_in", "tz_offset_min")}
    log = tmp_path / "clicks.parquet"
    pq.write_table(pa.table(cols), log)
    out = tmp_path / "from_log.jsonl"
    assert slidr_main(["replay", "--clicks", str(log), "--registry", str(registry.path),
                       "--model-version", "v2", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_out(out)
    inv2, _ = expected(traffic, -3.0)
    assert [r["invalid"] for r in rows] == inv2
    assert all(r["changed"] is None for r in rows)  # no original decision to compare
    assert summary["ivr_before"] is None and summary["ivr_after"] == pytest.approx(np.mean(inv2))


# ------------------------------------------------------------------ errors

def test_bad_record_is_named(tmp_path, registry, capsys):
    p = tmp_path / "bad.jsonl"
    good = {"click": make_clicks(1)[0], "features": [0.0] * N_FEATURES, "invalid": False,
            "reason": "model"}
    bad = {**good, "click": {**good["click"], "device": "toaster"}}
    p.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    rc = slidr_main(["replay", "--decisions", str(p), "--registry", str(registry.path),
                     "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "row 1" in err and "device" in err
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written
    p.write_text("{not json\n")
    assert slidr_main(["replay", "--decisions", str(p), "--registry", str(registry.path),
                       "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not a JSON line" in capsys.readouterr().err
    p.write_text(json.dumps({**good, "features": [1.0, 2.0]}) + "\n")
    assert slidr_main(["replay", "--decisions", str(p), "--registry", str(registry.path),
                       "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"expected {N_FEATURES}" in capsys.readouterr().err


def test_argument_errors(tmp_path, registry, capsys):
    out = str(tmp_path / "o.jsonl")
    assert slidr_main(["replay", "--clicks", str(tmp_path / "x.parquet"), "--registry",
                       str(registry.path), "--out", out, "--only-fail-open"]) == 2
    assert "--only-fail-open needs --decisions" in capsys.readouterr().err
    assert slidr_main(["replay", "--decisions", str(tmp_path), "--bundle",
                       str(registry.path / "bundles" / "v1"), "--model-version", "v1",
                       "--out", out]) == 2
    assert "--model-version needs --registry" in capsys.readouterr().err
    assert slidr_main(["replay", "--decisions", str(tmp_path / "nope"), "--registry",
                       str(registry.path), "--model-version", "v9", "--out", out]) == 2
    assert "v9" in capsys.readouterr().err
    assert slidr_main(["replay", "--decisions", str(tmp_path / "nope"), "--registry",
                       str(registry.path), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err


def test_tampered_bundle_is_refused(tmp_path, registry, traffic):
    import shutil

    from slidr.offline.replay_decisions import load_model
    b = tmp_path / "v2"
    shutil.copytree(registry.path / "bundles" / "v2", b)
    b.chmod(0o755)
    (b / "thresholds.json").chmod(0o644)
    (b / "thresholds.json").write_text(json.dumps({**THRESHOLDS, "default": 0.1}))
    with pytest.raises(RuntimeError, match="checksum"):
        load_model(bundle=b)


def test_partial_file_of_a_killed_daemon(tmp_path, registry, traffic):
    """A killed daemon leaves decisions-*.msgpack.part, possibly with a torn last record."""
    from slidr.offline.replay_decisions import load_model, replay_decisions

    from slidr.decision_file import read_file
    logdir = write_daemon_log(tmp_path / "dlog", traffic)
    files = sorted(logdir.glob("decisions-*.msgpack"))
    last = files[-1]
    data = last.read_bytes()
    n_last = sum(1 for _ in read_file(last))
    last.unlink()
    (logdir / (last.name + ".part")).write_bytes(data[:-7])  # torn last record
    m = load_model(registry=registry.path)
    s = replay_decisions(logdir, m, tmp_path / "a.jsonl")
    assert s.read == len(traffic[0]) - n_last
    s = replay_decisions(logdir, m, tmp_path / "b.jsonl", include_partial=True)
    assert s.read == len(traffic[0]) - 1


def test_features_as_raw_float32_bytes(tmp_path, registry, traffic):
    """Also accept a row of N_FEATURES little-endian float32 as bytes (a compact log variant)."""
    import msgpack
    from slidr.offline.replay_decisions import load_model, replay_decisions
    clicks, x, decisions, feats = traffic
    p = tmp_path / "decisions-x.msgpack"
    with open(p, "wb") as f:
        for i in range(20):
            f.write(msgpack.packb({"click": clicks[i], "decision": decisions[i], "model": "v1",
                                   "features": x[i].astype("<f4").tobytes()}))
    s = replay_decisions(tmp_path, load_model(registry=registry.path, version="v1"),
                         tmp_path / "o.jsonl")
    assert s.replayed == 20 and s.changed == 0


def test_runs_are_listed_and_selected(tmp_path, registry, traffic, capsys):
    """Two daemon runs in one directory: --list-runs names both, --run replays only one."""
    from slidr.slidrd.decision_log import DecisionLog

    from slidr.cli import main
    clicks, x, decisions, feats = traffic
    d = tmp_path / "dlog"
    ok = [i for i in range(len(clicks)) if feats[i] is not None][:60]
    for run, idx in (("20261201T000000-11", ok[:40]), ("20261202T000000-22", ok[40:])):
        log = DecisionLog(str(d), run_id=run)
        log.submit([clicks[i] for i in idx], np.stack([x[i] for i in idx]),
                   [decisions[i] for i in idx], "v1")
        log.close()
    assert main(["replay", "--decisions", str(d), "--list-runs"]) == 0
    out = capsys.readouterr().out
    assert "20261201T000000-11" in out and "20261202T000000-22" in out
    assert main(["replay", "--decisions", str(d), "--run", "20261202T000000-22", "--registry",
                 str(registry.path), "--out", str(tmp_path / "o.jsonl"), "--json",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["read"] == 20
    assert main(["replay", "--decisions", str(d), "--run", "nosuch", "--registry",
                 str(registry.path), "--out", str(tmp_path / "p.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "20261201T000000-11" in err


def test_a_damaged_file_is_reported_and_the_rest_replayed(tmp_path, registry, traffic):
    """A corrupt middle file and a truncated one: each named with its byte position; every
    record of the intact files (and those before the damage) is still replayed."""
    from slidr.offline.replay_decisions import load_model, replay_decisions

    from slidr.decision_file import read_file
    logdir = write_daemon_log(tmp_path / "dlog", traffic)
    files = sorted(logdir.glob("decisions-*.msgpack"))
    assert len(files) >= 3
    counts = [sum(1 for _ in read_file(p)) for p in files]
    corrupt, torn = files[1], files[2]
    data = corrupt.read_bytes()
    cut = len(data) // 2
    corrupt.write_bytes(data[:cut] + b"\xc1" * 64 + data[cut:])  # 0xc1: never valid msgpack
    torn.write_bytes(torn.read_bytes()[:-5])
    s = replay_decisions(logdir, load_model(registry=registry.path), tmp_path / "o.jsonl")
    assert len(s.problems) == 2
    assert str(corrupt) in s.problems[0] and "corrupt at byte" in s.problems[0]
    assert str(torn) in s.problems[1] and "truncated at byte" in s.problems[1]
    intact = sum(c for p, c in zip(files, counts, strict=True) if p not in (corrupt, torn))
    assert intact < s.read < sum(counts)
    assert s.read >= intact + counts[2] - 1  # the torn file loses only its last record
