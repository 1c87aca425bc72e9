"""One batch of clicks on Redis Cluster: split by owning node, one script call per node, stitched.

A click touches three keys (user, session, IP) that hash to unrelated slots, so on a cluster its
keys usually live on different nodes. The counter script's three parts are independent (the
user part reads only the user key, and so on), which is what lets a batch be split per key
rather than per click:

- the batch's distinct keys of each kind are mapped to the master serving their slot;
- each node involved gets one EVALSHA carrying the clicks that touch at least one of its keys,
  in click order, with position 0 for a kind whose key lives elsewhere (the script computes
  that part on a scratch state it never writes, and the client ignores it);
- all nodes' requests are written at once and awaited together (one round trip of wall time);
- the user columns of each click come from its user key's node, session and IP columns from
  theirs (`Plan.stitch`), so the raw counters equal a single Redis's.

Why keys are not colocated with hash tags: a "{user}" tag would pin a user's keys to one slot,
but a click's IP key is shared by many users, so no tag colocates all three; tagging by one
entity also concentrates a hot entity (a botnet's IP) on one node. Instead the script is
declared `#!lua flags=allow-cross-slot-keys` (Redis 7) and takes its key names in ARGV (keys
declared to EVALSHA must share one slot, keys a script touches with the flag need only share
its node). docs/cluster.md says more.

Request layout (cluster variant of slidr/store_redis.lua): EVALSHA sha 0, ARGV = nk, the nk key
names (users, sessions, IPs), then the standalone script's ARGV (click records, TTLs, nu, ns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidr import featurespec as fs
from slidr.store_redis import CLICK_DTYPE, CLICK_STRUCT, resp_bulk, script_source

__all__ = ["Plan", "Part", "cluster_script", "plan_batch", "KIND_TAGS", "KIND_COLS",
           "ASKING", "is_redirect", "split_absent", "without_absent"]

KIND_TAGS = (b"u", b"s", b"i")


def _kind_cols() -> tuple[np.ndarray, ...]:
    cols: list[list[int]] = [[], [], []]
    for name, i in fs.RAW_INDEX.items():
        cols[0 if name.startswith("u_") else 1 if name.startswith("s_") else 2].append(i)
    return tuple(np.array(c, dtype=np.intp) for c in cols)


# RAW columns each kind's key produces: user u_*, session s_*, IP the rest (i_*, HLL h*).
KIND_COLS = _kind_cols()

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
    on_ok: list[np.ndarray] = []
    on_miss: list[np.ndarray] = []
    off = 0
    for k in range(3):
        mine = pos[(pos >= off) & (pos < off + sizes[k])] - off
        mk = part.keys[k][mine]
        miss.append(mk)
        uses = np.isin(plan.pos[k][part.clicks], mk) & part.on[k]
        on_ok.append(part.on[k] & ~uses)
        on_miss.append(uses)
        off += sizes[k]
    ok = Part(part.addr, part.clicks, tuple(on_ok), part.keys, part.req, part.asking)
    cm = on_miss[0] | on_miss[1] | on_miss[2]
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
    on: tuple[np.ndarray, ...]    # per kind, bool over `clicks`: this node holds that key
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
    hll: np.ndarray
    tz: np.ndarray                 # the clicks' tz_offset_min (int16)
    keys: tuple[np.ndarray, ...]   # per kind: distinct key hashes (uint64)
    pos: tuple[np.ndarray, ...]    # per kind: each click's 0-based index into keys[kind]
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
        for part, r in zip(parts, rows, strict=True):
            for k in range(3):
                m = part.on[k]
                if m.any():
                    raw[np.ix_(part.clicks[m], KIND_COLS[k])] = r[np.ix_(m, KIND_COLS[k])]
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
        tags = (b"u", b"s", b"i")
        recs = b"".join(head + tags[k] + int(x).to_bytes(8, "big") + b"\r\n"
                        for k in range(3) for x in keys[k])
        nu, ns = len(keys[0]), len(keys[1])
        nk = nu + ns + len(keys[2])
        return b"".join((b"*%d" % (nk + 10), self.head, resp_bulk(b"%d" % nk), recs,
                         resp_bulk(clicks), self.argv_px, resp_bulk(b"%d" % nu),
                         resp_bulk(b"%d" % ns)))

    def request(self, keys: Sequence[np.ndarray], clicks: np.ndarray) -> bytes:
        """keys: per kind the node's distinct key hashes; clicks: CLICK_DTYPE records whose idx
        are 1-based positions into them (0: elsewhere) -> the EVALSHA command bytes."""
        nu, ns = int(keys[0].shape[0]), int(keys[1].shape[0])
        k = nu + ns + int(keys[2].shape[0])
        rec = np.empty((k, self.reclen), dtype=np.uint8)
        rec[:] = self.tmpl_row
        t = self.tag_at
        rec[:nu, t] = 117  # "u"
        rec[nu:nu + ns, t] = 115  # "s"
        rec[nu + ns:, t] = 105  # "i"
        allk = np.concatenate([np.asarray(x, dtype=np.uint64) for x in keys]).astype(">u8")
        rec[:, t + 1:t + 9] = allk.view(np.uint8).reshape(k, 8)
        return b"".join((b"*%d" % (k + 10), self.head, resp_bulk(b"%d" % k), rec.tobytes(),
                         resp_bulk(clicks.tobytes()), self.argv_px,
                         resp_bulk(b"%d" % nu), resp_bulk(b"%d" % ns)))


def plan_batch(builder: Builder, ts: np.ndarray, hashes: Sequence[np.ndarray], hll: np.ndarray,
               slot_node: Callable[[int, np.ndarray], np.ndarray], addrs: list[str],
               epoch: int = 0, tz: np.ndarray | None = None) -> Plan:
    """Split one batch: slot_node(kind, distinct key hashes) -> addr index of each key."""
    n = int(np.shape(ts)[0])
    keys: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    node: list[np.ndarray] = []
    for k in range(3):
        if n <= SMALL:
            d: dict[int, int] = {}
            p = np.array([d.setdefault(x, len(d)) for x in np.asarray(hashes[k]).tolist()],
                         dtype=np.int64)
            uk = np.array(list(d), dtype=np.uint64)
        else:
            uk, p = _dedup(hashes[k])
        keys.append(uk)
        pos.append(p)
        node.append(np.asarray(slot_node(k, uk), dtype=np.int64))
    plan = Plan(n, np.asarray(ts, dtype=np.float64), np.asarray(hll),
                np.zeros(n, np.int16) if tz is None else np.asarray(tz, dtype=np.int16),
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
    hll = [bytes(r) for r in np.asarray(plan.hll, dtype=np.uint8).reshape(n, 4)]
    tz = plan.tz.tolist()
    parts: list[Part] = []
    for a in sorted(set(node[0]) | set(node[1]) | set(node[2])):
        loc: list[dict[int, int]] = []
        sel: list[list[int]] = []
        for k in range(3):
            idx = [i for i, x in enumerate(node[k]) if x == a]
            sel.append(idx)
            loc.append({i: j + 1 for j, i in enumerate(idx)})
        clicks: list[int] = []
        on: list[list[bool]] = [[], [], []]
        recs: list[bytes] = []
        for c in range(n):
            li = [loc[k].get(pos[k][c], 0) for k in range(3)]
            if li[0] or li[1] or li[2]:
                clicks.append(c)
                for k in range(3):
                    on[k].append(li[k] > 0)
                recs.append(CLICK_STRUCT.pack(ts[c], *hll[c], *li, tz[c]))
        addr = plan.addrs[a]
        parts.append(Part(addr, np.array(clicks, dtype=np.intp),
                          tuple(np.array(x, dtype=bool) for x in on),
                          tuple(np.array(x, dtype=np.intp) for x in sel),
                          builder.request_small([[keys[k][i] for i in sel[k]] for k in range(3)],
                                                b"".join(recs))))
    return parts


def build_parts(builder: Builder, plan: Plan, active: Sequence[np.ndarray],
                asking: frozenset[str] = frozenset()) -> list[Part]:
    """The parts for the plan's keys where active[kind] is True (all of them for a new batch;
    the keys of the failed parts for a retry), grouped by plan.node."""
    parts: list[Part] = []
    used = np.unique(np.concatenate([plan.node[k][active[k]] for k in range(3)]))
    for a in used.tolist():
        sel = [active[k] & (plan.node[k] == a) for k in range(3)]
        click_on = [sel[k][plan.pos[k]] for k in range(3)]
        cmask = click_on[0] | click_on[1] | click_on[2]
        clicks = np.flatnonzero(cmask)
        rec = np.empty(clicks.shape[0], dtype=CLICK_DTYPE)
        rec["ts"] = plan.ts[clicks]
        rec["hll"] = plan.hll[clicks]
        rec["tz"] = plan.tz[clicks]
        nkeys = []
        for k in range(3):
            loc = np.cumsum(sel[k])  # 1-based position among this node's keys of the kind
            p = plan.pos[k][clicks]
            rec["idx"][:, k] = np.where(click_on[k][clicks], loc[p], 0)
            nkeys.append(plan.keys[k][sel[k]])
        addr = plan.addrs[a]
        parts.append(Part(addr, clicks, tuple(click_on[k][clicks] for k in range(3)),
                          tuple(np.flatnonzero(sel[k]) for k in range(3)),
                          builder.request(nkeys, rec), asking=addr in asking))
    return parts
