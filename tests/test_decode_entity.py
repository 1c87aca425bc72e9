"""Feature spec 4's click fields on the daemon's hot path: ad_id and user_agent (both optional)
through the decoder (ext/_decode.pyx and its twin ext/decode.py) and the entity keys the fast
path hashes from them (ext/_fastpath.pyx batch_columns), against the reference hash.

Present, null, missing, empty, non-ASCII and maximal length decode on the hot path to the dict
msgpack builds; one character over the limit goes to the general path (which names the field);
the keys equal hash64 of the namespaced strings ("a\\0" + ad, "x\\0" + ip + "\\0" + ad,
"g\\0" + ua), 0 for an absent field.
"""

from __future__ import annotations

import importlib

import msgpack
import numpy as np
import pytest
from daemon_helpers import click
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slidr.ext.reference import hash64
from test_hotpath_parity import _ip_check_factory

from slidr.contract import MAX_ID_LEN, MAX_UA_LEN, validate_click
from slidr.protocol import MAX_DEPTH

native = pytest.importorskip("slidr.ext._decode")
fp = pytest.importorskip("slidr.ext._fastpath")
twin = importlib.import_module("slidr.ext.decode")

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari"
MISSING = object()


def _scan(mod, data: bytes):
    cache, check = _ip_check_factory()
    items: list = []
    res = mod.scan(data, 0, 1 << 20, MAX_DEPTH, cache, check, "conn", 1.0, 2.0, items, 1 << 20)
    return res, items


def _click(i: int, ad=MISSING, ua=MISSING, **kw) -> dict:
    c = click(i, **kw)
    for k, v in (("ad_id", ad), ("user_agent", ua)):
        if v is MISSING:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def want_keys(c: dict) -> list[int]:
    """The spec's keys, from reference.hash64 (a hash of 0 is 1; absent is 0)."""
    ad, ua, ip = c.get("ad_id"), c.get("user_agent"), c["ip"]

    def h(s: str) -> int:
        return hash64(s) or 1
    return [h("a\x00" + ad) if ad else 0, h("x\x00" + ip + "\x00" + ad) if ad else 0,
            h("g\x00" + ua) if ua else 0]


# Every case the contract accepts: (ad_id, user_agent).
HOT = [
    ("ad1", UA), (None, None), (MISSING, MISSING), ("ad2", MISSING), (MISSING, UA),
    (None, UA), ("ad3", None), ("", ""), ("", UA), ("ad4", ""),
    ("é会🙂", "Mözilla/5.0 (日本語) 🙂"), ("x" * MAX_ID_LEN, "u" * MAX_UA_LEN),
    ("é" * MAX_ID_LEN, "🙂" * MAX_UA_LEN),  # maximal in characters, 2 and 4 bytes each
    ("a\x00b", "g\x00h"),  # NUL inside: hashed as bytes like any other
]


@pytest.mark.parametrize("case", range(len(HOT)))
def test_hot_clicks_decode_to_msgpacks_dicts_native_and_twin(case):
    ad, ua = HOT[case]
    c = _click(case, ad, ua)
    validate_click(c)
    frame = msgpack.packb([0, case, "score", [c]])
    got = _scan(native, frame)
    assert got == _scan(twin, frame)
    (status, pos, _end), items = got
    assert (status, pos) == (native.NEED_MORE, len(frame))
    assert len(items) == 1 and items[0][0] == msgpack.unpackb(frame)[3][0] == c
    assert items[0][5] is True


@pytest.mark.parametrize("field,value", [
    ("ad_id", "x" * (MAX_ID_LEN + 1)), ("user_agent", "u" * (MAX_UA_LEN + 1)),
    ("ad_id", "é" * (MAX_ID_LEN + 1)), ("user_agent", "🙂" * (MAX_UA_LEN + 1)),
    ("ad_id", 7), ("user_agent", ["Mozilla"]), ("ad_id", b"ad1"), ("user_agent", True),
])
def test_bad_fields_leave_the_hot_path(field, value):
    """Over-long or not a string: the general path takes the message (and names the field)."""
    frame = msgpack.packb([0, 5, "score", [dict(click(5), **{field: value})]],
                          use_bin_type=True)
    for mod in (native, twin):
        (status, pos, end), items = _scan(mod, frame)
        assert (status, pos, end) == (mod.GENERAL, 0, len(frame)) and items == []


