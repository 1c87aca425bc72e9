"""Plain-Python reference twin of the native feature kernel (ext/_kernel.pyx).

Slow and obvious on purpose: the parity tests feed it and the native kernel (and the Redis
store) the same clicks and require equal raw counters. The algorithms are documented in
slidr/featurespec.py; change them there, here, in _kernel.pyx and in store_redis.lua together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from slidr.featurespec import (
    ENTITY_ABSENT,
    ENTITY_TAUS,
    ENTITY_TTL_MS,
    ENTITY_WINDOW_MS,
    HLL_M,
    HLL_P,
    HLL_RANK_CAP,
    HLL_WINDOWS_MS,
    IP_HOURS,
    IP_TAUS,
    IP_TTL_MS,
    LOG_GAP_FLOOR_S,
    RAW_WIDTH,
    SESSION_TAUS,
    SESSION_TTL_MS,
    SUBSEC_MS,
    USER_LG_MAX_S,
    USER_TAUS,
    USER_TTL_MS,
)

_MASK = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def hash64(s: str) -> int:
    """FNV-1a over the UTF-8 bytes, then the splitmix64 finaliser (FNV alone mixes poorly)."""
    h = FNV_OFFSET
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & _MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK
    h ^= h >> 31
    return h


def hll_index_rank(h: int) -> tuple[int, int]:
    idx = h >> (64 - HLL_P)
    w = (h << HLL_P) & _MASK
    if w == 0:
        return idx, HLL_RANK_CAP
    return idx, 64 - w.bit_length() + 1


def _str_key(x: object) -> str:
    if not isinstance(x, str):
        raise TypeError(f"key must be str, not {type(x).__name__}")
    return x


def _entity_key(prefix: str, x: object) -> int:
    """Hash of an entity key (prefix + value); 0 for an absent value (None or empty), a real
    hash of 0 becomes 1."""
    if x is None:
        return 0
    v = _str_key(x)
    if not v:
        return 0
    return hash64(prefix + v) or 1


def _optional(col: Any, n: int) -> list[Any]:
    if col is None:
        return [None] * n
    out = col.to_pylist() if hasattr(col, "to_pylist") else list(col)
    if len(out) != n:
        raise ValueError("hash_keys: ad_id and user_agent must have the keys' length")
    return out


def hash_keys(user_key: Sequence[str], session_id: Sequence[str], ip: Sequence[str],
              ad_id: Sequence[str | None] | None = None,
              user_agent: Sequence[str | None] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (user hashes, session hashes, ip hashes: uint64 (n,); hll: uint8 (n, 4) =
    session register, session rank, user register, user rank; eh: uint64 (n, 3) = the ad,
    (IP, ad) and user-agent keys, 0 where ad_id / user_agent is absent (None as a whole: all
    absent))."""
    n = len(user_key)
    if len(session_id) != n or len(ip) != n:
        raise ValueError("hash_keys: user_key, session_id and ip must have the same length")
    ads = _optional(ad_id, n)
    uas = _optional(user_agent, n)
    uh = np.empty(n, dtype=np.uint64)
    sh = np.empty(n, dtype=np.uint64)
    ih = np.empty(n, dtype=np.uint64)
    hll = np.empty((n, 4), dtype=np.uint8)
    eh = np.zeros((n, 3), dtype=np.uint64)
    for i in range(n):
        # Same checks in the same order as the native kernel, so both raise the same exception.
        u = hash64(_str_key(user_key[i]))
        s = hash64("s\x00" + _str_key(session_id[i]))
        ipk = _str_key(ip[i])
        uh[i], sh[i], ih[i] = u, s, hash64("i\x00" + ipk)
        hll[i, 0], hll[i, 1] = hll_index_rank(s)
        hll[i, 2], hll[i, 3] = hll_index_rank(u)
        a = _entity_key("a\x00", ads[i])
        if a:
            eh[i, 0] = a
            eh[i, 1] = hash64("x\x00" + ipk + "\x00" + ads[i]) or 1
        eh[i, 2] = _entity_key("g\x00", uas[i])
    return uh, sh, ih, hll, eh


