"""What goes around the numbers: machine description, the daemon's own Prometheus split of
latency (queue / store / model), atomic JSON, and the two plots (matplotlib Agg, PNG)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from slidr.util import atomic_open, write_json

# ---------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "mem_gb": mem_gb,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def source_state() -> dict[str, Any]:
    """The commit the numbers were taken at and any uncommitted files (others work in the same
    tree: a daemon started mid-edit runs code no commit has)."""
    import subprocess
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.rstrip("\n")
    try:
        dirty = [ln[3:] for ln in git("status", "--porcelain", "--untracked-files=no").splitlines()]
        return {"commit": git("rev-parse", "HEAD"), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m.get('cpu_model')} x{m.get('cores')} | kernel {m.get('kernel')} | "
            f"python {m.get('python')} | load {m.get('loadavg')}")


# ---------------------------------------------------------------- Prometheus text format

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prom(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition -> {(name, sorted labels): value}. Unparseable lines skipped."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = v
    return out


def scrape(url: str | None, timeout: float = 1.0) -> dict[Any, float] | None:
    """The daemon's metrics now, or None if there is no endpoint (tolerated, never fatal)."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            return parse_prom(r.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q, from cumulative (le, count) pairs."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    for le, c in buckets:
        if c >= q * total:
            return le
    return buckets[-1][0]


def _bucket_max(buckets: list[tuple[float, float]]) -> float | None:
    """Upper bound of the highest non-empty bucket, from cumulative (le, count) pairs."""
    top, prev = None, 0.0
    for le, c in buckets:
        if c > prev:
            top = le
        prev = c
    return top


def server_split(before: dict[Any, float] | None, after: dict[Any, float] | None) -> dict[str, Any] | None:
    """Server-side view of the measured window (after - before): per-stage latency (mean and
    bucket-bounded p50/p99 in ms) from slidr_latency_seconds{stage}, batch size, fail-open
    causes and error codes. None when the endpoint was not there."""
    if after is None:
        return None
    before = before or {}

    def d(key: Any) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def buckets(name: str, stage: str | None = None) -> list[tuple[float, float]]:
        """Cumulative (le, count over the window) of histogram `name` (one stage's only)."""
        return sorted(
            ((float("inf") if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), d(k))
             for k in after if k[0] == name + "_bucket"
             and (stage is None or dict(k[1]).get("stage") == stage)), key=lambda t: t[0])

    stages: dict[str, Any] = {}
    names = {k[0] for k in after}
    if "slidr_latency_seconds_count" in names:
        for key in after:
            if key[0] != "slidr_latency_seconds_count":
                continue
            stage = dict(key[1]).get("stage", "?")
            n = d(key)
            s = d(("slidr_latency_seconds_sum", key[1]))
            bks = buckets("slidr_latency_seconds", stage)
            p50 = _bucket_quantile(bks, 0.5)
            p99 = _bucket_quantile(bks, 0.99)
            stages[stage] = {
                "count": int(n),
                "mean_ms": (s / n * 1000.0) if n > 0 else None,
                "p50_le_ms": None if p50 is None else p50 * 1000.0,
                "p99_le_ms": None if p99 is None else p99 * 1000.0,
            }
    bn = d(("slidr_batch_size_count", ()))
    bs = d(("slidr_batch_size_sum", ()))
    fail_open = {dict(k[1]).get("cause", "?"): int(d(k)) for k in after
                 if k[0] == "slidr_fail_open_total" and d(k)}
    errors = {dict(k[1]).get("code", "?"): int(d(k)) for k in after
              if k[0] == "slidr_errors_total" and d(k)}
    # CPU the daemon spent per click it answered (model decisions + fail-opens) over the window:
    # a cost that other load on the machine disturbs far less than latency does.
    answered = sum(d(k) for k in after if k[0] in ("slidr_decisions_total", "slidr_fail_open_total"))
    cpu = d(("process_cpu_seconds_total", ()))
    cpu_us = (cpu / answered * 1e6) if answered > 0 and ("process_cpu_seconds_total", ()) in after \
        else None
    def hist(name: str) -> dict[str, Any]:
        bks = buckets(name)
        top = _bucket_max(bks)
        return {"count": int(d((name + "_count", ()))),
                "sum_ms": d((name + "_sum", ())) * 1000.0,
                "p99_le_ms": None if (q := _bucket_quantile(bks, 0.99)) is None else q * 1000.0,
                "max_le_ms": None if top is None else top * 1000.0}

    return {
        "loop_lag": hist("slidr_loop_lag_seconds"),
        "gc": hist("slidr_gc_pause_seconds"),
        "cpu_us_per_click": cpu_us,
        "cpu_seconds": cpu if cpu_us is not None else None,
        "stages": stages,
        "batches": int(bn),
        "mean_batch": (bs / bn) if bn > 0 else None,
        "fail_open": fail_open,
        "errors": errors,
        "redis_errors": int(d(("slidr_redis_errors_total", ()))),
        "note": "server-side stage latencies are bucketed: p50/p99 are bucket upper bounds",
    }


