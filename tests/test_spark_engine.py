"""The Spark engine (offline/spark_engine.py) computes the single-machine replay's features
exactly, in Spark local mode with several partitions, and survives a killed Python worker.

Needs pyspark (the `spark` extra) and Java 17; `make test` sets SLIDR_REQUIRE_THIRD_PARTY=1 so a
missing pyspark fails instead of silently skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from slidr.offline import replay

from slidr.contract import ContractError


def _need_spark() -> None:
    try:
        import pyspark  # noqa: F401
        ok = shutil.which("java") is not None
        why = "java not on PATH"
    except ImportError:
        ok, why = False, "pyspark not installed (pip install -e '.[spark]')"
    if not ok:
        if os.environ.get("SLIDR_REQUIRE_THIRD_PARTY") == "1":
            pytest.fail(f"Spark engine tests need it: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def spark():
    _need_spark()
    from slidr.offline.spark_engine import spark_session
    # local[4,2]: 4 cores, a failed task is tried again once (spark.task.maxFailures = 2).
    s = spark_session("local[4,2]", app="slidr-test")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from slidr.offline import simulate as s
    out = tmp_path_factory.mktemp("sim") / "log"
    s.write_outputs(s.simulate(s.SimParams(days=3, clicks_per_day=6_000, seed=5)), out)
    return out / "clicks.parquet"


def _spark_replay(spark, path: Path, tmp: Path, partitions: int = 6):
    from slidr.offline.spark_engine import replay_spark
    return replay_spark(path, spark=spark, partitions=partitions, work=tmp)


def _assert_same(a: replay.Replay, b: replay.Replay) -> None:
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.session_hash, b.session_hash)
    np.testing.assert_array_equal(a.logged_in, b.logged_in)
    np.testing.assert_array_equal(a.device, b.device)
    np.testing.assert_array_equal(a.purchased, b.purchased)
    assert a.user_id == b.user_id


def test_spark_features_equal_the_replay_on_a_multi_day_log(spark, sim, tmp_path) -> None:
    local = replay.replay_log(sim, progress=False)
    got = _spark_replay(spark, sim, tmp_path, partitions=6)
    _assert_same(got, local)
    assert got.store_name.startswith("spark:")
    # Counters really moved (not a trivially equal all-zero matrix).
    assert float(np.abs(local.features).sum()) > 0


def test_clicks_with_and_without_ad_and_user_agent(spark, sim, tmp_path) -> None:
    """The entity table (per ad, IP x ad, user agent): clicks with both fields, with one,
    with none (null or empty), a log without either column, and an ad / user agent seen on
    many partitions' worth of IPs; equal to the single-machine replay, and the entity
    features really move."""
    from slidr.featurespec import FEATURE_NAMES
    tbl = pq.read_table(sim)
    n = tbl.num_rows
    rng = np.random.default_rng(9)
    ad = tbl.column("ad_id").to_pylist()
    ua = tbl.column("user_agent").to_pylist()
    pick = rng.random((n, 2))
    ad = [None if p < 0.15 else "" if p < 0.2 else v for v, p in zip(ad, pick[:, 0],
                                                                    strict=True)]
    ua = [None if p < 0.15 else "" if p < 0.2 else v for v, p in zip(ua, pick[:, 1],
                                                                    strict=True)]
    ad[::97] = ["ad-everywhere"] * len(ad[::97])
    t = tbl.set_column(tbl.column_names.index("ad_id"), "ad_id", pa.array(ad, pa.string()))
    t = t.set_column(t.column_names.index("user_agent"), "user_agent",
                     pa.array(ua, pa.string()))
    path = tmp_path / "absent.parquet"
    pq.write_table(t, path)
    local = replay.replay_log(path, progress=False)
    _assert_same(_spark_replay(spark, path, tmp_path / "w", partitions=5), local)
    ent = [FEATURE_NAMES.index(f) for f in FEATURE_NAMES if f.startswith(("ad_", "ipad_", "ua_"))]
    assert float(np.abs(local.features[:, ent]).sum()) > 0
    none = np.array([not a and not u for a, u in zip(ad, ua, strict=True)])
    assert none.sum() > 10
    # Neither column: every entity feature is the absent value on both engines.
    bare = tmp_path / "bare.parquet"
    pq.write_table(t.drop_columns(["ad_id", "user_agent"]), bare)
    local = replay.replay_log(bare, progress=False)
    _assert_same(_spark_replay(spark, bare, tmp_path / "w2", partitions=3), local)
    assert (local.features[:, ent] == local.features[:1, ent]).all()


def test_duplicates_and_ties_are_counted_in_log_order(spark, sim, tmp_path) -> None:
    """Every third click sent twice (same ms), 300 clicks in one millisecond, and the
    same-ms clicks of different users interleaved: the tie-break is the log's row order, on
    both engines."""
    tbl = pq.read_table(sim)
    idx = np.sort(np.concatenate([np.arange(tbl.num_rows), np.arange(0, tbl.num_rows, 3)]),
                  kind="stable")
    dup = tbl.take(pa.array(idx))
    ts = dup.column("ts").to_numpy().copy()
    ts[100:400] = ts[100]
    ts[5000:5600] = ts[5000]
    dup = dup.set_column(dup.column_names.index("ts"), "ts", pa.array(ts))
    # Reverse the rows inside the tied block: same timestamps, another arrival order.
    order = np.arange(dup.num_rows)
    order[5000:5600] = order[5000:5600][::-1]
    dup = dup.take(pa.array(order))
    path = tmp_path / "dup.parquet"
    pq.write_table(dup, path)
    _assert_same(_spark_replay(spark, path, tmp_path / "w", partitions=5),
                 replay.replay_log(path, progress=False))


def test_out_of_order_log_is_refused_like_the_replay(spark, sim, tmp_path) -> None:
    """A click earlier than the row before breaks the log contract: both engines refuse it
    with the same row and field (late clicks are the daemon's business, docs/spark.md)."""
    tbl = pq.read_table(sim)
    ts = tbl.column("ts").to_numpy().copy()
    ts[700] = ts[699] - 60_000
    path = tmp_path / "late.parquet"
    pq.write_table(tbl.set_column(tbl.column_names.index("ts"), "ts", pa.array(ts)), path)
    with pytest.raises(ContractError) as local:
        replay.replay_log(path, progress=False)
    with pytest.raises(ContractError) as sp:
        _spark_replay(spark, path, tmp_path / "w")
    assert str(sp.value) == str(local.value)


def test_a_killed_worker_is_retried_and_the_features_are_unchanged(spark, sim, tmp_path,
                                                                   monkeypatch) -> None:
    from slidr.offline import spark_engine
    marker = tmp_path / "killed-once"
    # The first attempt of partition 0 of the first counting stage exits its Python worker
    # (os._exit, as a crash or an OOM kill would); local[4,2] tries the task again.
    monkeypatch.setenv(spark_engine.FAULT_ENV, str(marker))
    got = _spark_replay(spark, sim, tmp_path / "w", partitions=4)
    assert marker.exists(), "the fault was not injected: the test proves nothing"
    _assert_same(got, replay.replay_log(sim, progress=False))


def _local_and_spark_dirs(spark, sim: Path, tmp: Path, partitions: int):
    from slidr.offline import pipeline
    from slidr.offline.spark_engine import build_features_spark
    cust = sim.parent / "customers.parquet"
    plan = pipeline.MemoryPlan(budget=4 << 30, chunk_rows=4096)
    local = pipeline.build_features(sim, pipeline.load_customers(cust), tmp / "local",
                                    pipeline.TrainConfig(progress=False), plan=plan)
    got = build_features_spark(sim, cust, tmp / "spark", spark=spark, partitions=partitions,
                               chunk_rows=4096, work=tmp / "w")
    return local, got


def _assert_same_dir(a, b) -> None:
    from slidr.offline import featurestore as fsm
    assert len(a) == len(b) > 10_000
    for k in ("rows", "day0", "has_robot", "weighting", "columns", "counts"):
        assert a.manifest[k] == b.manifest[k], k
    # The parts end at the same rows (the local replay's chunks); only their names differ.
    assert [(p["start"], p["rows"], p["day_min"], p["day_max"]) for p in a.parts] == \
        [(p["start"], p["rows"], p["day_min"], p["day_max"]) for p in b.parts]
    assert len(a.parts) > 3
    cols = [fsm.FEATURES, *fsm.COLUMNS, "is_robot"]
    x, y = a.load(cols), b.load(cols)
    for c in cols:
        np.testing.assert_array_equal(x[c], y[c], err_msg=c)
    assert float(np.abs(x[fsm.FEATURES]).sum()) > 0 and 0 < x["weak_label"].mean() < 1


def test_executors_write_the_local_feature_directory(spark, sim, tmp_path) -> None:
    """build_features_spark: the executors write the parts (features, weak labels, cells,
    strata) and the driver only the manifest; the directory equals the local engine's row by
    row, with range partitions that cut across the parts' boundaries."""
    local, got = _local_and_spark_dirs(spark, sim, tmp_path, partitions=6)
    _assert_same_dir(local, got)
    assert got.store_name.startswith("spark:")
    assert sorted(p.name for p in (tmp_path / "spark").iterdir()) == \
        sorted(["manifest.json", *(p["file"] for p in got.parts)])


def test_a_killed_writer_is_retried_and_the_directory_is_unchanged(spark, sim, tmp_path,
                                                                   monkeypatch) -> None:
    from slidr.offline import spark_engine
    marker = tmp_path / "killed-once"
    # The first attempt of the writing stage's partition 0 exits after writing its first part.
    monkeypatch.setenv(spark_engine.WRITE_FAULT_ENV, str(marker))
    local, got = _local_and_spark_dirs(spark, sim, tmp_path, partitions=4)
    assert marker.exists(), "the fault was not injected: the test proves nothing"
    _assert_same_dir(local, got)
