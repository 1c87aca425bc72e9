"""One batch of clicks on Redis Cluster: split by owning node, one script call per node, stitched.

A click touches up to six keys (user, session, IP, and the entity keys of its ad, (IP, ad)
pair and user agent) that hash to unrelated slots, so on a cluster its keys usually live on
different nodes. The counter script's parts are independent (the user part reads only the user
key, each entity part only its entity key, and so on), which is what lets a batch be split per
key rather than per click:

- the batch's distinct keys of each kind (user, session, IP, entity: the three entity columns
  of a click share one kind, "e") are mapped to the master serving their slot;
- each node involved gets one EVALSHA carrying the clicks that touch at least one of its keys,
  in click order, with position 0 for a key that lives elsewhere (a user, session or IP part
  is then computed on a scratch state the script never writes; an entity part is skipped, as
  for a click without that key) and the client ignores those columns;
- all nodes' requests are written at once and awaited together (one round trip of wall time);
- the user columns of each click come from its user key's node, session, IP and each entity
  kind's columns from theirs (`Plan.stitch`; a click without an ad or user agent gets the
  absent values), so the raw counters equal a single Redis's.

Why keys are not colocated with hash tags: a "{user}" tag would pin a user's keys to one slot,
but a click's IP key is shared by many users, so no tag colocates all three; tagging by one
entity also concentrates a hot entity (a botnet's IP) on one node. Instead the script is
declared `#!lua flags=allow-cross-slot-keys` (Redis 7) and takes its key names in ARGV (keys
declared to EVALSHA must share one slot, keys a script touches with the flag need only share
its node). docs/cluster.md says more.

Request layout (cluster variant of slidr/store_redis.lua): EVALSHA sha 0, ARGV = nk, the nk key
names (users, sessions, IPs, entities), then the standalone script's ARGV (click records, TTLs,
nu, ns, ni).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidr import featurespec as fs
from slidr.store_redis import (
    CLICK_DTYPE,
    CLICK_STRUCT,
    KIND_TAGS,
    _ip_index_rank1,
    ip_index_rank,
    li_flags,
    resp_bulk,
    script_source,
)

__all__ = ["Plan", "Part", "cluster_script", "plan_batch", "KIND_TAGS", "KIND_COLS",
           "SLOT_KIND", "ASKING", "is_redirect", "split_absent", "without_absent"]

# A click's key slots: user, session, IP, ad, (IP, ad), user agent; the kind (index into
# KIND_TAGS, and into a Plan's keys and node) of each.
SLOT_KIND = (0, 1, 2, 3, 3, 3)
NKINDS = len(KIND_TAGS)


def _slot_cols() -> tuple[np.ndarray, ...]:
    sp = fs.RAW_SPANS
    cols = [np.arange(*sp["user"]), np.arange(*sp["session"]), np.arange(*sp["ip"])]
    e0, w = sp["entity"][0], fs.ENTITY_RAW_WIDTH
    cols += [np.arange(e0 + w * j, e0 + w * (j + 1)) for j in range(3)]
    return tuple(c.astype(np.intp) for c in cols)


# RAW columns each key slot produces: user u_*, session s_*, IP i_* and HLL h*, then the 14
# columns of each entity kind (a_*, x_*, g_*).
KIND_COLS = _slot_cols()
_ENTITY_ABSENT = np.array(fs.ENTITY_ABSENT, dtype=np.float64)

ASKING = b"*1\r\n$6\r\nASKING\r\n"

_PROLOGUE = """#!lua flags=allow-cross-slot-keys
-- Redis Cluster variant (slidr/redis_split.py): ARGV = nk, the nk key names, then the
-- standalone script's ARGV. Keys in ARGV may span slots of this node (declared keys may not).
local KEYS, ARGV = (function(A)
  local nk = tonumber(A[1])
  local k, v = {}, {}
  for i = 1, nk do k[i] = A[i + 1] end
  for i = nk + 2, #A do v[#v + 1] = A[i] end
  return k, v
end)(ARGV)
-- A key this node does not hold (its slot moved, or is being migrated and the key already
-- left) is read as absent and never written; the reply then ends with "ABSENT:i,j,..." (the
-- keys' positions) and the client sends just those keys where they live now. Every other key
-- of the call is counted here, in order.
local ABSENT, SKIP, POS = {}, {}, {}
for i = 1, #KEYS do POS[KEYS[i]] = i end
local rcall, rpcall = redis.call, redis.pcall
local redis = {call = function(cmd, key, ...)
  if cmd == 'MGET' and select('#', ...) == 0 then
    local r = rpcall('GET', key)
    if type(r) == 'table' and r.err then
      ABSENT[#ABSENT + 1] = POS[key]
      SKIP[key] = true
      return {false}
    end
    return {r}
  elseif SKIP[key] then  -- a write (SET, SETRANGE) to a key this node does not hold
    return true
  end
  return rcall(cmd, key, ...)
end}
local function slidr_main()
"""

_EPILOGUE = """
end
local res = slidr_main()
if #ABSENT > 0 then res[#res + 1] = 'ABSENT:' .. table.concat(ABSENT, ',') end
return res
"""


def cluster_script() -> str:
    """The counter script for Redis Cluster: the flag, the ARGV prologue, one key per read,
    keys another node holds reported instead of failing the call."""
    return _PROLOGUE + script_source(mget_chunk=1) + _EPILOGUE


def split_absent(reply: Any) -> tuple[Any, list[int]]:
    """A cluster script reply -> (the rows, 1-based positions of the keys it did not hold)."""
    if isinstance(reply, list) and reply and isinstance(reply[-1], bytes) \
            and reply[-1].startswith(b"ABSENT:"):
        return reply[:-1], [int(x) for x in reply[-1][7:].split(b",")]
    return reply, []


def without_absent(plan: Plan, part: Part, absent: Sequence[int]) -> tuple[Part, Part]:
    """Split a part whose call reported keys absent -> (the part as answered, its counters
    valid only for the keys it held; a part of the absent keys, to send where they live)."""
    sizes = [int(x.shape[0]) for x in part.keys]
    pos = np.asarray(absent, dtype=np.int64) - 1
    miss: list[np.ndarray] = []
    off = 0
    for k in range(NKINDS):
        mine = pos[(pos >= off) & (pos < off + sizes[k])] - off
        miss.append(part.keys[k][mine])
        off += sizes[k]
    on_ok: list[np.ndarray] = []
    on_miss: list[np.ndarray] = []
    for c, k in enumerate(SLOT_KIND):
        uses = np.isin(plan.pos[c][part.clicks], miss[k]) & part.on[c]
        on_ok.append(part.on[c] & ~uses)
        on_miss.append(uses)
    ok = Part(part.addr, part.clicks, tuple(on_ok), part.keys, part.req, part.asking)
    cm = np.logical_or.reduce(on_miss)
    missing = Part(part.addr, part.clicks[cm], tuple(x[cm] for x in on_miss), tuple(miss), b"")
    return ok, missing


def _dedup(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (distinct values sorted, 0-based position of each element among them)."""
    h = np.asarray(h, dtype=np.uint64)
    order = h.argsort(kind="stable")
    srt = h[order]
    first = np.empty(srt.shape[0], dtype=bool)
    if srt.shape[0]:
        first[0] = True
        np.not_equal(srt[1:], srt[:-1], out=first[1:])
    pos = np.empty(h.shape[0], dtype=np.int64)
    pos[order] = first.cumsum() - 1
    return srt[first], pos


def is_redirect(err: str) -> bool:
    """A reply error that means 'this key is not (or no longer) served here'."""
    e = err.lstrip("-")
    return e.startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")) or "non local key" in e


@dataclass
class Part:
    """One node's share of a batch."""
    addr: str
    clicks: np.ndarray            # click indices (ascending: click order)
    on: tuple[np.ndarray, ...]    # per key slot (SLOT_KIND), bool over `clicks`: this node
    #                               holds the click's key of that slot
    keys: tuple[np.ndarray, ...]  # per kind, indices of the batch's distinct keys sent here
    req: bytes
    asking: bool = False

    @property
    def n(self) -> int:
        return int(self.clicks.shape[0])


@dataclass
class Plan:
    """A batch split over the cluster: what to send where, and how to stitch the replies."""
    n: int
    ts: np.ndarray
    hll: np.ndarray                # (n, 6) uint8: the 4 HLL bytes, the IP hash's register, rank
    tz: np.ndarray                 # the clicks' tz_offset_min (int16)
    li: np.ndarray                 # the clicks' logged_in flags (uint8 0/1)
    keys: tuple[np.ndarray, ...]   # per kind: distinct key hashes (uint64; entities without 0)
    pos: tuple[np.ndarray, ...]    # per key slot: each click's 0-based index into
    #                                keys[SLOT_KIND[slot]], -1 for an absent entity key
    node: tuple[np.ndarray, ...]   # per kind: addr index of each distinct key
    addrs: list[str]
    parts: list[Part] = field(default_factory=list)
    epoch: int = 0                 # topology epoch the plan was made with

    def stitch(self, rows: Sequence[np.ndarray], parts: Sequence[Part] | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """Each part's raw counters (n_part, RAW_WIDTH) -> the batch's (n, RAW_WIDTH), in
        click order."""
        parts = self.parts if parts is None else parts
        raw = np.zeros((self.n, fs.RAW_WIDTH), dtype=np.float64) if out is None else out
        for c in range(3, len(SLOT_KIND)):  # clicks without that entity key
            m = self.pos[c] < 0
            if m.any():
                raw[np.ix_(m, KIND_COLS[c])] = _ENTITY_ABSENT
        for part, r in zip(parts, rows, strict=True):
            for c in range(len(SLOT_KIND)):
                m = part.on[c]
                if m.any():
                    raw[np.ix_(part.clicks[m], KIND_COLS[c])] = r[np.ix_(m, KIND_COLS[c])]
        return raw


class Builder:
    """Builds the per-node EVALSHA requests of the cluster script (numpy, no per-key objects)."""

    def __init__(self, prefix: bytes, sha: str, argv_px: bytes) -> None:
        self.prefix = prefix
        klen = len(prefix) + 9
        self.rec_head = b"$%d\r\n" % klen + prefix
        self.tag_at = len(self.rec_head)
        self.reclen = self.tag_at + 11
        self.head = b"\r\n$7\r\nEVALSHA\r\n" + resp_bulk(sha.encode()) + resp_bulk(b"0")
        self.argv_px = argv_px
        self.tmpl_row = np.frombuffer(self.rec_head + b"?" + b"\0" * 8 + b"\r\n", dtype=np.uint8)

    def request_small(self, keys: Sequence[Sequence[int]], clicks: bytes) -> bytes:
        """request() from plain lists of key hashes and packed click records."""
        head = self.rec_head
        recs = b"".join(head + KIND_TAGS[k] + int(x).to_bytes(8, "big") + b"\r\n"
                        for k in range(NKINDS) for x in keys[k])
        nu, ns, ni = len(keys[0]), len(keys[1]), len(keys[2])
        nk = nu + ns + ni + len(keys[3])
        return b"".join((b"*%d" % (nk + 12), self.head, resp_bulk(b"%d" % nk), recs,
                         resp_bulk(clicks), self.argv_px, resp_bulk(b"%d" % nu),
                         resp_bulk(b"%d" % ns), resp_bulk(b"%d" % ni)))

    def request(self, keys: Sequence[np.ndarray], clicks: np.ndarray) -> bytes:
        """keys: per kind the node's distinct key hashes; clicks: CLICK_DTYPE records whose idx
        are 1-based positions into them (0: elsewhere) -> the EVALSHA command bytes."""
        nu, ns, ni = int(keys[0].shape[0]), int(keys[1].shape[0]), int(keys[2].shape[0])
        k = nu + ns + ni + int(keys[3].shape[0])
        rec = np.empty((k, self.reclen), dtype=np.uint8)
        rec[:] = self.tmpl_row
        t = self.tag_at
        rec[:nu, t] = 117  # "u"
        rec[nu:nu + ns, t] = 115  # "s"
        rec[nu + ns:nu + ns + ni, t] = 105  # "i"
        rec[nu + ns + ni:, t] = 101  # "e"
        allk = np.concatenate([np.asarray(x, dtype=np.uint64) for x in keys]).astype(">u8")
        rec[:, t + 1:t + 9] = allk.view(np.uint8).reshape(k, 8)
        return b"".join((b"*%d" % (k + 12), self.head, resp_bulk(b"%d" % k), rec.tobytes(),
                         resp_bulk(clicks.tobytes()), self.argv_px,
                         resp_bulk(b"%d" % nu), resp_bulk(b"%d" % ns), resp_bulk(b"%d" % ni)))


def plan_batch(builder: Builder, ts: np.ndarray, hashes: Sequence[np.ndarray | None],
               hll: np.ndarray, slot_node: Callable[[int, np.ndarray], np.ndarray],
               addrs: list[str], epoch: int = 0, tz: np.ndarray | None = None,
               li: np.ndarray | None = None) -> Plan:
    """Split one batch: hashes = (uh, sh, ih, eh: (n, 3) entity keys, 0 = absent, or None);
    slot_node(kind, distinct key hashes) -> addr index of each key; tz, li: the clicks' time
    zones and logged_in flags (None: 0 for every click)."""
    n = int(np.shape(ts)[0])
    keys: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    node: list[np.ndarray] = []
    eh = hashes[3] if len(hashes) > 3 else None
    cols: list[tuple[np.ndarray, np.ndarray | None]] = [
        (np.asarray(hashes[k]), None) for k in range(3)]
    if eh is None:
        cols.append((np.zeros(0, np.uint64), None))
    else:
        e = np.asarray(eh, dtype=np.uint64).reshape(-1)
        nz = e != 0
        cols.append((e[nz], nz))
    for k, (h, nz) in enumerate(cols):
        if n <= SMALL:
            d: dict[int, int] = {}
            p = np.array([d.setdefault(x, len(d)) for x in h.tolist()], dtype=np.int64)
            uk = np.array(list(d), dtype=np.uint64)
        else:
            uk, p = _dedup(h)
        keys.append(uk)
        if k < 3:
            pos.append(p)
        else:
            flat = np.full(3 * n, -1, dtype=np.int64)
            if nz is not None:
                flat[nz] = p
            pos += [np.ascontiguousarray(flat.reshape(n, 3)[:, j]) for j in range(3)]
        node.append(np.asarray(slot_node(k, uk), dtype=np.int64))
    hll6 = np.empty((n, 6), dtype=np.uint8)
    hll6[:, :4] = np.asarray(hll, dtype=np.uint8).reshape(n, 4)
    hll6[:, 4:] = ip_index_rank(np.asarray(hashes[2], dtype=np.uint64)) if n > SMALL else [
        _ip_index_rank1(x) for x in np.asarray(hashes[2], dtype=np.uint64).tolist()]
    plan = Plan(n, np.asarray(ts, dtype=np.float64), hll6,
                np.zeros(n, np.int16) if tz is None else np.asarray(tz, dtype=np.int16),
                li_flags(li, n),
                tuple(keys), tuple(pos), tuple(node), list(addrs), epoch=epoch)
    if n <= SMALL:
        plan.parts = build_parts_small(builder, plan)
    else:
        plan.parts = build_parts(builder, plan, [np.ones(x.shape[0], dtype=bool) for x in keys])
    return plan


# Batches up to this size are split in plain Python (build_parts_small): on a few clicks the
# ~60 numpy calls of build_parts cost more than the whole round trip.
SMALL = 16


def build_parts_small(builder: Builder, plan: Plan) -> list[Part]:
    """build_parts for every key of a small plan, in plain Python (the same requests)."""
    n = plan.n
    node = [x.tolist() for x in plan.node]
    pos = [x.tolist() for x in plan.pos]
    keys = [x.tolist() for x in plan.keys]
    ts = plan.ts.tolist()
    hll = [bytes(r) for r in plan.hll]
    tz = plan.tz.tolist()
    lf = plan.li.tolist()
    slots = list(enumerate(SLOT_KIND))
    parts: list[Part] = []
    for a in sorted(set().union(*node)):
        loc: list[dict[int, int]] = []
        sel: list[list[int]] = []
        for k in range(NKINDS):
            idx = [i for i, x in enumerate(node[k]) if x == a]
            sel.append(idx)
            loc.append({i: j + 1 for j, i in enumerate(idx)})
        clicks: list[int] = []
        on: list[list[bool]] = [[] for _ in SLOT_KIND]
        recs: list[bytes] = []
        for c in range(n):
            li = [loc[k].get(pos[j][c], 0) for j, k in slots]
            if any(li):
                clicks.append(c)
                for j in range(len(li)):
                    on[j].append(li[j] > 0)
                recs.append(CLICK_STRUCT.pack(ts[c], *hll[c], *li, tz[c], lf[c]))
        addr = plan.addrs[a]
        parts.append(Part(addr, np.array(clicks, dtype=np.intp),
                          tuple(np.array(x, dtype=bool) for x in on),
                          tuple(np.array(x, dtype=np.intp) for x in sel),
                          builder.request_small([[keys[k][i] for i in sel[k]]
                                                 for k in range(NKINDS)], b"".join(recs))))
    return parts


def build_parts(builder: Builder, plan: Plan, active: Sequence[np.ndarray],
                asking: frozenset[str] = frozenset()) -> list[Part]:
    """The parts for the plan's keys where active[kind] is True (all of them for a new batch;
    the keys of the failed parts for a retry), grouped by plan.node."""
    parts: list[Part] = []
    used = np.unique(np.concatenate([plan.node[k][active[k]] for k in range(NKINDS)]))
    for a in used.tolist():
        sel = [active[k] & (plan.node[k] == a) for k in range(NKINDS)]
        loc = [np.cumsum(x) for x in sel]  # 1-based position among this node's keys of the kind
        click_on = []
        for c, k in enumerate(SLOT_KIND):
            p = plan.pos[c]
            if sel[k].shape[0] == 0:
                click_on.append(np.zeros(plan.n, dtype=bool))
            else:
                click_on.append((p >= 0) & sel[k][np.maximum(p, 0)])
        cmask = np.logical_or.reduce(click_on)
        clicks = np.flatnonzero(cmask)
        rec = np.empty(clicks.shape[0], dtype=CLICK_DTYPE)
        rec["ts"] = plan.ts[clicks]
        rec["hll"] = plan.hll[clicks, :4]
        rec["ihll"] = plan.hll[clicks, 4:]
        rec["tz"] = plan.tz[clicks]
        rec["li"] = plan.li[clicks]
        for c, k in enumerate(SLOT_KIND):
            if sel[k].shape[0] == 0:
                rec["idx"][:, c] = 0
            else:
                p = np.maximum(plan.pos[c][clicks], 0)
                rec["idx"][:, c] = np.where(click_on[c][clicks], loc[k][p], 0)
        nkeys = [plan.keys[k][sel[k]] for k in range(NKINDS)]
        addr = plan.addrs[a]
        parts.append(Part(addr, clicks, tuple(x[clicks] for x in click_on),
                          tuple(np.flatnonzero(x) for x in sel),
                          builder.request(nkeys, rec), asking=addr in asking))
    return parts
