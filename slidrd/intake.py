"""A click's intake in slidrd: the per-click checks of the plain-Python path (the reference
twin of ext/_fastpath.pyx fast_valid / partition), the IP check cache the native decoder shares,
and the score_many group whose last answer sends the response."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slidr.contract import (
    DEVICE_CODE,
    MAX_ID_LEN,
    MAX_UA_LEN,
    TS_MAX,
    TS_MIN,
    TZ_MAX,
    TZ_MIN,
    ContractError,
    validate_click,
)

log = logging.getLogger("slidrd")

# An item: (click, sink, msgid_or_index, t_arrival, deadline). `sink` is a connection (answer
# is a response to msgid) or a Group (answer fills slot `index` of a score_many result). Items
# from the decoder (slidr.ext.decoder.scan) carry a sixth element, True: their click passed the
# contract there, and partition does not check it again.
Item = tuple[Any, Any, int, float, float]


_ip_ok: dict[str, bool] = {}


def _ip_valid(ip: str) -> bool:
    # ipaddress parsing is most of validate_click's cost; addresses repeat, so remember them.
    ok = _ip_ok.get(ip)
    if ok is None:
        try:
            validate_click({"click_id": "x", "ts": TS_MIN, "session_id": "x", "ip": ip,
                            "device": "app", "logged_in": False})
            ok = True
        except ContractError:
            ok = False
        if len(_ip_ok) >= 200_000:
            _ip_ok.clear()
        _ip_ok[ip] = ok
    return ok


def fast_valid(c: Any) -> bool:
    """True only when `c` certainly passes contract.validate_click (same rules, no exceptions,
    cached IP checks). False means "ask validate_click", which names the problem."""
    if type(c) is not dict:
        return False
    try:
        cid = c["click_id"]
        ts = c["ts"]
        sid = c["session_id"]
        ip = c["ip"]
        dev = c["device"]
        li = c["logged_in"]
    except KeyError:
        return False
    if type(cid) is not str or not 0 < len(cid) <= MAX_ID_LEN:
        return False
    if type(sid) is not str or not 0 < len(sid) <= MAX_ID_LEN:
        return False
    if type(ts) is not int or not TS_MIN <= ts < TS_MAX:
        return False
    if type(li) is not bool or type(dev) is not str or dev not in DEVICE_CODE:
        return False
    uid = c.get("user_id")
    if uid is not None and (type(uid) is not str or len(uid) > MAX_ID_LEN):
        return False
    if li and not uid:
        return False
    tz = c.get("tz_offset_min")
    if tz is not None and (type(tz) is not int or not TZ_MIN <= tz <= TZ_MAX):
        return False
    ua = c.get("user_agent")
    if ua is not None and (type(ua) is not str or len(ua) > MAX_UA_LEN):
        return False
    ad = c.get("ad_id")
    if ad is not None and (type(ad) is not str or len(ad) > MAX_ID_LEN):
        return False
    return type(ip) is str and _ip_valid(ip)


def ip_cache() -> tuple[dict[str, bool], Callable[[str], bool]]:
    """The IP check cache the decoder shares with fast_valid: (answers so far, the check)."""
    return _ip_ok, _ip_valid


def partition(items: list[Item], cutoff: float
              ) -> tuple[list[Item], list[Any], list[Item], list[Any], list[Item]]:
    """Twin of ext/_fastpath.pyx partition: -> (valid, clicks, expired, late, check)."""
    valid: list[Item] = []
    clicks: list[Any] = []
    expired: list[Item] = []
    late: list[Any] = []
    check: list[Item] = []
    for it in items:
        c = it[0]
        if len(it) > 5 and it[5] is True:  # the decoder's: checked there
            ok = True
        else:
            try:
                ok = fast_valid(c)
            except Exception:  # never trust a click to be checkable: the contract decides
                ok = False
        if not ok:
            check.append(it)
        elif it[4] <= cutoff:
            expired.append(it)
            late.append(c)
        else:
            valid.append(it)
            clicks.append(c)
    return valid, clicks, expired, late, check


class Group:
    """The clicks of one score_many call: answers fill slots; the last one sends the response."""

    __slots__ = ("conn", "msgid", "results", "remaining")

    def __init__(self, conn: Any, msgid: int, n: int) -> None:
        self.conn = conn
        self.msgid = msgid
        self.results: list[Any] = [None] * n
        self.remaining = n

    def fill(self, idx: int, value: Any) -> None:
        if self.results[idx] is not None:  # answered already: exactly one answer per slot
            log.error("score_many slot %d of request %d answered twice; kept the first",
                      idx, self.msgid)
            return
        self.results[idx] = value
        self.remaining -= 1
        self.conn.inflight -= 1
        if self.remaining == 0:
            self.conn.queue_result(self.msgid, self.results)


def click_problem(c: Any) -> str | None:
    """None when `c` passes the contract, else the one-line error naming the field. Never
    raises: whatever a click holds, the problem is that click's alone."""
    try:
        validate_click(c)
    except ContractError as e:
        return str(e)
    except Exception as e:  # a value no check foresaw: still this click's own error
        return f"click could not be validated ({type(e).__name__})"
    return None
