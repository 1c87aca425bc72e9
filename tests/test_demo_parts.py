"""slidr demo's pieces that decide what it reports: which clicks are the held-out day, which
warm the daemon up, and the live-vs-offline comparison."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slidr import demo

DAY = 86_400_000


def _clicks(path, ts):
    n = len(ts)
    pq.write_table(pa.table({
        "click_id": [f"c{i}" for i in range(n)], "ts": np.asarray(ts, dtype=np.int64),
        "session_id": [f"s{i}" for i in range(n)], "user_id": [None] * n,
        "ip": ["10.0.0.1"] * n, "device": ["mobile"] * n, "logged_in": [False] * n,
        "purchased": [False] * n, "is_robot": [False] * n}), path / "clicks.parquet")


def test_held_out_day_is_the_last_utc_day_and_warm_up_is_every_earlier_day(tmp_path):
    start = 20_000 * DAY + 18 * 3_600_000  # 18:00 UTC: the first "day" is 6 hours long
    ts = [start, start + 3_600_000,  # UTC day 0
          start + 7 * 3_600_000,  # day 1
          start + 30 * 3_600_000, start + 50 * 3_600_000,  # day 2 (00:00, 20:00)
          start + 55 * 3_600_000, start + 56 * 3_600_000]  # day 3: the held-out day
    _clicks(tmp_path, ts)
    warm, meas, truth = demo._load_days(tmp_path, max_replay=100)
    # The last UTC day, as `slidr train` splits it (counting 24 h from the first click would
    # put ts[4] into it).
    assert [c["ts"] for c in meas] == ts[5:]
    assert [c["ts"] for c in warm] == ts[:5]
    assert list(truth["ts"]) == ts[5:]
    warm1, _meas, _ = demo._load_days(tmp_path, max_replay=100, warm_days=1)
    assert [c["ts"] for c in warm1] == ts[3:5]
    _w, meas1, _ = demo._load_days(tmp_path, max_replay=1)
    assert len(meas1) == 1


def _scores(path, ts, split, score):
    pq.write_table(pa.table({"ts": np.asarray(ts, dtype=np.int64), "split": split,
                             "score_model": np.asarray(score, dtype=np.float32)}), path)


def test_offline_parity_counts_equal_decisions(tmp_path):
    p = tmp_path / "scores.parquet"
    _scores(p, [1, 2, 3, 10, 11, 12], ["val"] * 3 + ["test"] * 3, [0.1, 0.2, 0.3, 0.2, 0.7, 0.9])
    live = {"ts": np.array([10, 11, 12]), "score": np.array([0.2, 0.7, 0.0]),
            "threshold": np.array([0.5, 0.5, 0.5]), "invalid": np.array([False, True, False]),
            "model": np.array([True, True, False])}  # the third failed open: not compared
    r = demo._offline_parity(p, {"live": live})
    assert r == {"compared": 2, "decisions_equal": 2, "max_abs_score_diff": r["max_abs_score_diff"]}
    assert r["max_abs_score_diff"] < 1e-6
    live2 = {**live, "invalid": np.array([True, True, False])}  # a decision that disagrees
    r2 = demo._offline_parity(p, {"live": live2})
    assert r2["decisions_equal"] == 1
    shifted = {**live, "ts": np.array([11, 12, 13])}
    assert demo._offline_parity(p, {"live": shifted})["compared"] == 0
    assert demo._offline_parity(tmp_path / "missing.parquet", {"live": live}) is None
    res = {"live": live}
    demo._offline_parity(p, res)
    assert "live" not in res  # never written to demo.json
