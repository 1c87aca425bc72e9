"""Redis Cluster topology: key slots (CRC16), the slot map, and discovery from seed URLs.

A cluster splits keys into 16384 slots: slot = CRC16-XMODEM(key) mod 16384, where a key with a
"{...}" hash tag (the first "{" and the first "}" after it, non-empty between) hashes only the
tag. slidr's keys are prefix + kind tag + 8 raw hash bytes, so the slots of a whole batch are
computed with numpy: the CRC of the constant prefix+tag once, then 8 table steps over the
hash bytes of every key at once. Raw bytes may themselves contain "{" and "}": those (rare)
keys are recomputed exactly in plain Python.

Discovery asks the seed nodes, in order, for CLUSTER SHARDS (Redis 7), falling back to CLUSTER
SLOTS, and keeps the first complete answer. `redis_mode` decides what a URL means: "cluster"
requires a cluster, "standalone" never asks, "auto" asks INFO cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from slidr import ext
from slidr.exits import BadInput

__all__ = ["SLOTS", "TopologyError", "Topology", "crc16", "key_slot", "key_slots", "key_slots_py",
           "discover", "is_cluster", "REDIS_MODES"]

SLOTS = 16384
REDIS_MODES = ("auto", "cluster", "standalone")


class TopologyError(BadInput):
    """The cluster could not be discovered or is not usable (one line, for the operator;
    exit 2 from a command)."""


def _table() -> np.ndarray:
    t = np.zeros(256, dtype=np.uint16)
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t[i] = c & 0xFFFF
    return t


_T = _table()
_TL = _T.tolist()
_T64 = _T.astype(np.int64)
_HEADS: dict[bytes, int] = {}


def _head_crc(head: bytes) -> int:
    c = _HEADS.get(head)
    if c is None:
        c = _HEADS[head] = crc16(head)
    return c


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC16-XMODEM (poly 0x1021, init 0), as Redis Cluster uses."""
    t = _TL
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[((crc >> 8) ^ b) & 0xFF]
    return crc


def _hash_part(key: bytes) -> bytes:
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            return key[s + 1:e]
    return key


def key_slot(key: bytes) -> int:
    """The cluster slot of one key (hash tags honoured), as CLUSTER KEYSLOT answers."""
    return crc16(_hash_part(key)) & (SLOTS - 1)


_native_slots = ext.slots_native.key_slots if ext.slots_native is not None else None


def key_slots(head: bytes, hashes: np.ndarray) -> np.ndarray:
    """Slots of the keys head + 8 big-endian bytes of each hash (uint64 array) -> int64 array.

    Same answer as key_slot() key by key (tests/test_cluster_topology.py checks it); in C when
    the extension is built, else key_slots_py."""
    if _native_slots is not None and len(head) <= 1000:
        return _native_slots(head, np.ascontiguousarray(hashes, dtype=np.uint64))
    return key_slots_py(head, hashes)


def key_slots_py(head: bytes, hashes: np.ndarray) -> np.ndarray:
    """key_slots in numpy (plain Python for a few keys): the reference of the native twin."""
    h = np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64).astype(">u8"))
    n = h.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    b = h.view(np.uint8).reshape(n, 8)
    if b"{" in head:
        # A tag in the prefix (or a "{" whose "}" may be in the hash bytes): key by key.
        return np.array([key_slot(head + row.tobytes()) for row in b], dtype=np.int64)
    c0 = _head_crc(head)
    if n <= 24:
        # A few keys (small batches: an idle daemon's): plain Python beats 40 numpy calls.
        t = _TL
        res = []
        raw = h.tobytes()
        for r in range(n):
            x = raw[8 * r:8 * r + 8]
            if 0x7B in x:
                res.append(key_slot(head + x))
                continue
            c = c0
            for v in x:
                c = ((c << 8) & 0xFFFF) ^ t[((c >> 8) ^ v) & 0xFF]
            res.append(c & (SLOTS - 1))
        return np.array(res, dtype=np.int64)
    crc = np.full(n, c0, dtype=np.int64)
    for j in range(8):
        crc = ((crc << 8) & 0xFFFF) ^ _T64[(crc >> 8) ^ b[:, j]]
    out = crc & (SLOTS - 1)
    # A "{" in the hash bytes followed later by "}" with something between: a hash tag.
    ob = b == 0x7B
    if ob[:, :7].any():
        for r in np.flatnonzero(ob[:, :7].any(axis=1)).tolist():
            out[r] = key_slot(head + b[r].tobytes())
    return out


