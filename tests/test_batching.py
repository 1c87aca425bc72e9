"""Per-click isolation in the batcher, through a real slidrd on loopback, on the compiled and
the pure-Python path: whatever is wrong with one click becomes that click's own error answer
(naming its field), never another click's; exactly one answer per request id; the in-flight
count returns to zero; a valid click followed by a fatal frame in the same read is answered;
nesting depth is bounded."""

from __future__ import annotations

import socket
import time

import msgpack
import pytest
from daemon_helpers import Client, Daemon, check_decision, click, make_registry

from slidr.errors import ErrorCode
from slidr.protocol import MAX_DEPTH


def _deep(levels: int) -> bytes:
    """`levels` nested one-element arrays around nil, as raw msgpack (no packer recursion)."""
    return b"\x91" * levels + b"\xc0"


# (name, the field the error must name, click) -- each one used to raise inside the batch.
POISON = [
    ("device_list", "device", {"device": ["app"]}),
    ("device_map", "device", {"device": {"a": 1}}),
    ("logged_in_map", "logged_in", {"logged_in": {"x": [1, 2]}}),
    ("ts_list", "ts", {"ts": [1, 2, 3]}),
    ("ip_map", "ip", {"ip": {"v4": "1.2.3.4"}}),
    ("user_id_list", "user_id", {"user_id": ["u"], "logged_in": True}),
    ("click_id_map", "click_id", {"click_id": {"id": "x"}}),
    ("tz_float", "tz_offset_min", {"tz_offset_min": 1.5}),
]


@pytest.fixture(scope="module", params=["native", "pure"])
def daemon(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"iso-{request.param}")
    reg = make_registry(tmp)
    env = {"SLIDR_PURE_PYTHON": "1", "SLIDR_REQUIRE_NATIVE": "0"} \
        if request.param == "pure" else None
    admin = tmp / "admin.sock"
    d = Daemon(reg, "--deadline-ms", "2000", "--max-batch", "512", env=env, admin=admin)
    d.wait_ready()
    yield d
    t = time.monotonic()
    assert d.stop() == 0, d.log()
    assert time.monotonic() - t < 8, "stopping stalled: in-flight accounting is off"
    log = d.log()
    assert "Traceback" not in log and "batch failed" not in log, log


def _inflight(d: Daemon) -> int:
    with Client(path=d.admin, timeout=5) as a:
        s = a.call("stats")
    return int(s["inflight_clicks"]) + int(s["pending"])


def _frame(mid: int, method: str, params: list) -> bytes:
    return msgpack.packb([0, mid, method, params])


def _collect(c: Client, want: int, timeout: float = 20.0) -> dict[int, list]:
    """Every response until `want` distinct ids arrived; a second answer to an id fails."""
    got: dict[int, list] = {}
    end = time.monotonic() + timeout
    c.sock.settimeout(timeout)
    while len(got) < want:
        assert time.monotonic() < end, f"only {len(got)} of {want} answered"
        msg = c.recv()
        if msg[0] != 1:
            continue
        assert msg[1] not in got, f"request {msg[1]} answered twice: {got[msg[1]]} / {msg}"
        got[msg[1]] = [msg[2], msg[3]]
    return got


def test_poison_clicks_amid_valid_clicks_of_other_connections(daemon):
    n_conns, per_conn = 4, 64
    good = [Client(daemon.port) for _ in range(n_conns)]
    bad = Client(daemon.port)
    try:
        # All valid requests and all poison requests go out before any answer is read, so they
        # share micro-batches.
        payloads = []
        for k, g in enumerate(good):
            payloads.append((g, b"".join(_frame(i + 1, "score", [click(k * 1000 + i)])
                                         for i in range(per_conn))))
        poison = b"".join(_frame(i + 1, "score", [dict(click(9000 + i), **extra)])
                          for i, (_, _, extra) in enumerate(POISON))
        # and one click nested 1,000 levels deep inside a field, as raw msgpack
        deep = (b"\x94\x00" + msgpack.packb(len(POISON) + 1) + msgpack.packb("score") + b"\x91"
                + b"\x81" + msgpack.packb("device") + _deep(1000))
        for g, p in payloads[:2]:
            g.send_raw(p)
        bad.send_raw(poison + deep)
        for g, p in payloads[2:]:
            g.send_raw(p)
        for k, g in enumerate(good):
            got = _collect(g, per_conn)
            for i in range(per_conn):
                err, d = got[i + 1]
                assert err is None, err
                check_decision(d, f"c{k * 1000 + i}")
                assert d["reason"] == "model", d
        got = _collect(bad, len(POISON) + 1)
        for i, (name, field, _) in enumerate(POISON):
            err, res = got[i + 1]
            assert res is None and err is not None, (name, res)
            assert err[0] == ErrorCode.INVALID_CLICK and f"'{field}'" in err[1], (name, err)
        err, res = got[len(POISON) + 1]
        assert err[0] == ErrorCode.BAD_REQUEST and f"deeper than {MAX_DEPTH}" in err[1], err
        # the poisoned connection stays usable
        assert bad.call("ping") == "pong"
    finally:
        for c in good + [bad]:
            c.close()
    assert _inflight(daemon) == 0


