"""The Redis store against the embedded one, on real throwaway redis-servers.

Tolerance: none. Lua 5.1 numbers are C doubles, the script keeps the reference's operation
order, and math.exp is the same libm exp as the native kernel's on one machine, so the raw
counters are compared with exact ==.
"""

from __future__ import annotations

import struct
import threading
import time

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slidr.ext import reference

from slidr import featurespec as fs
from slidr.store_redis import TTL_REFRESH_MS, RedisStore, StoreUnavailable
from slidr.testing.redis_server import RedisServer

native = pytest.importorskip("slidr.ext._kernel")
pytestmark = pytest.mark.redis

HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_767_225_600_000 - 5
STEPS = [0, 1, 999, 60_000, HOUR - 1, HOUR, DAY, DAY + 1, fs.SESSION_TTL_MS + 1,
         fs.USER_TTL_MS + 1, 3 * DAY]

_prefix_seq = iter(range(1_000_000))


def _prefix() -> str:
    return f"t{next(_prefix_seq)}:"


@st.composite
def streams(draw, max_clicks: int = 80):
    n = draw(st.integers(1, max_clicks))
    steps = draw(st.lists(st.one_of(st.sampled_from(STEPS), st.integers(0, 5 * HOUR)),
                          min_size=n, max_size=n))
    jitter = draw(st.lists(st.sampled_from([0, 0, -1, -30_000]), min_size=n, max_size=n))
    ts = T0 + np.cumsum(np.array(steps, dtype=np.int64)) + np.array(jitter, dtype=np.int64)
    pool = st.integers(0, draw(st.integers(0, 5)))
    ids = [draw(st.lists(pool, min_size=n, max_size=n)) for _ in range(3)]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4))))
    tz = np.array(draw(st.lists(st.sampled_from([0, 60, -300, 330, -720, 840]), min_size=n,
                                max_size=n)), dtype=np.int16)
    # ads and user agents: a few values (so repeated within a batch), missing or empty
    ads = draw(st.lists(st.sampled_from([None, "", "ad-1", "ad-2", "ad-é3"]), min_size=n,
                        max_size=n))
    uas = draw(st.lists(st.sampled_from([None, "", "Mozilla/5.0", "curl/8"]), min_size=n,
                        max_size=n))
    # logged-in flags, mixed (spec 5's IP logged-in count)
    li = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.uint8)
    return ts, (*ids, ads, uas), cuts, tz, li


def _hashes(ids):
    """-> (uh, sh, ih, hll, eh); ids = (users, sessions, IPs[, ads, user agents])."""
    u, s, i = ids[:3]
    return native.hash_keys([f"u\x00c{x}" for x in u], [f"sé{x}" for x in s],
                            [f"2001:db8::{x}" for x in i], *ids[3:])


def _up(store, ts, h, tz=None, li=None):
    """store.update for h = (uh, sh, ih, hll, eh)."""
    return store.update(ts, *h[:4], tz, h[4], li)


def _feed(store, ts, h, cuts, tz=None, li=None):
    edges = [0, *cuts, len(ts)]
    out = []
    for a, z in zip(edges[:-1], edges[1:], strict=True):
        if z > a:
            out.append(_up(store, ts[a:z], tuple(x[a:z] for x in h),
                           None if tz is None else tz[a:z], None if li is None else li[a:z]))
    return np.concatenate(out)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(streams())
def test_redis_equals_embedded_and_reference(shared_redis, stream):
    ts, ids, cuts, tz, li = stream
    h = _hashes(ids)
    rs = RedisStore(shared_redis.url, prefix=_prefix(), timeout_s=2.0)
    try:
        got = _feed(rs, ts, h, cuts, tz, li)
    finally:
        rs.close()
    want = _feed(native.EmbeddedStore(), ts, h, cuts, tz, li)
    ref = _feed(reference.ReferenceStore(), ts, h, [], tz, li)
    assert got.dtype == np.float64 and got.shape == (len(ts), fs.RAW_WIDTH)
    bad = np.argwhere(got != want)
    assert bad.size == 0, (fs.RAW_COLUMNS[bad[0][1]], got[tuple(bad[0])], want[tuple(bad[0])])
    assert np.array_equal(want, ref)


