"""Client library for ad hosts: ask slidrd whether a click is robotic.

    from slidr.client import Client
    c = Client(["10.0.0.5:7700", "10.0.0.6:7700"], deadline=0.02)
    d = c.score({"click_id": "c1", "ts": 1700000000000, "session_id": "s", "ip": "1.2.3.4",
                 "device": "mobile", "logged_in": False})
    if d["invalid"]: ...

    async with AsyncClient(["127.0.0.1:7700"]) as ac:
        ds = await ac.score_many([click1, click2])

Wire: msgpack-RPC over TCP (docs/daemon.md): request [0, msgid, method, params], response
[1, msgid, error, result]. Many requests are in flight on one connection at once and
responses are matched by msgid, in whatever order they come back.

Failure behaviour, chosen to match the daemon's own: the ad host always gets a decision in
time. A call that cannot be answered before its deadline returns a *valid* (fail-open)
decision with reason "fail_open:client_deadline"; when no endpoint can be reached at all,
"fail_open:unavailable". Connect errors and lost connections mark the endpoint down and the
call is retried on the next endpoint while time remains; repeated call timeouts mark it down
too. A background health check pings every endpoint each `health_interval` seconds and brings
recovered ones back. Errors the daemon itself returns (e.g. a click that breaks the contract)
are raised as `RPCError`: retrying them elsewhere would not help, and they are caller bugs.

`AsyncClient` runs on the caller's event loop. `Client` (synchronous, thread-safe) runs an
`AsyncClient` on a private event loop in a daemon thread, so many threads share its
connections and pipelining.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import msgpack

from slidr.protocol import NOTIFY as NOTIFICATION
from slidr.protocol import REQUEST, RESPONSE, Decision

log = logging.getLogger("slidr.client")

_DEVICES = ("desktop", "mobile", "app")
MAX_MESSAGE = 64 << 20
T = TypeVar("T")


class RPCError(Exception):
    """The daemon answered with an error `[code, message]`."""

    def __init__(self, code: Any, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"[{code}] {message}")


class Unavailable(ConnectionError):
    """No endpoint could be reached (only raised by ping()/info(); score() fails open)."""


class ConnectionLost(ConnectionError):
    """The connection closed with this request in flight."""


def fail_open(click: Any, cause: str) -> Decision:
    """The decision a client gives when it cannot get one in time: valid, unscored."""
    cid = click.get("click_id") if isinstance(click, Mapping) else None
    sl = None
    if isinstance(click, Mapping):
        dev, li = click.get("device"), click.get("logged_in")
        if dev in _DEVICES and isinstance(li, bool):
            sl = f"{dev}/{'in' if li else 'out'}"
    return {"click_id": cid, "invalid": False, "score": None, "threshold": None, "slice": sl,
            "model": None, "reason": f"fail_open:{cause}"}


def parse_endpoint(ep: str | tuple[str, int]) -> tuple[str, int]:
    """'host:port', '[v6]:port' or (host, port) -> (host, port)."""
    if isinstance(ep, tuple):
        return str(ep[0]), int(ep[1])
    s = ep.strip()
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint must be HOST:PORT, got {ep!r}")
    return host, int(port)


# ---------------------------------------------------------------- one connection

class _Conn(asyncio.Protocol):
    """One TCP connection: pipelined requests, responses matched by msgid."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self._ids = itertools.count(1)
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE,
                                          strict_map_key=False)

    @property
    def inflight(self) -> int:
        return len(self.pending)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._unpacker.feed(data)
        try:
            for msg in self._unpacker:
                self._dispatch(msg)
        except Exception as e:  # noqa: BLE001 - not msgpack, or a response we cannot read
            self._fail_all(ConnectionLost(f"bad data from {self.endpoint}: {e}"))
            self.close()

    def _dispatch(self, msg: Any) -> None:
        if not isinstance(msg, list) or not msg:
            raise ValueError(f"not a msgpack-RPC message: {msg!r:.80}")
        if msg[0] == NOTIFICATION:
            return
        if msg[0] != RESPONSE or len(msg) != 4:
            raise ValueError(f"not a msgpack-RPC response: {msg!r:.80}")
        _, msgid, err, result = msg
        fut = self.pending.pop(msgid, None)
        if fut is None or fut.done():
            return  # its caller gave up (deadline); a late answer is dropped
        if err is not None:
            if isinstance(err, (list, tuple)) and len(err) == 2:
                fut.set_exception(RPCError(err[0], str(err[1])))
            else:
                fut.set_exception(RPCError(None, str(err)))
        else:
            fut.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(ConnectionLost(f"{self.endpoint} closed the connection"
                                      + (f": {exc}" if exc else "")))

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def call(self, method: str, params: Sequence[Any], timeout: float) -> Any:
        if self.closed or self.transport is None:
            raise ConnectionLost(f"connection to {self.endpoint} is closed")
        msgid = next(self._ids) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self.pending[msgid] = fut
        # A timer on the future, not asyncio.wait_for: wait_for costs a task per call.
        timer = loop.call_later(timeout, _expire, fut)
        try:
            self.transport.write(msgpack.packb([REQUEST, msgid, method, list(params)],
                                               use_bin_type=True))
            return await fut
        finally:
            timer.cancel()
            self.pending.pop(msgid, None)


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


