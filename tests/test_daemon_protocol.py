"""slidrd wire protocol: requests, errors, garbage, limits, pipelining, deadlines, metrics."""

from __future__ import annotations

import socket
import urllib.request

import msgpack
import pytest
from daemon_helpers import Client, Daemon, RpcError, check_decision, click, free_port, make_registry

from slidr.errors import ErrorCode

MAX_MSG = 64 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proto")
    reg = make_registry(tmp)
    d = Daemon(reg, "--deadline-ms", "200", "--max-message-bytes", str(MAX_MSG),
               "--max-score-many", "256", "--max-inflight-per-conn", "5000",
               metrics_port=free_port())
    d.wait_ready()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log(), d.log()


def alive(d: Daemon) -> None:
    with Client(d.port, timeout=5) as c:
        assert c.call("ping") == "pong"


def test_ping_info_score(daemon):
    with Client(daemon.port) as c:
        assert c.call("ping") == "pong"
        info = c.call("info")
        assert info["model"] == "v1" and info["store"]
        d = c.call("score", click(1))
        check_decision(d, "c1")
        assert d["reason"] == "model" and d["model"] == "v1" and d["slice"] == "mobile/out"


def test_score_many_invalid_click_named_rest_proceeds(daemon):
    bad = click(2)
    bad["device"] = "toaster"
    with Client(daemon.port) as c:
        res = c.call("score_many", [click(0), bad, click(3)])
    assert len(res) == 3
    check_decision(res[0], "c0")
    check_decision(res[2], "c3")
    assert res[1]["error"][0] == ErrorCode.INVALID_CLICK and "device" in res[1]["error"][1]


def test_invalid_click_gets_error_and_connection_stays(daemon):
    with Client(daemon.port) as c:
        c2 = click(5)
        del c2["ip"]
        with pytest.raises(RpcError) as ei:
            c.call("score", c2)
        assert ei.value.err[0] == ErrorCode.INVALID_CLICK and "'ip'" in ei.value.err[1]
        c3 = click(6, ts="yesterday")
        with pytest.raises(RpcError) as ei:
            c.call("score", c3)
        assert "'ts'" in ei.value.err[1]
        check_decision(c.call("score", click(7)), "c7")


@pytest.mark.parametrize("msg,code", [
    ([0, 1, "nosuch", []], ErrorCode.UNKNOWN_METHOD),
    ([0, 1, "reload", []], ErrorCode.UNKNOWN_METHOD),  # admin methods never on the public port
    ([0, 1, "rollback", []], ErrorCode.UNKNOWN_METHOD),
    ([0, 1, "stats", []], ErrorCode.UNKNOWN_METHOD),
    ([0, 1, 42, []], ErrorCode.BAD_REQUEST),
    ([0, 1, "score", {"click": 1}], ErrorCode.BAD_REQUEST),
    ([0, 1, "score", []], ErrorCode.BAD_REQUEST),
    ([0, 1, "score", [{}, {}, {}]], ErrorCode.BAD_REQUEST),
    ([0, 1, "score", ["not a map"]], ErrorCode.INVALID_CLICK),
    ([0, 1, "score_many", ["x"]], ErrorCode.BAD_REQUEST),
    ([0, 1, "score_many", [[{}] * 257]], ErrorCode.TOO_LARGE),
    ([0, 1, "score", [click(1), {"deadline_ms": "soon"}]], ErrorCode.BAD_REQUEST),
    ([0, 1, "score", [click(1, deadline_ms=-1)]], ErrorCode.BAD_REQUEST),
    ([0, 1, "ping"], ErrorCode.BAD_REQUEST),
    ([9, 1, "ping", []], ErrorCode.BAD_REQUEST),
])
def test_malformed_request_error_then_usable(daemon, msg, code):
    with Client(daemon.port) as c:
        c.send_raw(msgpack.packb(msg))
        r = c.recv()
        if r[0] == 1:
            assert r[1] == 1 and r[2][0] == code and isinstance(r[2][1], str) and r[3] is None
        else:
            assert r[0] == 2 and r[1] == "error" and r[2][0][0] == code
        assert c.call("ping") == "pong"  # same connection still usable


@pytest.mark.parametrize("payload", [b"\x01", b"hello", msgpack.packb({"a": 1}), msgpack.packb(None),
                                     msgpack.packb([0, -1, "ping", []]),
                                     msgpack.packb([0, 2**40, "ping", []])])
def test_not_a_request_error_usable(daemon, payload):
    with Client(daemon.port) as c:
        c.send_raw(payload)
        r = c.recv()
        assert r[0] == 2 and r[1] == "error" and r[2][0][0] == ErrorCode.BAD_REQUEST
        assert c.call("ping") == "pong"


@pytest.mark.parametrize("payload", [b"\xc1", b"\xc1garbage\x00\xff", b"\x92\xc1\xc1",
                                     msgpack.packb({1: 2})])
def test_non_msgpack_error_then_close(daemon, payload):
    with Client(daemon.port) as c:
        c.send_raw(payload)
        msgs = c.recv_until_close()
        assert msgs and msgs[0][0] == 2 and msgs[0][2][0][0] == ErrorCode.NOT_MSGPACK
    alive(daemon)