def test_invalid_utf8_leaves_the_hot_path():
    base = msgpack.packb([0, 5, "score", [dict(click(5), user_agent="UAUA", ad_id="ADAD")]])
    for good, bad in ((b"\xa4UAUA", b"\xa4UA\xffA"), (b"\xa4ADAD", b"\xa4A\xed\xa0\x80")):
        frame = base.replace(good, bad)
        assert frame != base
        for mod in (native, twin):
            (status, _p, _e), items = _scan(mod, frame)
            assert status == mod.GENERAL and items == []


def test_decoded_clicks_hash_to_the_spec_keys():
    """Decoder -> batch_columns: the entity keys of every case equal the reference's."""
    frames = b"".join(msgpack.packb([0, i, "score", [_click(i, ad, ua)]])
                      for i, (ad, ua) in enumerate(HOT))
    (_s, _p, _e), items = _scan(native, frames)
    clicks = [it[0] for it in items]
    assert len(clicks) == len(HOT)
    out = fp.batch_columns(clicks, True)
    assert len(out) == 8
    eh = out[7]
    assert eh.dtype == np.uint64 and eh.shape == (len(HOT), 3) and eh.flags.c_contiguous
    assert eh.tolist() == [want_keys(c) for c in clicks]
    # The first seven columns are what batch_columns gives without the keys.
    for a, b in zip(out[:7], fp.batch_columns(clicks), strict=True):
        assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b)
    absent = [i for i, (ad, ua) in enumerate(HOT) if not (ad and ad is not MISSING)]
    assert (eh[absent, :2] == 0).all()


def test_entity_key_function_matches_batch_columns():
    for i, (ad, ua) in enumerate(HOT):
        c = _click(i, ad, ua)
        a, x, g = want_keys(c)
        ad_v, ua_v = c.get("ad_id"), c.get("user_agent")
        assert fp.entity_key("a", ad_id=ad_v) == a
        assert fp.entity_key("x", ad_id=ad_v, ip=c["ip"]) == x
        assert fp.entity_key("g", user_agent=ua_v) == g


def test_user_agent_cache_is_exact():
    """The user-agent cache: equal strings in distinct objects, strings that share a slot,
    more distinct agents than slots, and str subclasses all hash as the reference does."""
    class SubStr(str):
        pass

    uas = [f"Mozilla/5.0 agent {i:05d} (same prefix, same suffix) Safari" for i in range(3000)]
    uas += ["short", "s", "12345678", "1234567", "x" * 15, "x" * 16, "x" * 17]
    rows = []
    for k in range(3):  # three passes: misses, then hits on equal but distinct objects
        for i, ua in enumerate(uas):
            s = "".join(list(ua)) if k else ua  # a distinct object with the same characters
            rows.append(_click(i, "ad", SubStr(s) if (i + k) % 11 == 0 else s))
    eh = fp.batch_columns(rows, True)[7]
    assert eh[:, 2].tolist() == [want_keys(c)[2] for c in rows]


TEXT = st.characters(blacklist_categories=("Cs",))  # what UTF-8 msgpack can carry


@given(st.lists(st.tuples(st.one_of(st.none(), st.text(TEXT, max_size=12), st.just(MISSING)),
                          st.one_of(st.none(), st.text(TEXT, max_size=40), st.just(MISSING),
                                    st.sampled_from([UA, UA[:-1], UA + "x"])),
                          st.sampled_from(["10.0.0.1", "2001:db8::1", "255.255.255.255"])),
                max_size=12))
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_entity_keys_equal_the_reference(rows):
    clicks = [_click(i, ad, ua, ip=ip) for i, (ad, ua, ip) in enumerate(rows)]
    eh = fp.batch_columns(clicks, True)[7]
    assert eh.shape == (len(clicks), 3)
    assert eh.tolist() == [want_keys(c) for c in clicks]