def hash_key_columns(user_id: Sequence[str | None] | None, session_id: Sequence[str],
                     ip: Sequence[str], logged_in: Sequence[bool],
                     ad_id: Sequence[str | None] | None = None,
                     user_agent: Sequence[str | None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Twin of the native hash_key_columns: hash_keys with the user key built per click as
    contract.user_key does ("u\\0" + user_id when logged in with a non-empty user_id, else
    "s\\0" + session_id). Columns: sequences or pyarrow arrays; user_id, ad_id, user_agent
    None = no column."""
    def seq(col: Any) -> list[Any]:
        return col.to_pylist() if hasattr(col, "to_pylist") else list(col)

    sess, ips = seq(session_id), seq(ip)
    li = np.asarray(logged_in, dtype=bool)
    n = li.shape[0]
    uids = seq(user_id) if user_id is not None else [None] * n
    ads = seq(ad_id) if ad_id is not None else None
    uas = seq(user_agent) if user_agent is not None else None
    if (len(sess) != n or len(ips) != n or len(uids) != n
            or (ads is not None and len(ads) != n) or (uas is not None and len(uas) != n)):
        raise ValueError("hash_key_columns: columns must have the same length")
    ukeys = [("u\x00" + uids[i]) if (li[i] and uids[i]) else ("s\x00" + sess[i])
             for i in range(n)]
    return hash_keys(ukeys, sess, ips, ads, uas)


def _decay(counts: list[float], taus: Sequence[float], dt_s: float) -> None:
    for k, tau in enumerate(taus):
        counts[k] = counts[k] * math.exp(-dt_s / tau) + 1.0


class _Hll:
    __slots__ = ("bucket", "regs", "z", "v", "pz", "pv")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.regs = [0] * HLL_M
        self.z = float(HLL_M)
        self.v = float(HLL_M)
        self.pz = float(HLL_M)
        self.pv = float(HLL_M)

    def add(self, ts: int, window: int, idx: int, rank: int) -> tuple[float, float, float, float, float]:
        b = ts // window
        if b > self.bucket:
            if b == self.bucket + 1:
                self.pz, self.pv = self.z, self.v
            else:
                self.pz, self.pv = float(HLL_M), float(HLL_M)
            self.regs = [0] * HLL_M
            self.z, self.v = float(HLL_M), float(HLL_M)
            self.bucket = b
        r = self.regs[idx]
        if rank > r:
            self.z = self.z - 2.0 ** -r + 2.0 ** -rank
            if r == 0:
                self.v -= 1.0
            self.regs[idx] = rank
        frac = (ts - self.bucket * window) / window
        frac = min(max(frac, 0.0), 1.0)
        return self.z, self.v, self.pz, self.pv, frac


_HOUR_MS = HLL_WINDOWS_MS[0]
_HOURS_FULL = (1 << IP_HOURS) - 1


def hours_mask(mask: int, anchor: int, hour: int) -> int:
    """An IP's active-hours mask (bit k = a click in hour anchor - k, anchor = the hour of its
    newest click before this one) after a click in `hour`."""
    if hour > anchor:
        k = hour - anchor
        return 1 if k >= IP_HOURS else ((mask << k) & _HOURS_FULL) | 1
    if anchor - hour < IP_HOURS:
        return mask | (1 << (anchor - hour))
    return mask


def _welford(st: list[float], at: int, x: float) -> None:
    """Running (n, mean, M2) of x at st[at:at + 3]: n += 1; d = x - mean; mean += d / n;
    M2 += d * (x - mean)."""
    st[at] += 1.0
    delta = x - st[at + 1]
    st[at + 1] = st[at + 1] + delta / st[at]
    st[at + 2] = st[at + 2] + delta * (x - st[at + 1])


_ENTITY_ABSENT3 = list(ENTITY_ABSENT) * 3


class ReferenceStore:
    """Embedded counter store, reference implementation (dicts of Python lists)."""

    name = "reference"

    def __init__(self, max_keys: int = 0) -> None:
        """max_keys: keys per table at most (0 = no cap); at the cap a new key evicts the
        least recently seen key of its table (dicts kept in the order keys were last seen; the
        native store takes the least recently seen of a small sample, so the two agree below
        the cap)."""
        self.users: dict[int, list[float]] = {}
        self.sessions: dict[int, list[float]] = {}
        self.ips: dict[int, tuple[list[float], list[_Hll]]] = {}
        self.entities: dict[int, tuple[list[float], list[_Hll]]] = {}
        self.max_keys = max_keys
        self.evicted = 0

    def _get(self, table: dict[int, Any], key: int) -> Any:
        e = table.get(key)
        if e is not None and self.max_keys:  # seen now: to the end of the order
            table[key] = table.pop(key)
        return e

    def _room(self, table: dict[int, Any]) -> None:
        """Evict the least recently seen key when the table is at its cap."""
        if self.max_keys and len(table) >= self.max_keys:
            del table[next(iter(table))]
            self.evicted += 1

    def __len__(self) -> int:
        return len(self.users) + len(self.sessions) + len(self.ips) + len(self.entities)

    def update(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
               hll: np.ndarray, tz: np.ndarray | None = None,
               eh: np.ndarray | None = None, li: np.ndarray | None = None) -> np.ndarray:
        """tz: the clicks' tz_offset_min (None: 0 for every click); eh: uint64 (n, 3) entity
        keys (ad, (IP, ad), user agent; 0 = absent), None: no click has any; li: the clicks'
        logged_in flags (nonzero = logged in; None: 0 for every click)."""
        n = len(ts)
        out = np.empty((n, RAW_WIDTH), dtype=np.float64)
        for i in range(n):
            t = int(ts[i])
            row: list[float] = []
            # user: counts..., last, ln-gap n, mean, M2 (spec 4)
            nu = len(USER_TAUS)
            st = self._get(self.users, int(uh[i]))
            if st is None or t - st[nu] > USER_TTL_MS:
                if st is None:
                    self._room(self.users)
                st = [1.0] * nu + [float(t), 0.0, 0.0, 0.0]
                self.users[int(uh[i])] = st
                gap = -1.0
            else:
                d = max(t - int(st[nu]), 0)
                gap = d / 1000.0
                _decay(st, USER_TAUS, gap)
                st[nu] = float(max(int(st[nu]), t))
                if gap <= USER_LG_MAX_S:
                    _welford(st, nu + 1, math.log(gap if d > 0 else LOG_GAP_FLOOR_S))
            row += st[:nu] + [gap] + st[nu + 1:nu + 4]
            # session: counts..., last, first, sub-second gaps, ln-gap n, mean, M2
            ss = self._get(self.sessions, int(sh[i]))
            ns = len(SESSION_TAUS)
            if ss is None or t - ss[ns] > SESSION_TTL_MS:
                if ss is None:
                    self._room(self.sessions)
                ss = [1.0] * ns + [float(t), float(t), 0.0, 0.0, 0.0, 0.0]
                self.sessions[int(sh[i])] = ss
                gap = -1.0
            else:
                d = max(t - int(ss[ns]), 0)
                gap = d / 1000.0
                _decay(ss, SESSION_TAUS, gap)
                ss[ns] = float(max(int(ss[ns]), t))
                if d < SUBSEC_MS:
                    ss[ns + 2] += 1.0
                _welford(ss, ns + 3, math.log(gap if d > 0 else LOG_GAP_FLOOR_S))
            row += ss[:ns] + [gap, max(t - int(ss[ns + 1]), 0) / 1000.0] + ss[ns + 2:ns + 6]
            # ip
            ni = len(IP_TAUS)
            ent = self._get(self.ips, int(ih[i]))
            z = 0 if tz is None else int(tz[i])
            logged = 1.0 if li is not None and li[i] else 0.0
            if ent is None or t - ent[0][ni] > IP_TTL_MS:
                if ent is None:
                    self._room(self.ips)
                # counts..., last, active-hours mask, newest click's zone, zone switches,
                # logged-in clicks (spec 5; the first click counts, as in the counts)
                ent = ([1.0] * ni + [float(t), 0.0, float(z), 0.0, logged],
                       [_Hll(t // w) for w in HLL_WINDOWS_MS])
                self.ips[int(ih[i])] = ent
            else:
                c = ent[0]
                gap = max(t - int(c[ni]), 0) / 1000.0
                _decay(c, IP_TAUS, gap)
                c[ni + 3] = c[ni + 3] * math.exp(-gap / IP_TAUS[-1]) + (
                    1.0 if z != int(c[ni + 2]) else 0.0)
                c[ni + 4] = c[ni + 4] * math.exp(-gap / IP_TAUS[-1]) + logged
                if t >= int(c[ni]):
                    c[ni + 2] = float(z)
                c[ni] = float(max(int(c[ni]), t))
            # the hour HLLs' bucket is the hour of the IP's newest click so far
            mask = hours_mask(int(ent[0][ni + 1]), ent[1][0].bucket, t // _HOUR_MS)
            ent[0][ni + 1] = float(mask)
            row += ent[0][:ni] + [float(bin(mask).count("1"))]
            for j, w in enumerate(HLL_WINDOWS_MS):
                idx, rank = int(hll[i, 2 * (j % 2)]), int(hll[i, 2 * (j % 2) + 1])
                row += ent[1][j].add(t, w, idx, rank)
            row += [ent[0][ni + 3], ent[0][ni + 4]]
            # entities (spec 4): ad, (IP, ad), user agent; key 0 = absent
            if eh is None:
                row += _ENTITY_ABSENT3
            else:
                iidx, irank = hll_index_rank(int(ih[i]))
                for k in range(3):
                    row += self._entity(int(eh[i, k]), t, int(hll[i, 0]), int(hll[i, 1]),
                                        iidx, irank)
            out[i] = row
        return out

    def _entity(self, key: int, t: int, sidx: int, srank: int, iidx: int, irank: int
                ) -> list[float]:
        """Count one click on an entity key -> its ENTITY_RAW_WIDTH raw columns."""
        if key == 0:
            return list(ENTITY_ABSENT)
        ne = len(ENTITY_TAUS)
        ent = self._get(self.entities, key)
        if ent is None or t - ent[0][ne] > ENTITY_TTL_MS:
            if ent is None:
                self._room(self.entities)
            # counts..., last; HLLs of distinct sessions and distinct IPs (day buckets)
            ent = ([1.0] * ne + [float(t)],
                   [_Hll(t // ENTITY_WINDOW_MS), _Hll(t // ENTITY_WINDOW_MS)])
            self.entities[key] = ent
        else:
            c = ent[0]
            gap = max(t - int(c[ne]), 0) / 1000.0
            _decay(c, ENTITY_TAUS, gap)
            c[ne] = float(max(int(c[ne]), t))
        return (ent[0][:ne] + list(ent[1][0].add(t, ENTITY_WINDOW_MS, sidx, srank))
                + list(ent[1][1].add(t, ENTITY_WINDOW_MS, iidx, irank)))

    def stats(self) -> dict[str, int]:
        return {"users": len(self.users), "sessions": len(self.sessions), "ips": len(self.ips),
                "entities": len(self.entities), "max_keys": self.max_keys,
                "evicted": self.evicted}

    def close(self) -> None:
        pass
