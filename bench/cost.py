"""Where the daemon's CPU goes, per click, without sockets or a second process.

A real slidrd (same Daemon, batcher, kernel, model and wire code; embedded store) is fed
pre-encoded `score` frames straight into its connection objects: `frames_per_read` frames per
data_received call (what one socket read carries), one loop pass per `reads_per_pass` reads
(so a micro-batch holds frames_per_read * reads_per_pass clicks). Answers go to an in-memory
transport. Each stage is timed with perf_counter_ns wrappers (the wrappers themselves cost
~0.1 us per call) and everything is divided by the clicks answered:

  intake   data_received: msgpack decode, request checks, submit (per frame)
  prepare  deadline check, validation, ClickBatch columns (per batch)
  kernel   key hashing + counter store update (per batch)
  finish   raw counters -> features (per batch)
  model    scorer.infer (per batch)
  decide   thresholds, answer frames, routing, metrics (per batch)
  flush    transport writes (per batch and connection)
  loop     the rest of the wall time: event-loop passes, scheduling, wrappers

What this leaves out is the kernel's share: socket syscalls and loopback delivery, which on a
real run add several microseconds per read and write (compare `slidr bench run`'s
`daemon CPU us/click`, which counts everything).
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("intake", "prepare", "kernel", "finish", "model", "decide", "flush")


class Sink:
    """An asyncio transport that keeps only counts of what was written (bench/batch_cost.py
    uses it too)."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, b: bytes) -> None:
        self.writes += 1
        self.bytes += len(b)

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None,
                                low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _wrap(obj: Any, name: str, acc: dict[str, int], label: str) -> None:
    f: Callable[..., Any] = getattr(obj, name)
    ns = time.perf_counter_ns

    def timed(*a: Any, **k: Any) -> Any:
        t = ns()
        try:
            return f(*a, **k)
        finally:
            acc[label] += ns() - t
    setattr(obj, name, timed)


async def _measure(frames_per_read: int, reads_per_pass: int, clicks: int,
                   connections: int) -> dict[str, Any]:
    from slidr.bench.clicks import frame, make_clicks, pack_prefixes
    from slidr.bench.daemon import tiny_registry
    from slidr.slidrd.config import Config
    from slidr.slidrd.server import Daemon, PublicConnection

    root = Path(tempfile.mkdtemp(prefix="slidr-cost-"))
    cfg = Config(registry=str(tiny_registry(root)), port=0, metrics_port=-1, max_batch=4096,
                 deadline_ms=60_000.0)
    d = Daemon(cfg)
    await d.start()
    try:
        pool, _src = make_clicks(min(clicks, 20_000))
        prefixes = pack_prefixes(pool)
        ts0 = 1_767_225_600_000
        total = clicks * 2  # first half warms up (store tables, caches)
        frames = [frame(i, prefixes[i % len(prefixes)], ts0 + 5 * i) for i in range(total)]
        conns = []
        for _ in range(connections):
            c = PublicConnection(d)
            c.connection_made(Sink())  # type: ignore[arg-type]
            conns.append(c)

        async def drive(lo: int, hi: int) -> None:
            i, k = lo, 0
            while i < hi:
                j = min(i + frames_per_read, hi)
                conns[k % connections].data_received(b"".join(frames[i:j]))
                i = j
                k += 1
                if k % reads_per_pass == 0:
                    await asyncio.sleep(0)
            for _ in range(3):
                await asyncio.sleep(0)

        await drive(0, clicks)
        acc: dict[str, int] = collections.defaultdict(int)
        b = d.batcher
        for c in conns:
            _wrap(c, "data_received", acc, "intake")
        _wrap(b, "_prepare", acc, "prepare")
        _wrap(b, "_raw", acc, "kernel")
        _wrap(b.kernel, "finish", acc, "finish")
        assert d.model is not None
        _wrap(d.model.scorer, "infer", acc, "model")
        _wrap(b, "_decide", acc, "decide")
        _wrap(b, "_flush_dirty", acc, "flush")
        answered0 = sum(d.metrics.decisions.values())
        batches0 = d.metrics.batch_size.n
        cpu0 = time.process_time()
        t0 = time.perf_counter_ns()
        await drive(clicks, total)
        wall = time.perf_counter_ns() - t0
        cpu = time.process_time() - cpu0
        answered = sum(d.metrics.decisions.values()) - answered0
        batches = d.metrics.batch_size.n - batches0
        if answered != clicks:
            raise RuntimeError(f"{answered} of {clicks} clicks answered by the model "
                               f"(fail-open: {dict(d.metrics.fail_open)})")
        per = {s: acc[s] / 1e3 / clicks for s in STAGES}
        per["loop"] = max(wall / 1e3 / clicks - sum(per.values()), 0.0)
        return {"frames_per_read": frames_per_read, "reads_per_pass": reads_per_pass,
                "clicks": clicks, "batches": batches, "mean_batch": clicks / max(batches, 1),
                "us_per_click": per, "wall_us_per_click": wall / 1e3 / clicks,
                "cpu_us_per_click": cpu * 1e6 / clicks,
                "per_batch_us": {s: acc[s] / 1e3 / max(batches, 1)
                                 for s in ("prepare", "kernel", "finish", "model", "decide",
                                           "flush")}}
    finally:
        await d.drain()
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def run(shapes: list[tuple[int, int]], clicks: int = 40_000, connections: int = 16
        ) -> list[dict[str, Any]]:
    """One measurement per (frames_per_read, reads_per_pass) shape, each in a fresh daemon."""
    import uvloop
    if clicks < 100:
        raise ValueError("clicks must be at least 100")
    out = []
    for fpr, rpp in shapes:
        if fpr < 1 or rpp < 1:
            raise ValueError("frames_per_read and reads_per_pass must be >= 1")
        out.append(uvloop.run(_measure(fpr, rpp, clicks, connections)))
    return out


def lines(res: list[dict[str, Any]]) -> list[str]:
    head = (f"{'frames/read':>11} {'batch':>6} | " + " ".join(f"{s:>7}" for s in STAGES)
            + f" {'loop':>7} | {'wall':>6} {'cpu':>6}  us per click")
    out = [head]
    for r in res:
        p = r["us_per_click"]
        out.append(f"{r['frames_per_read']:>11} {r['mean_batch']:>6.1f} | "
                   + " ".join(f"{p[s]:>7.2f}" for s in STAGES) + f" {p['loop']:>7.2f} | "
                   f"{r['wall_us_per_click']:>6.2f} {r['cpu_us_per_click']:>6.2f}")
    out.append("per batch (us): " + "; ".join(
        f"batch {r['mean_batch']:.0f}: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                       r["per_batch_us"].items())
        for r in res))
    return out