def test_score_many_poison_slot_is_its_own_error(daemon):
    clicks = [click(i) for i in range(20)]
    for j, (_, _, extra) in enumerate(POISON):
        clicks[2 * j + 1] = dict(clicks[2 * j + 1], **extra)
    with Client(daemon.port) as c:
        res = c.call("score_many", clicks)
    assert len(res) == 20
    for i, r in enumerate(res):
        if i % 2 == 1 and i // 2 < len(POISON):
            name, field, _ = POISON[i // 2]
            assert r["error"][0] == ErrorCode.INVALID_CLICK and f"'{field}'" in r["error"][1], \
                (name, r)
            # a hostile click_id is never echoed; a string one is
            assert r["click_id"] == (None if name == "click_id_map" else f"c{i}")
        else:
            check_decision(r, f"c{i}")
            assert r["reason"] == "model"
    assert _inflight(daemon) == 0


def test_valid_click_then_fatal_frame_in_one_read_is_answered(daemon):
    with Client(daemon.port) as c:
        c.send_raw(_frame(7, "score", [click(42)]) + b"\xc1\xc1\xc1")  # 0xc1: never msgpack
        msgs = c.recv_until_close()
    answers = [m for m in msgs if m[0] == 1]
    notes = [m for m in msgs if m[0] == 2]
    assert len(answers) == 1 and answers[0][1] == 7 and answers[0][2] is None, msgs
    check_decision(answers[0][3], "c42")
    assert len(notes) == 1 and notes[0][2][0][0] == ErrorCode.NOT_MSGPACK, msgs
    assert _inflight(daemon) == 0


def test_nesting_depth_is_bounded_and_connection_stays(daemon):
    with Client(daemon.port) as c:
        # options nested past the bound: that request's own BAD_REQUEST
        opts = _deep(MAX_DEPTH + 2)
        c.send_raw(b"\x94\x00\x05" + msgpack.packb("score") + b"\x92"
                   + msgpack.packb(click(1)) + opts)
        msg = c.recv()
        assert msg[:2] == [1, 5] and msg[2][0] == ErrorCode.BAD_REQUEST, msg
        # a notification nested past the bound: an error notification, nothing else
        c.send_raw(b"\x93\x02" + msgpack.packb("score") + _deep(200))
        msg = c.recv()
        assert msg[0] == 2 and msg[2][0][0] == ErrorCode.BAD_REQUEST, msg
        # within the bound, extra nested fields of a click are carried, not refused
        d = c.call("score", dict(click(2), extra={"a": [[[1]]]}))
        check_decision(d, "c2")
        assert c.call("ping") == "pong"


def test_one_answer_per_id_under_many_small_batches(daemon):
    # Duplicated request ids are the client's business: each request still gets one answer.
    with Client(daemon.port) as c:
        data = b"".join(_frame(1 + i % 5, "score", [click(i) if i % 3 else
                                                       dict(click(i), device=[i])])
                        for i in range(60))
        c.send_raw(data)
        c.sock.settimeout(20)
        msgs = [c.recv() for _ in range(60)]
        c.sock.settimeout(0.3)
        with pytest.raises((socket.timeout, TimeoutError)):
            c.recv()  # nothing more: exactly 60 answers
    errs = [m for m in msgs if m[2] is not None]
    assert len(errs) == 20 and all(m[2][0] == ErrorCode.INVALID_CLICK for m in errs)
    assert _inflight(daemon) == 0
