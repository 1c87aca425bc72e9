"""Feature replay = the daemon's kernel on the same clicks, whatever the batch size or store."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from slidr.offline import replay

from slidr.contract import batch_from_table
from slidr.kernel import NATIVE, FeatureKernel, hash_keys

T0 = 1_700_006_400_000


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    rng = np.random.default_rng(5)
    n = 3000
    ts = np.sort(T0 + rng.integers(0, 3 * 86_400_000, n)).astype(np.int64)
    li = rng.random(n) < 0.4
    tbl = pa.table({
        "click_id": [f"c{i}" for i in range(n)], "ts": ts,
        "session_id": [f"s{v}" for v in rng.integers(0, 300, n)],
        "user_id": pa.array([f"u{v}" if li[i] else None
                             for i, v in enumerate(rng.integers(0, 100, n))], pa.string()),
        "ip": [f"10.1.{a}.{b}" for a, b in rng.integers(0, 20, (n, 2))],
        "device": [("desktop", "mobile", "app")[v] for v in rng.integers(0, 3, n)],
        "logged_in": pa.array(li), "tz_offset_min": pa.array(rng.integers(-300, 300, n),
                                                             pa.int32()),
        "purchased": pa.array(rng.random(n) < 0.05), "is_robot": pa.array(rng.random(n) < 0.2)})
    d = tmp_path_factory.mktemp("replay")
    pq.write_table(tbl, d / "clicks.parquet")
    pcsv.write_csv(tbl, d / "clicks.csv")
    return d, tbl


def test_replay_equals_the_daemon_kernel(log):
    d, tbl = log
    rp = replay.replay_log(d / "clicks.parquet", progress=False)
    ref = FeatureKernel().features(batch_from_table(tbl))  # one big batch, like a daemon would
    assert rp.features.dtype == np.float32 and rp.features.shape == (tbl.num_rows, 24)
    np.testing.assert_array_equal(rp.features, ref)
    np.testing.assert_array_equal(rp.ts, tbl.column("ts").to_numpy())
    np.testing.assert_array_equal(rp.purchased, tbl.column("purchased").to_numpy())
    np.testing.assert_array_equal(rp.is_robot, tbl.column("is_robot").to_numpy())
    assert rp.user_id == tbl.column("user_id").to_pylist()
    _, sh, _, _ = hash_keys(batch_from_table(tbl))
    np.testing.assert_array_equal(rp.session_hash, sh)


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_batch_size_changes_speed_not_features(log, batch):
    d, _ = log
    a = replay.replay_log(d / "clicks.parquet", progress=False, batch_size=batch)
    b = replay.replay_log(d / "clicks.parquet", progress=False)
    np.testing.assert_array_equal(a.features, b.features)


def test_csv_and_parquet_replay_alike(log):
    d, _ = log
    a = replay.replay_log(d / "clicks.csv", progress=False)
    b = replay.replay_log(d / "clicks.parquet", progress=False)
    np.testing.assert_array_equal(a.features, b.features)


@pytest.mark.skipif(not NATIVE, reason="native kernel not built")
def test_native_replay_matches_reference_twin(log):
    d, _ = log
    a = replay.replay_log(d / "clicks.parquet", progress=False, use_native=True)
    b = replay.replay_log(d / "clicks.parquet", progress=False, use_native=False)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)


@pytest.mark.redis
def test_replay_through_redis_store(log, redis_server):
    store_redis = pytest.importorskip("slidr.store_redis")
    d, _ = log
    store = store_redis.RedisStore(redis_server.url)
    try:
        a = replay.replay_log(d / "clicks.parquet", store=store, progress=False, batch_size=512)
    finally:
        store.close()
    b = replay.replay_log(d / "clicks.parquet", progress=False)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)
