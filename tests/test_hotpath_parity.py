"""The native hot path against its pure-Python twin.

- The decoder (ext/_decode.pyx vs ext/decode.py): the same framing, statuses, positions and
  batcher items for valid frames, hostile frames and seeded random mutations; depth bounded
  at exactly MAX_DEPTH; a hot click decodes to the dict msgpack would build.
- Two real daemons, one compiled (SLIDR_REQUIRE_NATIVE=1) and one pure-Python
  (SLIDR_PURE_PYTHON=1), fed the same requests: the same decisions for valid clicks and the
  same error codes and messages for the same bad input, one answer per request id.
"""

from __future__ import annotations

import importlib
import ipaddress
import random

import msgpack
import pytest
from daemon_helpers import Client, Daemon, click, make_registry

from slidr.errors import ErrorCode
from slidr.protocol import MAX_DEPTH

native = pytest.importorskip("slidr.ext._decode")
twin = importlib.import_module("slidr.ext.decode")


def _ip_check_factory():
    cache: dict[str, bool] = {}

    def check(s: str) -> bool:
        try:
            ipaddress.ip_address(s)
            ok = True
        except ValueError:
            ok = False
        cache[s] = ok
        return ok
    return cache, check


def _scan(mod, data: bytes, pos: int = 0, room: int = 1 << 20, max_msg: int = 1 << 20):
    cache, check = _ip_check_factory()
    items: list = []
    res = mod.scan(data, pos, max_msg, MAX_DEPTH, cache, check, "conn", 1.0, 2.0, items, room)
    return res, items


def _deep(levels: int) -> bytes:
    return b"\x91" * levels + b"\xc0"


FRAMES = [msgpack.packb([0, i, "score", [click(i)]]) for i in range(40)] + [
    msgpack.packb([0, 300, "score", [dict(click(1), ip="2001:db8::1", user_agent="é" * 5)]]),
    msgpack.packb([0, 70000, "score", [dict(click(2), ip="010.0.0.1")]]),  # leading zero
    msgpack.packb([0, 5, "score", [dict(click(3), device=["app"])]]),
    msgpack.packb([0, 6, "score", [dict(click(4), extra=1)]]),  # unknown field: general path
    msgpack.packb([0, 7, "score", [click(5), {"deadline_ms": 3}]]),
    msgpack.packb([0, 8, "score_many", [[click(6), click(7)]]]),
    msgpack.packb([0, 9, "ping", []]),
    msgpack.packb([2, "score", [click(8)]]),
    msgpack.packb([0, 10, "score", [dict(click(9), logged_in=True, user_id="")]]),
    msgpack.packb([0, 11, "score", [dict(click(10), ts=1.5)]]),
    msgpack.packb([0, 12, "score", [dict(click(11), tz_offset_min=None, user_id=None,
                                         logged_in=False)]]),
]


def test_valid_frames_decode_to_msgpacks_dicts():
    data = b"".join(FRAMES[:40])
    (status, pos, _end), items = _scan(native, data)
    assert (status, pos) == (native.NEED_MORE, len(data))
    assert [it[2] for it in items] == list(range(40))
    assert [it[0] for it in items] == [click(i) for i in range(40)]
    assert all(it[1] == "conn" and it[3] == 1.0 and it[4] == 2.0 for it in items)
    assert all(len(it) == 6 and it[5] is True for it in items)  # checked: not again


@pytest.mark.parametrize("k", range(40, len(FRAMES)))
def test_each_frame_same_verdict(k):
    data = FRAMES[k] + FRAMES[0]
    assert _scan(native, data) == _scan(twin, data)


def test_depth_bound_is_exact():
    ok = b"\x91" * (MAX_DEPTH - 1) + b"\x90"  # MAX_DEPTH lists, the innermost empty
    over = b"\x91" * MAX_DEPTH + b"\x90"
    for mod in (native, twin):
        assert mod.frame_end(ok, 0, MAX_DEPTH) == (len(ok), False)
        assert mod.frame_end(over, 0, MAX_DEPTH) == (len(over), True)
        # far past the bound, the end is still found (no stack), and incomplete stays incomplete
        bomb = b"\x94\x00\x01\xa5score\x91\x81\xa6device" + _deep(100_000)
        assert mod.frame_end(bomb, 0, MAX_DEPTH) == (len(bomb), True)
        assert mod.frame_end(bomb[:-1], 0, MAX_DEPTH)[0] == -1
        (status, _p, end), _ = _scan(mod, bomb)
        assert (status, end) == (mod.TOO_DEEP, len(bomb))


def test_statuses_and_limits_agree():
    big = msgpack.packb([0, 1, "score", [dict(click(1), user_agent="x" * 300)]])
    cases = [b"", b"\xc1", FRAMES[0][:-3], FRAMES[0] + b"\xc1\x00", big, FRAMES[0] * 3]
    for data in cases:
        for max_msg in (64, 1 << 20):
            for room in (0, 1, 5):
                assert _scan(native, data, room=room, max_msg=max_msg) == \
                    _scan(twin, data, room=room, max_msg=max_msg), (data[:20], max_msg, room)
    (status, _p, _e), _ = _scan(native, big, max_msg=64)
    assert status == native.TOO_LARGE
    (status, _p, _e), items = _scan(native, FRAMES[0] * 3, room=1)
    assert status == native.ROOM and len(items) == 1