@dataclass
class Node:
    host: str
    port: int
    node_id: str = ""

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Topology:
    """Which master serves each slot: owner[slot] = index into nodes (-1: nobody)."""
    nodes: list[Node]
    owner: np.ndarray
    replicas: dict[str, list[str]] = field(default_factory=dict)  # master addr -> replica addrs
    source: str = ""  # the seed that answered

    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def uncovered(self) -> list[tuple[int, int]]:
        """Slot ranges nobody serves, as (first, last)."""
        out: list[tuple[int, int]] = []
        miss = np.flatnonzero(self.owner < 0)
        if miss.size:
            starts = [int(miss[0])]
            ends = []
            for a, b in zip(miss[:-1].tolist(), miss[1:].tolist(), strict=True):
                if b != a + 1:
                    ends.append(a)
                    starts.append(b)
            ends.append(int(miss[-1]))
            out = list(zip(starts, ends, strict=True))
        return out

    def node_of(self, slots: np.ndarray) -> np.ndarray:
        return self.owner[slots]

    def describe(self) -> str:
        counts = np.bincount(self.owner[self.owner >= 0], minlength=len(self.nodes))
        return ", ".join(f"{n.addr} ({int(c)} slots)" for n, c in zip(self.nodes, counts,
                                                                        strict=True))


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def parse_shards(reply: Any, default_host: str) -> Topology:
    """CLUSTER SHARDS reply (RESP2: flat lists of name, value) -> Topology."""
    nodes: list[Node] = []
    index: dict[str, int] = {}
    owner = np.full(SLOTS, -1, dtype=np.int64)
    replicas: dict[str, list[str]] = {}
    for shard in reply:
        d = _pairs(shard)
        slots = [int(x) for x in d.get("slots", [])]
        master = None
        reps: list[str] = []
        for nd in d.get("nodes", []):
            nd = _pairs(nd)
            health = _s(nd.get("health", b"online"))
            host = _s(nd.get("ip") or nd.get("endpoint") or default_host)
            if host in ("", "?"):
                host = default_host
            port = int(nd.get("port") or nd.get("tls-port") or 0)
            node = Node(host, port, _s(nd.get("id", b"")))
            if _s(nd.get("role")) == "master" and health != "failed":
                master = node
            elif health == "online":
                reps.append(node.addr)
        if master is None or not slots:
            continue
        if master.addr not in index:
            index[master.addr] = len(nodes)
            nodes.append(master)
        replicas[master.addr] = reps
        for a, b in zip(slots[0::2], slots[1::2], strict=True):
            owner[a:b + 1] = index[master.addr]
    return Topology(nodes, owner, replicas)


def parse_slots(reply: Any, default_host: str) -> Topology:
    """CLUSTER SLOTS reply -> Topology."""
    nodes: list[Node] = []
    index: dict[str, int] = {}
    owner = np.full(SLOTS, -1, dtype=np.int64)
    replicas: dict[str, list[str]] = {}
    for row in reply:
        a, b = int(row[0]), int(row[1])
        host = _s(row[2][0]) or default_host
        if host == "?":
            host = default_host
        node = Node(host, int(row[2][1]), _s(row[2][2]) if len(row[2]) > 2 else "")
        if node.addr not in index:
            index[node.addr] = len(nodes)
            nodes.append(node)
        replicas.setdefault(node.addr, [f"{_s(r[0]) or default_host}:{int(r[1])}"
                                        for r in row[3:]])
        owner[a:b + 1] = index[node.addr]
    return Topology(nodes, owner, replicas)


