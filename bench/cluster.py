"""`slidr bench cluster`: the counter store on 1 vs 3 Redis Cluster shards, per click.

For each shard count a throwaway local cluster (masters only: replication traffic would blur
the client's bytes) is started; the same synthetic click stream (many users, sessions and IPs,
so keys are mostly distinct as in production) is pushed through RedisClusterStore.update in
batches of each size. Per click it reports, from the servers' own counters (INFO commandstats,
stats and cpu, summed over the masters, before and after):

- script calls (EVALSHA: one per node a batch touches) and Redis commands (the script's GET and
  SET included);
- bytes on the wire (total_net_input_bytes + total_net_output_bytes);
- Redis CPU: the scripts' time (commandstats usec of evalsha) and the whole process's
  (used_cpu_user + used_cpu_sys: networking and event loop included);
- the client's split (slot map, per-node requests) alone, per click;
- clicks/s of one synchronous client (bounded by this machine: on 2 shared cores the client,
  numpy and every redis-server compete, so read the CPU per click, not the rate).

docs/cluster.md turns these into a capacity plan.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

T0 = 1_767_225_600_000
BATCHES = (1, 16, 128)


def _stream(n: int, seed: int = 1) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    from slidr.kernel import native
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.integers(0, 3, n)).astype(np.float64)
    u = rng.integers(0, 200_000, n)
    s = u * 4 + rng.integers(0, 4, n)
    i = rng.integers(0, 40_000, n)
    # ads and user agents (spec 4's entity keys): 500 ads, a few user agents
    ads = [f"ad{x}" for x in rng.integers(0, 500, n)]
    uas = [f"UA/{x}" for x in rng.integers(0, 8, n)]
    if native is not None and hasattr(native, "hash_keys"):
        h = native.hash_keys([f"user{x}" for x in u], [f"sess{x}" for x in s],
                             [f"10.{x >> 16}.{(x >> 8) & 255}.{x & 255}" for x in i], ads, uas)
    else:  # pragma: no cover - pure-Python twin
        from slidr.ext import reference
        h = reference.hash_keys([f"user{x}" for x in u], [f"sess{x}" for x in s],
                                [f"10.{x >> 16}.{(x >> 8) & 255}.{x & 255}" for x in i], ads,
                                uas)
    # the clicks' time zones: mostly one per user, some users switching (spec 3's IP
    # zone-switch count does real work)
    tzs = np.array([-480, -300, 0, 60, 330, 540], dtype=np.int16)
    tz = tzs[(u + (rng.random(n) < 0.1)) % len(tzs)]
    # logged in: about half the users (spec 5's IP logged-in count does real work)
    li = (u % 2).astype(np.uint8)
    return ts, (*h[:4], tz, h[4], li)  # update()'s order: ..., hll, tz, eh, li


def _counters(ports: list[int]) -> dict[str, float]:
    import redis
    tot = {"evalsha_calls": 0.0, "evalsha_usec": 0.0, "commands": 0.0, "net_bytes": 0.0,
           "cpu_s": 0.0}
    for p in ports:
        r = redis.Redis(port=p, socket_timeout=5.0)
        try:
            cs = r.info("commandstats")
            st = r.info("stats")
            cpu = r.info("cpu")
        finally:
            r.close()
        for name, v in cs.items():
            if name in ("cmdstat_info", "cmdstat_config", "cmdstat_cluster"):
                continue
            tot["commands"] += float(v["calls"])
            if name == "cmdstat_evalsha":
                tot["evalsha_calls"] += float(v["calls"])
                tot["evalsha_usec"] += float(v["usec"])
        tot["net_bytes"] += float(st["total_net_input_bytes"]) + float(
            st["total_net_output_bytes"])
        tot["cpu_s"] += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return tot


def _point(store: Any, ports: list[int], ts: np.ndarray, h: tuple[np.ndarray, ...], off: int,
           b: int, seconds: float) -> tuple[dict[str, float], int]:
    """One measured point: batches of b from clicks[off:] for `seconds` -> (per-click, new off)."""
    store.update(ts[off:off + b], *(x[off:off + b] for x in h))  # connections, script loaded
    off += b
    start = off
    before = _counters(ports)
    t = time.perf_counter()
    while off + b <= ts.shape[0] and time.perf_counter() - t < seconds:
        store.update(ts[off:off + b], *(x[off:off + b] for x in h))
        off += b
    wall = time.perf_counter() - t
    after = _counters(ports)
    done = off - start
    # The client's split alone (what the daemon's loop spends per batch on top of a single
    # Redis's request): plan the same batches again, no I/O.
    t = time.perf_counter()
    for a in range(start, off, b):
        store.request(ts[a:a + b], *(x[a:a + b] for x in h))
    plan_s = time.perf_counter() - t
    d = {k: after[k] - before[k] for k in before}
    # The counters' own INFO calls add a few commands and bytes: negligible here.
    return {
        "clicks": done,
        "clicks_per_s": done / wall,
        "script_calls_per_click": d["evalsha_calls"] / done,
        "redis_commands_per_click": d["commands"] / done,
        "bytes_per_click": d["net_bytes"] / done,
        "script_us_per_click": d["evalsha_usec"] / done,
        "redis_cpu_us_per_click": d["cpu_s"] * 1e6 / done,
        "client_split_us_per_click": plan_s * 1e6 / done,
    }, off


_DIGITS = {"clicks": 0, "clicks_per_s": 0, "script_calls_per_click": 4,
           "redis_commands_per_click": 3, "bytes_per_click": 1, "script_us_per_click": 2,
           "redis_cpu_us_per_click": 2, "client_split_us_per_click": 2}


def run(shards: tuple[int, ...] = (1, 3), batches: tuple[int, ...] = BATCHES,
        clicks: int = 400_000, seconds: float = 3.0, rounds: int = 3) -> dict[str, Any]:
    """Every cluster is started first; the points are then measured in `rounds` rounds, each
    round visiting every (shards, batch) once for seconds/rounds, and the median kept: on a
    shared machine a slow minute then spreads over all the points instead of one."""
    from slidr.store_cluster import RedisClusterStore
    from slidr.testing.redis_cluster import RedisCluster

    res: dict[str, Any] = {
        "what": "RedisClusterStore.update, one synchronous client, local clusters without "
                "replicas; per click, summed over the masters; median of "
                f"{rounds} interleaved rounds",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "caveat": "2 shared vCPUs: client, numpy and every redis-server compete, so clicks/s "
                  "is this box's, not a shard's; the per-click Redis CPU is what sizes a fleet",
        "shards": {},
    }
    ts, h = _stream(clicks)
    clusters = []
    try:
        for s in shards:
            clusters.append(RedisCluster(masters=s, replicas=0).start())
        samples: dict[tuple[int, int], list[dict[str, float]]] = {}
        off = 0
        for r in range(rounds):
            for s, c in zip(shards, clusters, strict=True):
                for b in batches:
                    if off + 2 * b > clicks:
                        off = 0  # each point has its own key prefix: starting over is a fresh stream
                    store = RedisClusterStore(c.url, prefix=f"bench{r}:{b}:", timeout_s=5.0)
                    try:
                        pt, off = _point(store, c.master_ports(), ts, h, off, b,
                                         seconds / rounds)
                    finally:
                        store.close()
                    samples.setdefault((s, b), []).append(pt)
    finally:
        for c in clusters:
            c.stop()
    for s in shards:
        res["shards"][str(s)] = {}
        for b in batches:
            pts = samples[(s, b)]
            res["shards"][str(s)][str(b)] = {
                k: round(float(np.median([p[k] for p in pts])), nd) if nd else
                int(round(float(np.median([p[k] for p in pts])))) for k, nd in _DIGITS.items()}
    return res


def lines(res: dict[str, Any]) -> list[str]:
    out = [f"{'shards':>6} {'batch':>5} {'clicks/s':>9} {'scripts':>8} {'cmds':>6} "
           f"{'bytes':>7} {'script us':>9} {'redis cpu us':>12} {'split us':>8}   (per click)"]
    for s, by in res["shards"].items():
        for b, r in by.items():
            out.append(f"{s:>6} {b:>5} {r['clicks_per_s']:>9,} {r['script_calls_per_click']:>8} "
                       f"{r['redis_commands_per_click']:>6} {r['bytes_per_click']:>7} "
                       f"{r['script_us_per_click']:>9} {r['redis_cpu_us_per_click']:>12} "
                       f"{r['client_split_us_per_click']:>8}")
    return out


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    shards = list(res["shards"])
    batches = list(next(iter(res["shards"].values())))
    x = np.arange(len(batches))
    w = 0.8 / len(shards)
    for j, s in enumerate(shards):
        cpu = [res["shards"][s][b]["redis_cpu_us_per_click"] for b in batches]
        byt = [res["shards"][s][b]["bytes_per_click"] for b in batches]
        axes[0].bar(x + j * w, cpu, w, label=f"{s} shard{'s' if s != '1' else ''}")
        axes[1].bar(x + j * w, byt, w, label=f"{s} shard{'s' if s != '1' else ''}")
    for ax, title in ((axes[0], "Redis CPU per click (µs, all masters)"),
                      (axes[1], "bytes on the wire per click")):
        ax.set_xticks(x + w * (len(shards) - 1) / 2, [f"batch {b}" for b in batches])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(res: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res = dict(res, command=command)
    (out / "cluster.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, out / "cluster.png")
    (out / "README.md").write_text(
        "# Counter store on Redis Cluster: 1 vs 3 shards\n\n"
        f"Command: `{command}`\n\n" + res["what"] + ".\n\n" + res["caveat"] + ".\n\n"
        "```\n" + "\n".join(lines(res)) + "\n```\n\n![per click](cluster.png)\n")
