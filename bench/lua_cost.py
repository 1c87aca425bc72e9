"""What the counter script costs redis-server per click, from Redis's own accounting.

`INFO commandstats` gives the time redis-server spent inside each EVALSHA (the Lua script and
the commands it calls, not the network), so usec_per_call / clicks per call is the script's
CPU per click, undisturbed by the client. Batches of generated clicks go through
slidr.store_redis.RedisStore on a throwaway redis-server (each script on its own server, the
same clicks to each). On a shared machine the minimum over many short blocks of calls is the
stable figure (other jobs only ever add time); the inner commands (MGET, SET) are reported per
call too.

With --against FILE the same clicks also run through the script in FILE (another version of
slidr/store_redis.lua), interleaved block by block, and the replies of the two are compared
(they must be identical: a change to how the script reads and writes state must not change a
counter).

    python -m slidr.bench.lua_cost [--against OLD.lua] [--sizes 1,4,16,64] [--reps 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np


def _store(url: str, source: str | None) -> Any:
    """A RedisStore on `url` whose script is `source` (a .lua text), or the current one."""
    import slidr.store_redis as sr
    if source is None:
        return sr.RedisStore(url)
    real = Path.read_text  # script_source() reads store_redis.lua with it

    def read_text(self: Path, *a: Any, **k: Any) -> str:
        return source if self.name == "store_redis.lua" else real(self, *a, **k)
    setattr(Path, "read_text", read_text)  # noqa: B010
    try:
        return sr.RedisStore(url)
    finally:
        setattr(Path, "read_text", real)  # noqa: B010


def run(sizes: tuple[int, ...] = (1, 4, 16, 64), reps: int = 12, against: str | None = None,
        spacing_ms: int = 40, cpus: str | None = None) -> dict[str, Any]:
    import redis
    from slidr.bench.clicks import make_clicks

    from slidr.contract import ClickBatch
    from slidr.kernel import hash_keys
    from slidr.testing.redis_server import RedisServer

    scripts: dict[str, str | None] = {"current": None}
    if against is not None:
        scripts["against"] = Path(against).read_text()
    servers = {name: RedisServer(cpus=cpus).start() for name in scripts}
    try:
        stores = {name: _store(servers[name].url, src) for name, src in scripts.items()}
        clients = {name: redis.Redis.from_url(servers[name].url) for name in scripts}
        pool, _src = make_clicks(20_000)
        ts0 = 1_767_225_600_000
        k = 0
        per_call: dict[tuple[str, int], list[float]] = {(n, b): [] for n in scripts for b in sizes}
        inner: dict[tuple[str, int], dict[str, Any]] = {}
        replies: dict[str, list[np.ndarray]] = {n: [] for n in scripts}
        for rep in range(reps):
            for b in sizes:
                calls = max(20, 400 // b)
                batches = []
                for _ in range(calls):
                    cl = []
                    for _ in range(b):
                        cl.append({**pool[k % len(pool)], "ts": ts0 + spacing_ms * k})
                        k += 1
                    batch = ClickBatch.from_clicks(cl)
                    batches.append((batch, hash_keys(batch, True)))
                names = list(scripts) if rep % 2 == 0 else list(scripts)[::-1]
                for name in names:
                    clients[name].config_resetstat()
                    for batch, (uh, sh, ih, hll) in batches:
                        replies[name].append(stores[name].update(batch.ts, uh, sh, ih, hll))
                    cs = clients[name].info("commandstats")
                    per_call[(name, b)].append(float(cs["cmdstat_evalsha"]["usec_per_call"]))
                    inner[(name, b)] = {
                        key[len("cmdstat_"):]: {"calls_per_evalsha": v["calls"] / calls,
                                                "usec_per_call": v["usec_per_call"]}
                        for key, v in cs.items()
                        if key in ("cmdstat_mget", "cmdstat_set")}
        out: dict[str, Any] = {"sizes": list(sizes), "reps": reps, "scripts": {}}
        for name in scripts:
            out["scripts"][name] = {
                str(b): {"usec_per_call_min": min(per_call[(name, b)]),
                         "usec_per_call_median": statistics.median(per_call[(name, b)]),
                         "usec_per_click_min": min(per_call[(name, b)]) / b,
                         "inner": inner[(name, b)]} for b in sizes}
        if against is not None:
            a = np.concatenate(replies["current"])
            o = np.concatenate(replies["against"])
            out["replies_identical"] = bool(a.shape == o.shape and np.array_equal(a, o))
        return out
    finally:
        for s in servers.values():
            s.stop()


def lines(res: dict[str, Any]) -> list[str]:
    out = []
    for name, per in res["scripts"].items():
        out.append(f"{name}: " + "; ".join(
            f"batch {b}: {v['usec_per_call_min']:.1f} us/call = {v['usec_per_click_min']:.2f} "
            f"us/click" for b, v in per.items()))
    if "against" in res["scripts"]:
        cur, old = res["scripts"]["current"], res["scripts"]["against"]
        out.append("current / against: " + ", ".join(
            f"batch {b} {cur[b]['usec_per_call_min'] / old[b]['usec_per_call_min']:.2f}"
            for b in cur))
        out.append(f"replies identical: {res['replies_identical']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slidr.bench.lua_cost")
    p.add_argument("--sizes", default="1,4,16,64")
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--against", help="another version of store_redis.lua to compare with")
    p.add_argument("--cpus", help="pin the redis-servers to these CPUs")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run(tuple(int(x) for x in a.sizes.split(",")), a.reps, a.against, cpus=a.cpus)
    print(json.dumps(res, indent=1) if a.json else "\n".join(lines(res)))
    return 0 if res.get("replies_identical", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
