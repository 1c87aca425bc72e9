"""msgpack-RPC on an asyncio.Protocol: framing and decoding by slidr.ext.decoder (native, or its
twin), hot `score` clicks handed to the batcher once per read.

Requests `[0, msgid, method, params]` get `[1, msgid, error, result]`, possibly out of order;
notifications `[2, method, params]` get nothing. A malformed request gets an error response and
the connection stays usable; bytes that are not msgpack, or a message over the size limit, get
an error notification `[2, "error", [[code, message]]]` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from slidr.ext import decoder as _decoder

from slidr.protocol import MAX_DEPTH, MAX_MSGID, ErrorCode, RpcError, error

log = logging.getLogger("slidrd")

_perf = time.perf_counter
_NEED_MORE, _GENERAL, _TOO_DEEP, _INVALID, _TOO_LARGE, _ROOM = range(6)
assert (_decoder.NEED_MORE, _decoder.GENERAL, _decoder.TOO_DEEP, _decoder.INVALID,
        _decoder.TOO_LARGE, _decoder.ROOM) == (0, 1, 2, 3, 4, 5)


# One packer for every connection (the loop thread packs one answer at a time; no state is
# kept between calls): a Packer allocates a 1 MiB buffer, which per connection made thousands
# of connections open at once cost heap memory that was not given back.
_PACKER = msgpack.Packer(use_bin_type=True)


def _peek_msgid(data: bytes | bytearray, pos: int) -> int | None:
    """The msgid of a request `[0, msgid, ...]` starting at pos, read from its first bytes."""
    if len(data) < pos + 3 or data[pos] != 0x94 or data[pos + 1] != 0x00:
        return None
    b = data[pos + 2]
    if b <= 0x7F:
        return b
    w = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(b)
    if w is None or len(data) < pos + 3 + w:
        return None
    return int.from_bytes(data[pos + 3:pos + 3 + w], "big")


class RpcConnection(asyncio.Protocol):
    """Framing, errors, write batching and flow control; subclasses dispatch methods."""

    def __init__(self, daemon: Any, max_message_bytes: int) -> None:
        self.daemon = daemon
        self.max_msg = max_message_bytes
        self.rest = bytearray()  # an incomplete message, completed by the next reads
        self.frame_state = _decoder.FrameState()  # how far `rest` is framed already
        self._items: list[Any] = []
        self.deadline_s = 1.0
        self.ip_ok: dict[str, bool] = {}
        self.ip_check: Any = None
        self.packer = _PACKER
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.inflight = 0
        self.closed = False
        self.closing = False  # a fatal error was answered; close once in-flight answers are out
        self.paused_reading = False
        self.write_paused = False
        self.last_active = time.monotonic()
        # Hostile-traffic bounds (docs/daemon.md, "Hostile traffic"); PublicConnection sets
        # them from the configuration.
        self.max_errors = 1 << 30  # protocol errors before the connection is closed
        self.n_errors = 0
        self.write_buffer_bytes = 0  # 0: the transport's default high-water mark
        self.write_paused_since = 0.0  # when unread answers went over the mark
        self.frame_t0 = 0.0  # when the incomplete message in `rest` began

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.write_buffer_bytes:
            transport.set_write_buffer_limits(high=self.write_buffer_bytes)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.out.clear()
        # The transport and the protocol refer to each other: break the cycle, so that a
        # closed connection is freed at once by reference counting, not by a full garbage
        # collection (rare in the daemon: gc thresholds are raised for the tail latency).
        self.transport = None
        self.rest = bytearray()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests.
        self.write_paused = True
        self.write_paused_since = time.monotonic()
        self._pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.maybe_resume()

    def data_received(self, data: bytes) -> None:
        """Frame and decode what arrived (slidr.ext.decoder: native, or its twin): hot `score`
        requests go to the batcher in one call per read (take_items), every other message is
        decoded alone and handled in order; an incomplete tail waits for the next read."""
        if self.closing:
            return
        t_arr = _perf()
        self.last_active = time.monotonic()
        buf: bytes | bytearray = data
        rest = self.rest
        if rest:
            rest += data  # amortised append: a trickled message is copied O(size) times total
            buf = rest
        items = self._items
        pos = 0
        scan = _decoder.scan
        while True:
            status, pos, end = scan(buf, pos, self.max_msg, MAX_DEPTH, self.ip_ok, self.ip_check,
                                    self, t_arr, t_arr + self.deadline_s, items, self.room(),
                                    self.frame_state)
            if items:
                self.take_items(items)
                items.clear()
            if status == _NEED_MORE:
                if buf is rest:
                    del rest[:pos]
                    if not rest:  # a large message done: give its buffer back
                        self.rest = bytearray()
                    elif pos:  # another message began in this read
                        self.frame_t0 = self.last_active
                elif pos < len(buf):
                    rest += memoryview(buf)[pos:]
                    self.frame_t0 = self.last_active
                break
            if status == _GENERAL or status == _ROOM:
                try:
                    msg = msgpack.unpackb(memoryview(buf)[pos:end], raw=False,
                                          strict_map_key=True, use_list=True)
                except (ValueError, TypeError, msgpack.UnpackException) as e:
                    # bad UTF-8, non-str map keys, over-long containers
                    self.fatal(ErrorCode.NOT_MSGPACK, f"not a valid msgpack message: {e}")
                    return
                self.handle(msg, t_arr)
            elif status == _TOO_DEEP:
                self.daemon.metrics.requests += 1
                self.queue_error(_peek_msgid(buf, pos), error(
                    ErrorCode.BAD_REQUEST, f"message nested deeper than {MAX_DEPTH} levels"))
            elif status == _INVALID:
                self.fatal(ErrorCode.NOT_MSGPACK, f"not a valid msgpack message: byte "
                           f"0x{buf[end - 1]:02x} at offset {end - 1} is never msgpack")
                return
            else:  # _TOO_LARGE
                self.fatal(ErrorCode.TOO_LARGE, f"message larger than {self.max_msg} bytes")
                return
            if self.closed or self.closing:
                return
            if self.n_errors > self.max_errors:
                self.fatal(ErrorCode.BAD_REQUEST, f"closed: more than {self.max_errors} "
                           "protocol errors on this connection (max_errors_per_conn)")
                self.daemon.metrics.defence["closed_errors"] += 1
                return
            pos = end
        self.after_input()
        self.flush()

    def room(self) -> int:
        """How many hot clicks this read may hand the batcher directly (0: none)."""
        return 0

    def take_items(self, items: list[Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ requests
    def handle(self, msg: Any, t_arr: float) -> None:
        self.daemon.metrics.requests += 1
        if type(msg) is not list or not msg:
            self.queue_error(None, error(ErrorCode.BAD_REQUEST,
                                        "a message must be an array [type, ...]"))
            return
        kind = msg[0]
        if kind == 0 and len(msg) == 4:
            msgid, method, params = msg[1], msg[2], msg[3]
            if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
                self.queue_error(None, error(ErrorCode.BAD_REQUEST,
                                            "msgid must be an unsigned 32-bit integer"))
                return
        elif kind == 2 and len(msg) == 3:
            msgid, method, params = None, msg[1], msg[2]
        else:
            mid = msg[1] if len(msg) > 1 and type(msg[1]) is int else None
            self.queue_error(mid, error(ErrorCode.BAD_REQUEST,
                                        "expected [0, msgid, method, params] or [2, method, params]"))
            return
        if type(method) is not str or type(params) is not list:
            problem = "method must be a string" if type(method) is not str else \
                "params must be an array"
            if msgid is not None or kind == 0:
                self.queue_error(msgid, error(ErrorCode.BAD_REQUEST, problem))
            return
        try:
            self.dispatch(msgid, method, params, t_arr)
        except RpcError as e:
            if msgid is None:  # a notification never gets an answer, not even an error
                self.daemon.metrics.errors[e.code.name] += 1
            else:
                self.queue_error(msgid, e.wire())
        except Exception as e:  # a bug must not take the connection (or the daemon) down
            log.exception("request %r failed", method)
            if msgid is not None:
                self.queue_error(msgid, error(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))

    def dispatch(self, msgid: int | None, method: str, params: list[Any], t_arr: float) -> None:
        raise NotImplementedError

    def after_input(self) -> None:
        pass

    def run_async(self, msgid: int | None, coro: Awaitable[Any]) -> None:
        """For slow methods (admin): answer when the coroutine finishes."""
        async def runner() -> None:
            try:
                result = await coro
            except RpcError as e:
                self.queue_error(msgid, e.wire())
            except Exception as e:
                log.exception("async request failed")
                self.queue_error(msgid, error(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
            else:
                self.queue_result(msgid, result)
            self.flush()
        asyncio.get_running_loop().create_task(runner())

    # ------------------------------------------------------------------ output
    def queue_result(self, msgid: int | None, result: Any) -> None:
        if msgid is None or self.closed:
            return
        self.out.append(self.packer.pack([1, msgid, None, result]))

    def queue_error(self, msgid: int | None, err: list[Any]) -> None:
        self.daemon.metrics.errors[ErrorCode(err[0]).name] += 1
        if self.closed:
            return
        if err[0] != ErrorCode.INVALID_CLICK:  # a click's own problem is not the peer's abuse
            self.n_errors += 1
        if msgid is None:
            self.out.append(self.packer.pack([2, "error", [err]]))
        else:
            self.out.append(self.packer.pack([1, msgid, err, None]))

    def flush(self) -> None:
        if self.out:
            if not self.closed and self.transport is not None:
                self.transport.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.out.clear()
        if self.closing:
            if self.inflight <= 0:
                self.close()
            return
        if self.paused_reading:
            self.maybe_resume()

    def fatal(self, code: ErrorCode, message: str) -> None:
        """Answer a fatal error and close. Requests read before it (a valid click, then bad
        bytes in the same read) are still answered: reading stops, and the connection closes
        once they are."""
        self.queue_error(None, error(code, message))
        if self.inflight > 0 and not self.closed:
            self._pause()
            self.closing = True
            self.after_input()  # the batcher takes what was read before the bad bytes
            self.flush()
            return
        self.flush()
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    # ------------------------------------------------------------------ flow control
    def _pause(self) -> None:
        if not self.paused_reading and self.transport is not None and not self.closed:
            self.paused_reading = True
            try:
                self.transport.pause_reading()
            except RuntimeError:
                pass

    def maybe_resume(self) -> None:
        if self.paused_reading and not self.write_paused and not self.closed \
                and not self.closing \
                and self.inflight <= self.resume_below():
            self.paused_reading = False
            try:
                assert self.transport is not None
                self.transport.resume_reading()
            except RuntimeError:
                pass

    def resume_below(self) -> int:
        return 1 << 62


Handler = Callable[[Any, int | None, list[Any], float], None]