def split_line(split: dict[str, Any] | None) -> str:
    if not split:
        return "server split: (no metrics endpoint)"
    parts = []
    for st in ("queue", "store", "model", "total"):
        v = split["stages"].get(st)
        if v and v.get("mean_ms") is not None:
            parts.append(f"{st} mean {v['mean_ms']:.3f} ms (p99<={v['p99_le_ms']:.2f})")
    mb = split.get("mean_batch")
    parts.append(f"mean batch {mb:.1f}" if mb else "mean batch -")
    cpu = split.get("cpu_us_per_click")
    if cpu is not None:
        parts.append(f"daemon CPU {cpu:.1f} us/click")
    lag = split.get("loop_lag") or {}
    if lag.get("max_le_ms") is not None:
        parts.append(f"loop lag max <= {lag['max_le_ms']:.1f} ms")
    g = split.get("gc") or {}
    if g.get("count"):
        parts.append(f"gc {g['count']} pauses, {g['sum_ms']:.1f} ms in all")
    return "server split: " + ", ".join(parts)


# ---------------------------------------------------------------- files


def save_json(path: str | Path, obj: Any) -> None:
    write_json(path, obj)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_png(fig: Any, path: str | Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_percentiles(curves: list[tuple[str, Any]], path: str | Path, title: str,
                     target_ms: float | None = None) -> None:
    """Latency by percentile on a 'nines' axis, one line per (label, HdrHistogram)."""
    import math

    from slidr.bench.hist import percentile_curve
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, h in curves:
        ps, vs = percentile_curve(h)
        if not ps:
            continue
        xs = [min(-math.log10(max(1.0 - p / 100.0, 1e-6)), 6.0) for p in ps]
        ax.plot(xs, vs, label=label, lw=1.4)
    ticks = [0, 1, 2, 3, 4, 5]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from scheduled send (ms)")
    if target_ms:
        ax.axhline(target_ms, color="red", ls="--", lw=1, label=f"target {target_ms:g} ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save_png(fig, path)
    plt.close(fig)


def plot_latency_vs_rate(points: list[dict[str, Any]], path: str | Path, title: str,
                         target_ms: float | None = None,
                         floor: dict[str, Any] | None = None) -> None:
    """p50/p99/p99.9 (median of repeats, bars = min..max) against offered rate."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pts = sorted(points, key=lambda p: p["rate"])
    xs = [p["rate"] for p in pts]
    for key, label in (("p50", "p50"), ("p99", "p99"), ("p99_9", "p99.9")):
        med = [p["latency_ms"][key]["median"] for p in pts]
        lo = [p["latency_ms"][key]["median"] - p["latency_ms"][key]["min"] for p in pts]
        hi = [p["latency_ms"][key]["max"] - p["latency_ms"][key]["median"] for p in pts]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", ms=3, capsize=3, lw=1.2, label=label)
    if target_ms:
        ax.axhline(target_ms, color="red", ls="--", lw=1, label=f"target p99.9 {target_ms:g} ms")
    if floor and floor.get("p50_ms") is not None:
        ax.axhline(floor["p50_ms"], color="grey", ls=":", lw=1,
                   label=f"generator floor p50 {floor['p50_ms']:.2f} ms (echo)")
    ax.set_yscale("log")
    if xs and min(xs) > 0 and max(xs) / min(xs) > 4:
        ax.set_xscale("log")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _save_png(fig, path)
    plt.close(fig)
