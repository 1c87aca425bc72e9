"""The daemon's native fast path (ext/_fastpath.pyx) against the Python it replaces.

fast_valid must give the same answer as the batcher's Python check for every input (and never
pass a click that validate_click rejects); batch_columns must equal ClickBatch.from_clicks; every
frame from encode_results must be byte-identical to msgpack's packing of the decision.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slidr.slidrd import intake

from slidr.contract import (
    DEVICE_CODE,
    DEVICES,
    MAX_ID_LEN,
    MAX_UA_LEN,
    TS_MAX,
    TS_MIN,
    TZ_MAX,
    TZ_MIN,
    ClickBatch,
    slice_name,
    validate_click,
)

fp = pytest.importorskip("slidr.ext._fastpath")

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ the Python reference
# slidrd/intake.py keeps the Python fast_valid as the fallback twin of the native one; it is the
# reference here (with its own module-level IP cache). make_ip_valid gives the native function a
# fresh cache and checker of the same kind for each comparison.

def make_ip_valid() -> tuple[dict[str, bool], Callable[[str], bool]]:
    cache: dict[str, bool] = {}

    def ip_valid(ip: str) -> bool:
        ok = cache.get(ip)
        if ok is None:
            ok = cache[ip] = intake._ip_valid(ip)
        return ok

    return cache, ip_valid


def ref_fast_valid(c: Any) -> bool:
    return intake.fast_valid(c)


class SubStr(str):
    pass


class SubInt(int):
    pass


# ------------------------------------------------------------------ generated clicks

def sized(n: int) -> st.SearchStrategy[str]:
    """Strings of about n code points; 'é' and the emoji make UTF-8 longer than the length."""
    return st.builds(lambda ch, k: ch * k, st.sampled_from(["a", "é", "\U0001f600"]),
                     st.sampled_from([max(n - 1, 0), n, n + 1]))


def ids(maxlen: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.text(max_size=6), sized(maxlen), sized(1), st.just(""),
                     st.builds(SubStr, st.text(min_size=1, max_size=3)),
                     st.sampled_from([None, 7, True, b"abc", 1.5, ["x"]]))


def ints_near(lo: int, hi: int) -> st.SearchStrategy[Any]:
    edges = [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1]
    return st.one_of(st.sampled_from(edges), st.integers(lo - 10, hi + 10),
                     st.sampled_from([0, -1, 2 ** 63, 2 ** 64 + lo, -(2 ** 70), True, False,
                                      float(lo + 1), None, str(lo + 1)]),
                     st.builds(SubInt, st.sampled_from([lo, hi])))


IPS = ["10.0.0.1", "192.168.1.255", "::1", "2001:db8::1", "999.1.1.1", "1.2.3", "", "abc",
       "1.2.3.4 ", "fe80::1%eth0", SubStr("10.0.0.2"), None, 1, b"10.0.0.1"]
KEYS = ["click_id", "ts", "session_id", "user_id", "ip", "device", "logged_in",
        "tz_offset_min", "user_agent", "ad_id"]


@st.composite
def any_click(draw: st.DrawFn) -> Any:
    good = {"click_id": draw(st.one_of(st.text(min_size=1, max_size=8), ids(MAX_ID_LEN))),
            "ts": draw(st.one_of(st.integers(TS_MIN, TS_MAX - 1), ints_near(TS_MIN, TS_MAX))),
            "session_id": draw(st.one_of(st.text(min_size=1, max_size=8), ids(MAX_ID_LEN))),
            "ip": draw(st.sampled_from(IPS)),
            "device": draw(st.sampled_from([*DEVICES, "Desktop", "", "tv", None, 1,
                                            SubStr("app")])),
            "logged_in": draw(st.sampled_from([True, False, True, False, 1, 0, None, "true",
                                               np.bool_(True)])),
            "user_id": draw(ids(MAX_ID_LEN)),
            "tz_offset_min": draw(ints_near(TZ_MIN, TZ_MAX)),
            "user_agent": draw(st.one_of(st.none(), ids(MAX_UA_LEN), sized(MAX_UA_LEN))),
            "ad_id": draw(st.one_of(st.none(), ids(MAX_ID_LEN)))}
    # Drop some keys (required ones too), sometimes add an unknown one.
    for k in KEYS:
        if draw(st.integers(0, 9)) == 0:
            del good[k]
    if draw(st.booleans()):
        good["extra"] = draw(st.sampled_from([1, "x", None]))
    wrap = draw(st.sampled_from(["dict", "dict", "dict", "dict", "proxy", "list", "none",
                                 "str", "subdict"]))
    if wrap == "proxy":
        return types.MappingProxyType(good)
    if wrap == "list":
        return list(good.items())
    if wrap == "none":
        return None
    if wrap == "str":
        return "click"
    if wrap == "subdict":
        return type("D", (dict,), {})(good)
    return good


@given(any_click())
@SETTINGS
def test_fast_valid_matches_python(c: Any) -> None:
    want = ref_fast_valid(c)
    cache2, ip_valid2 = make_ip_valid()
    got = fp.fast_valid(c, cache2, ip_valid2)
    assert type(got) is bool
    assert got == want
    if got:  # the fast check is only ever a shortcut past validate_click
        validate_click(c)


@given(st.lists(any_click(), min_size=1, max_size=10))
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_fast_valid_shares_ip_cache(clicks: list[Any]) -> None:
    """One cache across many clicks, as in the daemon: the cache is consulted before the check
    and the check runs only on a miss."""
    cache, ip_valid = make_ip_valid()
    calls: list[str] = []

    def counting(ip: str) -> bool:
        calls.append(ip)
        return ip_valid(ip)

    for c in clicks:
        before = dict(cache)
        k = len(calls)
        got = fp.fast_valid(c, cache, counting)
        assert got == ref_fast_valid(c)
        assert len(calls) - k <= 1
        assert all(ip not in before for ip in calls[k:])


def test_fast_valid_uses_the_cached_answer() -> None:
    c = {"click_id": "c", "ts": TS_MIN, "session_id": "s", "ip": "10.0.0.1", "device": "app",
         "logged_in": False}

    def boom(ip: str) -> bool:
        raise AssertionError("ip_check called on a cache hit")

    assert fp.fast_valid(c, {"10.0.0.1": True}, boom) is True
    assert fp.fast_valid(c, {"10.0.0.1": False}, boom) is False
    # A miss on a canonical dotted quad is decided in C (as the decoder does): no check call.
    assert fp.fast_valid(c, {}, boom) is True
    # Anything else on a miss is the check's to decide.
    for ip in ("::1", "10.0.0.01", "10.0.0", "1.2.3.256", "\ud800"):
        assert fp.fast_valid({**c, "ip": ip}, {}, lambda ip: True) is True
        assert fp.fast_valid({**c, "ip": ip}, {}, lambda ip: False) is False


def test_fast_valid_edges() -> None:
    base = {"click_id": "c", "ts": TS_MIN, "session_id": "s", "ip": "10.0.0.1",
            "device": "mobile", "logged_in": True, "user_id": "u"}
    cache, ip_valid = make_ip_valid()
    cases = [
        {}, {"ts": TS_MAX - 1}, {"ts": TS_MAX}, {"ts": TS_MIN - 1}, {"ts": True},
        {"ts": 2 ** 64}, {"tz_offset_min": TZ_MIN}, {"tz_offset_min": TZ_MAX},
        {"tz_offset_min": TZ_MAX + 1}, {"tz_offset_min": TZ_MIN - 1}, {"tz_offset_min": False},
        {"tz_offset_min": None}, {"user_id": ""}, {"user_id": None}, {"logged_in": 1},
        {"click_id": "é" * MAX_ID_LEN}, {"click_id": "é" * (MAX_ID_LEN + 1)},
        {"click_id": "\U0001f600" * MAX_ID_LEN}, {"user_agent": "x" * MAX_UA_LEN},
        {"user_agent": "x" * (MAX_UA_LEN + 1)}, {"ad_id": ""}, {"session_id": ""},
        {"device": SubStr("app")}, {"ip": "::ffff:1.2.3.4"}, {"ip": "300.1.1.1"},
    ]
    for change in cases:
        c = {**base, **change}
        assert fp.fast_valid(c, cache, ip_valid) == ref_fast_valid(c), change
    assert fp.fast_valid(base, cache, ip_valid) is True
    assert fp.fast_valid({**base, "ts": TS_MAX}, cache, ip_valid) is False
    for k in ("click_id", "ts", "session_id", "ip", "device", "logged_in"):
        c = dict(base)
        del c[k]
        assert fp.fast_valid(c, cache, ip_valid) is False


# ------------------------------------------------------------------ batch_columns

@st.composite
def valid_click(draw: st.DrawFn) -> Any:
    li = draw(st.booleans())
    c: dict[str, Any] = {
        "click_id": draw(st.text(min_size=1, max_size=6)),
        "ts": draw(st.one_of(st.integers(TS_MIN, TS_MAX - 1), st.sampled_from([TS_MIN, TS_MAX - 1]))),
        "session_id": draw(st.one_of(st.text(min_size=1, max_size=6), sized(MAX_ID_LEN - 1))),
        "ip": draw(st.sampled_from(IPS[:4])),
        "device": draw(st.sampled_from(DEVICES)),
        "logged_in": li,
    }
    uid = draw(st.one_of(st.text(min_size=1, max_size=6), st.just(""), st.none(),
                         st.just("missing")))
    if li and (not uid or uid == "missing"):
        uid = "u" + draw(st.text(max_size=3))
    if uid != "missing":
        c["user_id"] = uid
    tz = draw(st.one_of(st.integers(TZ_MIN, TZ_MAX), st.sampled_from([0, None, "missing"])))
    if tz != "missing":
        c["tz_offset_min"] = tz
    odd = draw(st.integers(0, 15))
    if odd == 0:  # other types validate_click accepts
        c["ts"] = SubInt(c["ts"])
        c["session_id"] = SubStr(c["session_id"])
        if c.get("user_id"):
            c["user_id"] = SubStr(c["user_id"])
    if odd == 1:
        return types.MappingProxyType(c)
    return c


@given(st.lists(valid_click(), max_size=20))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_batch_columns_matches_from_clicks(clicks: list[Any]) -> None:
    for c in clicks:
        validate_click(c)
    want = ClickBatch.from_clicks(clicks, validate=False)
    ts, ukey, sess, ip, dev, li, tz = fp.batch_columns(clicks)
    for got, ref in ((ts, want.ts), (dev, want.device), (li, want.logged_in),
                     (tz, want.tz_offset_min)):
        assert isinstance(got, np.ndarray) and got.dtype == ref.dtype and got.shape == ref.shape
        assert np.array_equal(got, ref)
    for got_l, ref_l in ((ukey, want.user_key), (sess, want.session_id), (ip, want.ip)):
        assert type(got_l) is list
        assert got_l == ref_l
        assert [type(x) for x in got_l] == [type(x) for x in ref_l]


def test_batch_columns_empty_and_keys() -> None:
    ts, ukey, sess, ip, dev, li, tz = fp.batch_columns([])
    assert ts.dtype == np.int64 and ts.shape == (0,) and ukey == [] and tz.dtype == np.int16
    c = {"click_id": "c", "ts": TS_MIN, "session_id": "s", "ip": "::1", "device": "app",
         "logged_in": True, "user_id": "u1", "tz_offset_min": -720}
    out = fp.batch_columns([c, {**c, "logged_in": False}, {**c, "tz_offset_min": None}])
    assert out[1] == ["u\x00u1", "s\x00s", "u\x00u1"]
    assert out[4].tolist() == [DEVICE_CODE["app"]] * 3
    assert out[6].tolist() == [-720, -720, 0]
    # Not valid (logged in without a user id), yet from_clicks(validate=False) keys the session.
    odd = [{**c, "user_id": ""}, {**c, "user_id": None}, {k: v for k, v in c.items()
                                                          if k != "user_id"}]
    assert fp.batch_columns(odd)[1] == ClickBatch.from_clicks(odd, validate=False).user_key


def test_partition_trusts_the_decoders_items() -> None:
    """An item with a sixth element True (made by the decoder, whose click passed the contract
    there) is not checked again; any other item is (native and twin alike)."""
    c = {"click_id": "c", "ts": TS_MIN, "session_id": "s", "ip": "::1", "device": "app",
         "logged_in": False}
    marked, plain = (c, "conn", 1, 0.0, 10.0, True), (c, "conn", 2, 0.0, 10.0)
    calls: list[str] = []

    def check(ip: str) -> bool:
        calls.append(ip)
        return True

    valid, clicks, expired, late, unchecked = fp.partition([marked], 5.0, {}, check)
    assert valid == [marked] and clicks == [c] and not calls and not unchecked
    valid, clicks, expired, late, unchecked = fp.partition([marked, plain], 5.0, {}, check)
    assert valid == [marked, plain] and calls == ["::1"]
    # late items are still late, marked or not
    valid, clicks, expired, late, unchecked = fp.partition([marked, plain], 20.0, {}, check)
    assert expired == [marked, plain] and late == [c, c] and not valid
    assert intake.partition([marked, plain], 20.0) == (valid, clicks, expired, late, unchecked)
    assert intake.partition([marked], 5.0) == ([marked], [c], [], [], [])


def ref_ts_outside(ts: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    """The batcher's numpy clock check (Batcher._clock_refused without the native path)."""
    if ts.max() <= hi and ts.min() >= lo:
        return None
    return np.flatnonzero((ts > hi) | (ts < lo))