def test_random_mutations_same_results():
    rnd = random.Random(12)
    pool = FRAMES + [_deep(30), msgpack.packb({"a": [1, 2.5, b"x", None, True]})]
    for _ in range(4000):
        f = bytearray(b"".join(rnd.choice(pool) for _ in range(rnd.randint(1, 4))))
        for _ in range(rnd.randint(0, 4)):
            f[rnd.randrange(len(f))] = rnd.randrange(256)
        data = bytes(f[:rnd.randint(1, len(f))])
        pos = rnd.randint(0, 2)
        room = rnd.randint(0, 4)
        assert _scan(native, data, pos, room) == _scan(twin, data, pos, room), data


# ---------------------------------------------------------------- two daemons, one input

def _requests() -> list[bytes]:
    """Valid clicks and every kind of bad input the general path refuses (not the fatal ones)."""
    out = [msgpack.packb([0, i, "score", [click(i)]]) for i in range(1, 30)]
    bad = [
        [0, 100, "score", [dict(click(100), device=["app"])]],
        [0, 101, "score", [dict(click(101), device={"a": 1})]],
        [0, 102, "score", [dict(click(102), ip="999.1.1.1")]],
        [0, 103, "score", [dict(click(103), ts="now")]],
        [0, 104, "score", [{k: v for k, v in click(104).items() if k != "session_id"}]],
        [0, 105, "score", [dict(click(105), logged_in=True, user_id=None)]],
        [0, 106, "score", [dict(click(106), click_id="x" * 200)]],
        [0, 107, "score", [dict(click(107), tz_offset_min=9999)]],
        [0, 108, "score", [click(108), {"deadline_ms": -1}]],
        [0, 109, "score", []],
        [0, 110, "nope", []],
        [0, 111, "score_many", [[click(111), dict(click(112), ip=[1]), click(113)]]],
        [0, 112, "score_many", "x"],
        [0, -1, "score", [click(114)]],
        [0, 113, 7, []],
        [1, 2, 3],
        [],
    ]
    out += [msgpack.packb(b) for b in bad]
    out.append(b"\x94\x00\xcc\xc8\xa5score\x91\x81\xa6device" + _deep(500))  # msgid 200, deep
    out += [msgpack.packb([0, i, "score", [click(i)]]) for i in range(30, 40)]
    return out


@pytest.fixture(scope="module")
def two_daemons(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    reg = make_registry(tmp)
    ds = [Daemon(reg, "--deadline-ms", "5000"),
          Daemon(reg, "--deadline-ms", "5000",
                 env={"SLIDR_PURE_PYTHON": "1", "SLIDR_REQUIRE_NATIVE": "0"})]
    try:
        for d in ds:
            d.wait_ready()
        yield ds
    finally:
        for d in ds:
            d.stop()


def _answers(d: Daemon, reqs: list[bytes]) -> list:
    out = []
    with Client(d.port, timeout=20) as c:
        for r in reqs:  # one at a time: the same batches, so the same counters, both sides
            c.send_raw(r)
            out.append(c.recv())
        assert c.call("ping") == "pong"
    return out


def test_native_and_pure_daemons_answer_alike(two_daemons):
    reqs = _requests()
    a, b = (_answers(d, reqs) for d in two_daemons)
    assert len(a) == len(b) == len(reqs)
    for req, x, y in zip(reqs, a, b, strict=True):
        assert x == y, (msgpack.unpackb(req) if len(req) < 300 else req[:20], x, y)
    codes = {m[1]: m[2][0] for m in a if m[0] == 1 and m[2] is not None}
    assert codes[100] == codes[101] == codes[102] == ErrorCode.INVALID_CLICK
    assert codes[110] == ErrorCode.UNKNOWN_METHOD and codes[200] == ErrorCode.BAD_REQUEST
    decided = [m for m in a if m[0] == 1 and m[2] is None and m[1] < 40]
    assert len(decided) == 39 and all(m[3]["reason"] == "model" for m in decided)


@pytest.mark.parametrize("mod", [native, twin], ids=["native", "twin"])
def test_trickled_message_resumes_where_framing_stopped(mod):
    """A message fed a few bytes at a time, as rpc.py does (the rest kept, a FrameState per
    connection), frames and decodes exactly as in one piece."""
    big = msgpack.packb([0, 77, "score_many", [[click(i) for i in range(300)]]])
    deep = b"\x94\x00\x05\xa5score\x91\x81\xa6device" + _deep(3000)
    stream = FRAMES[0] + big + deep + FRAMES[1]
    cache, check = _ip_check_factory()
    state = mod.FrameState()
    rest = bytearray()
    seen = []
    items: list = []
    for k in range(0, len(stream), 5):
        rest += stream[k:k + 5]
        pos = 0
        while True:
            status, pos, end = mod.scan(rest, pos, 1 << 20, MAX_DEPTH, cache, check, "c", 1.0,
                                        2.0, items, 1 << 20, state)
            if status == mod.NEED_MORE:
                del rest[:pos]
                break
            seen.append((status, bytes(rest[pos:end])))
            pos = end
    assert not rest and not state.active
    assert [it[2] for it in items] == [0, 1]
    assert seen == [(mod.GENERAL, big), (mod.TOO_DEEP, deep)]
