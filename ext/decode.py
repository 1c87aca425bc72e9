"""Pure-Python twin of ext/_decode.pyx: the daemon's request framing and hot-path decoding.

Same function, same results (tests/test_hotpath_parity.py holds the two together): `scan`
frames the msgpack messages in a buffer with a non-recursive skipper that bounds nesting depth,
turns each `[0, msgid, "score", [{click}]]` message whose click passes the contract into one
batcher item, and stops at anything else, reporting its extent for the general path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from slidr.contract import ContractError, validate_click

NEED_MORE, GENERAL, TOO_DEEP, INVALID, TOO_LARGE, ROOM = range(6)
MAX_STACK = 64
_KNOWN = frozenset(("click_id", "ts", "session_id", "user_id", "ip", "device", "logged_in",
                    "tz_offset_min", "user_agent", "ad_id"))


def _header(p: bytes, n: int, pos: int) -> tuple[int, int, int, int]:
    """-> (kind, header length, payload bytes, contained objects); kind -1 incomplete,
    -2 never msgpack, 0 scalar/bytes, 1 container."""
    b = p[pos]
    left = n - pos
    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
        return 0, 1, 0, 0
    if b <= 0x8F:
        return 1, 1, 0, 2 * (b & 0x0F)
    if b <= 0x9F:
        return 1, 1, 0, b & 0x0F
    if b <= 0xBF:
        return 0, 1, b & 0x1F, 0
    if b == 0xC1:
        return -2, 1, 0, 0
    if b in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB):
        w = 1 if b in (0xC4, 0xD9) else (2 if b in (0xC5, 0xDA) else 4)
        if left < 1 + w:
            return -1, 0, 0, 0
        return 0, 1 + w, int.from_bytes(p[pos + 1:pos + 1 + w], "big"), 0
    if b in (0xC7, 0xC8, 0xC9):
        w = 1 if b == 0xC7 else (2 if b == 0xC8 else 4)
        if left < 1 + w:
            return -1, 0, 0, 0
        return 0, 1 + w, int.from_bytes(p[pos + 1:pos + 1 + w], "big") + 1, 0
    if b == 0xCA:
        return 0, 1, 4, 0
    if b == 0xCB:
        return 0, 1, 8, 0
    if 0xCC <= b <= 0xCF:
        return 0, 1, 1 << (b - 0xCC), 0
    if 0xD0 <= b <= 0xD3:
        return 0, 1, 1 << (b - 0xD0), 0
    if 0xD4 <= b <= 0xD8:
        return 0, 1, (1 << (b - 0xD4)) + 1, 0
    w = 2 if b in (0xDC, 0xDE) else 4
    if left < 1 + w:
        return -1, 0, 0, 0
    return 1, 1 + w, 0, int.from_bytes(p[pos + 1:pos + 1 + w], "big") * (2 if b >= 0xDE else 1)


class FrameState:
    """Twin of ext/_decode.pyx FrameState: where the framing of an incomplete message stopped,
    so the next read resumes there (a trickled message costs O(size), not O(size^2))."""

    __slots__ = ("active", "off", "stack", "deep", "rem")

    def __init__(self) -> None:
        self.active = False
        self.off = 0
        self.stack: list[int] = [1]
        self.deep = False
        self.rem = 0

    def reset(self) -> None:
        self.active = False


def _frame_end(p: bytes | bytearray, n: int, start: int, max_depth: int,
               st: FrameState | None = None) -> tuple[int, bool, int]:
    """-> (end, too_deep, bad position); end -1: incomplete, -2: never msgpack."""
    max_depth = min(max_depth, MAX_STACK)
    stack = [1]
    deep = False
    rem = 0
    pos = start
    if st is not None and st.active:
        pos = start + st.off
        stack = list(st.stack)
        deep = st.deep
        rem = st.rem
        st.active = False
    while True:
        if pos >= n:
            break
        kind, hlen, payload, items = _header(p, n, pos)
        if kind == -1:
            break
        if kind == -2:
            return -2, deep, pos
        if n - pos < hlen + payload:
            break
        pos += hlen + payload
        if deep:
            rem = rem - 1 + items
            if rem == 0:
                return pos, deep, 0
            continue
        stack[-1] -= 1
        if kind == 1:
            if len(stack) > max_depth:  # this container would be at depth len(stack)
                deep = True
                rem = items + sum(stack)
                if rem == 0:
                    return pos, deep, 0
                continue
            if items > 0:
                stack.append(items)
        while stack[-1] == 0:
            if len(stack) == 1:
                return pos, deep, 0
            stack.pop()
    if st is not None:
        st.active, st.off, st.stack, st.deep, st.rem = True, pos - start, stack, deep, rem
    return -1, deep, 0


def _hot_click(frame: bytes, ip_ok: dict[str, bool], ip_check: Callable[[str], bool]
               ) -> tuple[Any, int] | None:
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception:
        return None
    if type(msg) is not list or len(msg) != 4 or type(msg[0]) is not int or msg[0] != 0:
        return None
    mid, method, params = msg[1], msg[2], msg[3]
    if type(mid) is not int or not 0 <= mid <= 0xFFFFFFFF or method != "score" \
            or type(params) is not list or len(params) != 1:
        return None
    c = params[0]
    if type(c) is not dict or not _KNOWN.issuperset(c):
        return None
    ip = c.get("ip")
    if type(ip) is str and ip_ok.get(ip) is False:
        return None
    try:
        validate_click(c)
    except ContractError:
        return None
    except Exception:
        return None
    return c, mid


def scan(data: bytes | bytearray, pos: int, max_msg: int, max_depth: int,
         ip_ok: dict[str, bool], ip_check: Callable[[str], bool], conn: Any, t_arr: float,
         deadline: float, items: list[Any], room: int, state: FrameState | None = None
         ) -> tuple[int, int, int]:
    """Twin of ext/_decode.pyx scan: -> (status, pos, end); hot clicks appended to `items`."""
    n = len(data)
    while pos < n:
        end, deep, bad = _frame_end(data, n, pos, max_depth, state)
        if end == -2:
            return INVALID, pos, bad + 1
        if end == -1:
            return (TOO_LARGE if n - pos > max_msg else NEED_MORE), pos, n
        if end - pos > max_msg:
            return TOO_LARGE, pos, end
        if deep:
            return TOO_DEEP, pos, end
        hot = _hot_click(bytes(data[pos:end]), ip_ok, ip_check)
        if hot is None:
            return GENERAL, pos, end
        if room <= 0:
            return ROOM, pos, end
        room -= 1
        items.append((hot[0], conn, hot[1], t_arr, deadline, True))
        pos = end
    return NEED_MORE, pos, pos


def frame_end(data: bytes | bytearray, pos: int, max_depth: int) -> tuple[int, bool]:
    end, deep, _bad = _frame_end(data, len(data), pos, max_depth)
    return end, deep