BOUND = st.one_of(st.floats(allow_nan=False), st.integers(TS_MIN - 10, TS_MAX + 10).map(float))


@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1) | st.integers(TS_MIN, TS_MAX), min_size=1,
                max_size=12), BOUND, BOUND)
@SETTINGS
def test_ts_outside_matches_numpy(values: list[int], lo: float, hi: float) -> None:
    ts = np.array(values, dtype=np.int64)
    got, want = fp.ts_outside(ts, lo, hi), ref_ts_outside(ts, lo, hi)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.dtype == want.dtype and got.tolist() == want.tolist()


def test_ts_outside_edges() -> None:
    ts = np.array([5, 10, 20, 3], dtype=np.int64)
    assert fp.ts_outside(ts, 3, 20) is None  # bounds are inclusive
    assert fp.ts_outside(ts, 4, 15).tolist() == [2, 3]
    assert fp.ts_outside(ts, float("-inf"), float("inf")) is None  # the check turned off
    assert fp.ts_outside(np.empty(0, dtype=np.int64), 0, 1) is None
    assert fp.ts_outside(ts[::2], 6, 100).tolist() == [0]  # a strided view is read right


# ------------------------------------------------------------------ encode_results

SLICES = [slice_name(d, li) for d in range(len(DEVICES)) for li in (0, 1)]
INT_EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1,
             2 ** 63, 2 ** 64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31),
             -(2 ** 31) - 1, -(2 ** 63)]
