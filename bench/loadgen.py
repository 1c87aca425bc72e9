"""Open-loop load generator for a msgpack-RPC scoring daemon.

Open loop: every request has a scheduled send time fixed before the run (constant spacing or
Poisson arrivals at the target rate). The generator sends whatever is due at each tick whether
or not earlier requests were answered, and a request's latency is measured from its SCHEDULED
time, so a server stall delays every request scheduled during it and shows up in the tail
(no coordinated omission). The generator's own lateness (actual send - scheduled) is recorded
separately as `send_lag`, and `service` (answer - actual send) is reported beside `latency`, so
a reader can tell generator trouble from server trouble.

One process runs one uvloop event loop with C connections; requests are spread round-robin
over the connections and every tick writes each connection's due frames in one write. With
--procs P, P processes each offer rate/P (constant arrivals interleave exactly; Poisson streams
superpose to a Poisson stream) and return their HdrHistograms in encoded form to be merged.

Every wait is bounded: connect timeout, schedule length, drain timeout. A refused connection,
a connection lost mid-run or a server that stops reading ends the run early with
`aborted: <reason>` and whatever was measured up to then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np
from slidr.bench import hist
from slidr.bench.clicks import frame, make_clicks, pack_prefixes

MAX_UNSENT_BYTES = 64 << 20  # a server that stops reading: give up rather than grow forever


@dataclass
class LoadSpec:
    host: str = "127.0.0.1"
    port: int = 7411
    rate: float = 1000.0  # requests per second, all processes together
    duration: float = 10.0  # measured seconds (after warmup)
    warmup: float = 2.0  # seconds sent but not measured
    connections: int = 8  # per process
    procs: int = 1
    arrivals: str = "constant"  # constant | poisson
    seed: int = 1
    drain: float = 2.0  # seconds to wait for answers after the last send
    tick_us: int = 100  # shortest gap between send ticks: <1000 = timerfd (us precision),
    #                     >=1000 = the loop's ms timers, 0 = spin (precise, burns a core)
    connect_timeout: float = 3.0
    pool: int = 50_000  # distinct pre-encoded clicks per process (reused cyclically)
    click_source: str = "auto"  # auto | builtin | simulate
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def check(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the bench only targets loopback, not {self.host!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if not 0 < self.rate <= 5_000_000:
            raise ValueError(f"rate must be in (0, 5e6], got {self.rate}")
        if not 0 < self.duration <= 3600 or not 0 <= self.warmup <= 600:
            raise ValueError("duration must be in (0, 3600] s and warmup in [0, 600] s")
        if not 1 <= self.connections <= 1024 or not 1 <= self.procs <= 64:
            raise ValueError("connections must be in [1, 1024] and procs in [1, 64]")
        if self.arrivals not in ("constant", "poisson"):
            raise ValueError(f"arrivals must be constant or poisson, got {self.arrivals!r}")
        n = (self.duration + self.warmup) * self.rate
        if n > 200_000_000:
            raise ValueError(f"{n:.0f} requests is more than this generator keeps track of")


def schedule_ns(spec: LoadSpec, k: int) -> np.ndarray:
    """Scheduled send times (ns from the common start) of process k's requests."""
    total = spec.warmup + spec.duration
    rate_p = spec.rate / spec.procs
    if spec.arrivals == "constant":
        n = int(math.floor(total * rate_p))
        # Global request j = i*P + k is due at j / rate: the processes interleave exactly.
        idx = np.arange(n, dtype=np.float64) * spec.procs + k
        t = idx * (1e9 / spec.rate)
        return t[t < total * 1e9].astype(np.int64)
    rng = np.random.default_rng(spec.seed * 7919 + k)
    n_est = int(total * rate_p * 1.1 + 10 * math.sqrt(total * rate_p) + 16)
    gaps = rng.exponential(1e9 / rate_p, n_est)
    t = np.cumsum(gaps)
    while t[-1] < total * 1e9:  # pragma: no cover - 10 sigma short
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1e9 / rate_p, n_est // 4 + 16))])
    return t[t < total * 1e9].astype(np.int64)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """A one-shot Linux timerfd registered with the running loop (via ctypes: Python 3.11 has
    no os.timerfd_*). `await wait_until(t_ns)` resumes at monotonic time t_ns, to within the
    scheduler's wake-up latency rather than the loop timer's 1 ms."""

    _libc: Any = None

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[None] | None = None
        self.loop.add_reader(fd, self._fired)

    @classmethod
    def create(cls) -> _TimerFd | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            if cls._libc is None:
                cls._libc = ctypes.CDLL(None, use_errno=True)
            fd = cls._libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
        except (OSError, AttributeError):
            return None
        return cls(fd) if fd >= 0 else None

    def _fired(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.fd, 8)
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    async def wait_until(self, t_ns: int) -> None:
        its = _Itimerspec(_Timespec(0, 0), _Timespec(t_ns // 1_000_000_000, t_ns % 1_000_000_000))
        self.fut = self.loop.create_future()
        if self._libc.timerfd_settime(self.fd, 1, ctypes.byref(its), None) != 0:  # ABSTIME
            self.fut = None
            await asyncio.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))
            return
        await self.fut

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Conn(asyncio.Protocol):
    def __init__(self, w: _Worker, idx: int) -> None:
        self.w = w
        self.idx = idx
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        w = self.w
        now = time.monotonic_ns() - w.t0
        self.unpacker.feed(data)
        recv = w.recv
        n = recv.shape[0]
        for msg in self.unpacker:
            try:
                msgid = msg[1]
                if msg[0] != 1 or not 0 <= msgid < n or recv[msgid] >= 0:
                    w.bad += 1
                    continue
            except (TypeError, IndexError, KeyError):
                w.bad += 1
                continue
            recv[msgid] = now
            err = msg[2]
            if err is not None:
                if w.sched[msgid] >= w.warm_ns:
                    code = err[0] if isinstance(err, list | tuple) and err else err
                    w.errors[str(code)] += 1
                continue
            res = msg[3]
            reason = res.get("reason") if isinstance(res, dict) else None
            if reason != "model" and w.sched[msgid] >= w.warm_ns:
                w.reasons[str(reason)] += 1
        w.outstanding_check()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.w
        if not w.finished:
            why = f": {exc}" if exc else " (closed by the server)"
            w.abort(f"connection {self.idx} to {w.spec.target} lost after "
                    f"{(time.monotonic_ns() - w.t0) / 1e9 if w.t0 else 0.0:.2f}s{why}")


