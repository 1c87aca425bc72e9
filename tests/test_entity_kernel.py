"""Feature spec 4 on crafted streams: the entity keys (ad, (IP, ad), user agent), the entity
table's counts and day HLLs, absent keys, logical expiry, the user's gap Welford and the new
features, exactly, for the reference twin and the native kernel alike (each against values
computed here by hand, and the two against each other)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from slidr.ext import kernel_native as native  # None on the twin path (SLIDR_PURE_PYTHON=1)
from slidr.ext import reference

from slidr import featurespec as fs
from slidr.contract import ClickBatch

HOUR = 3_600_000
DAY = 86_400_000
DAY0 = 1_767_225_600_000  # a UTC midnight
M = float(fs.HLL_M)
IMPLS = ["reference"] + (["native"] if native is not None else [])
R = fs.RAW_INDEX


def _mod(impl: str):
    return reference if impl == "reference" else native


def _store(impl: str, **kw):
    return reference.ReferenceStore(**kw) if impl == "reference" else native.EmbeddedStore(**kw)


def _batch(ts, sessions, ips, ads, uas, users=None, logged=None) -> ClickBatch:
    n = len(ts)
    sess = [f"sess-{s}" for s in sessions]
    users = users if users is not None else [None] * n
    logged = logged if logged is not None else [False] * n
    ukeys = [f"u\x00{u}" if li else "s\x00" + s for u, s, li in zip(users, sess, logged,
                                                                 strict=True)]
    return ClickBatch(ts=np.asarray(ts, dtype=np.int64), user_key=ukeys, session_id=sess,
                      ip=[f"10.1.0.{i}" for i in ips], device=np.zeros(n, np.uint8),
                      logged_in=np.asarray(logged, np.uint8),
                      tz_offset_min=np.zeros(n, np.int16), ad_id=list(ads),
                      user_agent=list(uas))


def _raw(impl: str, b: ClickBatch, cuts=(), **kw) -> np.ndarray:
    mod, store = _mod(impl), _store(impl, **kw)
    edges = [0, *cuts, len(b)]
    parts = []
    for a, z in zip(edges[:-1], edges[1:], strict=True):
        s = b.slice(a, z)
        uh, sh, ih, hll, eh = mod.hash_keys(s.user_key, s.session_id, s.ip, s.ad_id,
                                            s.user_agent)
        parts.append(store.update(s.ts, uh, sh, ih, hll, s.tz_offset_min, eh, s.logged_in))
    return np.concatenate(parts)


def _raw_all(b: ClickBatch, cuts=()) -> np.ndarray:
    """Raw counters of every implementation (asserted equal), in batches cut at `cuts`."""
    outs = [_raw(impl, b, cuts) for impl in IMPLS]
    for o in outs[1:]:
        bad = np.argwhere(o != outs[0])
        assert bad.size == 0, (fs.RAW_COLUMNS[bad[0][1]], bad[0][0])
    return outs[0]


def _feat(raw: np.ndarray, b: ClickBatch) -> np.ndarray:
    return fs.finish(raw, b.ts, b.tz_offset_min, b.logged_in, b.device)


def _f(name: str) -> int:
    return fs.FEATURE_NAMES.index(name)


def _decayed(ts: list[int], tau: float) -> list[float]:
    """c <- c * exp(-dt / tau) + 1 over in-order clicks of one key."""
    out, c = [], 0.0
    for k, t in enumerate(ts):
        c = 1.0 if k == 0 else c * math.exp(-(t - ts[k - 1]) / 1000.0 / tau) + 1.0
        out.append(c)
    return out


def _hll_state(hashes: list[int]) -> tuple[float, float]:
    """(z, v) of a 32-register HLL after adding the given 64-bit hashes."""
    regs = [0] * fs.HLL_M
    for h in hashes:
        idx, rank = reference.hll_index_rank(h)
        regs[idx] = max(regs[idx], rank)
    return sum(2.0 ** -r for r in regs), float(sum(1 for r in regs if r == 0))


# ---------------------------------------------------------------- keys

@pytest.mark.parametrize("impl", IMPLS)
def test_entity_keys_are_the_namespaced_hashes_and_absent_is_zero(impl):
    mod = _mod(impl)
    ads = ["ad-1", None, "", "ad-é会", "ad-1"]
    uas = [None, "Mozilla/5.0 (X11)", "", "curl/8", "Mozilla/5.0 (X11)"]
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "10.0.0.9"]
    n = len(ads)
    uh, sh, ih, hll, eh = mod.hash_keys(["u"] * n, ["s"] * n, ips, ads, uas)
    assert eh.dtype == np.uint64 and eh.shape == (n, 3)
    h = reference.hash64
    want = [[h("a\x00ad-1"), h("x\x0010.0.0.1\x00ad-1"), 0],
            [0, 0, h("g\x00Mozilla/5.0 (X11)")],
            [0, 0, 0],
            [h("a\x00ad-é会"), h("x\x002001:db8::1\x00ad-é会"), h("g\x00curl/8")],
            [h("a\x00ad-1"), h("x\x0010.0.0.9\x00ad-1"), h("g\x00Mozilla/5.0 (X11)")]]
    assert eh.tolist() == want
    # None as a whole: every click without entity keys; the other outputs unchanged
    got = mod.hash_keys(["u"] * n, ["s"] * n, ips)
    assert got[4].shape == (n, 3) and not got[4].any()
    for a, b in zip(got[:4], (uh, sh, ih, hll), strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(TypeError, match="key must be str, not int"):
        mod.hash_keys(["u"], ["s"], ["i"], [5], None)
    with pytest.raises(TypeError, match="key must be str, not bytes"):
        mod.hash_keys(["u"], ["s"], ["i"], None, [b"x"])
    with pytest.raises(ValueError):
        mod.hash_keys(["u"], ["s"], ["i"], ["a", "b"], None)


@pytest.mark.parametrize("impl", IMPLS)
def test_hash_key_columns_take_ad_id_and_user_agent(impl):
    import pyarrow as pa
    mod = _mod(impl)
    uid = ["c1", None, "c3", None]
    sess = ["s1", "s2", "s3", "s4"]
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.4"]
    li = [True, False, True, False]
    ads = ["ad-1", None, "", "ad-2"]
    uas = ["UA/1", "UA/2", None, ""]
    ukeys = ["u\x00c1", "s\x00s2", "u\x00c3", "s\x00s4"]
    want = reference.hash_keys(ukeys, sess, ips, ads, uas)
    for cols in ((uid, sess, ips, li, ads, uas),
                 (pa.array(uid), pa.array(sess), pa.array(ips), li, pa.array(ads),
                  pa.array(uas))):
        got = mod.hash_key_columns(*cols)
        assert len(got) == 5
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)
    got = mod.hash_key_columns(uid, sess, ips, li)
    assert not got[4].any()


# ---------------------------------------------------------------- entity table

def test_ad_ipad_and_ua_counts_sessions_and_ips_exact():
    # one ad seen from two IPs and four sessions, a minute apart; a second ad once; a UA on
    # every click but the last
    t = DAY0 + 5 * HOUR
    ts = [t + 60_000 * k for k in range(6)]
    sessions = [0, 1, 2, 0, 3, 4]
    ips = [1, 1, 2, 2, 1, 3]
    ads = ["A", "A", "A", "A", "A", "B"]
    uas = ["UA"] * 5 + [None]
    b = _batch(ts, sessions, ips, ads, uas)
    raw = _raw_all(b)
    _, sh, ih, _, eh = reference.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id,
                                           b.user_agent)
    for j, tau in enumerate(fs.ENTITY_TAUS):
        col = ("c60", "c3600", "c86400", "c604800")[j]
        want_a = _decayed(ts[:5], tau) + [1.0]
        np.testing.assert_array_equal(raw[:, R[f"a_{col}"]], want_a)
        # (IP, ad): A from IP 1 at clicks 0, 1, 4; from IP 2 at 2, 3; B from IP 3
        d1 = _decayed([ts[0], ts[1], ts[4]], tau)
        d2 = _decayed([ts[2], ts[3]], tau)
        want_x = [d1[0], d1[1], d2[0], d2[1], d1[2], 1.0]
        np.testing.assert_array_equal(raw[:, R[f"x_{col}"]], want_x)
        np.testing.assert_array_equal(raw[:5, R[f"g_{col}"]], _decayed(ts[:5], tau))
    # the ad's day HLLs: distinct sessions and distinct IPs so far, no previous day
    for k in range(5):
        zs, vs = _hll_state([int(x) for x in sh[:k + 1]])
        zi, vi = _hll_state([int(x) for x in ih[:k + 1]])
        assert raw[k, R["as_z"]] == zs and raw[k, R["as_v"]] == vs
        assert raw[k, R["ai_z"]] == zi and raw[k, R["ai_v"]] == vi
        assert raw[k, R["as_pz"]] == M and raw[k, R["as_pv"]] == M
        assert raw[k, R["as_frac"]] == (ts[k] - DAY0) / DAY == raw[k, R["ai_frac"]]
        assert raw[k, R["gs_z"]] == zs and raw[k, R["gi_v"]] == vi
    # exact distinct counts small enough for linear counting: 4 sessions, 2 IPs
    f = _feat(raw, b)
    est_s = fs.hll_estimate(np.array([raw[4, R["as_z"]]]), np.array([raw[4, R["as_v"]]]))[0]
    assert f[4, _f("ad_sessions_1d")] == np.float32(np.log1p(est_s))
    assert 3.5 < est_s < 4.6
    assert f[4, _f("ad_ips_1d")] == pytest.approx(np.log1p(2.0), abs=0.05)
    assert f[4, _f("ipad_sessions_1d")] == pytest.approx(np.log1p(3.0), abs=0.1)
    # the rate ratio: ln(24 (c1h + 1) / (c1d + 1))
    c1h, c1d = raw[:, R["a_c3600"]], raw[:, R["a_c86400"]]
    np.testing.assert_allclose(f[:, _f("ad_rate_ratio")], np.log(24 * (c1h + 1) / (c1d + 1)),
                               rtol=1e-6)
    # the week ratio: ln(7 (c1d + 1) / (c7d + 1)); the user agent's likewise (0 while absent)
    c7d = raw[:, R["a_c604800"]]
    np.testing.assert_allclose(f[:, _f("ad_rate_ratio_7d")], np.log(7 * (c1d + 1) / (c7d + 1)),
                               rtol=1e-6)
    g1d, g7d = raw[:5, R["g_c86400"]], raw[:5, R["g_c604800"]]
    np.testing.assert_allclose(f[:5, _f("ua_rate_ratio_7d")], np.log(7 * (g1d + 1) / (g7d + 1)),
                               rtol=1e-6)
    assert f[5, _f("ua_rate_ratio_7d")] == 0.0 and raw[5, R["g_c604800"]] == 0.0
    np.testing.assert_allclose(f[:, _f("ad_clicks_1m")], np.log1p(raw[:, R["a_c60"]]),
                               rtol=1e-6)
    np.testing.assert_allclose(f[:, _f("ipad_clicks_1d")], np.log1p(raw[:, R["x_c86400"]]),
                               rtol=1e-6)
    np.testing.assert_allclose(f[:5, _f("ua_clicks_1h")], np.log1p(raw[:5, R["g_c3600"]]),
                               rtol=1e-6)


def test_absent_keys_give_the_absent_values():
    t = DAY0 + 7 * HOUR
    ts = [t, t + 1000, t + 2000, t + 3000]
    b = _batch(ts, [0, 1, 2, 3], [1, 1, 1, 1], [None, "", "A", None], [None, "", None, "UA"])
    raw = _raw_all(b)
    e0 = fs.RAW_SPANS["entity"][0]
    w = fs.ENTITY_RAW_WIDTH
    absent = list(fs.ENTITY_ABSENT)
    for k in range(2):
        for kind in range(3):
            assert raw[k, e0 + w * kind:e0 + w * (kind + 1)].tolist() == absent
    assert raw[2, e0 + 2 * w:e0 + 3 * w].tolist() == absent  # no user agent
    assert raw[3, e0:e0 + 2 * w].tolist() == absent * 2  # no ad: no (IP, ad) either
    assert raw[2, R["a_c60"]] == 1.0 and raw[3, R["g_c60"]] == 1.0
    f = _feat(raw, b)
    for name in ("ad_clicks_1m", "ad_clicks_1h", "ad_clicks_1d", "ad_rate_ratio", "ad_ips_1d",
                 "ad_sessions_1d", "ipad_clicks_1h", "ipad_clicks_1d", "ipad_sessions_1d",
                 "ad_rate_ratio_7d"):
        assert f[[0, 1, 3], _f(name)].tolist() == [0.0, 0.0, 0.0], name
    for name in ("ua_clicks_1h", "ua_rate_ratio", "ua_ips_1d", "ua_rate_ratio_7d"):
        assert f[[0, 1, 2], _f(name)].tolist() == [0.0, 0.0, 0.0], name
    # a first click: 1 click in the hour and the day: ln(24 * 2 / 2)
    assert f[2, _f("ad_rate_ratio")] == np.float32(math.log(24.0))
    # and 1 click in the day and the week: ln(7 * 2 / 2)
    assert f[2, _f("ad_rate_ratio_7d")] == np.float32(math.log(7.0))
    assert f[3, _f("ua_rate_ratio_7d")] == np.float32(math.log(7.0))
    # eh None: every entity column absent, whatever the clicks carry
    for impl in IMPLS:
        mod = _mod(impl)
        uh, sh, ih, hll, _ = mod.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id,
                                           b.user_agent)
        r0 = _store(impl).update(b.ts, uh, sh, ih, hll, b.tz_offset_min)
        assert r0[:, e0:].tolist() == [absent * 3] * 4
        assert np.array_equal(r0[:, :e0], raw[:, :e0])


def test_entity_day_windows_expiry_and_late_clicks():
    # ad A: 3 sessions on day 0, then day 1 at 06:00 (previous day = day 0's HLL), a late
    # click from day 0 (counts with dt 0; lands in the current day's HLL), day 3 (more than a
    # bucket later: previous empty), then past the TTL (a new key)
    d0 = DAY0 + 20 * HOUR
    ts = [d0, d0 + 60_000, d0 + 120_000, DAY0 + DAY + 6 * HOUR, DAY0 + 23 * HOUR,
          DAY0 + 3 * DAY + HOUR, DAY0 + 3 * DAY + HOUR + fs.ENTITY_TTL_MS + 1]
    sessions = [0, 1, 2, 3, 4, 5, 6]
    b = _batch(ts, sessions, [1] * 7, ["A"] * 7, ["UA"] * 7)
    raw = _raw_all(b, cuts=(2, 5))
    _, sh, ih, _, _ = reference.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id,
                                          b.user_agent)
    s = [int(x) for x in sh]
    z0, v0 = _hll_state(s[:3])
    z1, v1 = _hll_state(s[3:4])
    assert (raw[2, R["as_z"]], raw[2, R["as_v"]]) == (z0, v0)
    assert (raw[3, R["as_z"]], raw[3, R["as_v"]], raw[3, R["as_pz"]], raw[3, R["as_pv"]]) == (
        z1, v1, z0, v0)
    assert raw[3, R["as_frac"]] == 0.25
    z1b, v1b = _hll_state(s[3:5])
    assert (raw[4, R["as_z"]], raw[4, R["as_v"]], raw[4, R["as_pz"]]) == (z1b, v1b, z0)
    assert raw[4, R["as_frac"]] == 0.0  # before its bucket: clamped
    c = raw[:, R["a_c86400"]]
    assert c[4] == c[3] + 1.0  # late: no decay
    z3, v3 = _hll_state(s[5:6])
    assert (raw[5, R["as_z"]], raw[5, R["as_v"]], raw[5, R["as_pz"]], raw[5, R["as_pv"]]) == (
        z3, v3, M, M)
    # day 3 is 2 days after the newest click (day 1, 06:00): not expired, decayed
    want = c[4] * math.exp(-(ts[5] - ts[3]) / 1000.0 / 86400.0) + 1.0
    assert c[5] == want
    w = raw[:, R["a_c604800"]]
    assert w[4] == w[3] + 1.0
    assert w[5] == w[4] * math.exp(-(ts[5] - ts[3]) / 1000.0 / 604800.0) + 1.0
    # past the TTL: a new key
    assert raw[6, R["a_c60"]] == raw[6, R["a_c86400"]] == raw[6, R["a_c604800"]] == 1.0
    assert (raw[6, R["as_pz"]], raw[6, R["ai_pv"]]) == (M, M)
    assert raw[6, R["x_c3600"]] == 1.0 and raw[6, R["g_c86400"]] == 1.0
    # the distinct IPs: one IP throughout
    assert raw[6, R["ai_v"]] == M - 1


def test_user_gap_welford_exact():
    # a logged-in user across sessions: gaps 2 s, 2 s, 0 (same ms: 1 ms floor), 30 s, a late
    # click (gap 0), then past the user's TTL (a new user)
    t = DAY0 + 3 * HOUR
    ts = [t, t + 2000, t + 4000, t + 4000, t + 34_000, t + 10_000,
          t + 34_000 + fs.USER_TTL_MS + 1]
    n = len(ts)
    b = _batch(ts, list(range(n)), [1] * n, [None] * n, [None] * n, users=["cust"] * n,
               logged=[True] * n)
    raw = _raw_all(b, cuts=(3,))
    f = _feat(raw, b)
    gaps = [2.0, 2.0, 0.001, 30.0, 0.001]
    assert raw[:, R["u_lg_n"]].tolist() == [0, 1, 2, 3, 4, 5, 0]
    for k in range(1, 6):
        x = np.log(gaps[:k])
        assert raw[k, R["u_lg_mean"]] == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
        assert raw[k, R["u_lg_m2"]] == pytest.approx(((x - x.mean()) ** 2).sum(), rel=1e-12,
                                                     abs=1e-12)
        assert f[k, _f("u_gap_logsd")] == (-1.0 if k < 2 else pytest.approx(x.std(), rel=1e-6))
    assert raw[2, R["u_lg_m2"]] == 0.0 and f[2, _f("u_gap_logsd")] == 0.0
    assert f[0, _f("u_gap_logsd")] == -1.0 and f[6, _f("u_gap_logsd")] == -1.0
    assert raw[6, R["u_lg_mean"]] == 0.0 and raw[6, R["u_lg_m2"]] == 0.0


def test_entity_table_evicts_at_the_cap_like_the_other_tables():
    t = DAY0 + HOUR
    n = 12
    b = _batch([t + k for k in range(n)], [0] * n, [1] * n, [f"ad{k % 6}" for k in range(n)],
               [None] * n)
    for impl in IMPLS:
        st = _store(impl, max_keys=4)
        mod = _mod(impl)
        uh, sh, ih, hll, eh = mod.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id,
                                            b.user_agent)
        raw = st.update(b.ts, uh, sh, ih, hll, None, eh)
        stats = st.stats()
        assert stats["entities"] <= 4
        # 6 ads and 6 (IP, ad) pairs cycled through a table of 4: every click finds its key
        # evicted, so every count is a first click
        assert raw[:, R["a_c60"]].tolist() == [1.0] * n
        assert st.evicted >= 2 * n - 4


def test_spec_version_four_names_the_new_features():
    # spec 4's features and raw columns, at their places since spec 5 (one IP feature and
    # one IP raw column before them)
    assert fs.SPEC_VERSION == 5
    assert fs.N_FEATURES == 45 and fs.RAW_WIDTH == 84 and fs.ENTITY_RAW_WIDTH == 14
    assert fs.FEATURE_NAMES[30:] == (
        "u_gap_logsd", "ad_clicks_1m", "ad_clicks_1h", "ad_clicks_1d", "ad_rate_ratio",
        "ad_ips_1d", "ad_sessions_1d", "ipad_clicks_1h", "ipad_clicks_1d", "ipad_sessions_1d",
        "ua_clicks_1h", "ua_rate_ratio", "ua_ips_1d", "ad_rate_ratio_7d", "ua_rate_ratio_7d")
    assert fs.RAW_SPANS == {"user": (0, 8), "session": (8, 16), "ip": (16, 42),
                            "entity": (42, 84)}
    assert fs.RAW_COLUMNS[42:56] == (
        "a_c60", "a_c3600", "a_c86400", "a_c604800", "as_z", "as_v", "as_pz", "as_pv",
        "as_frac", "ai_z", "ai_v", "ai_pz", "ai_pv", "ai_frac")
    assert fs.ENTITY_TAUS == (60.0, 3600.0, 86400.0, 604800.0)
    assert fs.RAW_COLUMNS[5:8] == ("u_lg_n", "u_lg_mean", "u_lg_m2")


def _random_stream(seed: int, n: int = 400) -> tuple[ClickBatch, list[int]]:
    """Clicks over a few days with a pause past every TTL, 10 % of them up to 25 h late,
    some ad_id / user_agent absent (None or empty), batches cut at random."""
    rng = np.random.default_rng(seed)
    ts = DAY0 + np.sort(rng.integers(0, 3 * DAY, n)).astype(np.int64)
    ts[n // 2:] += 3 * DAY  # every key expires logically
    late = rng.random(n) < 0.1
    ts = ts - np.where(late, rng.integers(0, 25 * HOUR, n), 0)
    pool = int(rng.integers(3, 30))
    ads = [(None, "", "ad-a", "ad-b", "ad-c", f"ad-{k}")[int(rng.integers(0, 6))]
           for k in rng.integers(0, pool, n)]
    uas = [(None, "", "Mozilla/5.0 (X11)", "okhttp/4", f"bot/{k}")[int(rng.integers(0, 5))]
           for k in rng.integers(0, pool, n)]
    b = _batch(ts, rng.integers(0, pool, n).tolist(), rng.integers(0, pool // 2 + 1, n).tolist(),
               ads, uas, users=[f"c{k}" for k in rng.integers(0, pool, n)],
               logged=(rng.random(n) < 0.4).tolist())
    cuts = sorted(set(rng.integers(1, n, int(rng.integers(0, 12))).tolist()))
    return b, cuts


@pytest.mark.skipif(native is None, reason="native kernel not built")
@pytest.mark.parametrize("seed", range(30))
def test_native_equals_the_twin_on_random_streams(seed):
    b, cuts = _random_stream(seed)
    ref = _raw("reference", b, cuts)
    # a sweep at every click, with a grace past the latest click's lateness: exact
    nat = _raw("native", b, cuts, capacity_hint=0, sweep_every=1, sweep_grace_ms=26 * HOUR)
    bad = np.argwhere(ref != nat)
    assert bad.size == 0, (fs.RAW_COLUMNS[bad[0][1]], bad[0][0], ref[tuple(bad[0])],
                           nat[tuple(bad[0])])
    assert (ref[:, R["a_c60"]] > 0).any() and (ref[:, R["a_c60"]] == 0).any()
    want = fs.finish(ref, b.ts, b.tz_offset_min, b.logged_in, b.device)
    got = native.finish_into(ref, b.ts, b.tz_offset_min, b.logged_in, b.device)
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=2e-7)


@pytest.mark.skipif(native is None, reason="native kernel not built")
def test_stats_and_sizes_cover_the_entity_table():
    st = native.EmbeddedStore()
    b, _ = _random_stream(1)
    uh, sh, ih, hll, eh = native.hash_keys(b.user_key, b.session_id, b.ip, b.ad_id,
                                           b.user_agent)
    st.update(b.ts, uh, sh, ih, hll, b.tz_offset_min, eh)
    s = st.stats()
    assert s["entities"] == len({int(x) for x in eh.ravel() if x})
    assert s["keys"] == s["users"] + s["sessions"] + s["ips"] + s["entities"] == len(st)
    assert s["entry_bytes"]["entity"] == 160 and s["entry_bytes"]["ip"] == 280
    assert s["bytes"] == sum(s["table_bytes"].values())
    # the memory cap counts four tables: entries and an index sized for the cap each
    per = sum(s["entry_bytes"][k] for k in ("user", "session", "ip", "entity"))
    budget = 64 << 20
    k = native.max_keys_for_bytes(budget)
    slots = 64
    while slots * 7 < k * 10:
        slots *= 2
    used = k * per + 4 * slots * s["entry_bytes"]["slot"]
    assert used <= budget and used > 0.9 * budget, (k, used)
