"""`slidr bench side`: the echo server, slidrd embedded and slidrd on a local Redis, side by side.

All three servers are started once (each in its own process; the Redis one with its own
throwaway redis-server on loopback) and measured in interleaved rounds: in every round, every
rate, every server in turn (the order rotates per round, so a slow minute of the machine is
shared out). Each measurement is one open-loop run of the bench generator (latency from the
scheduled send time). Per server and rate, the median over rounds of p50 / p99 / p99.9, the
share of clicks scored by the model (not failed open, not refused), and the server's CPU per
click from /proc (its main thread, and for Redis the redis-server too), with ratios to echo.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

SERVERS = ("echo", "embedded", "redis")


def cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or of one of its threads), seconds (Linux /proc); NaN once
    it is gone."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        f = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class _Servers:
    def __init__(self, cpus: str | None, daemon_args: dict[str, Any]) -> None:
        self.cpus = cpus
        self.daemon_args = daemon_args
        self.procs: dict[str, Any] = {}

    def __enter__(self) -> _Servers:
        from slidr.bench.daemon import DaemonRun
        from slidr.bench.echo_server import EchoProcess
        try:
            self.procs["echo"] = EchoProcess(cpus=self.cpus).start()
            self.procs["embedded"] = DaemonRun("embedded", dict(self.daemon_args),
                                               cpus=self.cpus).start()
            self.procs["redis"] = DaemonRun("redis", dict(self.daemon_args), cpus=self.cpus,
                                            redis_cpus=self.cpus).start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs.values():
            p.stop()

    def port(self, name: str) -> int:
        return int(self.procs[name].port)

    def pids(self, name: str) -> tuple[int | None, int | None]:
        """(server pid, its redis-server pid or None)."""
        p = self.procs[name]
        proc = getattr(p, "proc", None)
        pid = proc.pid if proc is not None else None
        rproc = getattr(getattr(p, "redis", None), "proc", None)
        return pid, (rproc.pid if rproc is not None else None)


def _one(servers: _Servers, name: str, rate: float, duration: float, warmup: float,
         connections: int) -> dict[str, Any]:
    from slidr.bench.loadgen import LoadSpec, run_load
    spec = LoadSpec(port=servers.port(name), rate=rate, duration=duration, warmup=warmup,
                    connections=connections, label=name)
    spec.check()
    pid, rpid = servers.pids(name)
    c0 = cpu_s(pid, pid) if pid else float("nan")
    p0 = cpu_s(pid) if pid else float("nan")
    r0 = cpu_s(rpid) if rpid else float("nan")
    rep = run_load(spec)
    c1 = cpu_s(pid, pid) if pid else float("nan")
    p1 = cpu_s(pid) if pid else float("nan")
    r1 = cpu_s(rpid) if rpid else float("nan")
    clicks = max(int(rep.get("sent", 0)) + int(rep.get("warmup_requests", 0)), 1)
    answered = max(int(rep.get("answered", 0)), 1)
    lat = rep.get("latency_ms", {})
    scored = 1.0 - (rep.get("fail_open_count", 0) + rep.get("error_count", 0)
                    + rep.get("unanswered", 0)) / max(answered + rep.get("unanswered", 0), 1)
    return {"server": name, "rate": rate, "p50": lat.get("p50"), "p99": lat.get("p99"),
            "p99_9": lat.get("p99_9"), "achieved_rate": rep.get("achieved_rate"),
            "model_scored": scored if name != "echo" else None,
            "fail_open": rep.get("fail_open", {}), "unanswered": rep.get("unanswered", 0),
            "main_thread_cpu_us_per_click": (c1 - c0) * 1e6 / clicks,
            "process_cpu_us_per_click": (p1 - p0) * 1e6 / clicks,
            "redis_cpu_us_per_click": ((r1 - r0) * 1e6 / clicks) if rpid else None,
            "aborted": rep.get("aborted")}


def _med(vals: list[Any]) -> float | None:
    v = [x for x in vals if x is not None and x == x]
    return statistics.median(v) if v else None


def run(rates: list[float], rounds: int = 3, duration: float = 5.0, warmup: float = 1.0,
        connections: int = 8, cpus: str | None = None, log: Any = None,
        daemon_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Interleaved rounds -> {"runs": [...], "table": [...]} (table: medians and ratios)."""
    runs: list[dict[str, Any]] = []
    with _Servers(cpus, daemon_args or {}) as servers:
        for r in range(rounds):
            order = SERVERS[r % 3:] + SERVERS[:r % 3]
            for rate in rates:
                for name in order:
                    res = _one(servers, name, rate, duration, warmup, connections)
                    res["round"] = r
                    runs.append(res)
                    if log is not None:
                        log(f"round {r + 1}/{rounds} {name:8s} @ {rate:,.0f}/s: p99.9 "
                            f"{res['p99_9'] if res['p99_9'] is not None else float('nan'):.2f} ms"
                            f", main-thread CPU {res['main_thread_cpu_us_per_click']:.1f} us/click")
    table = []
    for rate in rates:
        echo = [x for x in runs if x["server"] == "echo" and x["rate"] == rate]
        e99 = _med([x["p99_9"] for x in echo])
        ecpu = _med([x["main_thread_cpu_us_per_click"] for x in echo])
        for name in SERVERS:
            xs = [x for x in runs if x["server"] == name and x["rate"] == rate]
            row = {"server": name, "rate": rate, "rounds": len(xs)}
            for k in ("p50", "p99", "p99_9", "model_scored", "main_thread_cpu_us_per_click",
                      "process_cpu_us_per_click", "redis_cpu_us_per_click", "achieved_rate"):
                row[k] = _med([x[k] for x in xs])
            row["p99_9_vs_echo"] = (row["p99_9"] / e99) if row["p99_9"] and e99 else None
            row["cpu_vs_echo"] = (row["main_thread_cpu_us_per_click"] / ecpu
                                  if row["main_thread_cpu_us_per_click"] and ecpu else None)
            table.append(row)
    return {"rates": rates, "rounds": rounds, "duration_s": duration, "warmup_s": warmup,
            "connections": connections, "cpus": cpus, "runs": runs, "table": table}


