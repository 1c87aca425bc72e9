"""Feature replay = the daemon's kernel on the same clicks, whatever the batch size or store."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from slidr.offline import replay

from slidr import featurespec as fs
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
        "purchased": pa.array(rng.random(n) < 0.05), "is_robot": pa.array(rng.random(n) < 0.2),
        # spec 4's entity keys: a few ads and user agents, some null or empty
        "ad_id": pa.array([(None, "", f"ad{v}", f"ad{v}")[v % 4] for v in rng.integers(0, 40, n)],
                          pa.string()),
        "user_agent": pa.array([(None, "", "Mozilla/5.0 (X11)", "okhttp/4", "curl/8")[v]
                                for v in rng.integers(0, 5, n)], pa.string())})
    d = tmp_path_factory.mktemp("replay")
    pq.write_table(tbl, d / "clicks.parquet")
    pcsv.write_csv(tbl, d / "clicks.csv")
    return d, tbl


def test_replay_equals_the_daemon_kernel(log):
    d, tbl = log
    rp = replay.replay_log(d / "clicks.parquet", progress=False)
    ref = FeatureKernel().features(batch_from_table(tbl))  # one big batch, like a daemon would
    assert rp.features.dtype == np.float32 and rp.features.shape == (tbl.num_rows, fs.N_FEATURES)
    np.testing.assert_array_equal(rp.features, ref)
    np.testing.assert_array_equal(rp.ts, tbl.column("ts").to_numpy())
    np.testing.assert_array_equal(rp.purchased, tbl.column("purchased").to_numpy())
    np.testing.assert_array_equal(rp.is_robot, tbl.column("is_robot").to_numpy())
    assert rp.user_id == tbl.column("user_id").to_pylist()
    _, sh, _, _, eh = hash_keys(batch_from_table(tbl))
    assert eh[:, 0].any() and eh[:, 2].any() and not eh.all()
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


@pytest.mark.skipif(not NATIVE, reason="native kernel not built")
def test_hash_key_columns_native_equals_reference_twin_and_hash_keys(log):
    from slidr.ext import _kernel, reference

    _, tbl = log
    # Empty user ids (logged in or not) fall back to the session key, as contract.user_key does.
    uid = pa.array(tbl.column("user_id").to_pylist()[:-3] + ["", "", "ü-ß"], pa.string())
    li = tbl.column("logged_in").to_numpy(zero_copy_only=False).copy()
    li[-3:] = [True, False, True]
    t2 = tbl.set_column(tbl.schema.get_field_index("user_id"), "user_id", uid)
    t2 = t2.set_column(t2.schema.get_field_index("logged_in"), "logged_in", pa.array(li))
    want = hash_keys(batch_from_table(t2))
    sess, ip = t2.column("session_id"), t2.column("ip")
    ad, ua = t2.column("ad_id"), t2.column("user_agent")
    ua_dict = ua.combine_chunks().dictionary_encode()  # as the replay reads it from Parquet
    assert want[4][:, 1].any()
    for args in [(uid, sess, ip, li, ad, ua),  # arrow buffers
                 (uid.slice(0), sess.combine_chunks(), ip.combine_chunks(), li,
                  ad.combine_chunks(), ua_dict),
                 (uid, sess, ip, li, ad.combine_chunks().dictionary_encode(), ua.to_pylist()),
                 (uid.to_pylist(), sess.to_pylist(), ip.to_pylist(), li, ad.to_pylist(),
                  ua.to_pylist())]:  # Python lists
        for got in (_kernel.hash_key_columns(*args), reference.hash_key_columns(*args)):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
    # Sliced arrays (non-zero offset) and large_string, without a user_id column.
    a, b = 17, 2100
    got = _kernel.hash_key_columns(None, pc_cast(sess.slice(a, b - a), pa.large_string()),
                                   ip.slice(a, b - a), np.zeros(b - a, bool))
    ref = reference.hash_key_columns(None, sess.slice(a, b - a).to_pylist(),
                                     ip.slice(a, b - a).to_pylist(), np.zeros(b - a, bool))
    for g, w in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got[0], got[1])  # logged out: user key = session key
    with pytest.raises(TypeError):
        _kernel.hash_key_columns(None, pa.array(["s", None]), pa.array(["1.2.3.4"] * 2),
                                 np.zeros(2, bool))


def pc_cast(arr, typ):
    import pyarrow.compute as pc
    return pc.cast(arr, typ)


def test_replay_without_threads_is_the_same(log):
    d, _ = log
    a = replay.replay_log(d / "clicks.parquet", progress=False, batch_size=700, threads=False)
    b = replay.replay_log(d / "clicks.parquet", progress=False, batch_size=700)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.session_hash, b.session_hash)
    assert a.user_id == b.user_id


@pytest.mark.skipif(not NATIVE, reason="native kernel not built")
def test_update_tables_split_equals_update():
    from slidr.ext import _kernel

    rng = np.random.default_rng(3)
    n = 20_000
    ts = np.sort(T0 + rng.integers(0, 5 * 86_400_000, n)).astype(np.int64)
    uh, sh, ih = (rng.integers(0, k, n).astype(np.uint64) for k in (500, 900, 300))
    hll = rng.integers(0, 61, (n, 4)).astype(np.uint8)
    # entity keys, 0: absent; the kinds' keys apart, as their hash namespaces keep them
    eh = rng.integers(0, 400, (n, 3)).astype(np.uint64)
    eh += np.where(eh > 0, np.array([0, 1000, 2000], np.uint64), np.uint64(0))
    li = rng.integers(0, 2, n).astype(np.uint8)  # logged-in flags (the IP table's)
    one = _kernel.EmbeddedStore(sweep_every=8, sweep_grace_ms=0)
    two = _kernel.EmbeddedStore(sweep_every=8, sweep_grace_ms=0)
    three = [_kernel.EmbeddedStore(sweep_every=8, sweep_grace_ms=0) for _ in range(3)]
    for a in range(0, n, 3001):
        b = min(a + 3001, n)
        want = one.update(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], None, eh[a:b],
                          li[a:b])
        got = np.full((b - a, fs.RAW_WIDTH), np.nan)
        two.update_tables(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], got, 4, None, eh[a:b],
                          li[a:b])
        two.update_tables(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], got, 8, None, eh[a:b])
        two.update_tables(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], got, 1)
        two.update_tables(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], got, 2)
        np.testing.assert_array_equal(got, want)
        # one entity kind per call (one key set per row, as Spark explodes a click): the
        # other kinds' columns are the absent values
        e0, w = fs.RAW_SPANS["entity"][0], fs.ENTITY_RAW_WIDTH
        for k in range(3):
            ek = np.zeros_like(eh[a:b])
            ek[:, k] = eh[a:b, k]
            got_k = np.full((b - a, fs.RAW_WIDTH), np.nan)
            three[k].update_tables(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], got_k, 8,
                                   None, ek)
            cols = slice(e0 + w * k, e0 + w * (k + 1))
            np.testing.assert_array_equal(got_k[:, cols], want[:, cols])
            absent = np.tile(fs.ENTITY_ABSENT, (b - a, 1))
            for k2 in {0, 1, 2} - {k}:
                np.testing.assert_array_equal(got_k[:, e0 + w * k2:e0 + w * (k2 + 1)], absent)
    assert one.stats()["keys"] == two.stats()["keys"]
    # The sweep only frees memory: on time-ordered clicks its pace never changes the counters.
    for kw in ({"sweep_scan": 1}, {"sweep_every": 1 << 40}):
        other = _kernel.EmbeddedStore(sweep_every=kw.get("sweep_every", 8), sweep_grace_ms=0,
                                      sweep_scan=kw.get("sweep_scan", 8))
        np.testing.assert_array_equal(other.update(ts, uh, sh, ih, hll, None, eh, li),
                                      _kernel.EmbeddedStore(sweep_every=8, sweep_grace_ms=0)
                                      .update(ts, uh, sh, ih, hll, None, eh, li))
    with pytest.raises(ValueError):
        _kernel.EmbeddedStore(sweep_scan=0)


@pytest.mark.parametrize("bad", ["ua", "ip", "ip6", "device"])
def test_replay_reports_bad_rows_with_numbers(log, tmp_path, bad):
    from slidr.contract import ContractError

    _, tbl = log
    n = tbl.num_rows
    row = 2345
    col = {"ua": "user_agent", "ip": "ip", "ip6": "ip", "device": "device"}[bad]
    val = {"ua": "x" * 513, "ip": "10.1.2.256", "ip6": "fe80::1::2", "device": "tv"}[bad]
    if col == "user_agent":
        vals = ["Mozilla/5.0"] * n  # few distinct values: read as a dictionary
    else:
        vals = tbl.column(col).to_pylist()
    vals[row] = val
    if bad == "ip6":
        vals[row - 5] = "2001:db8::1"  # valid IPv6 before the bad one
    t2 = (tbl.set_column(tbl.schema.get_field_index(col), col, pa.array(vals, pa.string()))
          if col in tbl.column_names else tbl.append_column(col, pa.array(vals, pa.string())))
    for name, write in (("c.parquet", pq.write_table), ("c.csv", pcsv.write_csv)):
        write(t2, tmp_path / name)
        with pytest.raises(ContractError) as ei:
            replay.replay_log(tmp_path / name, progress=False)
        assert ei.value.field == col and ei.value.row == row and ei.value.value == val


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000, 3000, 10_000])
@pytest.mark.parametrize("threads", [True, False])
def test_chunked_replay_equals_the_whole_replay(log, chunk_rows, threads):
    """iter_replay carries the counters across chunks: its chunks, concatenated, equal the
    all-at-once replay exactly, whatever the chunk size, and come in log order."""
    d, tbl = log
    whole = replay.replay_log(d / "clicks.parquet", progress=False)
    stream = replay.iter_replay(d / "clicks.parquet", progress=False, threads=threads,
                                chunk_rows=chunk_rows, batch_size=min(chunk_rows, 256))
    chunks = list(stream)
    assert [c.start for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks])[:-1])
    assert all(len(c) <= chunk_rows for c in chunks)
    assert stream.rows == tbl.num_rows == sum(len(c) for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), whole.features)
    np.testing.assert_array_equal(np.concatenate([c.ts for c in chunks]), whole.ts)
    np.testing.assert_array_equal(np.concatenate([c.session_hash for c in chunks]),
                                  whole.session_hash)
    np.testing.assert_array_equal(np.concatenate([c.is_robot for c in chunks]), whole.is_robot)
    assert sum((c.user_id for c in chunks), []) == whole.user_id


def test_chunked_replay_reference_twin_and_duplicates(tmp_path, log):
    """Duplicated clicks (same click sent twice, same ms) and many clicks in one ms: the
    chunked replay, native or the reference twin, equals the whole replay."""
    _, tbl = log
    idx = np.sort(np.concatenate([np.arange(tbl.num_rows), np.arange(0, tbl.num_rows, 3)]))
    dup = tbl.take(pa.array(idx))
    ts = dup.column("ts").to_numpy().copy()
    ts[100:400] = ts[100]  # 300 clicks in one millisecond
    dup = dup.set_column(dup.column_names.index("ts"), "ts", pa.array(ts))
    pq.write_table(dup, tmp_path / "dup.parquet")
    whole = replay.replay_log(tmp_path / "dup.parquet", progress=False)
    for use_native in ([True, False] if NATIVE else [False]):
        chunks = list(replay.iter_replay(tmp_path / "dup.parquet", progress=False,
                                         use_native=use_native, chunk_rows=97))
        np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]),
                                      whole.features)


def test_a_replay_stream_is_iterated_once(log):
    d, _ = log
    stream = replay.iter_replay(d / "clicks.parquet", progress=False, chunk_rows=1000)
    assert len(list(stream)) == 3
    with pytest.raises(RuntimeError, match="iterated once"):
        list(stream)
    with pytest.raises(ValueError, match="chunk_rows"):
        replay.iter_replay(d / "clicks.parquet", chunk_rows=0)


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000, 3000])
def test_chunked_replay_late_clicks_and_out_of_order(tmp_path, log, chunk_rows):
    """Late clicks (a burst stamped at an earlier time but still in ts order) replay the same in
    chunks as whole; a click out of ts order is refused at its row whatever the chunk size,
    including on a chunk boundary (the order check carries the last ts across chunks)."""
    from slidr.contract import ContractError

    _, tbl = log
    ts = tbl.column("ts").to_numpy().copy()
    # Late clicks: rows 1000..1099 carry the timestamp of row 999 (arrived late, logged in order).
    ts[1000:1100] = ts[999]
    late = tbl.set_column(tbl.column_names.index("ts"), "ts", pa.array(ts))
    pq.write_table(late, tmp_path / "late.parquet")
    whole = replay.replay_log(tmp_path / "late.parquet", progress=False)
    chunks = list(replay.iter_replay(tmp_path / "late.parquet", progress=False,
                                     chunk_rows=chunk_rows, batch_size=min(chunk_rows, 256)))
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), whole.features)
    # Out of order: row 1400 (a chunk boundary for 1 and 7) goes back in time.
    bad_row = 1400
    ts2 = tbl.column("ts").to_numpy().copy()
    ts2[bad_row] = ts2[0] - 1
    ooo = tbl.set_column(tbl.column_names.index("ts"), "ts", pa.array(ts2))
    pq.write_table(ooo, tmp_path / "ooo.parquet")
    with pytest.raises(ContractError) as ei:
        list(replay.iter_replay(tmp_path / "ooo.parquet", progress=False, chunk_rows=chunk_rows))
    assert ei.value.field == "ts" and ei.value.row == bad_row