class _Worker:
    """One process's share of the load: its schedule, connections and raw timestamps."""

    def __init__(self, spec: LoadSpec, k: int) -> None:
        self.spec = spec
        self.k = k
        self.sched = schedule_ns(spec, k)
        n = self.sched.shape[0]
        self.send = np.full(n, -1, dtype=np.int64)
        self.recv = np.full(n, -1, dtype=np.int64)
        self.warm_ns = int(spec.warmup * 1e9)
        self.end_ns = int((spec.warmup + spec.duration) * 1e9)
        clicks, self.click_source = make_clicks(min(spec.pool, max(n, 1)),
                                                seed=spec.seed * 1000 + k, tag=f"p{k}-",
                                                source=spec.click_source)
        self.prefixes = pack_prefixes(clicks)
        self.errors: dict[str, int] = defaultdict(int)
        self.reasons: dict[str, int] = defaultdict(int)
        self.bad = 0
        self.t0 = 0
        self.sent_upto = 0
        self.conns: list[_Conn] = []
        self.aborted: str | None = None
        self.finished = False
        self.done: asyncio.Future[None] | None = None
        self.gave_up_ns = 0

    def abort(self, reason: str) -> None:
        if self.aborted is None:
            self.aborted = reason
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def outstanding_check(self) -> None:
        # Drain finished: everything scheduled was sent and answered.
        if (self.sent_upto == self.sched.shape[0] and self.done is not None
                and not self.done.done() and bool((self.recv[: self.sent_upto] >= 0).all())):
            self.done.set_result(None)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        for i in range(spec.connections):
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda i=i: _Conn(self, i), spec.host, spec.port),
                    spec.connect_timeout)
            except (TimeoutError, OSError) as e:
                why = "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
                self.aborted = f"cannot connect to {spec.target}: {why}"
                return
            self.conns.append(proto)

    async def drive(self, start_at_ns: int) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        spec = self.spec
        wall0_ms = int(time.time() * 1000 + (start_at_ns - time.monotonic_ns()) / 1e6)
        delay = (start_at_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        self.t0 = start_at_ns
        sched = self.sched
        transports = [c.transport for c in self.conns]
        tick = spec.tick_us / 1e6
        sched_ms = (sched // 1_000_000 + wall0_ms).tolist()
        # The loop's own timers have 1 ms granularity (libuv), which would add ~0.7 ms of send
        # lag to every request. A timerfd armed at the next due time (CLOCK_MONOTONIC, the
        # clock of time.monotonic_ns) wakes epoll with microsecond precision, no thread, no GIL.
        timer = _TimerFd.create() if 0 < spec.tick_us < 1000 else None
        try:
            await self._send_loop(start_at_ns, sched, sched_ms, transports, tick, timer)
        finally:
            if timer is not None:
                timer.close()
        # Drain: wait for the answers, bounded.
        if self.aborted is None:
            self.outstanding_check()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.done), spec.drain)
        self.gave_up_ns = time.monotonic_ns() - start_at_ns
        self.finished = True
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        await asyncio.sleep(0)

    async def _send_loop(self, start_at_ns: int, sched: np.ndarray, sched_ms: list[int],
                         transports: list[Any], tick: float, timer: _TimerFd | None) -> None:
        spec = self.spec
        n = sched.shape[0]
        C = len(transports)
        prefixes = self.prefixes
        M = len(prefixes)
        i = 0
        while i < n and self.aborted is None:
            rel = time.monotonic_ns() - start_at_ns
            j = int(np.searchsorted(sched, rel, side="right"))
            if j > i:
                frames = [frame(m, prefixes[m % M], sched_ms[m]) for m in range(i, j)]
                for c in range(min(C, j - i)):
                    t = transports[c_idx := (i + c) % C]
                    if t is None or t.is_closing():
                        self.abort(f"connection {c_idx} to {spec.target} lost after "
                                   f"{(time.monotonic_ns() - start_at_ns) / 1e9:.2f}s "
                                   "(closed by the server)")
                        break
                    t.write(b"".join(frames[c::C]))
                    if t.get_write_buffer_size() > MAX_UNSENT_BYTES:
                        self.abort(f"{spec.target} stopped reading "
                                   f"({MAX_UNSENT_BYTES >> 20} MiB unsent on one connection)")
                        break
                self.send[i:j] = time.monotonic_ns() - start_at_ns
                i = j
                self.sent_upto = i
            if i < n:
                if timer is not None:
                    tick_ns = int(tick * 1e9)
                    await timer.wait_until(max(start_at_ns + int(sched[i]),
                                               time.monotonic_ns() + tick_ns))
                else:
                    wait = (sched[i] - (time.monotonic_ns() - start_at_ns)) / 1e9
                    await asyncio.sleep(max(wait, tick) if tick > 0 else 0)

    def result(self) -> dict[str, Any]:
        """Raw counts and encoded histograms of the measured window (JSON-able)."""
        sched, send, recv = self.sched, self.send, self.recv
        win = sched >= self.warm_ns
        sent = send >= 0
        answered = recv >= 0
        lat_h, svc_h, lag_h = hist.new(), hist.new(), hist.new()
        m_ans = win & answered
        hist.record_ns(lat_h, recv[m_ans] - sched[m_ans])
        hist.record_ns(svc_h, recv[m_ans] - send[m_ans])
        m_sent = win & sent
        hist.record_ns(lag_h, send[m_sent] - sched[m_sent])
        # Sent but never answered: they waited at least until we gave up on them.
        m_lost = m_sent & ~answered
        if self.gave_up_ns and m_lost.any():
            hist.record_ns(lat_h, self.gave_up_ns - sched[m_lost])
        in_window_recv = answered & (recv >= self.warm_ns) & (recv < self.end_ns)
        return {
            "proc": self.k,
            "scheduled": int(win.sum()),
            "sent": int(m_sent.sum()),
            "answered": int(m_ans.sum()),
            "unanswered": int(m_lost.sum()),
            "not_sent": int((win & ~sent).sum()),
            "answered_in_window": int(in_window_recv.sum()),
            "warmup_requests": int((~win).sum()),
            "errors": dict(self.errors),
            "reasons": dict(self.reasons),
            "bad_responses": self.bad,
            "aborted": self.aborted,
            "click_source": self.click_source,
            "ran_s": self.gave_up_ns / 1e9,
            "hist": {"latency": hist.encode(lat_h), "service": hist.encode(svc_h),
                     "send_lag": hist.encode(lag_h)},
        }


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def run_worker(spec: LoadSpec, k: int, ready: Any = None, wait_go: Any = None,
               on_start: Any = None) -> dict[str, Any]:
    """Run process k's share in a fresh event loop. `ready(ok)` is called once connected and
    `wait_go()` returns the common start (monotonic ns) or None to stand down."""
    w = _Worker(spec, k)
    loop = _new_loop()
    try:
        loop.run_until_complete(w.connect())
        if ready is not None:
            ready(w.aborted is None)
        if w.aborted is None:
            start = wait_go() if wait_go is not None else time.monotonic_ns() + 20_000_000
            if on_start is not None and start is not None:
                on_start(start)
            if start is None:
                w.abort("stood down: another generator process failed to start")
            else:
                loop.run_until_complete(w.drive(start))
        for c in w.conns:
            if c.transport is not None:
                c.transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return w.result()