STR_BOUNDS = [0, 1, 31, 32, 255, 256, 65535, 65536]


def utf8_sized(nbytes: int) -> st.SearchStrategy[str]:
    """Strings whose UTF-8 is exactly, one under or one over nbytes (msgpack header edges)."""
    def build(k: int, prefix: str) -> str:
        return prefix + "a" * max(k - len(prefix.encode()), 0)
    return st.builds(build, st.sampled_from([max(nbytes - 1, 0), nbytes, nbytes + 1]),
                     st.sampled_from(["", "é", "\U0001f600", "日本"]))


def ref_frames(msgids: list[Any], cids: list[Any], invalid: np.ndarray, scores: np.ndarray,
               thr: np.ndarray, codes: np.ndarray, version: str) -> list[bytes]:
    packer = msgpack.Packer(use_bin_type=True)
    sc, th, code_l = scores.tolist(), thr.tolist(), codes.tolist()
    out = []
    for i in range(len(msgids)):
        d = {"click_id": cids[i], "invalid": bool(invalid[i]), "score": sc[i],
             "threshold": th[i], "slice": SLICES[code_l[i]], "model": version,
             "reason": "model"}
        out.append(packer.pack([1, msgids[i], None, d]))
    return out


@st.composite
def result_batch(draw: st.DrawFn) -> tuple[Any, ...]:
    n = draw(st.integers(0, 12))
    msgids = draw(st.lists(st.one_of(st.sampled_from(INT_EDGES), st.integers(0, 2 ** 32 - 1),
                                     st.integers(-(2 ** 63), 2 ** 64 - 1),
                                     st.sampled_from([None, True, SubInt(5)])),
                           min_size=n, max_size=n))
    cids = draw(st.lists(st.one_of(st.text(max_size=10), utf8_sized(draw(st.sampled_from(STR_BOUNDS))),
                                   st.builds(SubStr, st.text(max_size=3))),
                         min_size=n, max_size=n))
    f32 = draw(st.booleans())
    fl = st.floats(width=32) if f32 else st.floats()
    scores = np.array(draw(st.lists(fl, min_size=n, max_size=n)),
                      dtype=np.float32 if f32 else np.float64)
    t32 = draw(st.booleans())
    thr = np.array(draw(st.lists(st.floats(width=32 if t32 else 64), min_size=n, max_size=n)),
                   dtype=np.float32 if t32 else np.float64)
    codes = np.array(draw(st.lists(st.integers(0, len(SLICES) - 1), min_size=n, max_size=n)),
                     dtype=np.intp)
    invalid = scores >= thr if draw(st.booleans()) else np.array(
        draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), dtype=np.uint8)
    version = draw(st.one_of(st.text(max_size=40), utf8_sized(32)))
    return msgids, cids, invalid, scores, thr, codes, version