def test_oversized_message_error_then_close(daemon):
    with Client(daemon.port) as c:
        c.send_raw(msgpack.packb([0, 1, "score", [click(1, user_agent="x" * 400,
                                                            pad="y" * (MAX_MSG * 2))]]))
        msgs = c.recv_until_close()
        assert msgs and msgs[-1][0] == 2 and msgs[-1][2][0][0] == ErrorCode.TOO_LARGE
    # A partial header that announces a huge string also closes, without waiting for it all.
    with Client(daemon.port) as c:
        c.send_raw(b"\x94\x00\x01\xa5score\x91\xdb\x7f\xff\xff\xff" + b"z" * (MAX_MSG + 4096))
        msgs = c.recv_until_close()
        assert msgs and msgs[-1][2][0][0] == ErrorCode.TOO_LARGE
    alive(daemon)


def test_truncated_message_and_abrupt_close(daemon):
    full = msgpack.packb([0, 1, "score", [click(1)]])
    for cut in (1, 5, len(full) // 2, len(full) - 1):
        s = socket.create_connection(("127.0.0.1", daemon.port))
        s.sendall(full[:cut])
        s.close()
        alive(daemon)
    # A truncated message then the rest: answered normally.
    with Client(daemon.port) as c:
        c.send_raw(full[:7])
        c.send_raw(full[7:])
        r = c.recv()
        assert r[0] == 1 and r[1] == 1 and r[2] is None


def test_notification_is_silent(daemon):
    with Client(daemon.port) as c:
        c.send_raw(msgpack.packb([2, "score", [click(1)]]) + msgpack.packb([2, "nosuch", []])
                   + msgpack.packb([2, "ping", "x"]) + msgpack.packb([2, "ping", []]))
        mid = c.send("ping")
        assert c.recv() == [1, mid, None, "pong"]  # nothing was sent for the notifications


def test_many_in_flight_out_of_order(daemon):
    n = 3000
    conns = [Client(daemon.port) for _ in range(3)]
    try:
        for k, c in enumerate(conns):
            c.ids = [c.send("score", click(k * n + i)) for i in range(n)]
            c.send("ping")
        for k, c in enumerate(conns):
            got = {}
            while len(got) < n + 1:
                m = c.recv()
                got[m[1]] = m
            for j, mid in enumerate(c.ids):
                m = got[mid]
                assert m[2] is None
                check_decision(m[3], f"c{k * n + j}")
    finally:
        for c in conns:
            c.close()


def test_score_many_large(daemon):
    with Client(daemon.port) as c:
        res = c.call("score_many", [click(i) for i in range(250)])
    assert [r["click_id"] for r in res] == [f"c{i}" for i in range(250)]
    assert all(r["reason"] == "model" for r in res)


def test_client_deadline_fail_open(daemon):
    with Client(daemon.port) as c:
        # Ask for an impossible deadline: answered valid, fail-open, not an error.
        r = c.pipeline("score", [(click(i), {"deadline_ms": 0.0001}) for i in range(200)])
        reasons = {v[1]["reason"] for v in r.values()}
        assert reasons == {"fail_open:deadline"}
        for v in r.values():
            assert v[0] is None and v[1]["invalid"] is False and v[1]["score"] is None
        d = c.call("score", click(9, deadline_ms=0.0001))
        assert d["reason"] == "fail_open:deadline" and d["slice"] == "desktop/out"


def test_metrics_endpoint(daemon):
    with Client(daemon.port) as c:
        c.call("score", click(1))
    body = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics",
                                  timeout=5).read().decode()
    for name in ('slidr_latency_seconds_bucket{stage="total",le="0.0005"}',
                 'slidr_latency_seconds_bucket{stage="store"', 'stage="model"', 'stage="queue"',
                 "slidr_batch_size_bucket", 'slidr_decisions_total{slice="mobile/out"}',
                 'slidr_ivr{slice=', 'slidr_fail_open_total{cause="deadline"}',
                 'slidr_model_info{version="v1"} 1', "slidr_redis_errors_total 0"):
        assert name in body, name
    # Resident memory with the model loaded is reported (and is a plausible size).
    rss = [ln for ln in body.splitlines() if ln.startswith("process_resident_memory_bytes ")]
    assert rss and 20 << 20 < float(rss[0].split()[1]) < 4 << 30, rss


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tight")
    reg = make_registry(tmp)
    d = Daemon(reg, "--deadline-ms", "2000", "--max-connections", "3", "--idle-timeout-s", "0.5",
               "--max-inflight-per-conn", "16", "--max-inflight-total", "64",
               "--max-score-many", "16", "--max-batch", "8")
    d.wait_ready()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log(), d.log()


def test_overload_sheds_fail_open_never_queues(tight):
    n = 2000
    with Client(tight.port) as c:
        r = c.pipeline("score", [(click(i),) for i in range(n)])
        assert c.call("ping") == "pong"
    assert len(r) == n
    reasons = [v[1]["reason"] for v in r.values()]
    assert all(v[0] is None for v in r.values())
    assert set(reasons) <= {"model", "fail_open:overload"}
    assert "fail_open:overload" in reasons and "model" in reasons
    # score_many over the per-connection budget: every click answered, valid.
    with Client(tight.port) as c:
        res = c.call("score_many", [click(i) for i in range(16)])
        assert len(res) == 16 and all(not d["invalid"] or d["reason"] == "model" for d in res)


def test_max_connections_and_idle_timeout(tight):
    held = [Client(tight.port) for _ in range(3)]
    try:
        for c in held:
            assert c.call("ping") == "pong"
        extra = Client(tight.port)
        msgs = extra.recv_until_close()
        extra.close()
        assert msgs and msgs[0][0] == 2 and msgs[0][2][0][0] == ErrorCode.OVERLOADED
        # Idle connections are closed after idle_timeout_s (0.5 s here); then new ones fit.
        import time
        time.sleep(2.0)
        for c in held:
            assert c.recv_until_close() == []
    finally:
        for c in held:
            c.close()
    alive(tight)