def _child(spec_d: dict[str, Any], k: int, q: Any, go: Any, start_at: Any) -> None:
    spec = LoadSpec(**spec_d)

    def ready(ok: bool) -> None:
        q.put(json.dumps({"ready": k, "ok": ok}))

    def wait_go() -> int | None:
        if not go.wait(60):
            return None
        v = int(start_at.value)
        return v if v > 0 else None

    try:
        res = run_worker(spec, k, ready, wait_go)
    except Exception as e:  # noqa: BLE001 - reported to the parent as an abort, not a hang
        res = {"proc": k, "aborted": f"generator process {k} failed: {type(e).__name__}: {e}"}
    # JSON of encoded histograms between processes, never pickled histogram objects.
    q.put(json.dumps({"result": res}))


def run_load(spec: LoadSpec, on_start: Any = None) -> dict[str, Any]:
    """Run the load; return the merged report (see `merge`). `on_start(t_ns)` is called with
    the common start instant (CLOCK_MONOTONIC ns) just before the schedule begins."""
    spec.check()
    t_start = time.time()
    if spec.procs == 1:
        parts = [run_worker(spec, 0, on_start=on_start)]
    else:
        parts = _run_procs(spec, on_start)
    rep = merge(spec, parts)
    rep["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start))
    return rep


def _run_procs(spec: LoadSpec, on_start: Any = None) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("q", 0)
    procs = [ctx.Process(target=_child, args=(asdict(spec), k, q, go, start_at), daemon=True)
             for k in range(spec.procs)]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    ready_ok = 0
    failed = False
    deadline = time.monotonic() + 60
    try:
        while ready_ok + len(results) < spec.procs and time.monotonic() < deadline:
            try:
                msg = json.loads(q.get(timeout=0.5))
            except queue_mod.Empty:
                if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs):
                    failed = True
                    break
                continue
            if "ready" in msg:
                ready_ok += 1 if msg["ok"] else 0
                failed |= not msg["ok"]
                if failed:
                    break
            else:
                results[msg["result"]["proc"]] = msg["result"]
        if not failed and ready_ok == spec.procs:
            start_at.value = time.monotonic_ns() + 50_000_000
            if on_start is not None:
                on_start(int(start_at.value))
        else:
            failed = True
        go.set()
        limit = time.monotonic() + spec.warmup + spec.duration + spec.drain + 60
        while len(results) < spec.procs and time.monotonic() < limit:
            try:
                msg = json.loads(q.get(timeout=0.5))
            except queue_mod.Empty:
                if all(not p.is_alive() for p in procs):
                    # Give the queue feeder a moment, then stop waiting.
                    with contextlib.suppress(queue_mod.Empty):
                        msg = json.loads(q.get(timeout=1.0))
                        if "result" in msg:
                            results[msg["result"]["proc"]] = msg["result"]
                    break
                continue
            if "result" in msg:
                results[msg["result"]["proc"]] = msg["result"]
    finally:
        for p in procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(2)
    for k in range(spec.procs):
        results.setdefault(k, {"proc": k, "aborted": f"generator process {k} did not report"})
    return [results[k] for k in range(spec.procs)]


