"""Counter store on Redis Cluster: RedisStore's twin for a sharded Redis.

`RedisClusterStore(url)` discovers the cluster from the seed URL(s) (slidr/redis_topology.py),
splits each batch by owning node (slidr/redis_split.py), writes every node's request at once and
reads the replies together, so a batch costs one round trip of wall time however many nodes it
touches. The raw counters equal a single Redis's for the same clicks.

Faults, each bounded by timeout_s:
- a node answers that a key is not its own (slot moved by a reshard, or a master replaced):
  the slot map is read again and the affected part retried once; keys of a slot being migrated
  are located one by one (EXISTS answers -ASK with the importing node) and sent there after
  ASKING;
- a node down: the map is read again (a replica promoted in the meantime takes the part),
  else the batch fails with StoreUnavailable (the daemon fails open);
- NOSCRIPT: SCRIPT LOAD, then the part once more.

`Router` holds what the synchronous store and the daemon's asynchronous link
(slidrd/cluster_link.py) share: topology, key slots, plans and retry plans.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import hiredis
import numpy as np

from slidr import featurespec as fs
from slidr import redis_topology as rt
from slidr.redis_split import (
    ASKING,
    NKINDS,
    Builder,
    Part,
    Plan,
    build_parts,
    cluster_script,
    is_redirect,
    plan_batch,
    split_absent,
    without_absent,
)
from slidr.store_redis import KIND_TAGS, RedisStore, StoreUnavailable, resp_bulk

__all__ = ["RedisClusterStore", "Router", "open_redis_store"]


def _cmd(*parts: bytes | str) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(
        resp_bulk(p.encode() if isinstance(p, str) else p) for p in parts)


class Router:
    """Topology + plans for one key prefix on one cluster."""

    def __init__(self, seeds: Sequence[str], prefix: bytes, sha: str, argv_px: bytes,
                 topo: rt.Topology) -> None:
        self.seeds = list(seeds)
        self.prefix = prefix
        self.builder = Builder(prefix, sha, argv_px)
        self.heads = tuple(prefix + t for t in KIND_TAGS)
        self.epoch = 0
        self.topo = topo
        self.refreshed_at = time.monotonic()

    def set_topology(self, topo: rt.Topology) -> None:
        self.topo = topo
        self.epoch += 1
        self.refreshed_at = time.monotonic()

    def known_addrs(self) -> list[str]:
        """Every node ever seen (masters and replicas) then the seeds: where to ask for a map."""
        out = list(self.topo.addrs())
        for reps in self.topo.replicas.values():
            out += [a for a in reps if a not in out]
        for s in self.seeds:
            u = urlsplit(s)
            a = f"{u.hostname}:{u.port or 6379}"
            if a not in out:
                out.append(a)
        return out

    def plan(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
             hll: np.ndarray, tz: np.ndarray | None = None,
             eh: np.ndarray | None = None, li: np.ndarray | None = None) -> Plan:
        topo = self.topo

        def slot_node(k: int, keys: np.ndarray) -> np.ndarray:
            return topo.owner[rt.key_slots(self.heads[k], keys)]
        return plan_batch(self.builder, ts, (uh, sh, ih, eh), hll, slot_node, topo.addrs(),
                          self.epoch, tz, li)

    def key_name(self, kind: int, h: int) -> bytes:
        return self.heads[kind] + int(h).to_bytes(8, "big")

    def replan(self, plan: Plan, failed: Sequence[Part],
               located: dict[tuple[int, int], tuple[str, bool]] | None = None) -> list[Part]:
        """Parts for the keys of the failed parts, routed by the current map (and `located`:
        (kind, key index) -> (addr, ASKING needed) found by probing)."""
        addrs = list(plan.addrs)
        idx = {a: i for i, a in enumerate(addrs)}
        topo_addrs = self.topo.addrs()
        for a in topo_addrs:
            if a not in idx:
                idx[a] = len(addrs)
                addrs.append(a)
        active = [np.zeros(plan.keys[k].shape[0], dtype=bool) for k in range(NKINDS)]
        node = [x.copy() for x in plan.node]
        asking: set[str] = set()
        for part in failed:
            for k in range(NKINDS):
                sel = part.keys[k]
                active[k][sel] = True
                slots = rt.key_slots(self.heads[k], plan.keys[k][sel])
                owner = self.topo.owner[slots]
                mapped = np.array([idx[topo_addrs[o]] if o >= 0 else -1 for o in owner.tolist()],
                                  dtype=np.int64)
                node[k][sel] = mapped
        for (k, i), (addr, ask) in (located or {}).items():
            if addr not in idx:
                idx[addr] = len(addrs)
                addrs.append(addr)
            node[k][i] = idx[addr]
            if ask:
                asking.add(addr)
        if any((node[k][active[k]] < 0).any() for k in range(NKINDS)):
            raise StoreUnavailable("redis cluster: some slots have no master")
        plan.addrs = addrs
        plan.node = tuple(node)
        return build_parts(self.builder, plan, active, frozenset(asking))

    def unmoved(self, plan: Plan, failed: Sequence[Part]) -> list[tuple[int, int, str]]:
        """Keys of failed parts that the current map still puts on the node that refused them:
        (kind, key index, addr) -- a slot being migrated, where only probing tells."""
        out = []
        topo_addrs = self.topo.addrs()
        for part in failed:
            for k in range(NKINDS):
                sel = part.keys[k]
                if not sel.shape[0]:
                    continue
                owner = self.topo.owner[rt.key_slots(self.heads[k], plan.keys[k][sel])]
                for i, o in zip(sel.tolist(), owner.tolist(), strict=True):
                    if o >= 0 and topo_addrs[o] == part.addr:
                        out.append((k, i, part.addr))
        return out


def _sort_out(plan: Plan, parts: Sequence[Part], replies: Sequence[Any],
              errs: Sequence[str | None]) -> tuple[list[tuple[Part, Any]],
                                                   list[tuple[Part, str]]]:
    """Replies -> (answered parts with their rows, failed parts with why). A call that held
    only some of its keys answers for those; the others become a failed part of their own."""
    done: list[tuple[Part, Any]] = []
    failed: list[tuple[Part, str]] = []
    for p, r, e in zip(parts, replies, errs, strict=True):
        if e is not None:
            failed.append((p, e))
            continue
        rows, absent = split_absent(r)
        if absent:
            ok, missing = without_absent(plan, p, absent)
            done.append((ok, rows))
            failed.append((missing, f"non local key ({len(absent)} keys)"))
        else:
            done.append((p, rows))
    return done, failed


def parse_redirect(err: str) -> tuple[str, bool] | None:
    """'MOVED 3999 host:port' / 'ASK 3999 host:port' -> (addr, is_ask)."""
    parts = err.lstrip("-").split()
    if len(parts) == 3 and parts[0] in ("MOVED", "ASK"):
        return parts[2], parts[0] == "ASK"
    return None


class _Node:
    """A blocking connection to one node: raw socket + hiredis, AUTH and SCRIPT LOAD first."""

    def __init__(self, addr: str, password: str | None, username: str | None, src: str,
                 timeout_s: float) -> None:
        host, _, port = addr.rpartition(":")
        self.addr = addr
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.timeout_s = timeout_s
        hello = []
        if password is not None:
            hello.append(_cmd("AUTH", password) if username is None
                         else _cmd("AUTH", username, password))
        hello.append(_cmd("SCRIPT", "LOAD", src))
        self.send(b"".join(hello))
        for _ in hello:
            r = self.read()
            if isinstance(r, hiredis.ReplyError):
                raise OSError(f"{addr}: {r}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        while True:
            r = self.reader.gets()
            if r is not False:
                return r
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"{self.addr} closed the connection")
            self.reader.feed(chunk)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RedisClusterStore(RedisStore):
    """Counter store on Redis Cluster (redis:// or rediss:// seed URLs, comma-separated).

    Same interface as RedisStore: update() for synchronous callers (offline replay, tests,
    benches); request() returns a Plan and parse_reply() stitches the per-node replies for the
    daemon's asynchronous link (slidrd/cluster_link.py)."""

    name = "redis-cluster"

    def __init__(self, url: str | Sequence[str], prefix: str | bytes = "slidr:",
                 timeout_s: float = 0.05, connect_timeout_s: float | None = None,
                 ttl_slack_ms: int = 60_000, topology: rt.Topology | None = None,
                 refresh_min_s: float = 0.05) -> None:
        seeds = rt.split_seeds(url)
        if not seeds:
            raise rt.TopologyError("no redis cluster seed URL given")
        super().__init__(seeds[0], prefix=prefix, timeout_s=timeout_s,
                         connect_timeout_s=connect_timeout_s, ttl_slack_ms=ttl_slack_ms)
        self.seeds = seeds
        self.url = seeds[0]
        self._src = cluster_script()
        self._sha = hashlib.sha1(self._src.encode()).hexdigest()
        u = urlsplit(seeds[0])
        self.password = u.password
        self.username = u.username or None if u.password is not None else None
        self.connect_timeout_s = connect_timeout_s or max(timeout_s, 0.5)
        if rt.key_slot(self.prefix + b"u") == rt.key_slot(self.prefix + b"i") \
                and b"{" in self.prefix:
            logging.getLogger("slidr").warning(
                "redis prefix %r holds a hash tag: every counter key goes to one slot, one "
                "master (docs/cluster.md)", self.prefix.decode(errors="replace"))
        topo = topology or rt.discover(seeds, timeout_s=self.connect_timeout_s)
        self.router = Router(seeds, self.prefix, self._sha, self._argv_px, topo)
        self.refresh_min_s = refresh_min_s
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()  # one batch at a time on the per-node sockets
        self.retries = 0
        self.refreshes = 0

    # ------------------------------------------------------------------ daemon interface
    def request(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
                hll: np.ndarray, tz: np.ndarray | None = None,
                eh: np.ndarray | None = None, li: np.ndarray | None = None) -> Any:
        """The batch's Plan (per-node requests); slidrd/cluster_link.py sends it."""
        return self.router.plan(ts, uh, sh, ih, hll, tz, eh, li)

    def parse_reply(self, resp: Any, n: int) -> np.ndarray:
        """A ClusterReply (plan, per-part replies) or a plain script reply -> raw (n, RAW_WIDTH)."""
        if isinstance(resp, ClusterReply):
            rows = [super(RedisClusterStore, self).parse_reply(r, p.n)
                    for p, r in zip(resp.parts, resp.replies, strict=True)]
            raw = resp.plan.stitch(rows, resp.parts)
            if resp.lost is not None:
                raw[resp.lost] = np.nan
            return raw
        return super().parse_reply(resp, n)

    @property
    def script(self) -> tuple[str, str]:
        return self._src, self._sha

    def safe_url(self) -> str:
        return rt.safe(self.url) + (f" (+{len(self.seeds) - 1} seeds)" if len(self.seeds) > 1
                                    else "")

    # ------------------------------------------------------------------ synchronous path
    def _node(self, addr: str) -> _Node:
        c = self._nodes.get(addr)
        if c is None:
            c = _Node(addr, self.password, self.username, self._src, self.connect_timeout_s)
            self._nodes[addr] = c
        return c

    def _drop(self, addr: str) -> None:
        c = self._nodes.pop(addr, None)
        if c is not None:
            c.close()

    def _run(self, parts: Sequence[Part]) -> tuple[list[Any], list[str | None]]:
        """Write every part, then read every reply -> (replies, error text or None)."""
        replies: list[Any] = [None] * len(parts)
        errs: list[str | None] = [None] * len(parts)
        sent: list[bool] = [False] * len(parts)
        for j, p in enumerate(parts):
            try:
                c = self._node(p.addr)
                c.sock.settimeout(self.timeout_s)
                c.send(ASKING + p.req if p.asking else p.req)
                sent[j] = True
            except OSError as e:
                errs[j] = f"{type(e).__name__}: {e}"
                self._drop(p.addr)
        for j, p in enumerate(parts):
            if not sent[j]:
                continue
            try:
                c = self._nodes[p.addr]
                if p.asking:
                    c.read()
                r = c.read()
                if isinstance(r, hiredis.ReplyError) and str(r).startswith("NOSCRIPT"):
                    c.send(_cmd("SCRIPT", "LOAD", self._src)
                           + (ASKING + p.req if p.asking else p.req))
                    c.read()
                    if p.asking:
                        c.read()
                    r = c.read()
            except (OSError, KeyError) as e:
                errs[j] = f"{type(e).__name__}: {e}"
                self._drop(p.addr)
                continue
            if isinstance(r, hiredis.ReplyError):
                errs[j] = str(r)
            else:
                replies[j] = r
        return replies, errs

    def refresh(self) -> bool:
        """Read the slot map again from any known node (at most every refresh_min_s)."""
        if time.monotonic() - self.router.refreshed_at < self.refresh_min_s:
            return False
        urls = [rt.node_url(self.url, a) for a in self.router.known_addrs()]
        try:
            topo = rt.discover(urls, timeout_s=self.connect_timeout_s, require_full=False)
        except rt.TopologyError:
            self.router.refreshed_at = time.monotonic()
            return False
        self.router.set_topology(topo)
        self.refreshes += 1
        return True

    def _locate(self, plan: Plan, failed: Sequence[Part]) -> dict[tuple[int, int],
                                                                   tuple[str, bool]]:
        """EXISTS each key the map still puts on the node that refused it: -ASK/-MOVED say
        where it is now (a slot under migration)."""
        todo = self.router.unmoved(plan, failed)
        out: dict[tuple[int, int], tuple[str, bool]] = {}
        by_addr: dict[str, list[tuple[int, int]]] = {}
        for k, i, a in todo:
            by_addr.setdefault(a, []).append((k, i))
        for a, keys in by_addr.items():
            try:
                c = self._node(a)
                c.send(b"".join(_cmd("EXISTS", self.router.key_name(k, plan.keys[k][i]))
                                for k, i in keys))
                for k, i in keys:
                    r = c.read()
                    if isinstance(r, hiredis.ReplyError):
                        red = parse_redirect(str(r))
                        if red is not None:
                            out[(k, i)] = red
            except OSError:
                self._drop(a)
        return out

    def update(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
               hll: np.ndarray, tz: np.ndarray | None = None,
               eh: np.ndarray | None = None, li: np.ndarray | None = None) -> np.ndarray:
        with self._lock:
            return self._update(ts, uh, sh, ih, hll, tz, eh, li)

    def _update(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
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
        t0 = time.monotonic()
        plan = self.router.plan(ts, uh, sh, ih, hll, tz, eh, li)
        parts = plan.parts
        replies, errs = self._run(parts)
        done, failed = _sort_out(plan, parts, replies, errs)
        if failed:
            # Retry once (within the time left): a fresh map, keys located, the failed parts.
            self.retries += 1
            why = "; ".join(f"{p.addr}: {e}" for p, e in failed[:3])
            self.router.refreshed_at = min(self.router.refreshed_at, time.monotonic() - 1)
            self.refresh()
            fparts = [p for p, _ in failed]
            located = (self._locate(plan, fparts)
                       if any(is_redirect(e) for _, e in failed) else {})
            if time.monotonic() - t0 > self.timeout_s:
                raise StoreUnavailable(f"redis cluster: {why}")
            try:
                rparts = self.router.replan(plan, fparts, located)
            except StoreUnavailable as e:
                raise StoreUnavailable(f"redis cluster: {why} ({e})") from None
            r2, e2 = self._run(rparts)
            done2, bad = _sort_out(plan, rparts, r2, e2)
            if bad:
                raise StoreUnavailable("redis cluster: " + "; ".join(
                    f"{p.addr}: {e}" for p, e in bad[:3]))
            done += done2
        rows = [super(RedisClusterStore, self).parse_reply(r, p.n) for p, r in done]
        return plan.stitch(rows, [p for p, _ in done])

    # ------------------------------------------------------------------ admin
    def _each_master(self) -> list[Any]:
        import redis
        out = []
        for a in self.router.topo.addrs():
            out.append(redis.Redis.from_url(rt.node_url(self.url, a),
                                            socket_timeout=max(self.timeout_s, 1.0)))
        return out

    def ping(self) -> bool:
        with self._lock:
            for a in self.router.topo.addrs():
                try:
                    self._node(a).send(b"*1\r\n$4\r\nPING\r\n")
                    self._nodes[a].read()
                except OSError as e:
                    self._drop(a)
                    raise StoreUnavailable(f"redis cluster node {a} unavailable: {e}") from e
        return True

    def stats(self) -> dict[str, Any]:
        """Key counts under this prefix and memory, summed over the masters (SCAN: slow)."""
        counts = {"users": 0, "sessions": 0, "ips": 0, "entities": 0}
        mem = 0
        for r in self._each_master():
            try:
                mem += int(r.info("memory").get("used_memory", 0))
                for tag, name in ((b"u", "users"), (b"s", "sessions"), (b"i", "ips"),
                                  (b"e", "entities")):
                    counts[name] += sum(1 for _ in r.scan_iter(match=self.prefix + tag + b"*",
                                                               count=1000))
            except Exception as e:
                raise StoreUnavailable(f"redis cluster unavailable: {e}") from e
            finally:
                r.close()
        return {**counts, "keys": sum(counts.values()), "used_memory": mem,
                "nodes": len(self.router.topo.nodes)}

    def close(self) -> None:
        for a in list(self._nodes):
            self._drop(a)
        super().close()


class ClusterReply:
    """What slidrd/cluster_link.py hands the batcher: the plan and each part's reply, and
    `lost`: None, or a bool per click, True where a part with that click's key failed (a node
    down past the retry). parse_reply leaves those rows NaN; the batcher fails them open."""
    __slots__ = ("plan", "parts", "replies", "lost")

    def __init__(self, plan: Plan, parts: list[Part], replies: list[Any],
                 failed: Sequence[Part] = ()) -> None:
        self.plan = plan
        self.parts = parts
        self.replies = replies
        self.lost: np.ndarray | None = None
        if failed:
            lost = np.zeros(plan.n, dtype=bool)
            for p in failed:
                lost[p.clicks] = True
            self.lost = lost


def open_redis_store(url: str, mode: str = "auto", prefix: str | bytes = "slidr:",
                     timeout_s: float = 0.05, connect_timeout_s: float | None = None) -> Any:
    """RedisStore or RedisClusterStore for `url` by redis_mode (auto: ask the server).

    Raises redis_topology.TopologyError with a one-line reason when the mode does not fit."""
    if mode not in rt.REDIS_MODES:
        raise rt.TopologyError(f"redis mode must be one of {', '.join(rt.REDIS_MODES)}, "
                               f"not {mode!r}")
    seeds = rt.split_seeds(url)
    if mode == "standalone" or (mode == "auto" and url.startswith("unix://")):
        if len(seeds) > 1:
            raise rt.TopologyError("several redis URLs are only for a cluster "
                                   "(--redis-mode cluster or auto)")
        return RedisStore(url, prefix=prefix, timeout_s=timeout_s,
                          connect_timeout_s=connect_timeout_s)
    ct = connect_timeout_s or max(timeout_s, 0.5)
    if mode == "auto":
        cluster = False
        err: rt.TopologyError | None = None
        for s in seeds:
            try:
                cluster = rt.is_cluster(s, ct)
                err = None
                break
            except rt.TopologyError as e:
                err = e
        if err is not None:
            if len(seeds) > 1:
                raise err
            # One URL that does not answer: taken as a single Redis, which fails open until it
            # answers (a cluster whose seed may be down: redis_mode = cluster, several seeds).
            logging.getLogger("slidr").warning("%s; taken as a single Redis (redis_mode auto)",
                                               err)
            cluster = False
        if not cluster:
            if len(seeds) > 1:
                raise rt.TopologyError(f"redis at {rt.safe(seeds[0])} is not a cluster node, "
                                       f"but several URLs were given")
            return RedisStore(url, prefix=prefix, timeout_s=timeout_s,
                              connect_timeout_s=connect_timeout_s)
    return RedisClusterStore(seeds, prefix=prefix, timeout_s=timeout_s,
                             connect_timeout_s=connect_timeout_s)
