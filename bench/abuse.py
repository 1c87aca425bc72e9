"""Hostile traffic against a real slidrd on loopback: what one bad client costs the others.

    slidr bench abuse [--scenarios poison,future,flood,waves,trickle,store] [--out DIR]
    python -m slidr.bench.abuse ...

Scenarios (each starts its own daemon with the embedded store, default settings unless named):

* poison  -- rounds of one poison click (device a list, a map, a 1,000-level structure) sent
  at the same moment as 255 valid clicks from 4 other connections: how many valid clicks got a
  model decision, whether the poison got an error naming its field, answers per request.
* future  -- the same stream of real clicks through two fresh daemons, one stream with a
  click stamped in 2099 in the middle: how many other clicks scored differently.
* flood   -- 200 connections each send 256 KiB of zero bytes and never read: daemon RSS
  growth over 10 s, and the latency of a normal client's ping throughout.
* waves   -- 16 waves of 3,000 concurrent connections, each opened then closed: RSS after
  the first wave and after the last.
* trickle -- 5,000 connections that trickle one byte every 2 s: whether a new client is
  answered within 1 s throughout, and how many tricklers the daemon closed.
* store   -- the embedded store in-process (no sockets) at its default memory cap: 10M clicks
  from distinct users, sessions and IPs in batches of 512; keys held, evictions, RSS, the
  longest batch (wall and CPU).
* store_daemon -- 600,000 clicks from distinct users, sessions and IPs as fast as 8
  connections (16 requests in flight each) get answers, through a daemon whose store is capped at 64 MiB (so most of the
  run evicts): answers by kind (no `store_down`), deadline fail-opens, RSS, evictions, the
  longest loop stall (slidr_loop_lag_seconds).
* store_full -- 10M clicks from distinct users, sessions and IPs at full rate through a daemon
  with every default (its store at the default cap), offered open-loop at 20,000 clicks/s in
  `score_many` requests of 16 clicks over 8 connections; the daemon on CPU 0 and this
  generator on CPU 1. First, 60 s of the same load against the do-nothing echo server: the
  share of clicks it answers more than 4 ms after they were sent is the machine's floor.
  RSS against the cap, answers by kind, deadline fail-opens, evictions, the longest loop stall.
* store_fill -- the embedded store in-process at its default cap, driven as the daemon's inline
  batcher drives it (hashing, counting, finishing) with 10M distinct users, sessions and IPs
  in batches of 16 stamped as a 20,000 clicks/s stream would be (a simulated clock: as fast as
  the CPU allows); every batch timed (wall and thread CPU), each one over 5 ms listed with what
  the store did in it (evictions, entries examined, index slots probed), minor page faults
  and Python collections; the store's worst single-batch work.

--store-clicks N sets the click count of the store scenarios (store, store_daemon, store_full,
store_fill): a shorter run of the same shape.

Prints one JSON object (and writes it to --out/abuse.json when given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from slidr.bench.side import cpu_s

SCENARIOS = ("poison", "future", "flood", "waves", "trickle", "store", "store_daemon",
             "store_full", "store_fill")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _click(i: int, ts: int, tag: str = "a", **extra: Any) -> dict[str, Any]:
    li = i % 2 == 0
    c = {"click_id": f"{tag}{i}", "ts": ts, "session_id": f"{tag}s{i % 97}",
         "user_id": f"{tag}u{i % 41}" if li else None, "ip": f"10.1.{i % 7}.{i % 13}",
         "device": ("desktop", "mobile", "app")[i % 3], "logged_in": li,
         "tz_offset_min": 60, "user_agent": "Mozilla/5.0", "ad_id": f"ad{i % 5}"}
    c.update(extra)
    return c


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _answers(r: asyncio.StreamReader, want: int, timeout: float) -> dict[int, list[Any]]:
    """Responses until `want` distinct ids; a second answer to an id is kept as a list."""
    up = msgpack.Unpacker(raw=False, strict_map_key=False)
    got: dict[int, list[Any]] = {}
    end = time.monotonic() + timeout
    while len(got) < want:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            data = await asyncio.wait_for(r.read(1 << 16), left)
        except TimeoutError:
            break
        if not data:
            break
        up.feed(data)
        for m in up:
            if type(m) is list and m and m[0] == 1:
                got.setdefault(m[1], []).append(m)
    return got


def _unpack_all(data: bytes) -> list[Any]:
    up = msgpack.Unpacker(raw=False, strict_map_key=False)
    up.feed(data)
    return list(up)


# ------------------------------------------------------------------ poison
async def _poison_rounds(port: int, rounds: int) -> dict[str, Any]:
    valid_conns = [await _open(port) for _ in range(4)]
    bad_r, bad_w = await _open(port)
    poisons = [("device", {"device": ["app"]}), ("device", {"device": {"a": 1}}),
               ("device", None)]
    out = {"rounds": rounds, "valid_sent": 0, "valid_model": 0, "valid_fail_open": 0,
           "valid_errors": 0, "valid_unanswered": 0, "poison_refused_naming_field": 0,
           "poison_other": 0, "duplicate_answers": 0}
    ts = _now_ms() - 60_000
    for r in range(rounds):
        field, extra = poisons[r % len(poisons)]
        if extra is None:  # a 1,000-level structure where the device belongs
            c = _click(10_000 + r, ts + r, "p")
            body = msgpack.packb(c)
            # replace the device value with 1,000 nested arrays
            dev = msgpack.packb(c["device"])
            bomb = b"\x91" * 1000 + msgpack.packb("app")
            poison = b"\x94\x00" + msgpack.packb(9_000_000 + r) + msgpack.packb("score") + \
                b"\x91" + body.replace(b"\xa6device" + dev, b"\xa6device" + bomb, 1)
        else:
            poison = msgpack.packb([0, 9_000_000 + r, "score", [_click(10_000 + r, ts + r, "p",
                                                                       **extra)]])
        frames = []
        for k in range(4):
            n = 64 if k < 3 else 63
            frames.append(b"".join(msgpack.packb([0, r * 1000 + j, "score",
                                                  [_click(r * 1000 + j, ts + r, f"v{k}-")]])
                                   for j in range(n)))
        for (_, w), f in zip(valid_conns, frames, strict=True):
            w.write(f)
        bad_w.write(poison)
        await asyncio.gather(*(w.drain() for _, w in valid_conns), bad_w.drain())
        res = await asyncio.gather(*(_answers(rd, 64 if k < 3 else 63, 10.0)
                                     for k, (rd, _) in enumerate(valid_conns)),
                                   _answers(bad_r, 1, 10.0))
        for k, got in enumerate(res[:4]):
            n = 64 if k < 3 else 63
            out["valid_sent"] += n
            out["valid_unanswered"] += n - len(got)
            for msgs in got.values():
                out["duplicate_answers"] += len(msgs) - 1
                m = msgs[0]
                if m[2] is not None:
                    out["valid_errors"] += 1
                elif m[3]["reason"] == "model":
                    out["valid_model"] += 1
                else:
                    out["valid_fail_open"] += 1
        pg = res[4]
        if not pg:
            out["poison_other"] += 1
        for msgs in pg.values():
            out["duplicate_answers"] += len(msgs) - 1
            m = msgs[0]
            if m[2] is not None and (f"'{field}'" in str(m[2][1]) or "nested" in str(m[2][1])):
                out["poison_refused_naming_field"] += 1
            else:
                out["poison_other"] += 1
    for _, w in [*valid_conns, (bad_r, bad_w)]:
        w.close()
    return out


def poison(rounds: int = 20) -> dict[str, Any]:
    from slidr.bench.daemon import DaemonRun
    with DaemonRun(daemon_args={"deadline_ms": 2000}) as d:
        res = asyncio.run(_poison_rounds(d.port, rounds))
        res["daemon_alive"] = d.alive()
    res["note"] = "deadline_ms 2000 so that a loaded machine's stalls are not counted as poison"
    return res


# ------------------------------------------------------------------ future
def _scores(port: int, clicks: list[dict[str, Any]]) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        out: dict[str, Any] = {}
        for i, c in enumerate(clicks):
            s.sendall(msgpack.packb([0, i, "score", [c]]))
            while True:
                m = next(up, None)
                if m is not None:
                    break
                up.feed(s.recv(1 << 16))
            out[c["click_id"]] = m[3]["score"] if m[2] is None else ("error", m[2][0])
        return out


def future(n: int = 3000) -> dict[str, Any]:
    from slidr.bench.daemon import DaemonRun
    t0 = _now_ms() - n * 40
    stream = [_click(i, t0 + i * 37) for i in range(n)]
    bad = dict(_click(n // 2, 4_070_908_800_000), click_id="from-2099")  # 2099-01-01
    with_bad = stream[: n // 2] + [bad] + stream[n // 2:]
    with DaemonRun(daemon_args={"deadline_ms": 2000}) as d:
        a = _scores(d.port, stream)
    with DaemonRun(daemon_args={"deadline_ms": 2000}) as d:
        b = _scores(d.port, with_bad)
    diff = sum(1 for k, v in a.items() if b.get(k) != v)
    return {"clicks": n, "scored_differently": diff, "the_2099_click": b["from-2099"]}


# ------------------------------------------------------------------ flood
async def _ping_loop(port: int, stop: asyncio.Event, lat: list[float], fails: list[int]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        try:
            r, w = await asyncio.wait_for(_open(port), 5.0)
            w.write(msgpack.packb([0, 1, "ping", []]))
            got = await _answers(r, 1, 5.0)
            w.close()
            if got:
                lat.append(time.perf_counter() - t)
            else:
                fails[0] += 1
        except (OSError, TimeoutError):
            fails[0] += 1
        await asyncio.sleep(0.2)


async def _connect_many(port: int, n: int, rcvbuf: int | None = None) -> list[socket.socket]:
    """Up to n non-blocking loopback connections to port (refused ones are skipped)."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    for _ in range(n):
        s = socket.socket()
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