def _pairs(x: Any) -> dict[str, Any]:
    if isinstance(x, dict):
        return {_s(k): v for k, v in x.items()}
    return {_s(k): v for k, v in zip(x[0::2], x[1::2], strict=True)}


def node_url(seed_url: str, addr: str) -> str:
    """The seed URL with its host:port replaced (scheme, user, password and db kept)."""
    u = urlsplit(seed_url)
    auth = ""
    if u.username or u.password:
        auth = (u.username or "") + (f":{u.password}" if u.password is not None else "") + "@"
    return urlunsplit((u.scheme, auth + addr, u.path, u.query, u.fragment))


def safe(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{':' + str(u.port) if u.port else ''}"


def split_seeds(url: str | Sequence[str]) -> list[str]:
    """'redis://a:1,redis://b:2' or 'redis://a:1,b:2' or a list -> seed URLs."""
    parts: list[str] = []
    for item in ([url] if isinstance(url, str) else list(url)):
        parts += [p.strip() for p in item.split(",") if p.strip()]
    if not parts:
        return []
    first = parts[0]
    return [p if "://" in p else node_url(first, p) for p in parts]


def _client(url: str, timeout_s: float) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0), decode_responses=False)


def is_cluster(url: str, timeout_s: float = 1.0) -> bool:
    """INFO cluster: cluster_enabled:1? Raises TopologyError when the node does not answer."""
    import redis
    r = _client(url, timeout_s)
    try:
        info = r.info("cluster")
    except (redis.exceptions.RedisError, OSError) as e:
        raise TopologyError(f"redis at {safe(url)} not reachable: {type(e).__name__}: {e}") from e
    finally:
        r.close()
    return bool(int(info.get("cluster_enabled", 0)))


def discover(seeds: str | Iterable[str], timeout_s: float = 1.0,
             require_full: bool = True) -> Topology:
    """Ask the seeds in order for the slot map; the first that answers wins.

    Raises TopologyError (one line) when no seed answers, a seed is not a cluster node, or
    (require_full) some slots are served by nobody."""
    import redis
    urls = split_seeds(seeds if isinstance(seeds, str) else list(seeds))
    if not urls:
        raise TopologyError("no redis cluster seed URL given")
    errors: list[str] = []
    for url in urls:
        host = urlsplit(url).hostname or "127.0.0.1"
        r = _client(url, timeout_s)
        try:
            try:
                topo = parse_shards(r.execute_command("CLUSTER", "SHARDS"), host)
            except redis.exceptions.ResponseError as e:
                if "disabled" in str(e).lower():
                    raise TopologyError(
                        f"redis at {safe(url)} is not a cluster node (cluster support disabled); "
                        f"use --redis-mode standalone, or give a cluster node's URL") from e
                topo = parse_slots(r.execute_command("CLUSTER", "SLOTS"), host)
        except TopologyError:
            raise
        except (redis.exceptions.RedisError, OSError) as e:
            errors.append(f"{safe(url)}: {type(e).__name__}: {e}")
            continue
        finally:
            r.close()
        topo.source = safe(url)
        if not topo.nodes:
            raise TopologyError(f"redis cluster at {safe(url)} serves no slots "
                                f"(not created yet? see docs/cluster.md)")
        gaps = topo.uncovered()
        if require_full and gaps:
            shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in gaps[:4])
            more = f" and {len(gaps) - 4} more ranges" if len(gaps) > 4 else ""
            missing = sum(b - a + 1 for a, b in gaps)
            raise TopologyError(f"redis cluster at {safe(url)} does not cover all slots: "
                                f"{missing} of {SLOTS} unserved ({shown}{more})")
        return topo
    raise TopologyError("no redis cluster seed answered: " + "; ".join(errors))
