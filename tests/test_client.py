"""slidr.client against a small fake msgpack-RPC server (the daemon is built in parallel; its
own tests use this client against the real thing).

The fake server runs its own event loop in a thread, so it serves the sync Client and the
AsyncClient alike and can be stopped and restarted on the same port to test failover."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from slidr.client import (
    AsyncClient,
    Client,
    RPCError,
    Unavailable,
    fail_open,
    parse_endpoint,
)

CLICK = {"click_id": "c1", "ts": 1_700_000_000_000, "session_id": "s1", "ip": "10.1.2.3",
         "device": "mobile", "logged_in": False}


def click(cid: str, **kw: Any) -> dict[str, Any]:
    return {**CLICK, "click_id": cid, **kw}


def decide(c: dict, model: str = "v1") -> dict:
    s = 0.9 if "robot" in c["click_id"] else 0.1
    return {"click_id": c["click_id"], "invalid": s > 0.5, "score": s, "threshold": 0.5,
            "slice": f"{c['device']}/{'in' if c['logged_in'] else 'out'}", "model": model,
            "reason": "model"}


def delay_of(c: Any) -> float:
    """Clicks ask the fake server for a delay through their id: 'delay=0.05/...'."""
    cid = c.get("click_id", "") if isinstance(c, dict) else ""
    if cid.startswith("delay="):
        return float(cid[6:].split("/")[0])
    return 0.0


class FakeServer:
    """A msgpack-RPC server with score/score_many/ping/info and scripted misbehaviour:
    a click id starting 'delay=S/' is answered after S seconds (so responses come back out of
    order), 'close/' closes the connection instead of answering, 'error/' answers an error,
    'garbage/' writes bytes that are not msgpack."""

    def __init__(self, name: str = "A", port: int = 0) -> None:
        self.name = name
        self.port = port
        self.connections = 0
        self.requests: list[tuple[str, Any]] = []
        self.response_order: list[Any] = []
        self.hook: Callable[[str, list], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(5)
        return self

    def stop(self) -> None:
        """Die like a killed daemon: stop listening and drop every connection."""
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await asyncio.sleep(0)
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        loop.close()
        self._loop = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        unpacker = msgpack.Unpacker(raw=False)
        tasks = set()
        try:
            while data := await reader.read(65536):
                unpacker.feed(data)
                for msg in unpacker:
                    t = asyncio.ensure_future(self._handle(msg, writer))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, msg: list, writer: asyncio.StreamWriter) -> None:
        _, msgid, method, params = msg
        self.requests.append((method, params))
        if self.hook is not None:
            r = self.hook(method, params)
            if r is not None:
                err, res = r
                writer.write(msgpack.packb([1, msgid, err, res]))
                return
        first = params[0] if params else None
        if method == "score_many":
            first = first[0] if first else None
        cid = first.get("click_id", "") if isinstance(first, dict) else ""
        await asyncio.sleep(delay_of(first))
        if writer.is_closing():
            return
        if "close/" in cid:
            writer.transport.abort()
            return
        if "garbage/" in cid:
            writer.write(b"\xc1\xc1\xc1 not msgpack")
            return
        err, res = None, None
        if "error/" in cid:
            err = [1001, "click breaks the contract: field 'ts' ..."]
        elif method == "score":
            res = decide(params[0], model=self.name)
        elif method == "score_many":
            res = [decide(c, model=self.name) for c in params[0]]
        elif method == "ping":
            res = "pong"
        elif method == "info":
            res = {"model": self.name, "backend": "fake"}
        else:
            err = [1, f"no such method: {method}"]
        self.response_order.append(cid or method)
        writer.write(msgpack.packb([1, msgid, err, res], use_bin_type=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True, params=["uvloop", "asyncio"])
def loop_kind(request, monkeypatch):
    """Every sync-Client test runs on both loops the private loop thread may use."""
    import slidr.client as sc
    if request.param == "asyncio":
        monkeypatch.setattr(sc, "_new_loop", asyncio.new_event_loop)
    else:
        pytest.importorskip("uvloop")
    return request.param


@pytest.fixture
def server():
    s = FakeServer("A").start()
    yield s
    s.stop()


@pytest.fixture
def server_b():
    s = FakeServer("B").start()
    yield s
    s.stop()


def arun(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# ------------------------------------------------------------ basics

def test_parse_endpoint():
    assert parse_endpoint("127.0.0.1:7700") == ("127.0.0.1", 7700)
    assert parse_endpoint("[::1]:7700") == ("::1", 7700)
    assert parse_endpoint(("h", "9")) == ("h", 9)
    for bad in ("nohost", ":80", "h:x"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_fail_open_shape():
    d = fail_open(click("x", device="app", logged_in=True, user_id="u"), "client_deadline")
    assert d == {"click_id": "x", "invalid": False, "score": None, "threshold": None,
                 "slice": "app/in", "model": None, "reason": "fail_open:client_deadline"}
    assert fail_open("not a map", "unavailable")["slice"] is None


def test_sync_score_ping_info(server):
    with Client([server.endpoint]) as c:
        d = c.score(click("robot-1"))
        assert d == decide(click("robot-1"), "A") and d["invalid"] is True
        assert c.ping() == "pong"
        assert c.info()["model"] == "A"
        ds = c.score_many([click("h1"), click("robot-2")])
        assert [x["click_id"] for x in ds] == ["h1", "robot-2"]
        assert [x["invalid"] for x in ds] == [False, True]
        assert c.score_many([]) == []


def test_async_score(server):
    async def main():
        async with AsyncClient([server.endpoint]) as ac:
            assert (await ac.score(click("a")))["reason"] == "model"
            assert await ac.ping() == "pong"
    arun(main())


def test_rpc_error_is_raised_with_code(server):
    with Client([server.endpoint]) as c:
        with pytest.raises(RPCError) as ei:
            c.score(click("error/1"))
        assert ei.value.code == 1001
        assert c.score(click("after-error"))["reason"] == "model"  # connection still usable
        with pytest.raises(RPCError):
            c._run(c._ac._call("nope", [], 1.0), 2)


# ------------------------------------------------------------ pipelining

def test_many_in_flight_out_of_order_on_one_connection(server):
    """60 concurrent requests on one connection, answered in reverse-ish order by delay."""
    async def main():
        async with AsyncClient([server.endpoint], pool_size=1, deadline=5) as ac:
            ids = [f"delay={(60 - i) * 0.002:.3f}/{i}" for i in range(60)]
            t0 = time.perf_counter()
            ds = await asyncio.gather(*(ac.score(click(i)) for i in ids))
            return ids, ds, time.perf_counter() - t0
    ids, ds, took = arun(main())
    assert [d["click_id"] for d in ds] == ids
    assert all(d["reason"] == "model" for d in ds)
    assert server.connections == 1
    assert server.response_order[:5] != ids[:5]  # really answered out of order
    assert took < 1.0  # pipelined: not the 3.7 s the delays add up to


def test_pool_grows_when_connections_are_busy(server):
    async def main():
        async with AsyncClient([server.endpoint], pool_size=3, deadline=5) as ac:
            await ac.score(click("warm"))
            await asyncio.gather(*(ac.score(click(f"delay=0.1/{i}")) for i in range(20)))
            await asyncio.gather(*(ac.score(click(f"delay=0.1/{i}")) for i in range(20)))
    arun(main())
    assert 2 <= server.connections <= 3


def test_sync_client_from_many_threads(server):
    with Client([server.endpoint], deadline=5, pool_size=1) as c:
        results: dict[int, Any] = {}

        def work(k: int) -> None:
            results[k] = [c.score(click(f"delay=0.005/t{k}-{j}")) for j in range(10)]
        ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
    for k in range(8):
        assert [d["click_id"] for d in results[k]] == [f"delay=0.005/t{k}-{j}" for j in range(10)]
    assert server.connections == 1


# ------------------------------------------------------------ deadlines and fail-open

def test_deadline_fails_open_and_connection_survives(server):
    with Client([server.endpoint], deadline=0.05) as c:
        c.score(click("warm"))
        t0 = time.perf_counter()
        d = c.score(click("delay=0.3/slow", device="desktop", logged_in=True, user_id="u"))
        took = time.perf_counter() - t0
        assert d == fail_open(click("delay=0.3/slow", device="desktop", logged_in=True,
                                    user_id="u"), "client_deadline")
        assert d["slice"] == "desktop/in"
        assert took < 0.25
        ds = c.score_many([click("delay=0.3/a"), click("b")], deadline=0.05)
        assert [x["reason"] for x in ds] == ["fail_open:client_deadline"] * 2
        time.sleep(0.35)  # late answers arrive and are dropped
        assert c.score(click("fresh"))["reason"] == "model"
        assert c.status()[0].up  # one slow call does not mark an endpoint down
    assert server.connections == 1


def test_repeated_timeouts_mark_endpoint_down(server, server_b):
    # A answers slowly (0.2 s > deadline), B at once.
    server_b.hook = lambda m, p: (None, decide(p[0], "B")) if m == "score" else None
    with Client([server.endpoint, server_b.endpoint], deadline=0.03, down_after_timeouts=2,
                health_interval=0) as c:
        reasons = [c.score(click(f"delay=0.2/{i}"))["reason"] for i in range(8)]
        st = {s.port: s for s in c.status()}
        assert reasons.count("fail_open:client_deadline") == 2  # then A is down
        assert reasons[-4:] == ["model"] * 4
        assert not st[server.port].up and "timed out" in st[server.port].last_error
        assert st[server_b.port].up


def test_no_endpoint_reachable_fails_open_unavailable():
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with Client(dead, deadline=0.5) as c:
        t0 = time.perf_counter()
        d = c.score(click("x"))
        assert d["reason"] == "fail_open:unavailable" and d["invalid"] is False
        assert time.perf_counter() - t0 < 0.5
        assert all(not s.up for s in c.status())
        # marked down: the next call does not even try them (until their retry time)
        assert c.score(click("y"))["reason"] == "fail_open:unavailable"
        assert [d["reason"] for d in c.score_many([click("a"), click("b")])] == [
            "fail_open:unavailable"] * 2
        with pytest.raises(Unavailable):
            c.ping()


# ------------------------------------------------------------ failover

def test_dead_endpoint_is_skipped(server):
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, server.endpoint], deadline=1.0) as c:
        for i in range(5):
            assert c.score(click(f"x{i}"))["model"] == "A"
        st = c.status()
        assert not st[0].up and "connect" in st[0].last_error
        assert st[1].up


def test_failover_and_recovery(server, server_b):
    with Client([server.endpoint, server_b.endpoint], deadline=1.0, health_interval=0.05) as c:
        models = {c.score(click(f"x{i}"))["model"] for i in range(10)}
        assert models == {"A", "B"}  # load spread over healthy endpoints
        port_a = server.port
        server.stop()
        ds = [c.score(click(f"y{i}")) for i in range(10)]
        assert all(d["reason"] == "model" and d["model"] == "B" for d in ds)
        assert not {s.port: s for s in c.status()}[port_a].up
        # A comes back on the same port: the health check brings it back
        restarted = FakeServer("A2", port=port_a).start()
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not {
                    s.port: s for s in c.status()}[port_a].up:
                time.sleep(0.02)
            assert {s.port: s for s in c.status()}[port_a].up
            models = {c.score(click(f"z{i}"))["model"] for i in range(10)}
            assert "A2" in models
        finally:
            restarted.stop()


def test_server_closing_mid_request_single_endpoint(server):
    with Client([server.endpoint], deadline=1.0, health_interval=0.05) as c:
        d = c.score(click("close/1"))
        assert d["reason"] == "fail_open:unavailable"
        # the health check reconnects; the endpoint is usable again
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not c.status()[0].up:
            time.sleep(0.02)
        assert c.score(click("again"))["reason"] == "model"


def test_server_closing_mid_request_retries_elsewhere(server, server_b):
    with Client([server.endpoint, server_b.endpoint], deadline=1.0, health_interval=0) as c:
        c._ac._rr = -1  # A first
        # A aborts the connection; the same request is retried on B. (B would close too
        # for this id, so make B answer through its hook.)
        server_b.hook = lambda m, p: (None, decide(p[0], "B")) if m == "score" else None
        d = c.score(click("close/2"))
        assert d["reason"] == "model" and d["model"] == "B"
        assert any(m == "score" for m, _ in server.requests)


def test_retry_in_flight_off_fails_open(server, server_b):
    with Client([server.endpoint, server_b.endpoint], deadline=1.0, health_interval=0,
                retry_in_flight=False) as c:
        c._ac._rr = -1
        assert c.score(click("close/3"))["reason"] == "fail_open:unavailable"
        assert not server_b.requests


def test_garbage_from_server_fails_the_connection_not_the_client(server):
    with Client([server.endpoint], deadline=1.0, health_interval=0.05) as c:
        assert c.score(click("garbage/1"))["reason"] == "fail_open:unavailable"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not c.status()[0].up:
            time.sleep(0.02)
        assert c.score(click("ok"))["reason"] == "model"


def test_close_fails_nothing_and_is_idempotent(server):
    c = Client([server.endpoint])
    assert c.score(click("x"))["reason"] == "model"
    c.close()
    c.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        Client([])
    with pytest.raises(ValueError):
        AsyncClient(["h:1"], deadline=0)


# ------------------------------------------------------------ a third-party client

@pytest.mark.parametrize("which", ["python", "node"])
def test_third_party_client_against_fake_server(server, which):
    """tests/third_party_client.py drives a msgpack-RPC client that is not ours; the daemon
    tests run it against slidrd. Here it proves the harness works (skipped if that client's
    separate environment is not installed, see the file's docstring)."""
    import third_party_client as tp
    if not tp.available(which):
        pytest.skip(f"third-party msgpack-RPC client not installed: "
                    f"{tp.INSTALL_NODE if which == 'node' else tp.INSTALL_PYTHON}")
    h, p = "127.0.0.1", server.port
    assert tp.call(h, p, "ping", [], which) == "pong"
    assert tp.call(h, p, "score", [click("robot-9")], which) == decide(click("robot-9"), "A")
    ping, ds, info = tp.calls(h, p, [("ping", []), ("score_many", [[click("a"), click("robot-b")]]),
                                     ("info", [])], which)
    assert ping == "pong" and [x["invalid"] for x in ds] == [False, True] and info["model"] == "A"
    # ts reached the server as an integer (msgpack-lite would send float64 if not wrapped)
    method, params = server.requests[-2]
    assert method == "score_many" and type(params[0][0]["ts"]) is int
    with pytest.raises(tp.ThirdPartyError) as ei:
        tp.call(h, p, "score", [click("error/1")], which)
    assert "1001" in str(ei.value)
