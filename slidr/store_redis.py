"""Redis counter store: the shared twin of the embedded store, one round trip per batch.

Each `update()` is a single EVALSHA of slidr/store_redis.lua: the script reads each distinct
key's state blob once, applies the reference counter math click by click in arrival order,
writes every touched key once (its physical TTL re-set once per refresh period), and returns the raw counters as one binary
string per click (store_redis.lua ROW). The script runs atomically, so many workers and hosts
can share one Redis. Key names: prefix + "u" | "s" | "i" | "e" (user, session, IP, entity: the
ad, (IP, ad) and user-agent keys share one table, their hashes' namespaces keep them apart) +
the 8 big-endian bytes of the key hash.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from slidr import featurespec as fs
from slidr.ext import fastpath, kernel_native

__all__ = ["RedisStore", "StoreUnavailable", "resp_bulk", "script_source"]


class StoreUnavailable(RuntimeError):
    """Redis could not be reached in time (refused, timed out, reset). `__cause__` says why."""


# Refresh period of each kind's physical TTL, in ms of click time (store_redis.lua "Physical
# TTLs"): a key's Redis TTL is re-set only when its last click enters a new period, so the
# physical TTL the client sends is logical TTL + slack + this. 1/16 of the logical TTL: keys
# stay in memory at most ~6 % longer than with a TTL re-set on every write.
TTL_REFRESH_MS = (fs.USER_TTL_MS // 16, fs.SESSION_TTL_MS // 16, fs.IP_TTL_MS // 16,
                  fs.ENTITY_TTL_MS // 16)
# The logical TTL of each kind (user, session, IP, entity), in the order of TTL_REFRESH_MS.
TTL_MS = (fs.USER_TTL_MS, fs.SESSION_TTL_MS, fs.IP_TTL_MS, fs.ENTITY_TTL_MS)
# Key-name tags of the kinds, in the same order.
KIND_TAGS = (b"u", b"s", b"i", b"e")


def script_source(mget_chunk: int = 1000) -> str:
    """The Lua script with the counter constants filled in from slidr.featurespec (keys read
    mget_chunk per MGET: 1 for Redis Cluster, see slidr/redis_split.py)."""
    src = Path(__file__).with_name("store_redis.lua").read_text()
    subs = {
        "__USER_TAUS__": ", ".join(repr(float(x)) for x in fs.USER_TAUS),
        "__SESSION_TAUS__": ", ".join(repr(float(x)) for x in fs.SESSION_TAUS),
        "__IP_TAUS__": ", ".join(repr(float(x)) for x in fs.IP_TAUS),
        "__ENTITY_TAUS__": ", ".join(repr(float(x)) for x in fs.ENTITY_TAUS),
        "__ENTITY_TTL_MS__": str(fs.ENTITY_TTL_MS),
        "__ENTITY_REFRESH_MS__": str(TTL_REFRESH_MS[3]),
        "__ENTITY_WINDOW_MS__": str(fs.ENTITY_WINDOW_MS),
        "__ZERO_EREGS__": ", ".join(["0"] * (2 * fs.HLL_M)),
        "__USER_TTL_MS__": str(fs.USER_TTL_MS),
        "__SESSION_TTL_MS__": str(fs.SESSION_TTL_MS),
        "__IP_TTL_MS__": str(fs.IP_TTL_MS),
        "__HOUR_MS__": str(fs.HLL_WINDOWS_MS[0]),
        "__DAY_MS__": str(fs.HLL_WINDOWS_MS[2]),
        "__HLL_M__": str(fs.HLL_M),
        "__USER_REFRESH_MS__": str(TTL_REFRESH_MS[0]),
        "__SESSION_REFRESH_MS__": str(TTL_REFRESH_MS[1]),
        "__IP_REFRESH_MS__": str(TTL_REFRESH_MS[2]),
        "__ZERO_REGS__": ", ".join(["0"] * (4 * fs.HLL_M)),
        "__FULL_REGS__": ", ".join(["255"] * (4 * fs.HLL_M)),
        "__MGET_CHUNK__": str(int(mget_chunk)),
        "__SUBSEC_MS__": str(fs.SUBSEC_MS),
        "__LOG_GAP_FLOOR_S__": repr(float(fs.LOG_GAP_FLOOR_S)),
        "__USER_LG_MAX_S__": repr(float(fs.USER_LG_MAX_S)),
        "__IP_HOURS__": str(fs.IP_HOURS),
    }
    # The script hard-codes the window order (1 h, 1 h, 1 d, 1 d) and the state layout.
    assert fs.HLL_WINDOWS_MS == (fs.HLL_WINDOWS_MS[0],) * 2 + (fs.HLL_WINDOWS_MS[2],) * 2
    assert len(fs.USER_TAUS) == 4 and len(fs.SESSION_TAUS) == 2 and len(fs.IP_TAUS) == 3
    assert len(fs.ENTITY_TAUS) == 4 and fs.ENTITY_PREFIXES == ("a", "x", "g")
    assert fs.RAW_WIDTH == 84
    for k, v in subs.items():
        src = src.replace(k, v)
    return src


# One record per click in ARGV[1]: ts, the 4 HLL bytes, the IP key's HLL register and rank
# (the entities' distinct-IP sketches), the 1-based positions of the click's user, session and
# IP among the batch's distinct keys of that kind and of its ad, (IP, ad) and user-agent keys
# among the distinct entity keys (0: no such key), its tz_offset_min and its logged_in flag
# (0 or 1; see store_redis.lua). The one definition of the record: slidr/redis_split.py builds
# the Redis Cluster nodes' records with these too.
CLICK_DTYPE = np.dtype([("ts", "<f8"), ("hll", "u1", (4,)), ("ihll", "u1", (2,)),
                        ("idx", "<u4", (6,)), ("tz", "<i2"), ("li", "u1")])
assert CLICK_DTYPE.itemsize == 41
CLICK_STRUCT = struct.Struct("<d6B6IhB")
assert CLICK_STRUCT.size == 41


def li_flags(li: Any, n: int) -> np.ndarray:
    """The clicks' logged_in flags as the click records carry them: uint8 0/1 (nonzero = logged
    in; None: 0 for each of the n clicks)."""
    if li is None:
        return np.zeros(n, dtype=np.uint8)
    return (np.asarray(li) != 0).view(np.uint8)


def ip_index_rank(ih: np.ndarray) -> np.ndarray:
    """(n, 2) uint8: each IP hash's HyperLogLog register (top HLL_P bits) and rank
    (reference.hll_index_rank; numpy: the bit length of the rest from frexp of its 32-bit
    halves, exact)."""
    h = np.asarray(ih, dtype=np.uint64)
    out = np.empty((h.shape[0], 2), dtype=np.uint8)
    out[:, 0] = h >> np.uint64(64 - fs.HLL_P)
    w = h << np.uint64(fs.HLL_P)
    hi = (w >> np.uint64(32)).astype(np.float64)
    lo = (w & np.uint64(0xFFFFFFFF)).astype(np.float64)
    bl = np.where(hi > 0, 32 + np.frexp(hi)[1], np.frexp(lo)[1])  # frexp(0) -> exponent 0
    out[:, 1] = np.where(w == 0, fs.HLL_RANK_CAP, 65 - bl)
    return out


def _ip_index_rank1(h: int) -> tuple[int, int]:
    w = (h << fs.HLL_P) & 0xFFFFFFFFFFFFFFFF
    return h >> (64 - fs.HLL_P), (65 - w.bit_length()) if w else fs.HLL_RANK_CAP


# One reply row per click (store_redis.lua ROW): 71 doubles; the two bucket fractions come once
# each, the 8 HLL register counts v, pv (0..32) and the IP's active hours (0..24) as 6-bit
# fields of double 22 (exact), the session's gap shape in the next four, the IP's time-zone
# switches and logged-in clicks, the user's ln-gap n, mean, M2, then per entity kind 13
# doubles (its day fraction once for both sketches). _D_SRC/_D_DST and _B_DST map them onto
# the 84 RAW columns.
_ROW_DOUBLES = 71
_ROW_BYTES = _ROW_DOUBLES * 8
_PACKED = 22
_SHIFTS = np.arange(0, 54, 6, dtype=np.int64)


def _raw_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = fs.RAW_INDEX
    names = ["u_c60", "u_c600", "u_c3600", "u_c86400", "u_gap", "s_c60", "s_c3600", "s_gap",
             "s_age", "i_c60", "i_c3600", "i_c86400"]
    names += [f"h{j}_{f}" for j in range(4) for f in ("z", "pz")]
    src = list(range(len(names))) + [20, 20, 21, 21] + [23, 24, 25, 26, 27, 28]
    dst = [r[x] for x in names] + [r["h0_frac"], r["h1_frac"], r["h2_frac"], r["h3_frac"]]
    dst += [r["s_subsec"], r["s_lg_n"], r["s_lg_mean"], r["s_lg_m2"], r["i_tzsw"], r["i_li"]]
    src += [29, 30, 31]
    dst += [r["u_lg_n"], r["u_lg_mean"], r["u_lg_m2"]]
    for j, k in enumerate(fs.ENTITY_PREFIXES):
        o = 32 + 13 * j
        cols = [f"{k}_c60", f"{k}_c3600", f"{k}_c86400", f"{k}_c604800", f"{k}s_z", f"{k}s_v",
                f"{k}s_pz", f"{k}s_pv", f"{k}s_frac", f"{k}i_z", f"{k}i_v", f"{k}i_pz",
                f"{k}i_pv"]
        src += list(range(o, o + 13)) + [o + 8]
        dst += [r[c] for c in cols] + [r[f"{k}i_frac"]]
    bdst = [r[f"h{j}_{f}"] for j in range(4) for f in ("v", "pv")] + [r["i_hours"]]
    assert sorted(dst + bdst) == list(range(fs.RAW_WIDTH))
    return np.array(src), np.array(dst), np.array(bdst)


_D_SRC, _D_DST, _B_DST = _raw_maps()

# The native builder writes doubles and u32 in host order: little-endian hosts only.
_native_request = getattr(kernel_native, "redis_request", None) \
    if sys.byteorder == "little" else None
# The reply's rows expanded to RAW in one C pass (the numpy path below is its twin).
_native_expand = getattr(fastpath, "expand_rows", None) if sys.byteorder == "little" else None
# For one click, in plain Python: RAW column -> row index (the v/pv columns are filled after).
_ROW1 = struct.Struct(f"<{_ROW_DOUBLES}d")
_SRC_OF_COL = [0] * fs.RAW_WIDTH
for _s, _d in zip(_D_SRC.tolist(), _D_DST.tolist(), strict=True):
    _SRC_OF_COL[_d] = _s
_B_DST_LIST = _B_DST.tolist()
_ONE_ONE = b"$1\r\n1\r\n$1\r\n1\r\n$1\r\n1\r\n"


def _dedup(h: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """-> the distinct values of h (sorted); pos[i] = 1-based position of h[i] among them.
    (np.unique(return_inverse=True) does the same with more overhead per call.)"""
    h = np.asarray(h, dtype=np.uint64)
    order = h.argsort()
    srt = h[order]
    first = np.empty(srt.shape[0], dtype=bool)
    first[0] = True
    np.not_equal(srt[1:], srt[:-1], out=first[1:])
    pos[order] = first.cumsum()
    return srt[first]


def resp_bulk(b: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(b), b)


class RedisStore:
    """Counter store in Redis (standalone; redis:// or rediss:// URL with auth and db).

    timeout_s bounds connect and each reply; a batch whose script runs longer than that (very
    large batches) also fails, so size it to the daemon's deadline. ttl_slack_ms is added to
    each key's logical TTL for its physical expiry (clocks of ad hosts lag a little), and so is
    the kind's TTL_REFRESH_MS (the TTL is re-set once per period, not on every write).

    Per batch the client deduplicates the keys (numpy), builds the whole EVALSHA request as one
    RESP buffer with numpy (fixed-size key records; no per-key Python objects), and sends it on
    a pooled connection; the reply is one bulk string read with np.frombuffer.
    """

    name = "redis"

    def __init__(self, url: str, prefix: str | bytes = "slidr:", timeout_s: float = 0.05,
                 connect_timeout_s: float | None = None, ttl_slack_ms: int = 60_000,
                 client: Any = None) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        self.timeout_s = timeout_s
        self.ttl_slack_ms = int(ttl_slack_ms)
        self._src = script_source()
        self._sha = hashlib.sha1(self._src.encode()).hexdigest()
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._noscript = redis.exceptions.NoScriptError
        if client is None:
            # No retries: a store outage must surface within timeout_s (the daemon fails
            # open), not after the client's default backoff schedule.
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s,
                socket_connect_timeout=connect_timeout_s or timeout_s,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=False,
                health_check_interval=0)
        self._r = client
        plen = len(self.prefix)
        # RESP record of one key: "$<len>\r\n" prefix tag 8-byte-hash "\r\n".
        self._klen = plen + 9
        self._rec_head = b"$%d\r\n" % self._klen + self.prefix
        self._tag_at = len(self._rec_head)
        self._reclen = self._tag_at + 11
        # Key-record buffers of the numpy builder, one per thread: callers may share one store
        # between threads, and a shared buffer would mix their key names.
        self._local = threading.local()
        # ARGV[2..5]: physical TTLs (logical TTL + slack + refresh period) of user, session,
        # IP and entity keys.
        self._argv_px = b"".join(
            resp_bulk(b"%d" % (ttl + self.ttl_slack_ms + ref))
            for ttl, ref in zip(TTL_MS, TTL_REFRESH_MS, strict=True))
        self._cmd_head = b"\r\n$7\r\nEVALSHA\r\n" + resp_bulk(self._sha.encode())
        self._idle: list[Any] = []

    def _records(self, k: int) -> np.ndarray:
        tmpl = getattr(self._local, "tmpl", None)
        if tmpl is None or tmpl.shape[0] < k:
            cap = max(k, 2 * (0 if tmpl is None else tmpl.shape[0]), 64)
            tmpl = np.empty((cap, self._reclen), dtype=np.uint8)
            tmpl[:, :self._tag_at] = np.frombuffer(self._rec_head, dtype=np.uint8)
            tmpl[:, -2:] = np.frombuffer(b"\r\n", dtype=np.uint8)
            self._local.tmpl = tmpl
        return tmpl[:k]

    @property
    def script(self) -> tuple[str, str]:
        """(Lua source, its SHA1): what an asynchronous client loads with SCRIPT LOAD."""
        return self._src, self._sha

    def request(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
                hll: np.ndarray, tz: np.ndarray | None = None,
                eh: np.ndarray | None = None, li: np.ndarray | None = None) -> bytes:
        """The whole EVALSHA command as one RESP buffer (see store_redis.lua for the layout).

        With `parse_reply` this lets another client (slidrd's pipelined asyncio link) do the
        round trip itself: update() == parse_reply(<reply to request(...)>, n).
        Built in C by the native kernel when it is there (well under a microsecond for a small
        batch, instead of ~25 of numpy calls on small arrays); request_numpy is the reference,
        byte for byte. tz: the clicks' tz_offset_min (None: 0 for every click); eh: uint64
        (n, 3), the clicks' ad, (IP, ad) and user-agent keys, 0 = absent (None: all absent);
        li: the clicks' logged_in flags (nonzero = logged in; None: none is)."""
        if _native_request is not None and len(ts) > 0:
            return _native_request(ts, uh, sh, ih, hll, self._rec_head, self._cmd_head,
                                   self._argv_px, tz, eh, li)
        return self.request_numpy(ts, uh, sh, ih, hll, tz, eh, li)

    def request_numpy(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
                      hll: np.ndarray, tz: np.ndarray | None = None,
                      eh: np.ndarray | None = None, li: np.ndarray | None = None) -> bytes:
        """request() with numpy: the reference for the native builder."""
        n = ts.shape[0]
        if n == 1:
            # One click (an idle daemon flushes each click at once): plain Python is several
            # times cheaper than numpy on arrays of one.
            h = bytes(np.asarray(hll, dtype=np.uint8).reshape(4))
            head = self._rec_head
            i0 = int(ih[0])
            ek1: list[int] = []
            e1 = [0, 0, 0]
            if eh is not None:
                e3 = [int(x) for x in np.asarray(eh, dtype=np.uint64).reshape(3)]
                ek1 = sorted({x for x in e3 if x})
                e1 = [ek1.index(x) + 1 if x else 0 for x in e3]
            recs = b"".join((head, b"u", int(uh[0]).to_bytes(8, "big"), b"\r\n",
                             head, b"s", int(sh[0]).to_bytes(8, "big"), b"\r\n",
                             head, b"i", i0.to_bytes(8, "big"), b"\r\n",
                             *(b"%se%s\r\n" % (head, x.to_bytes(8, "big")) for x in ek1)))
            click = CLICK_STRUCT.pack(float(ts[0]), *h, *_ip_index_rank1(i0), 1, 1, 1, *e1,
                                      0 if tz is None else int(tz[0]),
                                      0 if li is None else int(li[0] != 0))
            k = 3 + len(ek1)
            return b"".join((b"*%d" % (k + 11), self._cmd_head, resp_bulk(b"%d" % k), recs,
                             resp_bulk(click), self._argv_px, _ONE_ONE))
        clicks = np.zeros(n, dtype=CLICK_DTYPE)
        clicks["ts"] = ts
        clicks["hll"] = hll
        clicks["ihll"] = ip_index_rank(ih)
        clicks["tz"] = 0 if tz is None else tz
        clicks["li"] = li_flags(li, n)
        idx = clicks["idx"]
        uk = _dedup(uh, idx[:, 0])
        sk = _dedup(sh, idx[:, 1])
        ik = _dedup(ih, idx[:, 2])
        nu, ns, ni = uk.shape[0], sk.shape[0], ik.shape[0]
        if eh is not None:
            e = np.asarray(eh, dtype=np.uint64).reshape(n, 3)
            epos = np.empty((n, 3), dtype=np.uint32)
            ek = _dedup(e.reshape(-1), epos.reshape(-1))
            if ek[0] == 0:  # absent keys: position 0, no key
                ek = ek[1:]
                epos -= 1
            idx[:, 3:] = epos
            keys = np.concatenate([uk, sk, ik, ek]).astype(">u8")
        else:
            keys = np.concatenate([uk, sk, ik]).astype(">u8")
        k = keys.shape[0]
        rec = self._records(k)
        t = self._tag_at
        rec[:nu, t] = 117  # "u"
        rec[nu:nu + ns, t] = 115  # "s"
        rec[nu + ns:nu + ns + ni, t] = 105  # "i"
        rec[nu + ns + ni:, t] = 101  # "e"
        rec[:, t + 1:t + 9] = keys.view(np.uint8).reshape(k, 8)
        ks = str(k).encode()
        return b"".join((b"*%d" % (k + 11), self._cmd_head, resp_bulk(ks), rec.tobytes(),
                         resp_bulk(clicks.tobytes()), self._argv_px,
                         resp_bulk(b"%d" % nu), resp_bulk(b"%d" % ns), resp_bulk(b"%d" % ni)))

    def update(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
               hll: np.ndarray, tz: np.ndarray | None = None,
               eh: np.ndarray | None = None, li: np.ndarray | None = None) -> np.ndarray:
        n = int(np.shape(ts)[0])
        if not (len(uh) == len(sh) == len(ih) == len(hll) == n) or (
                tz is not None and len(tz) != n) or (eh is not None and np.shape(eh) != (n, 3)) \
                or (li is not None and len(li) != n):
            raise ValueError("update: ts, uh, sh, ih, hll, tz, eh and li must have the same "
                             "length (eh: n x 3)")
        if n == 0:
            return np.empty((0, fs.RAW_WIDTH), dtype=np.float64)
        req = self.request(ts, uh, sh, ih, hll, tz, eh, li)
        try:
            # A connection of our own (redis-py's pool get/release costs more per call than
            # building the whole request); list pop/append are atomic, so threads can share
            # the store, each batch on its own connection.
            try:
                conn = self._idle.pop()
            except IndexError:
                conn = self._r.connection_pool.make_connection()
            try:
                conn.send_packed_command((req,))
                try:
                    resp = conn.read_response()
                except self._noscript:
                    # First use on this server (or it restarted): load, then retry once.
                    conn.send_command("SCRIPT", "LOAD", self._src)
                    conn.read_response()
                    conn.send_packed_command((req,))
                    resp = conn.read_response()
            finally:
                # On a socket error or timeout redis-py has already closed the connection;
                # it reconnects on its next command.
                self._idle.append(conn)
        except self._errors as e:
            raise StoreUnavailable(f"redis store at {self.safe_url()} unavailable: "
                                   f"{type(e).__name__}: {e}") from e
        return self.parse_reply(resp, n)

    def parse_reply(self, resp: Any, n: int) -> np.ndarray:
        """The script's reply (a list of bulk strings) for n clicks -> raw counters (n, RAW_WIDTH)."""
        if not isinstance(resp, list):
            raise RuntimeError(f"redis store: unexpected reply {type(resp).__name__}")
        if _native_expand is not None:
            raw = _native_expand(resp, n, _ROW_DOUBLES, _D_SRC, _D_DST, _PACKED, _B_DST,
                                 fs.RAW_WIDTH)
            if raw is not None:
                return raw  # type: ignore[no-any-return]
            # not n rows of bytes: the path below names the problem
        return self.parse_reply_numpy(resp, n)

    def parse_reply_numpy(self, resp: list[Any], n: int) -> np.ndarray:
        """parse_reply without the native expansion: the reference for it."""
        if n == 1 and len(resp) == 1 and len(resp[0]) == _ROW_BYTES:
            v = _ROW1.unpack(resp[0])
            packed = int(v[_PACKED])
            row = [v[i] for i in _SRC_OF_COL]
            for j, c in enumerate(_B_DST_LIST):
                row[c] = float((packed >> (6 * j)) & 63)
            return np.array([row], dtype=np.float64)
        rows = b"".join(resp)
        if len(rows) != n * _ROW_BYTES:
            raise RuntimeError(f"redis store returned {len(rows)} bytes for {n} clicks")
        rec = np.frombuffer(rows, dtype="<f8").reshape(n, _ROW_DOUBLES)
        raw = np.empty((n, fs.RAW_WIDTH), dtype=np.float64)
        raw[:, _D_DST] = rec[:, _D_SRC]
        fields = rec[:, _PACKED].astype(np.int64)
        raw[:, _B_DST] = (fields[:, None] >> _SHIFTS) & 63
        return raw

    def safe_url(self) -> str:
        # Never echo a password into logs.
        from urllib.parse import urlsplit
        u = urlsplit(self.url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
        return f"{u.scheme}://{host}{port}{u.path}"

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except self._errors as e:
            raise StoreUnavailable(f"redis store at {self.safe_url()} unavailable: {e}") from e

    def stats(self) -> dict[str, Any]:
        """Server memory and key counts under this store's prefix (SCAN: not for hot paths)."""
        try:
            mem = self._r.info("memory")
            counts = {}
            for tag, name in ((b"u", "users"), (b"s", "sessions"), (b"i", "ips"),
                              (b"e", "entities")):
                counts[name] = sum(1 for _ in self._r.scan_iter(match=self.prefix + tag + b"*",
                                                                 count=1000))
        except self._errors as e:
            raise StoreUnavailable(f"redis store at {self.safe_url()} unavailable: {e}") from e
        keys = sum(counts.values())
        return {**counts, "keys": keys, "used_memory": int(mem.get("used_memory", 0))}

    def __len__(self) -> int:
        return int(self.stats()["keys"])

    def close(self) -> None:
        while self._idle:
            self._idle.pop().disconnect()
        self._r.close()
