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
    if native is not None and hasattr(native, "hash_keys"):
        h = native.hash_keys([f"user{x}" for x in u], [f"sess{x}" for x in s],
                             [f"10.{x >> 16}.{(x >> 8) & 255}.{x & 255}" for x in i])
    else:  # pragma: no cover - pure-Python twin
        from slidr.ext import reference
        h = reference.hash_keys([f"user{x}" for x in u], [f"sess{x}" for x in s],
                                [f"10.{x >> 16}.{(x >> 8) & 255}.{x & 255}" for x in i])
    return ts, tuple(h)


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


def measure(shards: int, batches: tuple[int, ...], clicks: int, seconds: float
            ) -> dict[str, Any]:
    from slidr.store_cluster import RedisClusterStore
    from slidr.testing.redis_cluster import RedisCluster

    out: dict[str, Any] = {}
    with RedisCluster(masters=shards, replicas=0) as c:
        ports = c.master_ports()
        for b in batches:
            ts, h = _stream(clicks, seed=b)
            store = RedisClusterStore(c.url, prefix=f"bench{b}:", timeout_s=5.0)
            try:
                store.update(ts[:b], *(x[:b] for x in h))  # connections and script loaded
                before = _counters(ports)
                t = time.perf_counter()
                done = 0
                while done + b <= clicks and time.perf_counter() - t < seconds:
                    store.update(ts[done:done + b], *(x[done:done + b] for x in h))
                    done += b
                wall = time.perf_counter() - t
                after = _counters(ports)
                # The client's split alone (what the daemon's loop spends per batch on top of
                # a single Redis's request): plan the same batches again, no I/O.
                t = time.perf_counter()
                for a in range(0, done, b):
                    store.request(ts[a:a + b], *(x[a:a + b] for x in h))
                plan_s = time.perf_counter() - t
            finally:
                store.close()
            d = {k: after[k] - before[k] for k in before}
            # The counters' own INFO calls add a few commands and bytes: negligible here.
            out[str(b)] = {
                "clicks": done,
                "clicks_per_s": round(done / wall),
                "script_calls_per_click": round(d["evalsha_calls"] / done, 4),
                "redis_commands_per_click": round(d["commands"] / done, 3),
                "bytes_per_click": round(d["net_bytes"] / done, 1),
                "script_us_per_click": round(d["evalsha_usec"] / done, 2),
                "redis_cpu_us_per_click": round(d["cpu_s"] * 1e6 / done, 2),
                "client_split_us_per_click": round(plan_s * 1e6 / done, 2),
            }
    return out


def run(shards: tuple[int, ...] = (1, 3), batches: tuple[int, ...] = BATCHES,
        clicks: int = 60_000, seconds: float = 3.0) -> dict[str, Any]:
    res: dict[str, Any] = {
        "what": "RedisClusterStore.update, one synchronous client, local cluster without "
                "replicas; per click, summed over the masters",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "caveat": "2 shared vCPUs: client, numpy and every redis-server compete, so clicks/s "
                  "is this box's, not a shard's; the per-click Redis CPU is what sizes a fleet",
        "shards": {},
    }
    for s in shards:
        res["shards"][str(s)] = measure(s, batches, clicks, seconds)
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