def test_realistic_day_slice_parity_and_one_round_trip_per_batch(redis_server):
    from slidr.bench.kernel_bench import make_clicks
    b = make_clicks(6000, seed=7, days=0.1)
    h = native.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id, b.user_agent)
    rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=2.0)
    _up(rs, b.ts[:1], tuple(x[:1] for x in h))  # loads the script (NOSCRIPT -> SCRIPT LOAD)
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_resetstat()
    sent = []
    conn_cls = rs._r.connection_pool.connection_class
    orig = conn_cls.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(1)
        return orig(self, command, check_health)

    conn_cls.send_packed_command = counting
    try:
        got = [_up(rs, b.ts[i:i + 500], tuple(x[i:i + 500] for x in h))
               for i in range(1, len(b), 500)]
    finally:
        conn_cls.send_packed_command = orig
    n_batches = len(got)
    stats = admin.info("commandstats")
    assert len(sent) == n_batches  # one request per batch on the wire
    assert stats["cmdstat_evalsha"]["calls"] == n_batches
    client_cmds = {k for k in stats if k not in ("cmdstat_evalsha", "cmdstat_get",
                                                  "cmdstat_mget", "cmdstat_set",
                                                  "cmdstat_setrange",
                                                  "cmdstat_config|resetstat", "cmdstat_info")}
    assert not client_cmds, client_cmds
    es = native.EmbeddedStore()
    _up(es, b.ts[:1], tuple(x[:1] for x in h))
    want = [_up(es, b.ts[i:i + 500], tuple(x[i:i + 500] for x in h))
            for i in range(1, len(b), 500)]
    assert np.array_equal(np.concatenate(got), np.concatenate(want))
    rs.close()


def test_keys_have_expiry_and_layout(redis_server):
    rs = RedisStore(redis_server.url, prefix="exp:", timeout_s=2.0, ttl_slack_ms=1000)
    h = native.hash_keys(["u\x00alice"], ["s1"], ["198.51.100.1"], ["ad-7"], ["Mozilla/5.0"])
    _up(rs, np.array([T0], np.int64), h)
    admin = redis.Redis.from_url(redis_server.url)
    keys = sorted(admin.scan_iter(match=b"exp:*"))
    assert len(keys) == 6
    ref = dict(zip("usie", TTL_REFRESH_MS, strict=True))
    want = {b"exp:u" + int(h[0][0]).to_bytes(8, "big"): fs.USER_TTL_MS + ref["u"],
            b"exp:s" + int(h[1][0]).to_bytes(8, "big"): fs.SESSION_TTL_MS + ref["s"],
            b"exp:i" + int(h[2][0]).to_bytes(8, "big"): fs.IP_TTL_MS + ref["i"]}
    for x in h[4][0].tolist():  # ad, (IP, ad), user agent: one entity table, tag "e"
        want[b"exp:e" + int(x).to_bytes(8, "big")] = fs.ENTITY_TTL_MS + ref["e"]
    assert set(keys) == set(want)
    for k, ttl in want.items():
        pttl = admin.pttl(k)
        assert ttl + 1000 - 5000 < pttl <= ttl + 1000, (k, pttl)
    st = rs.stats()
    assert st["keys"] == 6 and st["entities"] == 3
    # a click without ad or user agent writes no entity key
    h2 = native.hash_keys(["u\x00bob"], ["s2"], ["198.51.100.1"], [None], [""])
    _up(rs, np.array([T0 + 1], np.int64), h2)
    assert rs.stats()["entities"] == 3 and rs.stats()["keys"] == 8
    rs.close()


