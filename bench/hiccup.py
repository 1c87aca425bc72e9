"""The machine's own stall floor: how late a sleeping thread wakes up, and how long a spinning
thread loses its CPU (scheduler, interrupts, a hypervisor taking the vCPU away).

No server can answer faster than the machine lets it run: if a spinning thread on an idle core
sees 1 ms gaps, a p99.9 target near 1 ms cannot be met there by any software. Run this beside
`slidr bench echo` before reading a latency result; both are in seconds of wall time, per CPU.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else 0.0


def probe(cpu: int | None = None, seconds: float = 3.0, sleep_us: float = 200.0) -> dict[str, Any]:
    """Half the time sleeping `sleep_us` at a time (wake-up overshoot), half spinning (gaps
    longer than 20 us between two clock reads). Pinned to `cpu` when given."""
    if seconds <= 0 or sleep_us <= 0:
        raise ValueError("seconds and sleep_us must be positive")
    old = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        pc = time.perf_counter
        want = sleep_us / 1e6
        over: list[float] = []
        end = pc() + seconds / 2
        while pc() < end:
            t = pc()
            time.sleep(want)
            over.append(pc() - t - want)
        gaps: list[float] = []
        last = pc()
        end = last + seconds / 2
        while True:
            t = pc()
            if t - last > 20e-6:
                gaps.append(t - last)
            last = t
            if t > end:
                break
    finally:
        os.sched_setaffinity(0, old)
    o = np.asarray(over) * 1e3
    g = np.asarray(gaps) * 1e3
    spin_s = seconds / 2
    return {
        "cpu": cpu, "seconds": seconds, "sleep_us": sleep_us,
        "wake_late_ms": {"p50": _pct(o, 50), "p99": _pct(o, 99), "p99_9": _pct(o, 99.9),
                         "max": float(o.max()) if o.size else 0.0, "count": int(o.size)},
        "spin_gaps": {"lost_share": float(g.sum() / 1e3 / spin_s), "over_100us": int((g > 0.1).sum()),
                      "over_1ms": int((g > 1.0).sum()), "max_ms": float(g.max()) if g.size else 0.0,
                      "arrival_waits_over": arrival_waits(g, spin_s * 1e3)},
    }


WAIT_MS = (0.5, 1.0, 2.0, 5.0)


def arrival_waits(gaps_ms: np.ndarray, span_ms: float) -> dict[str, float]:
    """For a request arriving at a uniformly random time while a thread spins on this CPU: the
    probability that it waits more than x ms for the CPU to come back (the part of the gap left
    when it arrives). P(wait > x) = sum over gaps of max(0, gap - x) / span. This is the floor of
    any server on this CPU, however it is written: no software answers while its vCPU is away."""
    return {f"{x:g}ms": float(np.clip(gaps_ms - x, 0, None).sum() / span_ms) for x in WAIT_MS}


def probe_together(cpus: list[int], seconds: float = 3.0, sleep_us: float = 200.0) -> list[dict[str, Any]]:
    """`probe` on every CPU in `cpus` at the same time (one process each): the machine when a
    generator and a server are both running, as in a load test. On a VM the host may take
    vCPUs away more often when all of them are busy."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(cpus)) as pool:
        return pool.starmap(probe, [(c, seconds, sleep_us) for c in cpus])


def line(r: dict[str, Any]) -> str:
    w, g = r["wake_late_ms"], r["spin_gaps"]
    where = f"cpu{r['cpu']}" if r["cpu"] is not None else "any cpu"
    aw = g.get("arrival_waits_over", {})
    waits = ", ".join(f"> {k} {100 * v:.3f}%" for k, v in aw.items())
    return (f"{where}: wake-up late p50 {w['p50']:.3f} ms p99 {w['p99']:.3f} p99.9 "
            f"{w['p99_9']:.3f} max {w['max']:.2f} | spinning: {100 * g['lost_share']:.1f}% of "
            f"the time lost, {g['over_1ms']} gaps > 1 ms, longest {g['max_ms']:.2f} ms"
            + (f" | a random arrival waits {waits}" if waits else ""))


def floor_line(probes: list[dict[str, Any]]) -> str:
    """One line for a report: per CPU, how often a random arrival waits > 2 / > 5 ms for its
    vCPU while every CPU is busy (probe_together)."""
    parts = []
    for r in probes:
        aw = r["spin_gaps"].get("arrival_waits_over", {})
        parts.append(f"cpu{r['cpu']} {100 * aw.get('2ms', 0.0):.2f}% / {100 * aw.get('5ms', 0.0):.2f}%")
    return ("machine floor (all CPUs busy): a random arrival waits > 2 ms / > 5 ms for its "
            "vCPU: " + ", ".join(parts) + " (p99.9 allows 0.1%)")