_COUNTS = ("scheduled", "sent", "answered", "unanswered", "not_sent", "answered_in_window",
           "warmup_requests", "bad_responses")


def merge(spec: LoadSpec, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-process results: counts add, histograms merge via their encoded form."""
    tot: dict[str, Any] = {k: sum(int(p.get(k, 0)) for p in parts) for k in _COUNTS}
    errors: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    for p in parts:
        for k, v in p.get("errors", {}).items():
            errors[k] += v
        for k, v in p.get("reasons", {}).items():
            reasons[k] += v
    hists = {name: hist.merge(p.get("hist", {}).get(name, "") for p in parts)
             for name in ("latency", "service", "send_lag")}
    aborted = next((p["aborted"] for p in parts if p.get("aborted")), None)
    ran = max((float(p.get("ran_s", 0.0)) for p in parts), default=0.0)
    measured = min(spec.duration, max(0.0, ran - spec.warmup)) if aborted else spec.duration
    fail_open = {r.split(":", 1)[1] if r.startswith("fail_open:") else r: n
                 for r, n in reasons.items()}
    rep: dict[str, Any] = {
        "target": spec.target,
        "label": spec.label,
        "config": {k: v for k, v in asdict(spec).items() if k not in ("extra",)},
        "offered_rate": spec.rate,
        "measured_s": round(measured, 3),
        "achieved_rate": (tot["answered_in_window"] / measured) if measured > 0 else 0.0,
        "sent_rate": (tot["sent"] / measured) if measured > 0 else 0.0,
        **tot,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "fail_open": fail_open,
        "fail_open_count": sum(fail_open.values()),
        "latency_ms": hist.summary(hists["latency"]),
        "service_ms": hist.summary(hists["service"]),
        "send_lag_ms": hist.summary(hists["send_lag"]),
        "hist": {k: hist.encode(h) for k, h in hists.items()},
        "click_source": next((p["click_source"] for p in parts if p.get("click_source")), None),
        "aborted": aborted,
    }
    return rep


def one_line(rep: dict[str, Any]) -> str:
    """A short human summary of a run report."""
    lat = rep.get("latency_ms", {})
    lag = rep.get("send_lag_ms", {})

    def f(d: dict[str, Any], k: str) -> str:
        v = d.get(k)
        return "-" if v is None else f"{v:.3f}"

    s = (f"offered {rep.get('offered_rate', 0):,.0f}/s achieved {rep.get('achieved_rate', 0):,.0f}/s | "
         f"latency ms p50 {f(lat, 'p50')} p90 {f(lat, 'p90')} p99 {f(lat, 'p99')} "
         f"p99.9 {f(lat, 'p99_9')} max {f(lat, 'max')} | send lag p99 {f(lag, 'p99')} "
         f"| errors {rep.get('error_count', 0)} fail-open {rep.get('fail_open_count', 0)} "
         f"unanswered {rep.get('unanswered', 0)}")
    if rep.get("aborted"):
        s += f" | ABORTED: {rep['aborted']}"
    return s


if __name__ == "__main__":  # pragma: no cover - manual smoke: python -m slidr.bench.loadgen PORT
    port = int(sys.argv[1])
    r = run_load(LoadSpec(port=port, rate=float(os.environ.get("RATE", 2000)), duration=3,
                          warmup=1))
    print(one_line(r))
