"""The native kernel (ext/_kernel.pyx) against its plain-Python reference twin.

Raw counters must be identical (exact ==, not approximately): the offline replay and the daemon
may run on either and a model trained on one must see the same numbers from the other.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slidr.ext import reference

from slidr import featurespec as fs
from slidr.contract import ClickBatch
from slidr.kernel import FeatureKernel

native = pytest.importorskip("slidr.ext._kernel")

HOUR = 3_600_000
DAY = 86_400_000
T0 = 1_767_225_600_000 - 5  # 5 ms before a day (and hour) boundary

# Steps between consecutive clicks: same ms, small, bucket-sized, TTL-sized and just past TTLs.
STEPS = [0, 1, 4, 999, 59_999, 60_000, 3_599_999, HOUR, HOUR + 1, DAY - 1, DAY, DAY + 1,
         fs.SESSION_TTL_MS + 1, fs.USER_TTL_MS, fs.USER_TTL_MS + 1, 5 * DAY]


@st.composite
def streams(draw, max_clicks: int = 120):
    n = draw(st.integers(1, max_clicks))
    steps = draw(st.lists(st.one_of(st.sampled_from(STEPS), st.integers(0, 10 * HOUR)),
                          min_size=n, max_size=n))
    ts = T0 + np.cumsum(np.array(steps, dtype=np.int64))
    # Out-of-order arrivals: move some clicks back by up to a minute.
    jitter = draw(st.lists(st.sampled_from([0, 0, 0, -1, -1000, -59_000]), min_size=n,
                           max_size=n))
    ts = ts + np.array(jitter, dtype=np.int64)
    pool = st.integers(0, draw(st.integers(0, 6)))
    users = draw(st.lists(pool, min_size=n, max_size=n))
    sessions = draw(st.lists(pool, min_size=n, max_size=n))
    ips = draw(st.lists(pool, min_size=n, max_size=n))
    logged = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))))
    tz = draw(st.lists(st.sampled_from(TZS), min_size=n, max_size=n))
    # spec 4's entity keys: a few ads and user agents, some absent (None or empty)
    ads = draw(st.lists(st.sampled_from(ADS), min_size=n, max_size=n))
    uas = draw(st.lists(st.sampled_from(UAS), min_size=n, max_size=n))
    return ts, users, sessions, ips, logged, cuts, tz, ads, uas


# Client time zones (tz_offset_min), the extremes included.
TZS = [0, 0, 60, -300, 330, -720, 840]
ADS = [None, "", "ad-1", "ad-1", "ad-2", "ad-3"]
UAS = [None, "", "Mozilla/5.0", "Mozilla/5.0", "okhttp/4"]


def _batch(ts, users, sessions, ips, logged, tz=None, ads=None, uas=None) -> ClickBatch:
    sess = [f"sess-{s}" for s in sessions]
    ukeys = [f"u\x00user-{u}" if li else "s\x00" + s for u, s, li in zip(users, sess, logged,
                                                                        strict=True)]
    n = len(ts)
    return ClickBatch(ts=np.asarray(ts, dtype=np.int64), user_key=ukeys, session_id=sess,
                      ip=[f"10.0.0.{i}" for i in ips], device=np.zeros(n, np.uint8),
                      logged_in=np.asarray(logged, np.uint8),
                      tz_offset_min=np.asarray(tz if tz is not None else [0] * n, np.int16),
                      ad_id=ads, user_agent=uas)


def _keys(mod, b: ClickBatch):
    """(uh, sh, ih, hll) of a batch and its entity keys eh."""
    uh, sh, ih, hll, eh = mod.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id, b.user_agent)
    return (uh, sh, ih, hll), eh


def _update(store, mod, b: ClickBatch, tz=None, li=None) -> np.ndarray:
    h, eh = _keys(mod, b)
    return store.update(b.ts, *h, tz, eh, li)


def _raw_in_batches(store, mod, b: ClickBatch, cuts) -> np.ndarray:
    edges = [0, *cuts, len(b)]
    parts = []
    for a, z in zip(edges[:-1], edges[1:], strict=True):
        if z <= a:
            continue
        s = b.slice(a, z)
        parts.append(_update(store, mod, s, s.tz_offset_min, s.logged_in))
    return np.concatenate(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_raw_counters_identical(stream):
    ts, users, sessions, ips, logged, cuts, tz, ads, uas = stream
    b = _batch(ts, users, sessions, ips, logged, tz, ads, uas)
    ref = _raw_in_batches(reference.ReferenceStore(), reference, b, cuts)
    # A tiny sweep period and no grace beyond the biggest jitter exercise physical expiry too.
    nat = _raw_in_batches(native.EmbeddedStore(capacity_hint=0, sweep_every=1,
                                               sweep_grace_ms=60_000), native, b, cuts)
    assert ref.shape == nat.shape == (len(ts), fs.RAW_WIDTH)
    bad = np.argwhere(ref != nat)
    assert bad.size == 0, (f"first difference at click {bad[0][0]} column "
                           f"{fs.RAW_COLUMNS[bad[0][1]]}: {ref[tuple(bad[0])]!r} vs "
                           f"{nat[tuple(bad[0])]!r}")


ids = st.text(min_size=0, max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ids, ids, ids), min_size=0, max_size=30))
def test_hash_parity_including_non_ascii(rows):
    u = [r[0] for r in rows]
    s = [r[1] for r in rows]
    i = [r[2] for r in rows]
    for a, b in zip(native.hash_keys(u, s, i), reference.hash_keys(u, s, i), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    for x in u:
        assert native.hash64(x) == reference.hash64(x)


# Keys of any type: str (some with surrogates), and the usual wrong types.
any_key = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.binary(max_size=4),
                    st.floats(allow_nan=False), st.lists(st.text(max_size=2), max_size=1))


def _outcome(mod, u, s, i):
    try:
        return "ok", mod.hash_keys(u, s, i)
    except (TypeError, UnicodeEncodeError) as e:
        return type(e), e


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(any_key, any_key, any_key), min_size=1, max_size=6))
def test_hash_keys_wrong_types_raise_equal_exceptions(rows):
    u = [r[0] for r in rows]
    s = [r[1] for r in rows]
    i = [r[2] for r in rows]
    nk, nv = _outcome(native, u, s, i)
    rk, rv = _outcome(reference, u, s, i)
    assert nk == rk, (nv, rv)
    if nk == "ok":
        for a, b in zip(nv, rv, strict=True):
            assert np.array_equal(a, b)
    elif nk is TypeError:
        # Same message: "key must be str, not <type>" for the first bad key (click-major,
        # user, session, ip), so callers can log either implementation's error alike.
        assert str(nv) == str(rv)


def test_hash_known_values_and_errors():
    for x in ["", "a", "u\x00cust-1", "s\x00é会话🙂", "i\x002001:db8::1"]:
        assert native.hash64(x) == reference.hash64(x)
    with pytest.raises(TypeError):
        native.hash_keys([1], ["s"], ["i"])
    with pytest.raises(TypeError):
        reference.hash_keys(["u"], [None], ["i"])
    with pytest.raises(TypeError):
        native.hash_keys(["u"], [None], ["i"])
    with pytest.raises(UnicodeEncodeError):
        native.hash_keys(["\ud800"], ["s"], ["i"])
    with pytest.raises(UnicodeEncodeError):
        reference.hash_keys(["\ud800"], ["s"], ["i"])
    with pytest.raises(ValueError, match="same length"):
        native.hash_keys(["a", "b"], ["s"], ["i"])
    st_ = native.EmbeddedStore()
    with pytest.raises(ValueError, match="same length"):
        st_.update(np.zeros(2, np.int64), np.zeros(1, np.uint64), np.zeros(2, np.uint64),
                   np.zeros(2, np.uint64), np.zeros((2, 4), np.uint8))
    st_.close()
    with pytest.raises(RuntimeError, match="closed"):
        st_.update(*[np.zeros(0, t) for t in (np.int64, np.uint64, np.uint64, np.uint64)],
                   np.zeros((0, 4), np.uint8))


def _day_of_clicks(n=3000, seed=3):
    from slidr.bench.kernel_bench import make_clicks
    return make_clicks(n, seed=seed, days=0.2)


def test_batch_size_does_not_change_features():
    b = _day_of_clicks()
    k1 = FeatureKernel(use_native=True)
    one = np.concatenate([k1.features(b.slice(i, i + 1)) for i in range(len(b))])
    k512 = FeatureKernel(use_native=True)
    big = np.concatenate([k512.features(b.slice(i, i + 512)) for i in range(0, len(b), 512)])
    assert np.array_equal(one, big)


def test_native_finish_matches_numpy_finish():
    b = _day_of_clicks(seed=5)
    raw = _update(native.EmbeddedStore(), native, b)
    tz = np.random.default_rng(0).integers(-720, 841, len(b)).astype(np.int16)
    want = fs.finish(raw, b.ts, tz, b.logged_in, b.device)
    got = native.finish_into(raw, b.ts, tz, b.logged_in, b.device)
    assert got.dtype == np.float32 and got.shape == want.shape
    # log1p/sin/cos may come from numpy's SIMD loops on one side and libm on the other: the
    # doubles can differ in the last bit, so allow one float32 ulp.
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=2e-7)
    with pytest.raises(ValueError, match="device"):
        native.finish_into(raw[:1], b.ts[:1], tz[:1], b.logged_in[:1], np.array([3], np.uint8))


def _one_ip_distinct(n_sess: int, hour: int, at_frac: float) -> tuple[float, float]:
    """Clicks of n_sess distinct sessions from one IP in one hour bucket, then one click at
    `at_frac` into the next hour: -> (estimated distinct sessions 1 h, exact)."""
    t_bucket = (T0 // HOUR + hour) * HOUR
    ts = t_bucket + np.linspace(0, HOUR - 1, n_sess).astype(np.int64)
    probe = t_bucket + HOUR + int(at_frac * (HOUR - 1))
    ts = np.append(ts, probe)
    sess = [f"h{hour}-s{k}" for k in range(n_sess)] + [f"h{hour}-probe"]
    b = ClickBatch(ts=ts, user_key=["s\x00" + s for s in sess], session_id=sess,
                   ip=["192.0.2.7"] * (n_sess + 1), device=np.zeros(n_sess + 1, np.uint8),
                   logged_in=np.zeros(n_sess + 1, np.uint8),
                   tz_offset_min=np.zeros(n_sess + 1, np.int16))
    raw = _update(native.EmbeddedStore(), native, b)
    est = fs.distinct_estimates(raw[-1:])[0, 0]
    exact = 1 + n_sess * (1.0 - at_frac)  # the sliding-window blend of the exact counts
    return float(est), exact


@pytest.mark.parametrize("n_sess", [3, 20, 200, 2000])
def test_hll_distinct_estimates_within_tolerance(n_sess):
    # 32 registers: standard error 1.04/sqrt(32) = 18%; small counts use linear counting and
    # are near exact. Single estimate: within 3 standard errors; mean over 16 IPs: within 15%.
    errs = []
    for hour in range(16):
        for frac in (0.0, 0.999):  # window edges: start of the bucket and its very end
            est, exact = _one_ip_distinct(n_sess, hour, frac)
            rel = abs(est - exact) / exact
            tol = 0.55 if n_sess > 20 else 0.25
            assert rel <= tol, (n_sess, hour, frac, est, exact)
            if frac == 0.0:
                errs.append((est - exact) / exact)
    assert abs(float(np.mean(errs))) <= 0.15


def test_memory_plateaus_with_one_shot_users():
    """A week of one-shot visitors at a steady rate: keys and bytes stop growing once keys
    start expiring (after the longest TTL plus the sweep grace), and stay under 264 B/key
    (entries of 72-280 bytes, index slots of 16, tables at most 70 % full)."""
    store = native.EmbeddedStore(sweep_every=256)
    per_day = 40_000
    rng = np.random.default_rng(0)
    keys, nbytes, bpk = [], [], []
    for day in range(7):
        ts = T0 + day * DAY + np.sort(rng.integers(0, DAY, per_day)).astype(np.int64)
        uh = rng.integers(0, 2**63, per_day, dtype=np.int64).astype(np.uint64)
        sh = rng.integers(0, 2**63, per_day, dtype=np.int64).astype(np.uint64)
        ih = rng.integers(0, 2**63, per_day, dtype=np.int64).astype(np.uint64)
        ih[per_day // 2:] = ih[: per_day - per_day // 2]  # half the IPs come back
        hll = rng.integers(0, 32, (per_day, 4)).astype(np.uint8)
        # entity keys: 500 ads, an (IP, ad) pair per IP, 50 user agents (namespaces apart)
        ad = rng.integers(1, 501, per_day).astype(np.uint64)
        eh = np.stack([ad, (ih ^ (ad * np.uint64(0x9E3779B97F4A7C15))) | np.uint64(1 << 63),
                       rng.integers(1001, 1051, per_day).astype(np.uint64)], axis=1)
        for i in range(0, per_day, 512):
            s = slice(i, i + 512)
            store.update(ts[s], uh[s], sh[s], ih[s], hll[s], None, eh[s])
        stt = store.stats()
        keys.append(stt["keys"])
        nbytes.append(stt["bytes"])
        bpk.append(stt["bytes_per_key"])
    # Live keys: 2 days of users and IPs, 1 day of sessions (+ grace + sweep lag).
    assert max(keys[3:]) <= keys[2] * 1.1, keys
    assert nbytes[6] == nbytes[3], nbytes
    assert keys[6] < 7 * per_day * 2, keys
    assert max(bpk) <= 264, bpk
    store.close()


def test_parity_at_scale_through_growth_and_sweeps():
    """Tens of thousands of keys over five days: index growth, backward-shift deletes and
    dense-array moves must never lose or mix up a live key."""
    rng = np.random.default_rng(11)
    n = 30_000
    ts = T0 + np.sort(rng.integers(0, 5 * DAY, n)).astype(np.int64)
    # Low bits collide on purpose (same home slot) to stress probe chains.
    pool = (rng.integers(0, 2**40, 4000, dtype=np.int64).astype(np.uint64) << np.uint64(20))
    uh = pool[rng.integers(0, 4000, n)]
    sh = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    sh[::3] = sh[1::3][: len(sh[::3])]
    ih = pool[rng.integers(0, 300, n)] ^ np.uint64(1)
    hll = rng.integers(0, 32, (n, 4)).astype(np.uint8)
    ref = reference.ReferenceStore()
    nat = native.EmbeddedStore(capacity_hint=0, sweep_every=7, sweep_grace_ms=0)
    for i in range(0, n, 333):
        s = slice(i, i + 333)
        a = ref.update(ts[s], uh[s], sh[s], ih[s], hll[s])
        b = nat.update(ts[s], uh[s], sh[s], ih[s], hll[s])
        assert np.array_equal(a, b), i
    assert len(nat) < len(ref)  # the sweep freed expired keys the reference still holds


def test_type_stub_matches_native_module():
    """ext/_kernel.pyi names only what the native module has (functions, classes, methods)."""
    import ast
    from pathlib import Path
    stub = Path(native.__file__).with_name("_kernel.pyi")
    tree = ast.parse(stub.read_text())
    names = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert {n.name for n in names} >= {"hash64", "hash_keys", "EmbeddedStore", "finish_into"}
    for node in names:
        assert hasattr(native, node.name), node.name
        if isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, ast.FunctionDef):
                    assert hasattr(getattr(native, node.name), m.name), (node.name, m.name)


# ---------------------------------------------------------------- spec 2: gap shape, IP hours

def _raw_both(ts, sessions, ips) -> tuple[np.ndarray, np.ndarray]:
    """Raw counters of reference and native stores for one batch (asserted equal)."""
    n = len(ts)
    b = _batch(np.asarray(ts, dtype=np.int64), [0] * n, sessions, ips, [False] * n)
    ref = _update(reference.ReferenceStore(), reference, b)
    nat = _update(native.EmbeddedStore(), native, b)
    assert np.array_equal(ref, nat)
    return ref, fs.finish(ref, b.ts, b.tz_offset_min, b.logged_in, b.device)


def _feat(name: str) -> int:
    return fs.FEATURE_NAMES.index(name)


def test_session_subsecond_gaps_and_log_gap_moments_exact():
    r = fs.RAW_INDEX
    # gaps 0.2 s, 0.3 s, 3 s, 3 s, 0 (same ms: floored to 1 ms), 0.999 s, then out of order
    steps = [0, 200, 300, 3000, 3000, 0, 999]
    ts = list(T0 + np.cumsum(steps)) + [T0 + 5000]
    raw, feat = _raw_both(ts, [1] * len(ts), list(range(len(ts))))
    assert raw[:, r["s_subsec"]].tolist() == [0, 1, 2, 2, 2, 3, 4, 5]
    assert raw[:, r["s_lg_n"]].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    gaps = [0.2, 0.3, 3.0, 3.0, 0.001, 0.999, 0.001]  # the late click: gap 0, floored
    for k in range(1, len(ts)):
        x = np.log(gaps[:k])
        assert raw[k, r["s_lg_mean"]] == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
        assert raw[k, r["s_lg_m2"]] == pytest.approx(((x - x.mean()) ** 2).sum(), rel=1e-12,
                                                     abs=1e-12)
        sd = feat[k, _feat("s_gap_logsd")]
        assert sd == (-1.0 if k < 2 else pytest.approx(x.std(), rel=1e-6))
        assert feat[k, _feat("s_gap_logmean")] == pytest.approx(x.mean(), rel=1e-6, abs=1e-6)
    assert feat[0, _feat("s_gap_logmean")] == np.float32(np.log(fs.GAP_CAP_S))
    assert feat[0, _feat("s_gap_logsd")] == -1.0
    assert feat[:, _feat("s_subsec_gaps")].tolist() == pytest.approx(
        np.log1p([0, 1, 2, 2, 2, 3, 4, 5]).tolist())


def test_regular_gaps_have_zero_log_sd_and_a_session_restarts_after_its_ttl():
    r = fs.RAW_INDEX
    ts = [T0 + 3000 * k for k in range(6)] + [T0 + 15_000 + fs.SESSION_TTL_MS + 1]
    raw, feat = _raw_both(ts, [7] * len(ts), [3] * len(ts))
    assert raw[:, r["s_subsec"]].tolist() == [0] * 7
    assert raw[1:6, r["s_lg_mean"]].tolist() == [np.log(3.0)] * 5
    assert raw[1:6, r["s_lg_m2"]].tolist() == [0.0] * 5
    assert feat[2:6, _feat("s_gap_logsd")].tolist() == [0.0] * 4
    # logically expired: a new session (no gaps yet)
    assert raw[6, r["s_lg_n"]] == 0 and raw[6, r["s_subsec"]] == 0
    assert feat[6, _feat("s_gap_logsd")] == -1.0


def test_ip_hours_across_twenty_hours_and_a_day_boundary():
    r = fs.RAW_INDEX
    day0 = (T0 // DAY + 1) * DAY  # midnight UTC
    # one click an hour from 10:00 to 05:00 the next day (20 hours, across midnight), two in
    # the first hour
    ts = [day0 + 10 * HOUR + 5, day0 + 10 * HOUR + 600_000]
    ts += [day0 + h * HOUR + 1234 for h in range(11, 30)]
    want = [1, 1] + list(range(2, 21))
    # 10:00 the next day: hours 11:00..05:00 are still within the day, 10:00 (day 0) is not
    ts.append(day0 + 34 * HOUR + 7)
    want.append(20)
    # out of order: a late click at 07:xx the next day (an hour without clicks), then one at
    # 05:xx (an hour already set), then one older than the day (ignored)
    ts += [day0 + 31 * HOUR + 9, day0 + 29 * HOUR + 9, day0 + 9 * HOUR]
    want += [21, 21, 21]
    # 30 hours later (IP not expired): only the current hour
    ts.append(day0 + 64 * HOUR)
    want.append(1)
    # 23 hours after that: both hours within the day
    ts.append(day0 + 87 * HOUR + 3_599_999)
    want.append(2)
    # IP logically expired (2 days): a new IP
    ts.append(day0 + 87 * HOUR + fs.IP_TTL_MS + 3_600_000)
    want.append(1)
    raw, feat = _raw_both(ts, list(range(len(ts))), [9] * len(ts))
    assert raw[:, r["i_hours"]].tolist() == want
    np.testing.assert_allclose(feat[:, _feat("ip_hours_1d")], np.log1p(want), rtol=1e-6)


def test_spec_version_three_features_keep_their_places():
    assert fs.FEATURE_NAMES[24:29] == ("s_subsec_gaps", "s_gap_logmean", "s_gap_logsd",
                                       "ip_hours_1d", "ip_tz_switch_1d")
    assert fs.RAW_SPANS["ip"] == (16, 42)


def test_spec_version_five_adds_the_ip_logged_in_share_after_the_tz_switches():
    assert fs.SPEC_VERSION == 5
    assert fs.N_FEATURES == 45 and fs.RAW_WIDTH == 84
    assert fs.FEATURE_NAMES[28:31] == ("ip_tz_switch_1d", "ip_logged_in_1d", "u_gap_logsd")
    assert dict(fs.FEATURES)["ip_logged_in_1d"] == "ratio"
    assert fs.RAW_COLUMNS[40:43] == ("i_tzsw", "i_li", "a_c60")
    assert fs.RAW_SPANS == {"user": (0, 8), "session": (8, 16), "ip": (16, 42),
                            "entity": (42, 84)}


# ---------------------------------------------------------------- spec 3: IP time-zone switches

def test_ip_tz_switches_decay_and_follow_the_newest_click():
    r = fs.RAW_INDEX
    tau = fs.IP_TAUS[-1]
    # one IP: zones 60, 60, -300 (switch), -300, 60 (switch) a minute apart; then a late click
    # (older than the newest) in zone 330 counts a switch but leaves the newest zone at 60;
    # then 60 again at the newest ts (no switch); then after the IP's TTL: a new IP
    ts = [T0 + 60_000 * k for k in range(5)] + [T0 + 200_000, T0 + 240_000,
                                                T0 + 240_000 + fs.IP_TTL_MS + 1]
    tz = [60, 60, -300, -300, 60, 330, 60, -300]
    n = len(ts)
    b = _batch(np.asarray(ts, dtype=np.int64), [0] * n, list(range(n)), [4] * n, [False] * n,
               tz)
    ref = _update(reference.ReferenceStore(), reference, b, b.tz_offset_min)
    nat = _update(native.EmbeddedStore(), native, b, b.tz_offset_min)
    assert np.array_equal(ref, nat)
    sw, want = 0.0, []
    last_t, zone = ts[0], tz[0]
    for k in range(n):
        if k == 0 or k == n - 1:
            sw, last_t, zone = 0.0, ts[k], tz[k]
        else:
            dt = max(ts[k] - last_t, 0) / 1000.0
            sw = sw * np.exp(-dt / tau) + (1.0 if tz[k] != zone else 0.0)
            if ts[k] >= last_t:
                zone, last_t = tz[k], ts[k]
        want.append(sw)
    np.testing.assert_allclose(ref[:, r["i_tzsw"]], want, rtol=1e-12)
    # the late click adds a switch (no decay: dt 0); the next, at the newest ts in its zone, none
    assert ref[5, r["i_tzsw"]] == ref[4, r["i_tzsw"]] + 1.0
    assert ref[6, r["i_tzsw"]] == ref[5, r["i_tzsw"]]
    feat = fs.finish(ref, b.ts, b.tz_offset_min, b.logged_in, b.device)
    np.testing.assert_allclose(feat[:, _feat("ip_tz_switch_1d")],
                               ref[:, r["i_tzsw"]] / ref[:, r["i_c86400"]], rtol=1e-6)
    assert feat[0, _feat("ip_tz_switch_1d")] == 0.0 and feat[-1, _feat("ip_tz_switch_1d")] == 0.0
    np.testing.assert_array_equal(native.finish_into(ref, b.ts, b.tz_offset_min, b.logged_in,
                                                     b.device), feat)


# ---------------------------------------------------------------- spec 5: IP logged-in clicks

def test_ip_logged_in_count_decays_expires_and_counts_late_clicks():
    """i_li by hand: the IP's day decay between clicks, a late click counted undecayed (dt 0),
    a click at the newest ts likewise, a day's gap (factor e^-1), then the IP's logical expiry
    (a new IP: only its first click's flag). The feature is i_li / i_c86400, 0 without a day
    count; native, reference and both finishes agree exactly."""
    r = fs.RAW_INDEX
    tau = fs.IP_TAUS[2]
    t_new = T0 + 3 * HOUR + DAY
    ts = [T0, T0 + 60_000, T0 + 3 * HOUR, T0 + HOUR, T0 + 3 * HOUR, t_new,
          t_new + fs.IP_TTL_MS + 1, t_new + fs.IP_TTL_MS + 60_001]
    logged = [True, False, True, True, False, False, False, True]
    n = len(ts)
    b = _batch(np.asarray(ts, dtype=np.int64), list(range(n)), list(range(n)), [4] * n, logged)
    ref = _update(reference.ReferenceStore(), reference, b, b.tz_offset_min, b.logged_in)
    nat = _update(native.EmbeddedStore(), native, b, b.tz_offset_min, b.logged_in)
    assert np.array_equal(ref, nat)
    e = np.exp
    want = [1.0]                                                       # a new IP, logged in
    want.append(want[-1] * e(-60.0 / tau))                             # decayed, +0
    want.append(want[-1] * e(-(3 * 3600.0 - 60.0) / tau) + 1.0)        # decayed, +1
    want.append(want[-1] + 1.0)                                        # late: dt 0, +1
    want.append(want[-1])                                              # at the newest ts, +0
    want.append(want[-1] * e(-1.0))                                    # a day later, +0
    want.append(0.0)                                                   # expired: new, not in
    want.append(0.0 * e(-60.0 / tau) + 1.0)                            # +1
    np.testing.assert_allclose(ref[:, r["i_li"]], want, rtol=1e-12, atol=0)
    assert ref[3, r["i_li"]] == ref[2, r["i_li"]] + 1.0
    assert ref[4, r["i_li"]] == ref[3, r["i_li"]]
    assert ref[6, r["i_li"]] == 0.0 and ref[6, r["i_c86400"]] == 1.0
    assert ref[0, r["i_li"]] == 1.0 and ref[7, r["i_li"]] == 1.0
    # the same decay and rules as the day count: the share stays in [0, 1]
    c1d = ref[:, r["i_c86400"]]
    assert (ref[:, r["i_li"]] <= c1d).all()
    feat = fs.finish(ref, b.ts, b.tz_offset_min, b.logged_in, b.device)
    np.testing.assert_allclose(feat[:, _feat("ip_logged_in_1d")], np.array(want) / c1d,
                               rtol=1e-6)
    assert feat[0, _feat("ip_logged_in_1d")] == 1.0 and feat[6, _feat("ip_logged_in_1d")] == 0.0
    np.testing.assert_array_equal(native.finish_into(ref, b.ts, b.tz_offset_min, b.logged_in,
                                                     b.device), feat)
    # no day count: the feature is 0, not NaN
    z = ref[:1].copy()
    z[0, r["i_c86400"]] = z[0, r["i_li"]] = 0.0
    one = (b.ts[:1], b.tz_offset_min[:1], b.logged_in[:1], b.device[:1])
    assert fs.finish(z, *one)[0, _feat("ip_logged_in_1d")] == 0.0
    assert native.finish_into(z, *one)[0, _feat("ip_logged_in_1d")] == 0.0


def test_logged_in_flags_nonzero_is_logged_in_and_none_is_never():
    """li as uint8, bool or int (any nonzero value: logged in) counts alike in both stores; None
    counts no click; the other columns do not depend on li."""
    b = _day_of_clicks(600, seed=11)
    flags = b.logged_in.astype(bool)
    outs = []
    for li in (b.logged_in, flags, flags.astype(np.int64) * 7):
        for mod, store in ((native, native.EmbeddedStore()), (reference,
                                                              reference.ReferenceStore())):
            outs.append(_update(store, mod, b, b.tz_offset_min, li))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])
    assert outs[0][:, fs.RAW_INDEX["i_li"]].max() > 1.0 and flags.any() and not flags.all()
    none_ = _update(native.EmbeddedStore(), native, b, b.tz_offset_min)
    assert not none_[:, fs.RAW_INDEX["i_li"]].any()
    other = np.ones(fs.RAW_WIDTH, bool)
    other[fs.RAW_INDEX["i_li"]] = False
    assert np.array_equal(none_[:, other], outs[0][:, other])
    with pytest.raises(ValueError, match="same length"):
        _update(native.EmbeddedStore(), native, b, b.tz_offset_min, b.logged_in[:-1])