async def _flood(port: int, pid: int, conns: int, kib: int, seconds: float) -> dict[str, Any]:
    rss0 = _rss_mib(pid)
    stop = asyncio.Event()
    lat: list[float] = []
    fails = [0]
    pinger = asyncio.create_task(_ping_loop(port, stop, lat, fails))
    blob = b"\x00" * (kib << 10)
    socks = await _connect_many(port, conns, rcvbuf=4096)  # never read: keep it small

    async def push(s: socket.socket) -> None:
        view = memoryview(blob)
        while view and not stop.is_set():
            try:
                k = s.send(view)
                view = view[k:]
            except BlockingIOError:
                await asyncio.sleep(0.01)
            except OSError:
                return

    pushers = [asyncio.create_task(push(s)) for s in socks]
    peak = rss0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        await asyncio.sleep(0.5)
        peak = max(peak, _rss_mib(pid))
    stop.set()
    for p in pushers:
        p.cancel()
    await pinger
    open_left = 0
    for s in socks:
        s.setblocking(False)
        try:
            while s.recv(1 << 16):  # what the daemon sent, then EOF if it closed
                pass
        except BlockingIOError:
            open_left += 1  # no EOF: still open
        except OSError:
            pass
        s.close()
    lat.sort()
    return {"connections": len(socks), "kib_each": kib, "seconds": seconds,
            "rss_before_mib": round(rss0, 1), "rss_peak_mib": round(peak, 1),
            "rss_growth_mib": round(peak - rss0, 1), "pings_answered": len(lat),
            "pings_failed": fails[0], "ping_max_s": round(lat[-1], 3) if lat else None,
            "ping_p50_s": round(lat[len(lat) // 2], 4) if lat else None,
            "flooders_still_open_at_end": open_left}


def flood(conns: int = 200, kib: int = 256, seconds: float = 10.0) -> dict[str, Any]:
    from slidr.bench.daemon import DaemonRun
    with DaemonRun() as d:
        assert d.proc is not None
        res = asyncio.run(_flood(d.port, d.proc.pid, conns, kib, seconds))
        res["daemon_alive"] = d.alive()
    return res


# ------------------------------------------------------------------ waves
async def _wave(port: int, n: int) -> int:
    async def one() -> asyncio.StreamWriter | None:
        try:
            _, w = await _open(port)
            return w
        except OSError:
            return None
    ws = []
    for k in range(0, n, 500):
        ws += await asyncio.gather(*(one() for _ in range(min(500, n - k))))
    await asyncio.sleep(0.3)
    ok = sum(1 for w in ws if w is not None)
    for w in ws:
        if w is not None:
            w.close()
    await asyncio.sleep(0.3)
    return ok


def waves(n: int = 3000, count: int = 16) -> dict[str, Any]:
    from slidr.bench.daemon import DaemonRun
    with DaemonRun() as d:
        assert d.proc is not None
        pid = d.proc.pid
        rss0 = _rss_mib(pid)
        opened = [asyncio.run(_wave(d.port, n))]
        time.sleep(0.5)
        rss1 = _rss_mib(pid)
        for _ in range(count - 1):
            opened.append(asyncio.run(_wave(d.port, n)))
        time.sleep(0.5)
        rss_end = _rss_mib(pid)
        alive = d.alive()
    return {"waves": count, "per_wave": n, "opened": opened, "rss_start_mib": round(rss0, 1),
            "rss_after_first_mib": round(rss1, 1), "rss_after_last_mib": round(rss_end, 1),
            "growth_after_first_mib": round(rss_end - rss1, 1), "daemon_alive": alive}


# ------------------------------------------------------------------ trickle
async def _trickle(port: int, n: int, seconds: float) -> dict[str, Any]:
    socks = await _connect_many(port, n)
    # a 64-byte score request, one byte at a time
    msg = msgpack.packb([0, 1, "score", [_click(1, _now_ms(), "t")]])
    stop = asyncio.Event()
    closed = [0]

    async def trickle(s: socket.socket) -> None:
        for b in msg:
            if stop.is_set():
                return
            try:
                s.send(bytes([b]))
            except OSError:
                closed[0] += 1
                return
            await asyncio.sleep(2.0)

    tasks = [asyncio.create_task(trickle(s)) for s in socks]
    lat: list[float] = []
    fails = 0
    why: list[str] = []
    t_start = time.monotonic()
    t_end = t_start + seconds
    while time.monotonic() < t_end:
        t = time.perf_counter()
        try:
            r, w = await asyncio.wait_for(_open(port), 1.0)
            t_conn = time.perf_counter() - t
            w.write(msgpack.packb([0, 1, "ping", []]))
            try:
                data = await asyncio.wait_for(r.read(4096), 1.0)
            except TimeoutError:
                data = b""
            w.close()
            msg = next(iter(_unpack_all(data)), None)
            if msg is not None and msg[0] == 1:
                lat.append(time.perf_counter() - t)
            else:
                fails += 1
                what = ("refused: " + str(msg[2][0][1])[:40]) if msg is not None else \
                    f"no answer (connect took {t_conn:.2f} s)"
                why.append(f"{time.monotonic() - t_start:.1f}s: {what}")
        except (OSError, TimeoutError) as e:
            fails += 1
            why.append(f"{time.monotonic() - t_start:.1f}s: {type(e).__name__}")
        await asyncio.sleep(0.5)
    stop.set()
    for t in tasks:
        t.cancel()
    shut = 0
    for s in socks:
        try:
            if s.recv(1 << 16) == b"":
                shut += 1
        except BlockingIOError:
            pass
        except OSError:
            shut += 1
        s.close()
    lat.sort()
    return {"tricklers": len(socks), "seconds": seconds, "new_clients_answered": len(lat),
            "new_clients_not_answered_within_1s": fails, "failures": why[:20],
            "new_client_max_s": round(lat[-1], 3) if lat else None,
            "tricklers_closed_by_daemon": max(shut, closed[0])}


def trickle(n: int = 5000, seconds: float = 20.0) -> dict[str, Any]:
    from slidr.bench.daemon import DaemonRun
    with DaemonRun() as d:
        assert d.proc is not None
        c0 = cpu_s(d.proc.pid)
        t0 = time.monotonic()
        res = asyncio.run(_trickle(d.port, n, seconds))
        res["daemon_cpu_pct"] = round(100 * (cpu_s(d.proc.pid) - c0)
                                      / (time.monotonic() - t0), 1)
        res["daemon_alive"] = d.alive()
    return res


# ------------------------------------------------------------------ store
def store(clicks: int = 10_000_000, batch: int = 512) -> dict[str, Any]:
    import numpy as np
    from slidr.slidrd.config import Config
    from slidr.slidrd.server import make_store

    from slidr.kernel import FeatureKernel
    cfg = Config(registry="unused")
    st = make_store(cfg)
    k = FeatureKernel(st, use_native=True)
    from slidr.contract import ClickBatch
    rss0 = _rss_mib(os.getpid())
    t0 = _now_ms() - clicks
    worst = worst_cpu = 0.0
    worst_at = over_10ms = 0
    t_start = time.perf_counter()
    for s in range(0, clicks, batch):
        n = min(batch, clicks - s)
        ids = [f"{s + i}" for i in range(n)]
        b = ClickBatch(ts=np.arange(t0 + s, t0 + s + n, dtype=np.int64),
                       user_key=["u\x00" + x for x in ids], session_id=ids,
                       ip=[f"10.{(s + i) >> 16 & 255}.{(s + i) >> 8 & 255}.{(s + i) & 255}"
                           for i in range(n)],
                       device=np.zeros(n, dtype=np.uint8), logged_in=np.ones(n, dtype=np.uint8),
                       tz_offset_min=np.zeros(n, dtype=np.int16))
        t = time.perf_counter()
        c = time.thread_time()
        k.raw(b)
        w = time.perf_counter() - t
        cpu = time.thread_time() - c
        if w > worst:
            worst, worst_at = w, s
        worst_cpu = max(worst_cpu, cpu)
        over_10ms += w > 0.010
    took = time.perf_counter() - t_start
    stats = st.stats()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"clicks": clicks, "batch": batch, "seconds": round(took, 1),
            "store": {k2: v for k2, v in stats.items() if k2 != "entry_bytes"},
            "rss_start_mib": round(rss0, 1), "rss_end_mib": round(_rss_mib(os.getpid()), 1),
            "peak_rss_mib": round(peak, 1), "longest_batch_ms": round(worst * 1000, 2),
            "longest_batch_at_click": worst_at,
            "longest_batch_cpu_ms": round(worst_cpu * 1000, 2),
            "batches_over_10ms": int(over_10ms)}


def store_fill(clicks: int = 10_000_000, batch: int = 16, rate: float = 20_000.0,
               slow_ms: float = 5.0, jump_at: int = 0, jump_h: float = 72.0,
               sweep_every: int = 0) -> dict[str, Any]:
    """The embedded store at its default cap, driven in-process the way the daemon's inline
    batcher drives it (FeatureKernel.features: hashing, counting, finishing) with `clicks`
    distinct users, sessions and IPs in batches of `batch`, stamped as a `rate` clicks/s
    stream would be (a simulated clock: it runs as fast as the CPU allows). Every batch is
    timed (wall and thread CPU); each one over `slow_ms` (or over 1 ms of CPU) is listed with
    what happened in it: keys evicted, entries the store examined (sweep and eviction), index
    slots probed, minor page faults, Python collections. With `jump_at` > 0 the clock jumps `jump_h` hours ahead at that click (traffic
    back after a pause: every key held is then expired and the sweep frees them);
    `sweep_every` > 0 overrides the store's sweep step (an A/B of the sweep's granularity)."""
    import gc

    import numpy as np
    from slidr.bench.hiccup import ProcWatch, explain
    from slidr.slidrd.config import Config
    from slidr.slidrd.server import make_store

    from slidr.contract import ClickBatch
    from slidr.kernel import FeatureKernel
    cfg = Config(registry="unused")
    if sweep_every > 0:
        from slidr.slidrd.server import embedded_max_keys

        from slidr.kernel import embedded_store
        st = embedded_store(True, capacity_hint=cfg.embedded_capacity, sweep_every=sweep_every,
                            max_keys=embedded_max_keys(cfg.embedded_max_mb))
    else:
        st = make_store(cfg)
    k = FeatureKernel(st, use_native=True)
    nb = -(-clicks // batch)
    wall = np.zeros(nb, dtype=np.int64)
    cpu = np.zeros(nb, dtype=np.int64)
    gcs: list[tuple[int, int, int]] = []  # (start ns, duration ns, generation)
    g0 = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            g0[0] = time.perf_counter_ns()
        else:
            gcs.append((g0[0], time.perf_counter_ns() - g0[0], int(info["generation"])))
    gc.callbacks.append(on_gc)
    work = getattr(st, "work", None)
    slow: list[dict[str, Any]] = []
    worst_work = [0, 0]
    t0_ms = _now_ms() - 86_400_000
    t1_ms = t0_ms + int(jump_h * 3_600_000)
    dev = np.zeros(batch, dtype=np.uint8)
    li = np.ones(batch, dtype=np.uint8)
    tz = np.zeros(batch, dtype=np.int16)
    rss0 = _rss_mib(os.getpid())
    pc, tt, ru = time.perf_counter_ns, time.thread_time_ns, resource.getrusage
    self_ = resource.RUSAGE_SELF
    full_at = None
    spans: list[tuple[float, float]] = []
    # pinned to one CPU, watched from the other: steal and run-queue wait around slow batches
    old_cpus = os.sched_getaffinity(0)
    mine = max(old_cpus) if len(old_cpus) >= 2 else None
    if mine is not None:
        os.sched_setaffinity(0, {mine})
    watch = ProcWatch(os.getpid(), mine, 0.005,
                      min(old_cpus) if mine is not None else None).start()
    t_start = time.perf_counter()
    try:
        for j in range(nb):
            s = j * batch
            n = min(batch, clicks - s)
            ids = [str(i) for i in range(s, s + n)]
            if jump_at and s >= jump_at:
                t0_ms = t1_ms
            b = ClickBatch(ts=t0_ms + (np.arange(s, s + n, dtype=np.int64) * 1000) // int(rate),
                           user_key=["u\x00" + x for x in ids], session_id=ids,
                           ip=[f"{10 + (i >> 24)}.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
                               for i in range(s, s + n)],
                           device=dev[:n], logged_in=li[:n], tz_offset_min=tz[:n])
            ng = len(gcs)
            ev = st.evicted
            w0 = work() if work else None
            f0 = ru(self_).ru_minflt
            t, c = pc(), tt()
            k.features(b)
            dw, dc = pc() - t, tt() - c
            wall[j] = dw
            cpu[j] = dc
            if w0 is not None:
                w1 = work()
                dwk = (w1[0] - w0[0], w1[1] - w0[1])
                if dwk[0] > worst_work[0]:
                    worst_work[0] = dwk[0]
                if dwk[1] > worst_work[1]:
                    worst_work[1] = dwk[1]
            if full_at is None and st.evicted:
                full_at = s
            if dw > slow_ms * 1e6 or dc > 1e6:  # slow, or over 1 ms of CPU
                ent = {"batch": j, "click": s, "wall_ms": round(dw / 1e6, 2),
                       "cpu_ms": round(dc / 1e6, 2), "evicted": st.evicted - ev,
                       "minor_faults": ru(self_).ru_minflt - f0,
                       "gc": [(g, round(d / 1e6, 2)) for (a, d, g) in gcs[ng:]]}
                if w0 is not None:
                    ent["examined"], ent["probes"] = dwk
                slow.append(ent)
                spans.append((t / 1e9, (t + dw) / 1e9))
    finally:
        gc.callbacks.remove(on_gc)
        wsamples = watch.stop()
        os.sched_setaffinity(0, old_cpus)
    took = time.perf_counter() - t_start
    # what this thread and its CPU did around each slow batch (perf_counter and monotonic are
    # the same clock on Linux): on CPU, waiting for it, stolen by the hypervisor
    for ent, (a, b2) in zip(slow, spans, strict=True):
        ent["cpu"] = explain(wsamples, a - 0.005, b2 + 0.005)
    stats = st.stats()
    st.close()
    q = [50, 99, 99.9, 99.99]
    wq = np.percentile(wall, q) / 1e6
    cq = np.percentile(cpu, q) / 1e6
    gd = np.array([d for (_, d, _) in gcs], dtype=np.int64)
    return {"clicks": clicks, "batch": batch, "rate_per_s": rate, "seconds": round(took, 1),
            "jump_at": jump_at, "jump_h": jump_h if jump_at else 0,
            "sweep_every": sweep_every or "default",
            "store": {k2: v for k2, v in stats.items() if k2 != "entry_bytes"},
            "cap_reached_at_click": full_at,
            "rss_start_mib": round(rss0, 1),
            "peak_rss_mib": round(resource.getrusage(self_).ru_maxrss / 1024, 1),
            "batch_wall_ms": {**{f"p{x}": round(float(v), 3) for x, v in zip(q, wq, strict=True)},
                              "max": round(float(wall.max()) / 1e6, 3)},
            "batch_cpu_ms": {**{f"p{x}": round(float(v), 3) for x, v in zip(q, cq, strict=True)},
                             "max": round(float(cpu.max()) / 1e6, 3)},
            "batches_over_ms": {str(x): int((wall > x * 1e6).sum()) for x in (1, 2, 5, 10, 50)},
            "batches_cpu_over_ms": {str(x): int((cpu > x * 1e6).sum()) for x in (1, 2, 5, 10)},
            "worst_batch_work": {"examined": worst_work[0], "probes": worst_work[1]}
            if work else None,
            "gc": {"collections": len(gcs),
                   "by_generation": {str(g): sum(1 for x in gcs if x[2] == g) for g in (0, 1, 2)},
                   "max_ms": round(float(gd.max()) / 1e6, 3) if gd.size else 0.0},
            # the 200 slowest (wall), in run order
            "slow_batches": sorted(sorted(slow, key=lambda e: -e["wall_ms"])[:200],
                                   key=lambda e: e["batch"]),
            "slow_batch_count": len(slow)}


def periodic_costs(reps: int = 200) -> dict[str, Any]:
    """What each periodic task of slidrd costs the loop per run (median and max over `reps`,
    ms; in-process, the daemon's own objects): the monitor's tick (every 0.5 s; a window
    closing and judged), the registry watch (a stat every 0.5 s), the connection sweeper's
    body (every <= 1 s; per 1,000 open connections), a /metrics scrape (render), and the
    collector's young-generation passes with the daemon's thresholds and frozen start-up
    objects."""
    import gc
    import statistics
    import tempfile

    from slidr.slidrd.metrics import Metrics
    from slidr.slidrd.monitor import Monitor
    from slidr.slidrd.server import _mtime

    def timed(fn: Any) -> dict[str, float]:
        xs = []
        for _ in range(reps):
            t = time.perf_counter_ns()
            fn()
            xs.append((time.perf_counter_ns() - t) / 1e6)
        return {"median_ms": round(statistics.median(xs), 4), "max_ms": round(max(xs), 4)}

    m = Metrics()
    for i in range(50):
        m.decisions[f"slice{i}"] += 1000
        m.invalid[f"slice{i}"] += 10
    for h in (*m.latency.values(), m.loop_lag, m.gc_pause):
        for x in range(1000):
            h.observe(x * 1e-5)
    mon = Monitor(m, window_clicks=100, window_s=0.0)

    def tick_closing() -> None:
        for i in range(50):
            m.decisions[f"slice{i}"] += 200
        mon.tick()

    class Conn:
        inflight = 0
        rest = b""
        closing = False
        paused_reading = False
        write_paused = False
        frame_t0 = 0.0
        write_paused_since = 0.0

        def __init__(self) -> None:
            self.last_active = time.monotonic()

    conns = {Conn() for _ in range(1000)}

    def sweeper_body() -> None:
        now = time.monotonic()
        for c in list(conns):
            if c.inflight == 0 and now - c.last_active > 60.0:
                pass
            elif c.rest and now - c.frame_t0 > 10.0 and not c.closing and not c.paused_reading:
                pass
            elif c.write_paused and now - c.write_paused_since > 10.0:
                pass

    reg = tempfile.mkdtemp(prefix="periodic")
    out = {"monitor_tick_window_closing": timed(tick_closing),
           "monitor_tick_idle": timed(lambda: Monitor(m).tick()),
           "registry_stat": timed(lambda: _mtime(reg)),
           "sweeper_per_1000_conns": timed(sweeper_body),
           "metrics_render": timed(m.render)}
    os.rmdir(reg)
    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(20_000, 50, 1000)
    try:
        for gen in (0, 2):
            xs = []
            for _ in range(20):
                live = [[i] for i in range(20_000)]  # a threshold's worth of containers
                t = time.perf_counter_ns()
                gc.collect(gen)
                xs.append((time.perf_counter_ns() - t) / 1e6)
                del live
            out[f"gc_gen{gen}_20k_young"] = {"median_ms": round(statistics.median(xs), 4),
                                             "max_ms": round(max(xs), 4)}
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
    return out


# ------------------------------------------------------------------ store through the daemon
def _metric(text: str, name: str) -> float:
    tot = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            tot += float(line.rsplit(" ", 1)[1])
    return tot


def _max_bucket(text: str, name: str) -> float | None:
    """The upper bound of the highest histogram bucket holding an observation."""
    prev = 0.0
    top = None
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            v = float(line.rsplit(" ", 1)[1])
            if v > prev:
                top = float("inf") if le == "+Inf" else float(le)
            prev = v
    return top


def _over(text: str, name: str, bounds: tuple[float, ...]) -> dict[str, float]:
    """Observations above each bound (from the cumulative buckets)."""
    cum: dict[float, float] = {}
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            v = float(line.rsplit(" ", 1)[1])
            if le == "+Inf":
                total = v
            else:
                cum[float(le)] = v
    return {str(b): total - cum.get(b, total) for b in bounds}


async def _watch_rss(pid: int, peak: list[float], samples: list[float], period: float,
                     keep_every: int) -> None:
    """Until cancelled: the process's RSS every `period` s into peak[0], every `keep_every`th
    sample kept in `samples` (MiB)."""
    k = 0
    while True:
        r = _rss_mib(pid)
        peak[0] = max(peak[0], r)
        if k % keep_every == 0:
            samples.append(round(r, 1))
        k += 1
        await asyncio.sleep(period)


async def _distinct_flood(port: int, clicks: int, conns: int, window: int) -> dict[str, Any]:
    ts0 = _now_ms() - 60_000
    per = clicks // conns
    counts = {"model": 0, "fail_open": {}, "errors": 0}

    async def one(k: int) -> None:
        r, w = await _open(port)
        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        sent = got = 0
        while got < per:
            while sent < per and sent - got < window:
                i = k * per + sent
                c = {"click_id": f"d{i}", "ts": ts0 + i // 200, "session_id": f"s{i}",
                     "user_id": f"u{i}", "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                     "device": "app", "logged_in": True}
                w.write(msgpack.packb([0, sent, "score", [c]]))
                sent += 1
            await w.drain()
            data = await r.read(1 << 16)
            if not data:
                break
            up.feed(data)
            for m in up:
                got += 1
                if m[2] is not None:
                    counts["errors"] += 1
                elif m[3]["reason"] == "model":
                    counts["model"] += 1
                else:
                    fo = counts["fail_open"]
                    fo[m[3]["reason"]] = fo.get(m[3]["reason"], 0) + 1
        w.close()

    t = time.monotonic()
    await asyncio.gather(*(one(k) for k in range(conns)))
    counts["seconds"] = round(time.monotonic() - t, 1)
    counts["rate_per_s"] = round(per * conns / max(counts["seconds"], 1e-9))
    return counts


def store_daemon(clicks: int = 600_000, max_mb: int = 64) -> dict[str, Any]:
    """Distinct users, sessions and IPs through a real daemon whose embedded store is capped
    at `max_mb` (far below what the clicks need, so most of the run evicts)."""
    import urllib.request

    from slidr.bench.daemon import DaemonRun
    with DaemonRun(daemon_args={"embedded_max_mb": max_mb}) as d:
        assert d.proc is not None
        rss0 = _rss_mib(d.proc.pid)
        peak = [rss0]
        samples: list[float] = []

        async def main() -> dict[str, Any]:
            wt = asyncio.create_task(_watch_rss(d.proc.pid, peak, samples, 0.5, 10))  # type: ignore[union-attr]
            res = await _distinct_flood(d.port, clicks, 8, 16)
            wt.cancel()
            return res
        res = asyncio.run(main())
        text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
        res.update({"clicks": clicks, "embedded_max_mb": max_mb,
                    "rss_start_mib": round(rss0, 1), "rss_peak_mib": round(peak[0], 1),
                    "rss_every_5s_mib": samples,
                    "store_evicted": _metric(text, 'slidr_defence_total{event="store_evicted"}'),
                    "loop_lag_max_le_s": _max_bucket(text, "slidr_loop_lag_seconds"),
                    "loop_lag_over_s": _over(text, "slidr_loop_lag_seconds", (0.05, 0.1, 0.25)),
                    "daemon_alive": d.alive()})
    n = max(clicks, 1)
    res["deadline_fail_open_pct"] = round(100 * res["fail_open"].get("fail_open:deadline", 0)
                                          / n, 3)
    return res


async def _distinct_flood_many(port: int, clicks: int, conns: int, rate: float, per_req: int,
                               progress: Any = None) -> dict[str, Any]:
    """Distinct clicks at a fixed offered rate (open loop: each connection sends its
    `score_many` requests of `per_req` clicks on a schedule, whether or not answers came
    back); answers counted per click."""
    ts0 = _now_ms() - 600_000
    per = clicks // conns
    counts: dict[str, Any] = {"model": 0, "fail_open": {}, "errors": 0, "error_kinds": {},
                              "late_sends": 0, "answered_over_4ms": 0,
                              "over_4ms_by_10s": {}}
    # per 100 ms of the run (only those with something in them): clicks answered > 4 ms after
    # sent, the longest answer time (s), the latest send (s behind its schedule)
    fine: dict[int, list[float]] = {}
    done = [0]
    interval = per_req * conns / rate
    loop = asyncio.get_running_loop()
    t_start = loop.time()

    def request(k: int, start: int, n: int, msgid: int) -> bytes:
        cl = []
        for j in range(start, start + n):
            i = k * per + j
            cl.append({"click_id": f"d{i}", "ts": ts0 + i // 20_000, "session_id": f"s{i}",
                       "user_id": f"u{i}", "ip": f"{10 + (i >> 24)}.{i >> 16 & 255}."
                       f"{i >> 8 & 255}.{i & 255}", "device": "app", "logged_in": True})
        return msgpack.packb([0, msgid, "score_many", [cl]])

    async def read(r: asyncio.StreamReader, nreq: int, sent_at: dict[int, float]) -> None:
        up = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=1 << 26)
        got = 0
        while got < nreq:
            data = await r.read(1 << 18)
            if not data:
                break
            now = loop.time()
            up.feed(data)
            for m in up:
                got += 1
                lat = now - sent_at.get(m[1], now)
                if lat > 0.002:
                    f = fine.setdefault(int((now - t_start) * 10), [0, 0.0, 0.0])
                    f[1] = max(f[1], lat)
                    if lat > 0.004 and isinstance(m[3], list):
                        f[0] += len(m[3])
                if now - sent_at.pop(m[1], now) > 0.004 and isinstance(m[3], list):
                    # answered more than the daemon's default deadline after it was sent
                    counts["answered_over_4ms"] += len(m[3])
                    b = str(int((now - t_start) // 10) * 10)
                    counts["over_4ms_by_10s"][b] = counts["over_4ms_by_10s"].get(b, 0) + len(m[3])
                if m[2] is not None:
                    counts["errors"] += 1
                    ek = str(m[2])[:60]
                    counts["error_kinds"][ek] = counts["error_kinds"].get(ek, 0) + 1
                    continue
                for d in m[3]:
                    why = d.get("reason") if isinstance(d, dict) else str(d)[:40]
                    if why == "model":
                        counts["model"] += 1
                    else:
                        fo = counts["fail_open"]
                        fo[why] = fo.get(why, 0) + 1
                done[0] += len(m[3])

    async def one(k: int, t0: float) -> None:
        r, w = await _open(port)
        nreq = -(-per // per_req)
        sent_at: dict[int, float] = {}
        reader = asyncio.create_task(read(r, nreq, sent_at))
        for j in range(nreq):
            due = t0 + (j + k / conns) * interval
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.005:
                counts["late_sends"] += 1
                f = fine.setdefault(int((loop.time() - t_start) * 10), [0, 0.0, 0.0])
                f[2] = max(f[2], -wait)
            start = j * per_req
            sent_at[j] = loop.time()
            w.write(request(k, start, min(per_req, per - start), j))
        await w.drain()
        await reader
        w.close()

    t = time.monotonic()
    t0 = asyncio.get_running_loop().time() + 0.2
    tasks = [asyncio.create_task(one(k, t0)) for k in range(conns)]
    while not all(x.done() for x in tasks):
        await asyncio.sleep(1.0)
        if progress is not None:
            progress(done[0], time.monotonic() - t)
    for x in tasks:
        x.result()
    counts["seconds"] = round(time.monotonic() - t, 1)
    counts["rate_per_s"] = round(per * conns / max(counts["seconds"], 1e-9))
    counts["t_start"] = t_start
    counts["by_100ms"] = fine
    return counts


def _stalls(res: dict[str, Any], watches: dict[str, Any], top: int = 6) -> list[dict[str, Any]]:
    """The `top` worst 100 ms of a run (most clicks answered > 4 ms late, then the longest
    answer), each with what the daemon's and the generator's main threads and their CPUs did
    from 300 ms before it to its end (bench/hiccup.py explain): on-CPU time close to the
    window's length is the process's own work; run-queue wait, another task on its CPU;
    steal, the hypervisor; none of them, the process was not asked to run (or blocked)."""
    from slidr.bench.hiccup import explain
    fine = res.pop("by_100ms", {})
    t_start = res.pop("t_start", 0.0)
    worst = sorted(fine.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:top]
    out = []
    for b, (late, lat, send_late) in sorted(worst):
        t1 = t_start + (b + 1) / 10
        t0 = t1 - 0.4
        ent: dict[str, Any] = {"at_s": b / 10, "clicks_over_4ms": int(late),
                               "longest_answer_ms": round(lat * 1000, 1),
                               "latest_send_ms": round(send_late * 1000, 1)}
        for name, w in watches.items():
            ent[name] = explain(w, t0, t1)
            if name == "daemon" and w.size:
                # 20 ms slices: where in the window the daemon ran, waited or lost its CPU
                sl = []
                for k in range(20):
                    e = explain(w, t0 + k * 0.02, t0 + (k + 1) * 0.02)
                    sl.append((e.get("oncpu_ms", 0.0), e.get("runq_wait_ms", 0.0),
                               e.get("steal_ms", 0.0), e.get("others_ms", 0.0),
                               e.get("minflt", 0)))
                ent["daemon_20ms_slices_oncpu_wait_steal_others_minflt"] = sl
        out.append(ent)
    return out


def _busiest(samples: Any, t_start: float, fine: dict[int, list[float]], top: int = 5,
             span: float = 0.4) -> list[dict[str, Any]]:
    """The `top` 400 ms windows (stepped by 100 ms, not overlapping each other) in which the
    daemon's main thread ran the most: a stall of its own work (a long batch, a collection,
    a periodic task) reads as on-CPU time close to the window's length, whatever else the
    machine did. With the clicks answered > 4 ms late in them."""
    import numpy as np
    from slidr.bench.hiccup import explain
    if samples.size == 0:
        return []
    t, on = samples[:, 0], samples[:, 1]
    starts = np.arange(t[0], t[-1] - span, 0.1)
    if starts.size == 0:
        return []
    busy = np.interp(starts + span, t, on) - np.interp(starts, t, on)
    out: list[dict[str, Any]] = []
    taken: list[float] = []
    for i in np.argsort(-busy):
        a = float(starts[i])
        if any(abs(a - b) < span for b in taken):
            continue
        taken.append(a)
        b0 = int((a - t_start) * 10)
        late = sum(int(fine.get(b, [0])[0]) for b in range(b0, b0 + int(span * 10) + 1))
        out.append({"at_s": round(a - t_start, 1), "clicks_over_4ms": late,
                    "daemon": explain(samples, a, a + span)})
        if len(out) >= top:
            break
    return out


def echo_floor(seconds: float, rate: float, per_req: int, pin: bool) -> dict[str, Any]:
    """The same generator, rate and pinning against the do-nothing echo server: the share of
    clicks answered more than 4 ms after they were sent is the machine's own floor for the
    daemon's deadline fail-opens."""
    from slidr.bench.echo_server import EchoProcess
    clicks = int(seconds * rate)
    e = EchoProcess(cpus="0" if pin else None).start()
    try:
        res = asyncio.run(_distinct_flood_many(e.port, clicks, 8, rate, per_req))
    finally:
        e.stop()
    res["clicks"] = clicks
    res["answered_over_4ms_pct"] = round(100 * res["answered_over_4ms"] / max(clicks, 1), 4)
    res["worst_100ms"] = _stalls(res, {})
    return res


def store_full(clicks: int = 10_000_000, rate: float = 20_000.0, per_req: int = 16,
               echo_s: float = 60.0) -> dict[str, Any]:
    """Distinct users, sessions and IPs at full rate through a daemon with every default,
    after `echo_s` seconds of the same load against the echo server (the machine's floor)."""
    import urllib.request

    from slidr.bench.daemon import DaemonRun
    from slidr.bench.hiccup import ProcWatch
    from slidr.slidrd.config import Config
    cap = Config(registry="unused").embedded_max_mb
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    floor = echo_floor(echo_s, rate, per_req, pin) if echo_s > 0 else None
    with DaemonRun(cpus="0" if pin else None) as d:
        assert d.proc is not None
        rss0 = _rss_mib(d.proc.pid)
        peak = [rss0]
        samples: list[float] = []

        def progress(n: int, s: float) -> None:
            if int(s) % 10 == 0:
                print(f"store_full: {n:,} clicks answered in {s:.0f} s, daemon RSS "
                      f"{_rss_mib(d.proc.pid):.0f} MiB", file=sys.stderr,  # type: ignore[union-attr]
                      flush=True)

        async def main() -> dict[str, Any]:
            wt = asyncio.create_task(_watch_rss(d.proc.pid, peak, samples, 0.25, 20))  # type: ignore[union-attr]
            res = await _distinct_flood_many(d.port, clicks, 8, rate, per_req, progress)
            wt.cancel()
            return res
        cpu0 = cpu_s(d.proc.pid)
        # who had each CPU when answers came late: the daemon's and this generator's main
        # threads, sampled every 5 ms from a process of its own
        watch = {"daemon": ProcWatch(d.proc.pid, 0 if pin else None, 0.005,
                                     1 if pin else None).start(),
                 "generator": ProcWatch(os.getpid(), 1 if pin else None, 0.005,
                                        1 if pin else None).start()}
        wall0 = time.time()
        try:
            res = asyncio.run(main())
        finally:
            samples_w = {k: w.stop() for k, w in watch.items()}
        # the daemon's warnings and errors (monitor events, reloads, ...), with their times:
        # anything it logged near a stall (the run's clock: run_started_unix + at_s)
        try:
            lines = d.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        res["run_started_unix"] = round(wall0, 3)
        res["daemon_log_warnings"] = [ln[:300] for ln in lines
                                      if " WARNING " in ln or " ERROR " in ln][-40:]
        cpu = cpu_s(d.proc.pid) - cpu0
        text = urllib.request.urlopen(d.metrics_url, timeout=5).read().decode()
        res.update({"clicks": clicks, "offered_rate_per_s": rate, "clicks_per_request": per_req,
                    "embedded_max_mb_default": cap, "pinned": pin,
                    "daemon_cpu_us_per_click": round(cpu * 1e6 / max(clicks, 1), 2),
                    "rss_start_mib": round(rss0, 1), "rss_peak_mib": round(peak[0], 1),
                    "rss_limit_mib": cap + 512,
                    "rss_every_5s_mib": samples,
                    "store_evicted": _metric(text, 'slidr_defence_total{event="store_evicted"}'),
                    "loop_lag_max_le_s": _max_bucket(text, "slidr_loop_lag_seconds"),
                    "loop_lag_over_s": _over(text, "slidr_loop_lag_seconds", (0.01, 0.05, 0.1,
                                                                              0.25)),
                    "gc_pause_max_le_s": _max_bucket(text, "slidr_gc_pause_seconds"),
                    "gc_pauses_over_s": _over(text, "slidr_gc_pause_seconds", (0.001, 0.01,
                                                                               0.1)),
                    "daemon_alive": d.alive()})
    n = max(clicks, 1)
    res["deadline_fail_open_pct"] = round(100 * res["fail_open"].get("fail_open:deadline", 0)
                                          / n, 4)
    res["store_down"] = res["fail_open"].get("fail_open:store_down", 0)
    res["answered_over_4ms_pct"] = round(100 * res["answered_over_4ms"] / n, 4)
    res["echo_floor"] = floor
    res["busiest_daemon_400ms"] = _busiest(samples_w["daemon"], res.get("t_start", 0.0),
                                           res.get("by_100ms", {}))
    res["worst_100ms"] = _stalls(res, samples_w)
    return res


# ------------------------------------------------------------------ main
def run(names: list[str], quick: bool = False, clicks: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"python": "python", "quick": quick}

    def n(full: int, small: int) -> int:
        return clicks if clicks > 0 else (small if quick else full)
    for name in names:
        t = time.monotonic()
        if name == "poison":
            out[name] = poison(5 if quick else 20)
        elif name == "future":
            out[name] = future(300 if quick else 3000)
        elif name == "flood":
            out[name] = flood(20 if quick else 200, 256, 3.0 if quick else 10.0)
        elif name == "waves":
            out[name] = waves(300 if quick else 3000, 4 if quick else 16)
        elif name == "trickle":
            out[name] = trickle(300 if quick else 5000, 6.0 if quick else 20.0)
        elif name == "store":
            out[name] = store(n(10_000_000, 200_000))
        elif name == "store_daemon":
            out[name] = store_daemon(n(600_000, 50_000), 16 if quick else 64)
        elif name == "store_full":
            out[name] = store_full(n(10_000_000, 100_000), echo_s=5.0 if quick else 60.0)
        elif name == "store_fill":
            out[name] = store_fill(n(10_000_000, 200_000))
            out[name]["periodic_tasks"] = periodic_costs()
        else:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        out[name]["wall_s"] = round(time.monotonic() - t, 1)
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--out", default="", help="directory for abuse.json")
    p.add_argument("--store-clicks", type=int, default=0,
                   help="clicks of the store scenarios (0 = their default)")


def main_args(args: argparse.Namespace) -> int:
    res = run([s for s in args.scenarios.split(",") if s], args.quick,
              getattr(args, "store_clicks", 0) or 0)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "abuse.json").write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slidr.bench.abuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
