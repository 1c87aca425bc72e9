"""A pipelined Redis connection on the daemon's event loop: no threads, no per-click commands.

The batcher builds each micro-batch's EVALSHA request with slidr.store_redis.RedisStore (one
RESP buffer), hands it to `RedisLink.send` with a callback, and goes on serving; the reply is
parsed by hiredis in `data_received` and handed to the callback in send order. Several batches
can be in flight on the one connection; Redis runs them in the order they were written, so the
counters see clicks in arrival order exactly as with one batch at a time.

Why not a thread with a blocking client: the loop thread and the worker thread then trade the
GIL, and a worker that becomes runnable while the loop runs Python waits for the switch
interval; the hand-off alone cost more than the Redis round trip (~1 ms median before).

Failure handling, all bounded by `timeout_s`:
- not connected: `send` raises StoreUnavailable at once and a connection attempt starts in the
  background (the batcher's circuit breaker decides how often it asks again);
- a reply slower than `timeout_s`: the connection is dropped and every request in flight fails
  with StoreUnavailable (a hung Redis must not hold clicks or memory);
- connection lost: every request in flight fails with StoreUnavailable;
- NOSCRIPT (someone ran SCRIPT FLUSH): the script is loaded again and the request re-sent
  (it may then run after requests written later; only after a flush).
The handshake (AUTH, SELECT, SCRIPT LOAD) runs before the connection takes requests, so a
restarted Redis never sees EVALSHA before the script.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis

from slidr.store_redis import StoreUnavailable, resp_bulk

log = logging.getLogger("slidrd")

# callback(reply, error): exactly one of them is None.
Callback = Callable[[Any, BaseException | None], None]
_mono = time.monotonic


def _cmd(*parts: bytes | str) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(
        resp_bulk(p.encode() if isinstance(p, str) else p) for p in parts)


class _Proto(asyncio.Protocol):
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # (time sent, request bytes or None, callback), in send order
        self.pending: deque[tuple[float, bytes | None, Callback]] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        r = self.reader
        try:
            r.feed(data)
            while True:
                reply = r.gets()
                if reply is False:
                    return
                if not self.pending:
                    raise hiredis.ProtocolError("reply without a request")
                _t, req, cb = self.pending.popleft()
                if isinstance(reply, hiredis.ReplyError):
                    if req is not None and str(reply).startswith("NOSCRIPT"):
                        self.link._reload_script(self, req, cb)
                        continue
                    cb(None, reply)
                else:
                    cb(reply, None)
        except hiredis.ProtocolError as e:
            self.abort(StoreUnavailable(f"redis protocol error: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(StoreUnavailable(
            f"redis connection to {self.link.where} lost" + (f": {exc}" if exc else "")))
        self.link._lost(self)

    def abort(self, err: StoreUnavailable) -> None:
        self.fail_all(err)
        if self.transport is not None:
            self.transport.abort()

    def fail_all(self, err: BaseException) -> None:
        self.lost = True
        while self.pending:
            _t, _req, cb = self.pending.popleft()
            try:
                cb(None, err)
            except Exception:  # a callback bug must not stop the others from being answered
                log.exception("redis callback failed")


class RedisLink:
    """One pipelined connection (standalone Redis; redis:// or rediss://, user/password, db)."""

    def __init__(self, url: str, script: tuple[str, str], timeout_s: float = 0.05,
                 connect_timeout_s: float | None = None, where: str | None = None) -> None:
        from redis.connection import SSLConnection, parse_url

        kw = parse_url(url)  # type: ignore[no-untyped-call]
        self.host = kw.get("host") or "127.0.0.1"
        self.port = int(kw.get("port") or 6379)
        self.db = int(kw.get("db") or 0)
        self.username = kw.get("username")
        self.password = kw.get("password")
        self.ssl = kw.get("connection_class") is SSLConnection
        self.path = kw.get("path")  # unix:// URL
        self.where = where or (self.path or f"{self.host}:{self.port}")
        self.src, self.sha = script
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s or max(timeout_s, 0.2)
        self._proto: _Proto | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._watch: asyncio.TimerHandle | None = None
        self.connects = 0
        self.last_error: str = ""
        self.closed = False

    # ------------------------------------------------------------------ public
    @property
    def connected(self) -> bool:
        p = self._proto
        return p is not None and not p.lost

    def inflight(self) -> int:
        p = self._proto
        return len(p.pending) if p is not None else 0

    def send(self, req: bytes, cb: Callback) -> None:
        """Write one request; `cb(reply, None)` or `cb(None, error)` later, in send order.
        Raises StoreUnavailable at once when not connected (and starts connecting)."""
        p = self._proto
        if p is None or p.lost or p.transport is None:
            self._start_connect()
            raise StoreUnavailable(f"redis at {self.where} not connected"
                                   + (f" ({self.last_error})" if self.last_error else ""))
        p.pending.append((_mono(), req, cb))
        p.transport.write(req)

    async def connect(self) -> None:
        """Connect now (start-up); raises StoreUnavailable on failure."""
        self._start_connect()
        assert self._connecting is not None
        await asyncio.shield(self._connecting)
        if not self.connected:
            raise StoreUnavailable(f"redis at {self.where} unavailable: {self.last_error}")

    def close(self) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._connecting is not None:
            self._connecting.cancel()
        p, self._proto = self._proto, None
        if p is not None:
            p.fail_all(StoreUnavailable("redis link closed"))
            if p.transport is not None:
                p.transport.close()

    # ------------------------------------------------------------------ connection
    def _start_connect(self) -> None:
        if self.closed or (self._connecting is not None and not self._connecting.done()):
            return
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        proto: _Proto | None = None
        try:
            ctx = ssl.create_default_context() if self.ssl else None
            conn = (loop.create_unix_connection(lambda: _Proto(self), self.path) if self.path
                    else loop.create_connection(lambda: _Proto(self), self.host, self.port, ssl=ctx))
            _tr, proto = await asyncio.wait_for(conn, self.connect_timeout_s)
            assert proto is not None
            futs = []
            hello: list[bytes] = []
            if self.password is not None:
                hello.append(_cmd("AUTH", self.password) if self.username is None
                             else _cmd("AUTH", self.username, self.password))
            if self.db:
                hello.append(_cmd("SELECT", str(self.db)))
            hello.append(_cmd("SCRIPT", "LOAD", self.src))
            for h in hello:
                f: asyncio.Future[Any] = loop.create_future()
                futs.append(f)

                def done(reply: Any, err: BaseException | None,
                         f: asyncio.Future[Any] = f) -> None:
                    if not f.done():
                        if err is not None:
                            f.set_exception(err)
                        else:
                            f.set_result(reply)
                proto.pending.append((_mono(), None, done))
                assert proto.transport is not None
                proto.transport.write(h)
            replies = await asyncio.wait_for(asyncio.gather(*futs), self.connect_timeout_s)
            if replies[-1] != self.sha.encode():
                raise StoreUnavailable(f"SCRIPT LOAD returned {replies[-1]!r}, not {self.sha}")
        except (OSError, TimeoutError, StoreUnavailable, hiredis.ReplyError) as e:
            self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
            return
        if self.closed:
            proto.transport.close()  # type: ignore[union-attr]
            return
        self._proto = proto
        self.connects += 1
        self.last_error = ""
        if self.connects > 1:
            log.warning("redis at %s reachable again (connection %d)", self.where, self.connects)
        self._arm_watch()

    def _lost(self, proto: _Proto) -> None:
        if self._proto is proto:
            self._proto = None

    def _arm_watch(self) -> None:
        if self._watch is None and not self.closed:
            self._watch = asyncio.get_running_loop().call_later(
                max(self.timeout_s / 4, 0.001), self._check_timeout)

    def _check_timeout(self) -> None:
        self._watch = None
        p = self._proto
        if p is None:
            return
        if p.pending and _mono() - p.pending[0][0] > self.timeout_s:
            self.last_error = f"no reply within {self.timeout_s * 1000:.0f} ms"
            p.abort(StoreUnavailable(f"redis at {self.where}: {self.last_error}"))
            self._proto = None
            return
        self._arm_watch()

    def _reload_script(self, proto: _Proto, req: bytes, cb: Callback) -> None:
        log.warning("redis at %s lost the counter script (SCRIPT FLUSH?): loading it again",
                    self.where)

        def loaded(reply: Any, err: BaseException | None) -> None:
            if err is not None:
                log.error("SCRIPT LOAD failed: %s", err)
        assert proto.transport is not None
        proto.pending.append((_mono(), None, loaded))
        proto.transport.write(_cmd("SCRIPT", "LOAD", self.src))
        # Re-sent once: a second NOSCRIPT reaches the callback as an error.
        proto.pending.append((_mono(), None, cb))
        proto.transport.write(req)