def lines(res: dict[str, Any]) -> list[str]:
    def f(v: Any, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)
    out = [f"{'server':9s} {'rate/s':>8s} {'p50':>7s} {'p99':>7s} {'p99.9':>7s} {'x echo':>6s} "
           f"{'scored':>7s} {'CPU us/click':>12s} {'x echo':>6s} {'redis us':>8s}"]
    for r in res["table"]:
        out.append(f"{r['server']:9s} {r['rate']:>8,.0f} {f(r['p50']):>7s} {f(r['p99']):>7s} "
                   f"{f(r['p99_9']):>7s} {f(r['p99_9_vs_echo']):>6s} "
                   f"{f(r['model_scored'] and 100 * r['model_scored'], '.2f'):>6s}% "
                   f"{f(r['main_thread_cpu_us_per_click'], '.1f'):>12s} "
                   f"{f(r['cpu_vs_echo']):>6s} {f(r['redis_cpu_us_per_click'], '.1f'):>8s}")
    out.append("latency in ms from the scheduled send, medians over rounds; scored = answered "
               "by the model (not failed open, refused or lost); CPU = the server's main thread")
    return out


def plot(res: dict[str, Any], path: str | Path) -> None:
    from slidr.bench.report import _plt, _save_png
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for name, color in zip(SERVERS, ("grey", "tab:blue", "tab:red"), strict=True):
        rows = [r for r in res["table"] if r["server"] == name]
        xs = [r["rate"] for r in rows]
        for key, ls in (("p50", ":"), ("p99", "--"), ("p99_9", "-")):
            ys = [r[key] for r in rows]
            axes[0].plot(xs, ys, ls=ls, marker="o", ms=3, color=color,
                         label=f"{name} {key.replace('_', '.')}")
        axes[1].plot(xs, [r["main_thread_cpu_us_per_click"] for r in rows], marker="o",
                     color=color, label=name)
        if name != "echo":
            axes[2].plot(xs, [100 * (r["model_scored"] or 0) for r in rows], marker="o",
                         color=color, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency (ms)")
    axes[1].set_ylabel("main-thread CPU per click (us)")
    axes[2].set_ylabel("clicks scored by the model (%)")
    rates = sorted({r["rate"] for r in res["table"]})
    for ax in axes:
        ax.set_xticks(rates)
        ax.set_xticklabels([f"{r / 1000:g}k" for r in rates])
        ax.set_xlabel("offered rate (clicks/s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"echo vs slidrd embedded vs slidrd on Redis, {res['rounds']} interleaved "
                 f"rounds of {res['duration_s']:g} s", fontsize=10)
    _save_png(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------- closed loop
# One click at a time over one connection: the next request leaves when the answer is in, so
# every click is its own micro-batch however loaded the machine is. An open-loop run at a low
# rate measures the same per-click cost only on a quiet machine: on a busy one the daemon is
# descheduled, clicks queue and leave in batches, and the per-batch cost is shared out. This is
# the per-click CPU comparison that load cannot blur (the idle gaps between clicks are one
# round trip, shorter than at 5k/s open loop, so caches stay warmer: a lower bound).


def _ping_pong(port: int, n: int, seq: list[int], prefixes: list[bytes]) -> None:
    import socket
    import time

    import msgpack
    from slidr.bench.clicks import frame
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = msgpack.Unpacker()
        for _ in range(n):
            i = seq[0]
            seq[0] += 1
            s.sendall(frame(i & 0xFFFFFFFF, prefixes[i % len(prefixes)],
                            int(time.time() * 1000)))
            got = False
            while not got:
                data = s.recv(65536)
                if not data:
                    raise RuntimeError(f"port {port} closed the connection")
                up.feed(data)
                for _msg in up:
                    got = True
    finally:
        s.close()


def closed_loop(clicks: int = 10_000, rounds: int = 3, cpus: str | None = None,
                specs: tuple[str, ...] = ("echo=echo", "embedded=embedded"), log: Any = None
                ) -> dict[str, Any]:
    """-> {"runs": [...], "table": [...]}: per server, the median over interleaved rounds of
    the main-thread CPU per click, one `score` at a time, with the ratio to the server named
    echo. `specs` as bench/side_ab.py takes them: NAME=echo|embedded|redis[@PYTHON][:k=v,...]
    (@PYTHON: a daemon from another build, for a before/after in the same rounds)."""
    from slidr.bench.clicks import make_clicks, pack_prefixes
    from slidr.bench.side_ab import parse_server, start_servers
    pool, _src = make_clicks(4096)
    prefixes = pack_prefixes(pool)
    procs: dict[str, Any] = {}
    seq = [0]
    runs: list[dict[str, Any]] = []
    parsed = [parse_server(x) for x in specs]
    servers = tuple(name for name, *_ in parsed)
    try:
        start_servers(parsed, cpus, procs)
        for p in procs.values():  # warm-up
            _ping_pong(int(p.port), 2000, seq, prefixes)
        for r in range(rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for name in order:
                pid = procs[name].proc.pid
                c0 = cpu_s(pid, pid)  # the main thread: its tid is the pid
                _ping_pong(int(procs[name].port), clicks, seq, prefixes)
                us = (cpu_s(pid, pid) - c0) * 1e6 / clicks
                runs.append({"server": name, "round": r, "main_thread_cpu_us_per_click": us})
                if log is not None:
                    log(f"closed loop {r + 1}/{rounds} {name:8s}: {us:.1f} us/click")
    finally:
        for p in procs.values():
            p.stop()
    ecpu = _med([x["main_thread_cpu_us_per_click"] for x in runs if x["server"] == "echo"])
    res_servers = [{"name": n, "store": st, "python": py, "args": a} for n, st, py, a in parsed]
    table = []
    for name in servers:
        v = _med([x["main_thread_cpu_us_per_click"] for x in runs if x["server"] == name])
        table.append({"server": name, "main_thread_cpu_us_per_click": v,
                      "cpu_vs_echo": v / ecpu if v and ecpu else None})
    return {"clicks": clicks, "rounds": rounds, "cpus": cpus, "servers": res_servers,
            "runs": runs, "table": table}


def main(argv: list[str] | None = None) -> int:
    """python -m slidr.bench.side closed-loop [--clicks N] [--rounds R] [--server-cpus 0]
    [--gen-cpus 1] [--server NAME=SPEC ...] [--out FILE]"""
    import argparse
    import json
    import sys
    p = argparse.ArgumentParser(prog="python -m slidr.bench.side")
    p.add_argument("mode", choices=("closed-loop",))
    p.add_argument("--clicks", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--gen-cpus", default="1")
    p.add_argument("--server", action="append",
                   help="NAME=echo|embedded|redis[@PYTHON][:key=value,...] (repeat; default: "
                        "echo=echo and embedded=embedded)")
    p.add_argument("--out", help="write the JSON report here")
    a = p.parse_args(argv)
    if a.gen_cpus:
        os.sched_setaffinity(0, {int(c) for c in a.gen_cpus.split(",")})
    res = closed_loop(a.clicks, a.rounds, a.server_cpus or None,
                      tuple(a.server or ("echo=echo", "embedded=embedded")),
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    res["loadavg_end"] = os.getloadavg()
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    for r in res["table"]:
        x = r["cpu_vs_echo"]
        print(f"{r['server']:16s} main-thread CPU {r['main_thread_cpu_us_per_click']:.1f} "
              f"us/click  x echo {'-' if x is None else format(x, '.2f')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