@given(result_batch())
@SETTINGS
def test_encode_results_matches_msgpack(batch: tuple[Any, ...]) -> None:
    msgids, cids, invalid, scores, thr, codes, version = batch
    got = fp.encode_results(msgids, cids, invalid, scores, thr, codes,
                            [msgpack.packb(s) for s in SLICES], msgpack.packb(version),
                            msgpack.packb("model"))
    assert type(got) is list and all(type(f) is bytes for f in got)
    assert got == ref_frames(msgids, cids, invalid, scores, thr, codes, version)


def test_encode_results_all_int_widths_and_odd_values() -> None:
    n = len(INT_EDGES)
    cids = ["é" * k for k in range(n)]
    scores = np.array([np.nan, np.inf, -np.inf, -0.0, 0.1] * n, dtype=np.float32)[:n]
    thr = np.linspace(0, 1, n)
    codes = np.arange(n, dtype=np.intp) % len(SLICES)
    inv = scores >= thr
    args = ([msgpack.packb(s) for s in SLICES], msgpack.packb("v1"), msgpack.packb("model"))
    got = fp.encode_results(INT_EDGES, cids, inv, scores, thr, codes, *args)
    assert got == ref_frames(INT_EDGES, cids, inv, scores, thr, codes, "v1")
    # Frames decode to the decision the Python builds.
    msg = msgpack.unpackb(got[5], raw=False)
    assert msg[:3] == [1, INT_EDGES[5], None]
    assert list(msg[3]) == ["click_id", "invalid", "score", "threshold", "slice", "model",
                            "reason"]
    # Out of msgpack's range, or not UTF-8 encodable: the same error as msgpack.
    one = (inv[:1], scores[:1], thr[:1], codes[:1], *args)
    for bad_id, exc in ((2 ** 64, OverflowError), (-(2 ** 63) - 1, OverflowError)):
        with pytest.raises(exc):
            msgpack.Packer(use_bin_type=True).pack([1, bad_id, None, {}])
        with pytest.raises(exc):
            fp.encode_results([bad_id], ["c"], *one)
    with pytest.raises(UnicodeEncodeError):
        fp.encode_results([1], ["\ud800"], *one)
    with pytest.raises(IndexError):
        fp.encode_results([1], ["c"], inv[:1], scores[:1], thr[:1],
                          np.array([len(SLICES)], dtype=np.intp), *args)
    with pytest.raises(ValueError):
        fp.encode_results([1, 2], ["c"], *one)


