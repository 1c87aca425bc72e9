"""A simulated day through a real slidrd and through the offline replay of the same log: the
same features and the same decisions for every click (embedded store, compiled and
pure-Python daemon; Redis store).

The log's clicks carry feature spec 4's optional fields in every form a client sends: ad_id
and user_agent present, null, missing from the request (null in the log) and empty; the
entity counters (per ad, per IP x ad, per user agent) must be what the replay computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from daemon_helpers import Client, Daemon, make_registry
from slidr.slidrd.decision_log import read_decisions

from slidr.featurespec import FEATURE_NAMES

ENTITY_FEATURES = [f for f in FEATURE_NAMES if f.startswith(("ad_", "ipad_", "ua_"))]


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One simulated day (clicks in log order) with ad_id / user_agent made absent on some
    rows: null in the log; in the requests null, missing or empty (all three are absent)."""
    from slidr.offline import simulate as s
    out = tmp_path_factory.mktemp("day") / "log"
    s.write_outputs(s.simulate(s.SimParams(days=1, clicks_per_day=3_000, seed=11)), out)
    tbl = pq.read_table(out / "clicks.parquet")
    n = tbl.num_rows
    rng = np.random.default_rng(3)
    no_ad = rng.random(n) < 0.2
    no_ua = rng.random(n) < 0.2
    ad = [None if no_ad[i] else v for i, v in enumerate(tbl.column("ad_id").to_pylist())]
    ua = [None if no_ua[i] else v for i, v in enumerate(tbl.column("user_agent").to_pylist())]
    tbl = tbl.set_column(tbl.column_names.index("ad_id"), "ad_id", pa.array(ad, pa.string()))
    tbl = tbl.set_column(tbl.column_names.index("user_agent"), "user_agent",
                         pa.array(ua, pa.string()))
    path = out / "absent.parquet"
    pq.write_table(tbl, path)
    fields = ("click_id", "ts", "session_id", "user_id", "ip", "device", "logged_in",
              "tz_offset_min", "user_agent", "ad_id")
    clicks = []
    for i, row in enumerate(tbl.select(list(fields)).to_pylist()):
        for k in ("ad_id", "user_agent"):
            if row[k] is None:  # the three absent forms, in turn
                form = (i + (k == "ad_id")) % 3
                if form == 1:
                    del row[k]
                elif form == 2:
                    row[k] = ""
        if row["user_id"] is None and i % 2:
            del row["user_id"]
        clicks.append(row)
    assert sum("ad_id" not in c for c in clicks) and sum(c.get("ad_id") == "" for c in clicks)
    assert sum("user_agent" not in c for c in clicks)
    assert sum(c.get("ad_id") is None and "ad_id" in c for c in clicks)
    return path, clicks


def _serve(reg: Path, logdir: Path, clicks: list[dict], env: dict[str, str] | None,
           *args: str) -> dict[str, dict]:
    d = Daemon(reg, "--decision-log", str(logdir), "--deadline-ms", "30000",
               "--max-clock-skew-s", "0", "--max-batch", "64", *args, env=env).wait_ready()
    answered: dict[str, dict] = {}
    try:
        with Client(d.port, timeout=60) as c:
            for a in range(0, len(clicks), 500):  # pipelined windows: batches of many sizes
                ids = {c.send("score", ck): ck["click_id"] for ck in clicks[a:a + 500]}
                while ids:
                    m = c.recv()
                    assert m[2] is None, m
                    answered[ids.pop(m[1])] = m[3]
    finally:
        assert d.stop() == 0, d.log()
    return answered


@pytest.mark.parametrize("path", ["native", "pure"])
def test_daemon_equals_offline_replay_on_a_simulated_day(tmp_path, day, path):
    env = {"SLIDR_PURE_PYTHON": "1", "SLIDR_REQUIRE_NATIVE": "0"} if path == "pure" else None
    _check(tmp_path, day, env)


@pytest.mark.redis
def test_daemon_on_redis_equals_offline_replay_on_a_simulated_day(tmp_path, day, redis_server):
    # A socket timeout far above the default 50 ms: on a loaded test machine a script call may
    # stall that long, and a timed-out batch is answered open, not by the model.
    _check(tmp_path, day, None, "--redis", redis_server.url, "--redis-timeout-ms", "10000")


def _check(tmp_path: Path, day: tuple[Path, list[dict]], env: dict[str, str] | None,
           *args: str) -> None:
    from slidr.offline import replay

    from slidr.registry import Registry

    log, clicks = day
    reg = make_registry(tmp_path)
    answered = _serve(reg, tmp_path / "dlog", clicks, env, *args)
    assert len(answered) == len(clicks)
    assert all(d["reason"] == "model" for d in answered.values())
    recs = {r["decision"]["click_id"]: r for r in read_decisions(tmp_path / "dlog")}
    online = np.asarray([recs[c["click_id"]]["features"] for c in clicks], np.float32)

    off = replay.replay_log(log, progress=False)
    np.testing.assert_array_equal(online, off.features)
    # The entity features moved (present keys counted, absent ones not).
    ent = [FEATURE_NAMES.index(f) for f in ENTITY_FEATURES]
    assert len(ent) == 14 and float(np.abs(off.features[:, ent]).sum()) > 0

    # Decisions: the bundle's model and thresholds on the replay's features.
    from slidr.engines import select_scorer
    from slidr.slidrd.model import threshold_table
    b = Registry(reg).current()
    scorer = select_scorer(str(b.model_path), backend="onnxruntime", max_batch=len(clicks))
    scores = scorer.infer(off.features)
    table, _ = threshold_table(b.thresholds)
    thr = table[off.device.astype(np.intp) * 2 + off.logged_in.astype(np.intp)]
    # (Scores to float32 rounding: ONNX Runtime may pick another kernel for another batch
    # size; a decision within that of its threshold is not compared.)
    for i, c in enumerate(clicks):
        d = answered[c["click_id"]]
        assert d["threshold"] == float(thr[i])
        assert d["score"] == pytest.approx(float(scores[i]), abs=1e-6)
        if abs(float(scores[i]) - thr[i]) > 1e-6:
            assert d["invalid"] == bool(scores[i] > thr[i])
    assert 0 < sum(d["invalid"] for d in answered.values()) < len(clicks)