# ---------------------------------------------------------------- endpoints and the pool

@dataclass
class EndpointState:
    """Health of one daemon endpoint, as the client sees it."""

    host: str
    port: int
    up: bool = True
    last_error: str | None = None
    down_since: float | None = None
    retry_at: float = 0.0
    consecutive_timeouts: int = 0

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"


@dataclass
class _Endpoint(EndpointState):
    conns: list[_Conn] = field(default_factory=list)
    connecting: asyncio.Task[_Conn] | None = None

    def live(self) -> list[_Conn]:
        self.conns = [c for c in self.conns if not c.closed]
        return self.conns


class AsyncClient:
    """asyncio client for one or more slidrd endpoints (see the module docstring).

    endpoints: "host:port" strings or (host, port) tuples, tried in order of health.
    deadline: default seconds a score()/score_many() call may take before it fails open.
    connect_timeout: seconds for one TCP connect (also bounded by the call's deadline).
    pool_size: connections per endpoint; each carries many requests at once, and a new one is
        opened only while all existing ones are busy.
    health_interval: seconds between background pings of every endpoint (0 disables).
    down_after_timeouts: consecutive call timeouts after which an endpoint is marked down.
    retry_in_flight: retry a request whose connection closed after it was sent on another
        endpoint. The first daemon may have counted that click already, so its features may
        count it twice; set False to fail open instead.
    """

    def __init__(self, endpoints: Sequence[str | tuple[str, int]], *, deadline: float = 0.05,
                 connect_timeout: float = 0.5, pool_size: int = 2,
                 health_interval: float = 1.0, health_timeout: float = 0.5,
                 down_after_timeouts: int = 3, retry_in_flight: bool = True) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        if deadline <= 0 or pool_size < 1:
            raise ValueError("deadline must be > 0 and pool_size >= 1")
        self.endpoints: list[_Endpoint] = [_Endpoint(*parse_endpoint(e)) for e in endpoints]
        self.deadline = float(deadline)
        self.connect_timeout = float(connect_timeout)
        self.pool_size = int(pool_size)
        self.health_interval = float(health_interval)
        self.health_timeout = float(health_timeout)
        self.down_after_timeouts = int(down_after_timeouts)
        self.retry_in_flight = retry_in_flight
        self._rr = 0
        self._health: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncClient:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("client is closed")
        if self._health is None and self.health_interval > 0:
            self._health = asyncio.get_running_loop().create_task(self._health_loop())

    async def close(self) -> None:
        """Stop health checks and close every connection (in-flight calls fail open)."""
        self._closed = True
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        for ep in self.endpoints:
            if ep.connecting is not None:
                ep.connecting.cancel()
            for c in ep.conns:
                c.close()
            ep.conns = []

    def status(self) -> list[EndpointState]:
        """A snapshot of every endpoint's health."""
        return [EndpointState(e.host, e.port, e.up, e.last_error, e.down_since, e.retry_at,
                              e.consecutive_timeouts) for e in self.endpoints]

    # ------------------------------------------------------------ health

    def _mark_down(self, ep: _Endpoint, why: str) -> None:
        now = time.monotonic()
        if ep.up:
            log.warning("slidr client: endpoint %s down: %s", ep, why)
            ep.down_since = now
        ep.up = False
        ep.last_error = why
        ep.retry_at = now + max(self.health_interval, 0.05)
        for c in ep.live():
            c.close()

    def _mark_up(self, ep: _Endpoint) -> None:
        if not ep.up:
            log.info("slidr client: endpoint %s is back", ep)
        ep.up = True
        ep.down_since = None
        ep.consecutive_timeouts = 0

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await asyncio.gather(*(self._probe(ep) for ep in self.endpoints),
                                 return_exceptions=True)

    async def _probe(self, ep: _Endpoint) -> None:
        try:
            conn = await asyncio.wait_for(self._get_conn(ep), self.health_timeout)
            await conn.call("ping", [], self.health_timeout)
        except RPCError:
            self._mark_up(ep)  # it answered: it is alive
        except (TimeoutError, OSError) as e:
            self._mark_down(ep, f"health check: {type(e).__name__}: {e}")
        else:
            self._mark_up(ep)

    # ------------------------------------------------------------ connections

    async def _open(self, ep: _Endpoint) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(ep), ep.host, ep.port),
                self.connect_timeout)
        except (TimeoutError, OSError) as e:
            self._mark_down(ep, f"connect: {type(e).__name__}: {e}")
            raise ConnectionError(f"cannot connect to {ep}: {e}") from e
        finally:
            ep.connecting = None
        ep.conns.append(conn)
        return conn

    def _ready_conn(self, ep: _Endpoint) -> _Conn | None:
        """The least busy open connection (synchronously, so the caller's request is
        registered on it before the next caller looks); grows the pool in the background
        when every connection is busy. None when no connection is open yet."""
        live = ep.live()
        if not live:
            return None
        best = min(live, key=lambda c: c.inflight)
        if best.inflight and len(live) < self.pool_size and ep.connecting is None:
            self._start_connect(ep)
        return best

    def _start_connect(self, ep: _Endpoint) -> asyncio.Task[_Conn]:
        t = asyncio.get_running_loop().create_task(self._open(ep))
        t.add_done_callback(lambda t: t.cancelled() or t.exception())
        ep.connecting = t
        return t

    async def _get_conn(self, ep: _Endpoint) -> _Conn:
        conn = self._ready_conn(ep)
        if conn is not None:
            return conn
        t = ep.connecting or self._start_connect(ep)
        # Every waiter shares one connect; a caller's deadline must not cancel it for others.
        return await asyncio.shield(t)

    def _order(self) -> list[_Endpoint]:
        """Up endpoints first (rotating, to spread load), then down ones due for a retry."""
        now = time.monotonic()
        n = len(self.endpoints)
        self._rr = (self._rr + 1) % n
        rot = self.endpoints[self._rr:] + self.endpoints[:self._rr]
        return [e for e in rot if e.up] + sorted(
            (e for e in rot if not e.up and e.retry_at <= now), key=lambda e: e.retry_at)

    # ------------------------------------------------------------ calls

    async def _call(self, method: str, params: Sequence[Any], deadline: float) -> Any:
        """Call on the healthiest endpoint, failing over while time remains.
        Raises asyncio.TimeoutError (deadline) or Unavailable (nothing reachable)."""
        self._start()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        errors: list[str] = []
        for ep in self._order():
            remaining = end - loop.time()
            if remaining <= 0:
                raise TimeoutError()
            sent = False
            try:
                conn = self._ready_conn(ep)
                if conn is None:
                    conn = await asyncio.wait_for(self._get_conn(ep), remaining)
                    remaining = end - loop.time()
                    if remaining <= 0:
                        raise TimeoutError()
                sent = True
                result = await conn.call(method, params, remaining)
            except RPCError:
                ep.consecutive_timeouts = 0
                raise
            except TimeoutError:
                if sent:
                    ep.consecutive_timeouts += 1
                    if ep.consecutive_timeouts >= self.down_after_timeouts:
                        self._mark_down(ep, f"{ep.consecutive_timeouts} calls timed out")
                raise
            except ConnectionLost as e:
                self._mark_down(ep, str(e))
                errors.append(f"{ep}: {e}")
                if not self.retry_in_flight:
                    raise Unavailable(str(e)) from e
                continue
            except OSError as e:  # connect refused/reset: _open marked it down
                errors.append(f"{ep}: {e}")
                continue
            ep.consecutive_timeouts = 0
            if not ep.up:
                self._mark_up(ep)
            return result
        raise Unavailable("no slidrd endpoint reachable" + (f" ({'; '.join(errors)})"
                                                             if errors else " (all marked down)"))

    async def score(self, click: Mapping[str, Any], deadline: float | None = None) -> Decision:
        """Score one click. Always returns a decision by the deadline (fail-open on
        timeout or when no daemon is reachable); raises RPCError if the daemon rejects it."""
        try:
            d: Decision = await self._call("score", [click], deadline or self.deadline)
            return d
        except TimeoutError:
            return fail_open(click, "client_deadline")
        except Unavailable:
            return fail_open(click, "unavailable")

    async def score_many(self, clicks: Sequence[Mapping[str, Any]],
                         deadline: float | None = None) -> list[Decision]:
        """Score several clicks in one request (one deadline for all of them)."""
        clicks = list(clicks)
        if not clicks:
            return []
        try:
            return list(await self._call("score_many", [clicks], deadline or self.deadline))
        except TimeoutError:
            return [fail_open(c, "client_deadline") for c in clicks]
        except Unavailable:
            return [fail_open(c, "unavailable") for c in clicks]

    async def ping(self, timeout: float | None = None) -> Any:
        """The daemon's ping answer. Raises Unavailable / asyncio.TimeoutError."""
        return await self._call("ping", [], timeout or max(self.deadline, self.health_timeout))

    async def info(self, timeout: float | None = None) -> dict[str, Any]:
        """The daemon's info() map (model version, backend, ...)."""
        res: dict[str, Any] = await self._call("info", [], timeout or max(self.deadline,
                                                                         self.health_timeout))
        return res


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is with slidr[daemon]): a cheaper wake-up per call."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class Client:
    """Synchronous, thread-safe client: same arguments and methods as AsyncClient.

    Runs an AsyncClient on a private event loop in a daemon thread; call close() (or use it
    as a context manager) to stop it.
    """

    def __init__(self, endpoints: Sequence[str | tuple[str, int]], **kw: Any) -> None:
        self._ac = AsyncClient(endpoints, **kw)  # first: bad arguments leave no thread behind
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="slidr-client", daemon=True)
        self._thread.start()
        self.deadline = self._ac.deadline

    def _run(self, coro: Coroutine[Any, Any, T], wait: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(wait)

    def score(self, click: Mapping[str, Any], deadline: float | None = None) -> Decision:
        d = deadline or self.deadline
        try:
            # The coroutine enforces the deadline; the slack only covers a stalled loop thread.
            return self._run(self._ac.score(click, d), d + 1.0)
        except FutureTimeout:
            return fail_open(click, "client_deadline")

    def score_many(self, clicks: Sequence[Mapping[str, Any]],
                   deadline: float | None = None) -> list[Decision]:
        d = deadline or self.deadline
        try:
            return self._run(self._ac.score_many(clicks, d), d + 1.0)
        except FutureTimeout:
            return [fail_open(c, "client_deadline") for c in clicks]

    def ping(self, timeout: float | None = None) -> Any:
        return self._run(self._ac.ping(timeout), (timeout or 1.0) + 1.0)

    def info(self, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._ac.info(timeout), (timeout or 1.0) + 1.0)

    def status(self) -> list[EndpointState]:
        return self._run(self._status(), 5.0)

    async def _status(self) -> list[EndpointState]:
        return self._ac.status()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self._ac.close(), 5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AsyncClient", "Client", "ConnectionLost", "Decision", "EndpointState", "RPCError",
           "Unavailable", "fail_open", "parse_endpoint"]
