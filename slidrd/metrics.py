"""Prometheus text metrics, observed per batch (numpy), served by a tiny asyncio HTTP responder.

No client library: the hot path adds whole batches to bucket counts with one searchsorted and
one bincount, and the exposition format is a few lines of text.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any

import numpy as np

# Seconds; sub-millisecond resolution where the p99.9 < 5 ms target lives.
LATENCY_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3,
                   5e-3, 7.5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


FAIL_OPEN_CAUSES = ("deadline", "store_down", "overload", "model_error")


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Histogram:
    """Bucket counts, sum and count. `counts` (numpy) is what readers and the native decide
    path (ext/_fastpath.pyx) use; `observe` adds to a plain list instead (a list item += is a
    fraction of a numpy scalar update, and it runs a few times per batch), folded into `counts`
    whenever `counts` is read."""

    __slots__ = ("bounds", "blist", "_counts", "total", "n", "_pc", "_dirty")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.blist = list(bounds)
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._pc = [0] * (len(bounds) + 1)
        self._dirty = False
        self.total = 0.0
        self.n = 0

    @property
    def counts(self) -> np.ndarray:
        """The bucket counts (int64, one more than the bounds), every `observe` so far in them;
        the array itself (the native path adds to it in place)."""
        if self._dirty:
            self._counts += np.asarray(self._pc, dtype=np.int64)
            self._pc = [0] * len(self._pc)
            self._dirty = False
        return self._counts

    def observe_many(self, values: np.ndarray) -> None:
        n = values.shape[0]
        if n == 0:
            return
        if n <= 8:  # small batches (low load): plain bisect beats numpy's call overhead
            pc = self._pc
            bl = self.blist
            for v in values.tolist():
                pc[bisect_left(bl, v)] += 1
                self.total += v
            self._dirty = True
        else:
            idx = self.bounds.searchsorted(values, side="left")
            c = self._counts
            c += np.bincount(idx, minlength=c.size)
            self.total += float(values.sum())
        self.n += n

    def observe(self, value: float, times: int = 1) -> None:
        self._pc[bisect_left(self.blist, value)] += times
        self._dirty = True
        self.total += value * times
        self.n += times

    def quantile(self, q: float) -> float:
        """Upper bucket bound at quantile q (coarse; the bench measures exact latencies)."""
        if self.n == 0:
            return 0.0
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, q * self.n, side="left"))
        return float(self.bounds[i]) if i < self.bounds.size else float("inf")

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = []
        cum = 0
        for b, c in zip(self.bounds.tolist(), self.counts[:-1].tolist(), strict=True):
            cum += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {cum}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {self.total:.9g}")
        out.append(f"{name}_count{lab} {self.n}")
        return out


DEFENCE_EVENTS = ("clock_refused", "closed_errors", "closed_write_stall", "closed_frame_timeout",
                  "closed_for_room", "store_evicted")


class Metrics:
    """All counters of one daemon process."""

    STAGES = ("queue", "store", "model", "total")

    def __init__(self) -> None:
        self.latency = {s: Histogram(LATENCY_BUCKETS) for s in self.STAGES}
        # How late a 10 ms loop timer fires (the loop was busy or the process not running),
        # and how long each garbage collection took: the two ways a whole batch can stall.
        self.loop_lag = Histogram(LATENCY_BUCKETS)
        self.gc_pause = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.decisions: dict[str, int] = defaultdict(int)  # slice -> decisions
        self.invalid: dict[str, int] = defaultdict(int)  # slice -> invalidated
        self.fail_open: dict[str, int] = defaultdict(int)  # cause -> clicks
        for cause in FAIL_OPEN_CAUSES:  # every series exists from the start (alerts, rate())
            self.fail_open[cause] = 0
        self.errors: dict[str, int] = defaultdict(int)  # wire error name -> responses
        self.redis_errors = 0
        self.connections = 0
        self.connections_total = 0
        self.requests = 0
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.decision_log_dropped = 0
        self.model_version = ""
        self.started = time.time()
        self.gauges: dict[str, Any] = {}
        self.busy_poll: Any = None  # slidrd.busypoll.BusyPoller when busy_poll_us > 0
        self.cluster: Any = None  # slidrd.cluster_link.ClusterLink on a Redis Cluster
        self.monitor: Any = None  # slidrd.monitor.Monitor (its counters are exported here)
        # Hostile traffic (docs/daemon.md, "Hostile traffic"): what the limits did, by event.
        self.defence: dict[str, int] = defaultdict(int)
        for ev in DEFENCE_EVENTS:
            self.defence[ev] = 0

    @property
    def clock_refused(self) -> int:
        return self.defence["clock_refused"]

    @clock_refused.setter
    def clock_refused(self, v: int) -> None:
        self.defence["clock_refused"] = v

    def render(self) -> str:
        L: list[str] = []

        def head(name: str, kind: str, helptext: str) -> None:
            L.append(f"# HELP {name} {helptext}")
            L.append(f"# TYPE {name} {kind}")

        head("slidr_latency_seconds", "histogram",
             "Per-click latency by stage (queue, store, model, total)")
        for s in self.STAGES:
            L.extend(self.latency[s].lines("slidr_latency_seconds", f'stage="{s}"'))
        head("slidr_loop_lag_seconds", "histogram",
             "Lateness of a 10 ms event-loop timer (loop blocked or process descheduled)")
        L.extend(self.loop_lag.lines("slidr_loop_lag_seconds"))
        head("slidr_gc_pause_seconds", "histogram", "Duration of each garbage collection")
        L.extend(self.gc_pause.lines("slidr_gc_pause_seconds"))
        head("slidr_batch_size", "histogram", "Clicks per micro-batch")
        L.extend(self.batch_size.lines("slidr_batch_size"))
        def labelled(name: str, kind: str, helptext: str, label: str,
                     values: dict[str, Any]) -> None:
            head(name, kind, helptext)
            L.extend(f'{name}{{{label}="{k}"}} {v}' for k, v in sorted(values.items()))

        labelled("slidr_decisions_total", "counter", "Model decisions by slice", "slice",
                 self.decisions)
        labelled("slidr_invalid_total", "counter", "Clicks invalidated by slice", "slice",
                 self.invalid)
        labelled("slidr_ivr", "gauge", "Invalidation rate by slice since start", "slice",
                 {k: f"{self.invalid.get(k, 0) / max(v, 1):.6g}" for k, v in self.decisions.items()})
        labelled("slidr_fail_open_total", "counter",
                 "Clicks answered valid without a model score", "cause", self.fail_open)
        labelled("slidr_errors_total", "counter", "Error responses by code name", "code",
                 self.errors)
        labelled("slidr_defence_total", "counter", "Hostile-traffic limits at work: clicks "
                 "refused by the clock check, connections closed (errors, unread answers, slow "
                 "frames, room for new clients), embedded-store keys evicted at the cap",
                 "event", self.defence)
        for name, kind, helptext, value in (
            ("slidr_redis_errors_total", "counter", "Failed Redis round trips", self.redis_errors),
            ("slidr_connections", "gauge", "Open public connections", self.connections),
            ("slidr_connections_total", "counter", "Accepted connections", self.connections_total),
            ("slidr_requests_total", "counter", "RPC requests", self.requests),
            ("slidr_reloads_total", "counter", "Successful model reloads", self.reloads_ok),
            ("slidr_reload_failures_total", "counter", "Refused model reloads", self.reloads_failed),
            ("slidr_decision_log_dropped_total", "counter", "Decision log records dropped",
             self.decision_log_dropped),
            ("slidr_start_time_seconds", "gauge", "Process start time", self.started),
            ("process_resident_memory_bytes", "gauge", "Resident memory (model, store, buffers)",
             rss_bytes()),
            ("process_cpu_seconds_total", "counter", "CPU time of this process (user + system, "
             "all threads)", f"{time.process_time():.6f}"),
        ):
            head(name, kind, helptext)
            L.append(f"{name} {value}")
        if self.busy_poll is not None:
            for name, helptext, value in (
                    ("slidr_busy_poll_passes_total", "Event-loop passes spent polling "
                     "(busy_poll_us)", self.busy_poll.passes),
                    ("slidr_busy_poll_windows_total", "Polling windows started (idle to polling)",
                     self.busy_poll.windows)):
                head(name, "counter", helptext)
                L.append(f"{name} {value}")
        if self.cluster is not None:
            cs = self.cluster.stats()
            for name, kind, helptext, value in (
                    ("slidr_redis_cluster_masters", "gauge", "Redis Cluster masters the daemon "
                     "routes to", len(cs["nodes"])),
                    ("slidr_redis_cluster_retried_batches_total", "counter", "Batches with a part "
                     "re-sent after MOVED/ASK, a refused or a lost node", cs["retries"]),
                    ("slidr_redis_cluster_retried_ok_total", "counter", "Retried batches then "
                     "answered whole", cs["retried_ok"]),
                    ("slidr_redis_cluster_partial_total", "counter", "Batches of which a part "
                     "failed open after its retry", cs["partial"]),
                    ("slidr_redis_cluster_failed_total", "counter", "Batches failed open whole "
                     "on the cluster", cs["failed"]),
                    ("slidr_redis_cluster_refreshes_total", "counter", "Slot-map reads (start, "
                     "MOVED, lost node)", cs["refreshes"])):
                head(name, kind, helptext)
                L.append(f"{name} {value}")
        for name, value in sorted(self.gauges.items()):
            head(name, "gauge", name.replace("_", " "))
            L.append(f"{name} {value}")
        mon = self.monitor
        if mon is not None:
            c = mon.counts
            for name, helptext, value in (
                    ("slidr_monitor_rollbacks_total", "Automatic rollbacks fired by the "
                     "deviation monitor", c.get("rollback", 0)),
                    ("slidr_monitor_alerts_total", "Deviation alerts without a rollback "
                     "(monitor = alert, or the rollback was refused)",
                     c.get("alert", 0) + c.get("rollback_failed", 0)),
                    ("slidr_monitor_fail_open_alerts_total", "Windows whose fail-open share "
                     "was above monitor_fail_open_max", c.get("fail_open", 0)),
                    ("slidr_monitor_windows_total", "Monitor windows closed", mon.windows)):
                head(name, "counter", helptext)
                L.append(f"{name} {value}")
            ratios = {k: (v if v != float("inf") else 1e9) for k, v in mon.ratios.items()}
            labelled("slidr_monitor_ivr_ratio", "gauge", "IVR of the last monitor window over "
                     "the reference (overall: slice=\"all\")", "slice",
                     {k: f"{v:.6g}" for k, v in ratios.items()} or {"all": "1"})
            labelled("slidr_monitor_reference_ivr", "gauge", "The IVR the monitor compared the "
                     "last judged window with (the previous model on the same clicks, its live "
                     "figures, or the bundle's calibration)", "slice",
                     {k: f"{v:.6g}" for k, v in mon.ref_ivr.items()})
            labelled("slidr_monitor_window_ivr", "gauge", "IVR of the last judged monitor "
                     "window", "slice", {k: f"{v:.6g}" for k, v in mon.window_ivr.items()})
            for side, i in (("low", 0), ("high", 1)):
                labelled(f"slidr_monitor_limit_{side}", "gauge", f"The {side} limit the last "
                         "judged window's IVR was held to (the band around the reference, "
                         "widened by monitor_z standard errors)", "slice",
                         {k: f"{max(v[i], 0.0):.6g}" for k, v in mon.limits.items()})
            head("slidr_monitor_deviating_windows", "gauge",
                 "Deviating monitor windows in a row (the monitor fires at monitor_sustain)")
            L.append(f"slidr_monitor_deviating_windows {mon.deviating}")
        head("slidr_model_info", "gauge", "The model version being served")
        L.append(f'slidr_model_info{{version="{self.model_version}"}} 1')
        return "\n".join(L) + "\n"

    def snapshot(self) -> dict[str, Any]:
        """The admin `stats` answer (plain types)."""
        lat = {s: {"count": h.n, "mean_ms": (h.total / h.n * 1000) if h.n else 0.0,
                   "p50_ms_le": h.quantile(0.5) * 1000, "p99_ms_le": h.quantile(0.99) * 1000,
                   "p999_ms_le": h.quantile(0.999) * 1000}
               for s, h in self.latency.items()}
        return {"model_version": self.model_version, "uptime_s": time.time() - self.started,
                "requests": self.requests, "connections": self.connections,
                "decisions": dict(self.decisions), "invalid": dict(self.invalid),
                "fail_open": dict(self.fail_open), "errors": dict(self.errors),
                "redis_errors": self.redis_errors, "reloads_ok": self.reloads_ok,
                "reloads_failed": self.reloads_failed,
                "decision_log_dropped": self.decision_log_dropped,
                "batches": self.batch_size.n,
                "mean_batch": self.batch_size.total / max(self.batch_size.n, 1),
                "latency": lat, "rss_bytes": rss_bytes(),
                "loop_lag_ms": {"p99_le": self.loop_lag.quantile(0.99) * 1000,
                                "max_le": self.loop_lag.quantile(1.0) * 1000},
                "gc_pauses": self.gc_pause.n, "gc_pause_ms_total": self.gc_pause.total * 1000,
                "cpu_seconds": time.process_time(), "defence": dict(self.defence),
                **({"busy_poll_passes": self.busy_poll.passes,
                    "busy_poll_windows": self.busy_poll.windows} if self.busy_poll else {}),
                **self.gauges}


class _HttpResponder(asyncio.Protocol):
    """GET /metrics -> text; GET /healthz and /readyz -> 200 or 503 with a JSON body (from the
    daemon's probe); anything else 404. One request per connection."""

    def __init__(self, metrics: Metrics, probe: Any = None) -> None:
        self.metrics = metrics
        self.probe = probe
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf and b"\n\n" not in self.buf:
            if len(self.buf) > 16384:
                self._send(b"431 Request Header Fields Too Large", b"")
            return
        line = self.buf.split(b"\r\n", 1)[0].split(b" ")
        path = line[1].split(b"?")[0] if len(line) >= 2 and line[0] in (b"GET", b"HEAD") \
            else b""
        if path in (b"/metrics", b"/"):
            self._send(b"200 OK", self.metrics.render().encode())
        elif path in (b"/healthz", b"/readyz") and self.probe is not None:
            import json
            ok, detail = self.probe(path[1:].decode())
            self._send(b"200 OK" if ok else b"503 Service Unavailable",
                       (json.dumps(detail, sort_keys=True) + "\n").encode(), b"application/json")
        else:
            self._send(b"404 Not Found", b"not found\n")

    def _send(self, status: bytes, body: bytes,
              ctype: bytes = b"text/plain; version=0.0.4") -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                             + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nConnection: close\r\n\r\n" + body)
        self.transport.close()


async def serve_metrics(metrics: Metrics, host: str, port: int,
                        probe: Any = None) -> asyncio.base_events.Server:
    """The metrics port; `probe(name) -> (ok, detail)` answers /healthz and /readyz."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _HttpResponder(metrics, probe), host, port)