def test_ttl_is_set_once_per_refresh_period(redis_server):
    """A key's Redis TTL is re-set when its last click enters a new refresh period (or the key
    is new), and kept (SET KEEPTTL) by every other write; the counters are the embedded
    store's either way."""
    rs = RedisStore(redis_server.url, prefix="ref:", timeout_s=2.0, ttl_slack_ms=1000)
    admin = redis.Redis.from_url(redis_server.url)
    h = native.hash_keys(["u\x00bob"], ["s9"], ["198.51.100.9"], ["ad-9"], ["UA/9"])
    names = [b"ref:" + bytes([tag]) + int(x[0]).to_bytes(8, "big")
             for tag, x in zip(b"usi", h[:3], strict=True)]
    names += [b"ref:e" + int(x).to_bytes(8, "big") for x in h[4][0].tolist()]
    ref = min(TTL_REFRESH_MS)
    t0 = (T0 // max(TTL_REFRESH_MS) + 1) * max(TTL_REFRESH_MS)  # a period start of every kind
    es = native.EmbeddedStore()

    def click(t: int) -> None:
        ts = np.array([t], np.int64)
        assert np.array_equal(_up(rs, ts, h), _up(es, ts, h))

    click(t0)
    for k in names:  # new keys: a TTL
        assert admin.pttl(k) > 0
        admin.pexpire(k, 10_000_000)  # a mark: kept while the TTL is not re-set
    click(t0 + ref // 2)  # same period: TTL kept
    click(t0 + 1000)  # a late click (last unchanged): TTL kept
    for k in names:
        assert 9_000_000 < admin.pttl(k) <= 10_000_000, k
    click(t0 + ref)  # the session's next period (and, past it, every kind's)
    s_key = names[1]
    assert admin.pttl(s_key) > fs.SESSION_TTL_MS
    click(t0 + max(TTL_REFRESH_MS))
    for k in names:
        assert admin.pttl(k) > 10_000_000, k
    click(t0 + max(TTL_REFRESH_MS) + 3 * fs.USER_TTL_MS)  # expired logically: reset, new TTL
    rs.close()


def test_auth_from_url():
    with RedisServer(password="s3cret-pw") as srv:
        good = RedisStore(srv.url, prefix="auth:", timeout_s=2.0)
        h = native.hash_keys(["u\x00a"], ["s"], ["192.0.2.1"])
        assert _up(good, np.array([T0], np.int64), h).shape == (1, fs.RAW_WIDTH)
        good.close()
        bad = RedisStore(f"redis://127.0.0.1:{srv.port}/0", prefix="auth:", timeout_s=2.0)
        with pytest.raises(StoreUnavailable) as ei:
            _up(bad, np.array([T0], np.int64), h)
        assert isinstance(ei.value.__cause__, redis.exceptions.AuthenticationError)
        assert "s3cret" not in str(ei.value)
        bad.close()


def test_server_death_fails_fast_and_recovers():
    srv = RedisServer().start()
    try:
        timeout = 0.2
        rs = RedisStore(srv.url, prefix="fault:", timeout_s=timeout)
        h = native.hash_keys(["u\x00a"], ["s"], ["192.0.2.1"], ["ad"], ["UA"])
        ts = np.array([T0], np.int64)
        first = _up(rs, ts, h)
        srv.kill()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as ei:
            _up(rs, ts + 1000, h)
        assert time.monotonic() - t0 < timeout + 0.5
        assert isinstance(ei.value, RuntimeError) and ei.value.__cause__ is not None
        srv.start()
        # Restarted on the same port (empty, no script cached): works again, state is new.
        again = _up(rs, ts + 2000, h)
        fresh = _up(native.EmbeddedStore(), ts + 2000, h)
        assert np.array_equal(again, fresh) and first[0, 4] == again[0, 4] == -1.0
        rs.close()
    finally:
        srv.stop()


def test_reply_timeout_raises_store_unavailable():
    with RedisServer(extra=["--enable-debug-command", "yes"]) as srv:
        rs = RedisStore(srv.url, prefix="slow:", timeout_s=0.1)
        h = native.hash_keys(["u\x00a"], ["s"], ["192.0.2.1"])
        ts = np.array([T0], np.int64)
        _up(rs, ts, h)
        other = redis.Redis.from_url(srv.url)
        th = threading.Thread(target=lambda: other.execute_command("DEBUG", "SLEEP", "0.6"))
        th.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            _up(rs, ts + 1, h)
        assert time.monotonic() - t0 < 0.4
        th.join()
        time.sleep(0.05)
        assert _up(rs, ts + 2, h).shape == (1, fs.RAW_WIDTH)
        rs.close()
        other.close()


def test_refused_connection_is_store_unavailable():
    from slidr.testing.redis_server import free_port
    rs = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
    h = native.hash_keys(["u\x00a"], ["s"], ["192.0.2.1"])
    with pytest.raises(StoreUnavailable):
        _up(rs, np.array([T0], np.int64), h)
    with pytest.raises(StoreUnavailable, match="unavailable"):
        rs.ping()


def test_empty_batch_and_bad_lengths(redis_server):
    rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=1.0)
    e = rs.update(np.zeros(0, np.int64), *[np.zeros(0, np.uint64)] * 3,
                  np.zeros((0, 4), np.uint8))
    assert e.shape == (0, fs.RAW_WIDTH)
    with pytest.raises(ValueError):
        rs.update(np.zeros(2, np.int64), *[np.zeros(1, np.uint64)] * 3,
                  np.zeros((1, 4), np.uint8))
    rs.close()


def test_tls_url(tmp_path):
    import shutil
    import subprocess

    from slidr.testing.redis_server import free_port
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tport = free_port()
    extra = ["--tls-port", str(tport), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    try:
        srv = RedisServer(extra=extra).start()
    except RuntimeError as e:
        pytest.skip(f"redis-server without TLS support: {e}")
    try:
        rs = RedisStore(f"rediss://127.0.0.1:{tport}/0?ssl_ca_certs={cert}", prefix="tls:",
                        timeout_s=2.0)
        h = native.hash_keys(["u\x00a"], ["s"], ["192.0.2.1"])
        got = _up(rs, np.array([T0], np.int64), h)
        assert np.array_equal(got, _up(native.EmbeddedStore(), np.array([T0], np.int64), h))
        rs.close()
    finally:
        srv.stop()


def test_kernel_bench_shape():
    from slidr.bench import kernel_bench

    res = kernel_bench.run(seconds_per_point=0.05, clicks_per_day=20_000)
    for kind in ("embedded", "redis", "redis_server_cpu_us_per_click",
                 "redis_client_cpu_us_per_click"):
        assert set(res[kind]) == {"1", "64", "512"}
        assert all(v > 0 for v in res[kind].values())
    assert 0 < res["bytes_per_key"] <= 256


def test_batch_of_one_path_equals_embedded(redis_server):
    """Single-click batches take a plain-Python request/reply path: same counters."""
    from slidr.bench.kernel_bench import make_clicks
    b = make_clicks(1500, seed=4, days=0.1)
    h = native.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id, b.user_agent)
    rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=2.0)
    es = native.EmbeddedStore()
    got = np.concatenate([_up(rs, b.ts[i:i + 1], tuple(x[i:i + 1] for x in h))
                          for i in range(len(b))])
    want = np.concatenate([_up(es, b.ts[i:i + 1], tuple(x[i:i + 1] for x in h))
                           for i in range(len(b))])
    assert got.dtype == np.float64 and got.shape == (len(b), fs.RAW_WIDTH)
    assert np.array_equal(got, want)
    rs.close()