# ------------------------------------------------------------------ the Redis reply

def test_expand_rows_matches_the_numpy_parse() -> None:
    """fastpath.expand_rows (what RedisStore.parse_reply uses) gives the numpy path's raw
    counters for any reply of n rows, however the rows are split into bulk strings; a reply of
    the wrong size is None (the numpy path then names the error)."""
    from slidr import store_redis as sr
    store = sr.RedisStore("redis://127.0.0.1:1/0")  # never connects: parsing only
    rng = np.random.default_rng(3)
    row, pc = sr._ROW_DOUBLES, sr._PACKED
    for n in (0, 1, 2, 7, 64):
        rec = rng.normal(size=(n, row)) * 1e3
        rec[:, pc] = rng.integers(0, 1 << 48, n).astype(np.float64)  # 8 six-bit fields
        blob = rec.astype("<f8").tobytes()
        whole = [blob[i * sr._ROW_BYTES:(i + 1) * sr._ROW_BYTES] for i in range(n)]
        want = store.parse_reply_numpy(whole, n)
        for resp in (whole, [blob], [blob[:5], blob[5:]] if n else []):
            got = fp.expand_rows(resp, n, row, sr._D_SRC, sr._D_DST, pc, sr._B_DST,
                                 want.shape[1])
            assert got is not None and got.dtype == np.float64 and got.shape == want.shape
            assert np.array_equal(got, want)
            assert np.array_equal(store.parse_reply(resp, n), want)
    width = sr.fs.RAW_WIDTH
    assert fp.expand_rows([b"\0" * (sr._ROW_BYTES - 1)], 1, row, sr._D_SRC, sr._D_DST, pc,
                          sr._B_DST, width) is None
    assert fp.expand_rows([b"\0" * sr._ROW_BYTES, 5], 1, row, sr._D_SRC, sr._D_DST, pc,
                          sr._B_DST, width) is None
    with pytest.raises(RuntimeError, match="bytes for 2 clicks"):
        store.parse_reply([b"\0" * sr._ROW_BYTES], 2)
