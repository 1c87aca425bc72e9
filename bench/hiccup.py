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


# ------------------------------------------------------------------ who had the CPU during a stall
WATCH_COLS = ("t_s", "oncpu_ms", "runq_ms", "minflt", "majflt", "steal_ms", "cpu_idle_ms",
              "cpu_busy_ms", "proc_cpu_ms")


def _watch(pid: int, cpu: int | None, period_s: float, path: str, stop: Any,
           ready: Any = None) -> None:
    """Sample, every `period_s`, a process's main thread (time on CPU and time waiting for a
    CPU, /proc/PID/schedstat; page faults, /proc/PID/stat) and `cpu`'s steal and idle time
    (/proc/stat), into a float64 array saved at `path` (.npy) when `stop` is set."""
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    key = f"cpu{cpu} " if cpu is not None else "cpu "
    rows: list[tuple[float, ...]] = []
    sched = open(f"/proc/{pid}/schedstat", "rb", buffering=0)  # noqa: SIM115
    stat = open(f"/proc/{pid}/stat", "rb", buffering=0)  # noqa: SIM115
    pstat = open("/proc/stat", "rb", buffering=0)  # noqa: SIM115
    try:
        while not stop.is_set():
            t = time.monotonic()
            try:
                sched.seek(0)
                on, rq = sched.read(200).split()[:2]
                stat.seek(0)
                f = stat.read(1000).rsplit(b")", 1)[1].split()
            except (OSError, ValueError):
                break  # the process is gone
            pstat.seek(0)
            steal = idle = busy = 0.0
            for ln in pstat.read(8192).decode().splitlines():
                if ln.startswith(key):
                    v = ln.split()
                    idle, steal = float(v[4]) * tick_ms, float(v[8]) * tick_ms
                    # user, nice, system, irq, softirq: anyone's work on that CPU
                    busy = sum(float(v[k]) for k in (1, 2, 3, 6, 7)) * tick_ms
                    break
            rows.append((t, int(on) / 1e6, int(rq) / 1e6, float(f[7]), float(f[9]), steal, idle,
                         busy, (float(f[11]) + float(f[12])) * tick_ms))
            if ready is not None and len(rows) == 1:
                ready.set()
            time.sleep(max(0.0, period_s - (time.monotonic() - t)))
    finally:
        for fh in (sched, stat, pstat):
            fh.close()
        np.save(path, np.asarray(rows, dtype=np.float64).reshape(-1, len(WATCH_COLS)))


class ProcWatch:
    """`_watch` in its own process (pinned to `watch_cpu`), so that sampling never holds the
    GIL of a load generator: start(), stop() -> the samples (columns WATCH_COLS)."""

    def __init__(self, pid: int, cpu: int | None, period_s: float = 0.005,
                 watch_cpu: int | None = None) -> None:
        import multiprocessing as mp
        import tempfile
        self.ctx = mp.get_context("spawn")
        self.stop_ev = self.ctx.Event()
        self.ready = self.ctx.Event()
        self.path = os.path.join(tempfile.mkdtemp(prefix="procwatch"), "w.npy")
        self.args = (pid, cpu, period_s, self.path, self.stop_ev, self.ready)
        self.watch_cpu = watch_cpu
        self.proc: Any = None

    def start(self) -> ProcWatch:
        self.proc = self.ctx.Process(target=_watch_pinned, args=(self.watch_cpu, *self.args),
                                     daemon=True)
        self.proc.start()
        self.ready.wait(30)  # its first sample taken: the run starts watched
        return self

    def stop(self) -> np.ndarray:
        self.stop_ev.set()
        self.proc.join(30)
        try:
            a = np.load(self.path)
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))
        except OSError:
            a = np.zeros((0, len(WATCH_COLS)))
        return a


def _watch_pinned(watch_cpu: int | None, *args: Any) -> None:
    if watch_cpu is not None:
        os.sched_setaffinity(0, {watch_cpu})
    _watch(*args)


def explain(samples: np.ndarray, t0: float, t1: float) -> dict[str, float]:
    """What the watched process and its CPU did between t0 and t1 (monotonic s): ms on CPU,
    ms waiting for the CPU (another task had it), ms stolen by the hypervisor, ms the CPU was
    idle, minor/major faults. A loop stall that is the daemon's own work shows as on-CPU
    time close to the stall's length; the machine's, as wait or steal. others_ms: the CPU's
    busy time beyond the whole process's (other processes on it, when the process is pinned
    there); own_threads_ms: the process's CPU time beyond its main thread's (its other
    threads). Both count in 10 ms ticks, so short windows read coarse."""
    if samples.size == 0:
        return {}
    t = samples[:, 0]
    i0 = int(np.searchsorted(t, t0, side="right")) - 1
    i1 = int(np.searchsorted(t, t1, side="left"))
    i0, i1 = max(i0, 0), min(i1, len(t) - 1)
    d = samples[i1] - samples[i0]
    return {"from_s": round(float(t[i0]), 3), "span_ms": round(float(d[0]) * 1000, 1),
            "oncpu_ms": round(float(d[1]), 1), "runq_wait_ms": round(float(d[2]), 1),
            "steal_ms": round(float(d[5]), 1), "cpu_idle_ms": round(float(d[6]), 1),
            "others_ms": round(max(0.0, float(d[7]) - float(d[8])), 1),
            "own_threads_ms": round(max(0.0, float(d[8]) - float(d[1])), 1),
            "minflt": int(d[3]), "majflt": int(d[4])}