def test_threads_sharing_one_store(redis_server):
    """slidrd runs batches on several worker threads through one RedisStore: threads with
    disjoint keys must each get exactly their own counters."""
    from slidr.bench.kernel_bench import make_clicks
    rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=5.0)
    jobs = []
    for k in range(3):
        b = make_clicks(2000, seed=10 + k, days=0.05)
        h = native.hash_keys([f"{x}-t{k}" for x in b.user_key],
                             [f"{x}-t{k}" for x in b.session_id], [f"{x}-t{k}" for x in b.ip])
        jobs.append((b.ts, h))
    got: dict[int, np.ndarray] = {}

    def work(k):
        ts, h = jobs[k]
        got[k] = np.concatenate([_up(rs, ts[i:i + 97], tuple(x[i:i + 97] for x in h))
                                 for i in range(0, len(ts), 97)])

    import sys
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    for k, (ts, h) in enumerate(jobs):
        es = native.EmbeddedStore()
        want = np.concatenate([_up(es, ts[i:i + 97], tuple(x[i:i + 97] for x in h))
                               for i in range(0, len(ts), 97)])
        assert np.array_equal(got[k], want), k
    rs.close()


def test_gap_shape_and_ip_hours_equal_embedded_across_batches(redis_server):
    """Spec 2 state (session sub-second gaps and ln-gap moments, IP active hours) survives
    the blob round trip: crafted clicks, one batch per click and a few larger batches."""
    day0 = (T0 // DAY + 1) * DAY
    ts = [day0 + 10 * HOUR + k for k in (0, 200, 500, 3500, 6500, 6500, 7499)]
    ts += [day0 + h * HOUR + 1234 for h in range(11, 31)]  # across midnight
    ts += [day0 + 27 * HOUR, day0 + 31 * HOUR + 5, day0 + 9 * HOUR, day0 + 62 * HOUR]
    ts = np.array(ts, dtype=np.int64)
    n = len(ts)
    ids = ([0] * n, [k // 9 for k in range(n)], [k % 2 for k in range(n)],
           ["ad-1"] * n, [("UA/1", None)[k % 2] for k in range(n)])
    h = _hashes(ids)
    tz = np.array([(0, 60, -300, 330)[k % 4 // 2 + k % 3] for k in range(n)], dtype=np.int16)
    li = np.array([k % 3 != 1 for k in range(n)])
    for cuts in ([], list(range(1, n)), [3, 7, 20]):
        rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=2.0)
        got = _feed(rs, ts, h, cuts, tz, li)
        rs.close()
        want = _feed(native.EmbeddedStore(), ts, h, cuts, tz, li)
        assert np.array_equal(got, want), cuts
    r = fs.RAW_INDEX
    assert got[:7, r["s_subsec"]].tolist() == [0, 1, 2, 2, 2, 3, 4]
    assert got[:, r["i_hours"]].max() >= 10
    assert got[:, r["i_tzsw"]].max() >= 2
    assert 0 < got[-1, r["i_li"]] < got[-1, r["i_c86400"]]
    last = np.maximum.accumulate(ts)
    short = int((np.maximum(ts[1:] - last[:-1], 0) <= fs.USER_LG_MAX_S * 1000).sum())
    assert 0 < short < n - 1  # the user's Welford takes only the gaps up to USER_LG_MAX_S
    assert got[-1, r["u_lg_n"]] == short and got[:, r["a_c86400"]].max() > 5
    admin = redis.Redis.from_url(redis_server.url)
    sizes = {k[len(rs.prefix)]: admin.strlen(k) for k in admin.scan_iter(match=rs.prefix + b"*")}
    # user: 8 doubles; IP: 27 doubles, 4 x 32 registers, a layout byte; entity: 5 + 9
    # doubles (counts, last; bucket, z v pz pv twice), 2 x 32 registers, a layout byte
    assert sizes == {ord("u"): 64, ord("s"): 64, ord("i"): 27 * 8 + 4 * fs.HLL_M + 1,
                     ord("e"): (len(fs.ENTITY_TAUS) + 10) * 8 + 2 * fs.HLL_M + 1}


def test_an_ip_state_of_an_older_spec_starts_afresh(redis_server):
    """IP blobs of older specs (spec 2: 24 doubles + registers; spec 4: 26 doubles, registers
    and layout byte 1) left in Redis are not misread by the current script: the IP starts as
    new, as in a fresh embedded store."""
    rs = RedisStore(redis_server.url, prefix="old:", timeout_s=2.0)
    h = native.hash_keys(["u\x00alice"], ["s1"], ["198.51.100.7"], ["ad-1"], ["UA"])
    admin = redis.Redis.from_url(redis_server.url)
    ikey = b"old:i" + int(h[2][0]).to_bytes(8, "big")
    tz = np.array([330], np.int16)
    li = np.array([1], np.uint8)
    # spec 2 (24 doubles), spec 3's earlier field order (26 doubles, no layout byte), spec 4
    # (26 doubles, layout byte 1), and the current size with a layout byte of another spec
    for size, fill in ((24 * 8 + 4 * fs.HLL_M, b"\x01"), (26 * 8 + 4 * fs.HLL_M, b"\x01"),
                       (26 * 8 + 4 * fs.HLL_M + 1, b"\x01"),
                       (27 * 8 + 4 * fs.HLL_M + 1, b"\x01"),
                       (27 * 8 + 4 * fs.HLL_M + 1, b"\x07")):
        for k in admin.scan_iter(match=b"old:*"):
            admin.delete(k)
        admin.set(ikey, fill * size)
        got = _up(rs, np.array([T0], np.int64), h, tz, li)
        want = _up(native.EmbeddedStore(), np.array([T0], np.int64), h, tz, li)
        assert np.array_equal(got, want), size
        assert got[0, fs.RAW_INDEX["i_li"]] == 1.0
        assert admin.strlen(ikey) == 27 * 8 + 4 * fs.HLL_M + 1


def test_user_and_entity_states_of_another_layout_start_afresh(redis_server):
    """A spec-3 user blob (5 doubles, no ln-gap moments) and entity blobs of another size or
    layout byte left in Redis: each key starts as new, as in a fresh embedded store."""
    rs = RedisStore(redis_server.url, prefix="olde:", timeout_s=2.0)
    h = native.hash_keys(["u\x00alice"], ["s1"], ["198.51.100.7"], ["ad-1"], ["UA"])
    admin = redis.Redis.from_url(redis_server.url)
    ukey = b"olde:u" + int(h[0][0]).to_bytes(8, "big")
    ekeys = [b"olde:e" + int(x).to_bytes(8, "big") for x in h[4][0].tolist()]
    eb = (len(fs.ENTITY_TAUS) + 10) * 8 + 2 * fs.HLL_M + 1
    for t, (ub, fill) in enumerate(((40, b"\x01"), (64, b"\x01"), (40, b"\x07"))):
        for k in admin.scan_iter(match=b"olde:*"):
            admin.delete(k)
        admin.set(ukey, struct.pack("<5d", 3.0, 3.0, 3.0, 3.0, T0 - 1000) if ub == 40
                  else b"\x01" * 64)
        # the blob without the week count (169 bytes, layout byte 1 when fill is 1), the
        # right size with layout byte 1 or 7 (not the current one), a wrong size
        for k, size in zip(ekeys, (eb - 8, eb, eb + 8), strict=True):
            admin.set(k, fill * size)
        ts = np.array([T0 + t], np.int64)
        got = _up(rs, ts, h)
        want = _up(native.EmbeddedStore(), ts, h)
        if ub == 64:  # a 64-byte user blob is read as one (its counts are garbage): skip it
            got[:, :8] = want[:, :8]
        assert np.array_equal(got, want), (ub, fill)
        assert admin.strlen(ukey) == 64 and [admin.strlen(k) for k in ekeys] == [eb] * 3


def test_late_click_into_an_earlier_hour_is_written_back(redis_server):
    """A late click that sets an IP's active-hours bit without touching its HLL registers is
    the case where the script rewrites only part of the IP blob in place: the next batch must
    read the new hours fields (and every counter equals the embedded store's). The clicks'
    time zones and logged-in flags change, so the time-zone fields and the logged-in count
    before them are rewritten in place too."""
    rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=2.0)
    es = native.EmbeddedStore()
    h = native.hash_keys(["u\x00carol"], ["s-late"], ["203.0.113.7"], ["ad-c"], ["UA/c"])
    t0 = (T0 // HOUR + 1) * HOUR + 600_000  # hour H + 10 min
    # H, then H + 2 (the hour window rolls: bit 1 clear), then late into H + 1 (bit 1 set, same
    # user and session: no register changes), then H + 2 again to read what was stored
    for t, z, f in zip((t0, t0 + 2 * HOUR, t0 + HOUR + 60_000, t0 + 2 * HOUR + 1000,
                        t0 + 2 * HOUR + 2000), (60, 60, -300, 330, 330), (1, 0, 1, 1, 0),
                       strict=True):
        ts = np.array([t], np.int64)
        tz = np.array([z], np.int16)
        li = np.array([f], np.uint8)
        got, want = _up(rs, ts, h, tz, li), _up(es, ts, h, tz, li)
        assert np.array_equal(got, want), t
    assert got[0, fs.RAW_INDEX["i_hours"]] == 3  # hours H, H + 1 and H + 2
    assert got[0, fs.RAW_INDEX["i_tzsw"]] > 1.9  # two switches, barely decayed
    assert 2.9 < got[0, fs.RAW_INDEX["i_li"]] < 3.0  # three logged-in clicks, barely decayed
    rs.close()


def test_entities_equal_reference_and_embedded(redis_server):
    """Spec 4's entity table through the blobs: a hot ad and user agent repeated within one
    batch and across batches, an (IP, ad) pair per IP, clicks without an ad or user agent
    (null, empty), late clicks, a day boundary (the sketches roll), a gap past the entity TTL;
    one batch per click, one batch, and uneven batches. Equal to the reference twin and the
    embedded store, exactly; keys of absent entities are never written."""
    day0 = (T0 // DAY + 1) * DAY
    ts = [day0 - 3 * HOUR + k * 600_000 for k in range(12)]       # before midnight
    ts += [day0 + 5 * 60_000 + k * 1000 for k in range(10)]        # after: new day buckets
    ts += [day0 - HOUR, day0 + 6 * 60_000 - 1, day0 + 6 * 60_000]  # late, late, same-ms pair
    ts += [day0 + 6 * 60_000, day0 + DAY + HOUR]                   # next day
    ts += [day0 + DAY + HOUR + fs.ENTITY_TTL_MS + 1 + k for k in range(4)]  # past the TTL
    ts = np.array(ts, dtype=np.int64)
    n = len(ts)
    ads = [("ad-hot", "ad-hot", None, "ad-2", "", "ad-hot")[k % 6] for k in range(n)]
    uas = [("Mozilla/5.0", None, "Mozilla/5.0", "curl/8", "")[k % 5] for k in range(n)]
    ids = ([k % 4 for k in range(n)], [k % 7 for k in range(n)], [k % 3 for k in range(n)],
           ads, uas)
    h = _hashes(ids)
    assert (h[4] == 0).any() and (h[4] != 0).any()
    ref = _up(reference.ReferenceStore(), ts, h)
    for cuts in ([], list(range(1, n)), [2, 3, 11, 12, 24, 30]):
        rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=2.0)
        got = _feed(rs, ts, h, cuts)
        want = _feed(native.EmbeddedStore(), ts, h, cuts)
        bad = np.argwhere(got != ref)
        assert bad.size == 0, (cuts, fs.RAW_COLUMNS[bad[0][1]], got[tuple(bad[0])],
                               ref[tuple(bad[0])])
        assert np.array_equal(want, ref), cuts
        admin = redis.Redis.from_url(redis_server.url)
        ekeys = {k for k in admin.scan_iter(match=rs.prefix + b"e*")}
        assert ekeys == {rs.prefix + b"e" + int(x).to_bytes(8, "big")
                         for x in set(h[4].reshape(-1).tolist()) - {0}}
        rs.close()
    r = fs.RAW_INDEX
    absent = np.array(fs.ENTITY_ABSENT)
    e0, w = fs.RAW_SPANS["entity"][0], fs.ENTITY_RAW_WIDTH
    for k in range(n):  # absent keys give the absent values
        for j in range(3):
            if h[4][k, j] == 0:
                assert np.array_equal(got[k, e0 + w * j:e0 + w * (j + 1)], absent), (k, j)
    assert got[:, r["a_c60"]].max() > 3 and got[:, r["ai_v"]].min() < fs.HLL_M - 2


def test_a_batch_reads_and_writes_each_entity_key_once(redis_server):
    """A popular ad and user agent in a batch of 64 clicks: one key name each in the request
    (the client deduplicates the three entity columns together), so one read and one write per
    batch; a click without them names none."""
    rs = RedisStore(redis_server.url, prefix=_prefix(), timeout_s=2.0)
    n = 64
    h = native.hash_keys([f"u{k % 9}" for k in range(n)], [f"s{k % 13}" for k in range(n)],
                         [f"10.1.0.{k % 5}" for k in range(n)],
                         ["ad-hot" if k % 8 else None for k in range(n)],
                         ["Mozilla/5.0" if k % 4 else "" for k in range(n)])
    ts = T0 + np.arange(n, dtype=np.int64) * 250
    req = rs.request(ts, *h[:4], None, h[4])
    assert req == rs.request_numpy(ts, *h[:4], None, h[4])
    ekey = rs._rec_head + b"e"
    assert req.count(ekey) == 1 + 5 + 1  # the ad, 5 (IP, ad) pairs, the user agent
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_resetstat()
    got = _up(rs, ts, h)
    assert np.array_equal(got, _up(reference.ReferenceStore(), ts, h))
    stats = admin.info("commandstats")
    writes = stats["cmdstat_set"]["calls"] + stats.get("cmdstat_setrange", {}).get("calls", 0)
    assert writes == 9 + 13 + 5 + 7  # every key once: users, sessions, IPs, entities
    rs.close()
