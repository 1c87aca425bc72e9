"""What one micro-batch costs the daemon: a fixed part per batch and a marginal part per click.

A real slidrd (same Daemon, connection, batcher, kernel, model and answer code) runs in this
process; each measured batch is `b` pre-encoded `score` frames handed to one connection's
data_received in one call (one socket read), then the loop runs until all `b` are answered by
the model: embedded store (inline) and a throwaway redis-server on loopback (one round trip per
batch). Per batch size the median of many such batches is kept: wall time and this thread's CPU
time; a least-squares line over the batch sizes splits the CPU into fixed cost per batch and
marginal cost per click. Redis mode also reports the redis-server's own CPU per click (from
/proc), which is the Lua script's work.

`perf stat` instruction counts are less noisy than times on a shared machine: with
--instructions N, each (store, batch size) runs N batches in a child process under
`perf stat -e instructions` and again with no batches; the difference / N is instructions per
batch. Where perf cannot count instructions (most VMs), those columns are left out.
With decision_log=True the daemon writes its decision log (as production does), so the cost of
the per-click records is in the numbers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .cost import Sink
from .side import cpu_s

BATCHES = (1, 4, 64, 512)


async def _measure(store: str, sizes: tuple[int, ...], seconds: float,
                   count: int | None = None, decision_log: bool = False) -> dict[str, Any]:
    """-> {b: {...}} for each batch size; `count` runs exactly that many batches per size
    (instruction counting) instead of `seconds` per size."""
    from slidr.bench.clicks import frame, make_clicks, pack_prefixes
    from slidr.bench.daemon import tiny_registry
    from slidr.slidrd.config import Config
    from slidr.slidrd.server import Daemon, PublicConnection

    root = Path(tempfile.mkdtemp(prefix="slidr-batch-cost-"))
    redis = None
    try:
        kw: dict[str, Any] = {}
        if store == "redis":
            from slidr.testing.redis_server import RedisServer
            redis = RedisServer().start()
            kw["redis"] = redis.url
        if decision_log:
            kw["decision_log"] = str(root / "decisions")
        cfg = Config(registry=str(tiny_registry(root)), port=0, metrics_port=-1,
                     max_batch=max(sizes), deadline_ms=60_000.0, **kw)
        d = Daemon(cfg)
        await d.start()
        try:
            pool, _src = make_clicks(4096)
            prefixes = pack_prefixes(pool)
            conn = PublicConnection(d)
            conn.connection_made(Sink())  # type: ignore[arg-type]
            decided = d.metrics.decisions
            seq = [0]

            def frames(b: int) -> bytes:
                i0 = seq[0]
                seq[0] += b
                return b"".join(frame(i & 0xFFFFFFFF, prefixes[i % len(prefixes)],
                                      1_767_225_600_000 + 3 * i) for i in range(i0, i0 + b))

            # Done when the connection flushes the batch's last answer: no polling, so a batch
            # waiting on Redis costs this thread no CPU.
            state: dict[str, Any] = {"want": 0, "done": None}
            flush = conn.flush

            def flush_and_check() -> None:
                flush()
                if sum(decided.values()) >= state["want"] and state["done"] is not None \
                        and not state["done"].done():
                    state["done"].set_result(None)
            conn.flush = flush_and_check  # type: ignore[method-assign]
            loop = asyncio.get_running_loop()

            async def one(buf: bytes, b: int) -> tuple[int, int]:
                state["want"] = sum(decided.values()) + b
                state["done"] = loop.create_future()
                t = time.perf_counter_ns()
                c = time.thread_time_ns()
                conn.data_received(buf)
                await asyncio.wait_for(state["done"], 30)
                w, c = time.perf_counter_ns() - t, time.thread_time_ns() - c
                if sum(d.metrics.fail_open.values()):
                    raise RuntimeError(f"clicks failed open: {dict(d.metrics.fail_open)}")
                return w, c

            out: dict[int, Any] = {}
            for b in sizes:
                for _ in range(20):  # warm-up: caches, store tables, the model's arena
                    await one(frames(b), b)
                n = count if count is not None else max(30, min(20_000, int(3e4 / b)))
                bufs = [frames(b) for _ in range(n)]
                rcpu0 = cpu_s(redis.proc.pid) if redis and redis.proc else 0.0
                walls, cpus = [], []
                t_end = time.monotonic() + seconds
                k = 0
                for buf in bufs:
                    w, c = await one(buf, b)
                    walls.append(w)
                    cpus.append(c)
                    k += 1
                    if count is None and time.monotonic() > t_end and k >= 30:
                        break
                rcpu = (cpu_s(redis.proc.pid) - rcpu0) if redis and redis.proc else None
                out[b] = {"batches": k, "wall_us": statistics.median(walls) / 1e3,
                          "cpu_us": statistics.median(cpus) / 1e3,
                          "cpu_us_mean": statistics.fmean(cpus) / 1e3,
                          "redis_cpu_us_per_click": (rcpu * 1e6 / (k * b)
                                                     if rcpu is not None else None)}
            return out
        finally:
            await d.drain()
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(root, ignore_errors=True)


def _fit(points: dict[int, dict[str, Any]], key: str) -> tuple[float, float]:
    """Least squares y = fixed + marginal * b over the batch sizes."""
    xs = list(points)
    ys = [points[b][key] for b in xs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    marginal = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - marginal * mx, marginal


def _perf_instructions(store: str, b: int, n: int) -> float | None:
    """Instructions of a child process that runs n batches of size b (None: perf cannot)."""
    if shutil.which("perf") is None:
        return None
    code = ("import asyncio, uvloop; from slidr.bench import batch_cost as m; "
            f"uvloop.run(m._measure({store!r}, ({b},), 0.0, count={n}))")
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        r = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "-o", f.name,
                            sys.executable, "-c", code], capture_output=True, timeout=600)
        if r.returncode != 0:
            return None
        for line in Path(f.name).read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2].startswith("instructions"):
                try:
                    return float(parts[0])
                except ValueError:  # "<not supported>"
                    return None
    return None


def run(stores: tuple[str, ...] = ("embedded", "redis"), sizes: tuple[int, ...] = BATCHES,
        seconds: float = 1.0, instructions: int = 0, decision_log: bool = False
        ) -> dict[str, Any]:
    import uvloop
    res: dict[str, Any] = {"sizes": list(sizes), "stores": {}, "decision_log": decision_log}
    for store in stores:
        if store == "redis" and shutil.which("redis-server") is None:
            res["stores"][store] = {"skipped": "redis-server not on PATH"}
            continue
        pts = uvloop.run(_measure(store, sizes, seconds, decision_log=decision_log))
        fixed, marginal = _fit(pts, "cpu_us")
        entry: dict[str, Any] = {"points": {str(b): v for b, v in pts.items()},
                                 "fixed_cpu_us_per_batch": fixed,
                                 "marginal_cpu_us_per_click": marginal}
        if instructions > 0:
            ins: dict[str, float | None] = {}
            for b in sizes:
                full = _perf_instructions(store, b, instructions)
                base = _perf_instructions(store, b, 0) if full is not None else None
                ins[str(b)] = ((full - base) / instructions
                               if full is not None and base is not None else None)
            entry["instructions_per_batch"] = ins
        res["stores"][store] = entry
    return res


def lines(res: dict[str, Any]) -> list[str]:
    out = []
    for store, e in res["stores"].items():
        if "skipped" in e:
            out.append(f"{store}: skipped ({e['skipped']})")
            continue
        out.append(f"{store}: fixed {e['fixed_cpu_us_per_batch']:.1f} us CPU per batch, "
                   f"marginal {e['marginal_cpu_us_per_click']:.2f} us CPU per click")
        ins = e.get("instructions_per_batch") or {}
        for b, p in e["points"].items():
            extra = ""
            if p.get("redis_cpu_us_per_click") is not None:
                extra += f", redis-server {p['redis_cpu_us_per_click']:.2f} us/click"
            if ins.get(b) is not None:
                extra += f", {ins[b] / 1e3:,.0f}k instructions"
            out.append(f"  batch {int(b):>4}: wall {p['wall_us']:8.1f} us, CPU {p['cpu_us']:8.1f} us"
                       f" ({p['cpu_us'] / int(b):6.2f} us/click){extra}")
        if e.get("instructions_per_batch") and not any(ins.values()):
            out.append("  instructions: perf cannot count them on this machine")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m slidr.bench.batch_cost")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--instructions", type=int, default=0)
    p.add_argument("--store", action="append", choices=("embedded", "redis"))
    p.add_argument("--decision-log", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run(tuple(a.store or ("embedded", "redis")), seconds=a.seconds,
              instructions=a.instructions, decision_log=a.decision_log)
    print(json.dumps(res, indent=1) if a.json else "\n".join(lines(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
