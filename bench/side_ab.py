"""Two builds of slidrd side by side in the same interleaved rounds (a before/after comparison).

`slidr bench side` measures one build: echo, embedded and Redis. To compare a change, both
builds must see the same minutes of a shared machine, so this runs any list of servers, each
started from its own Python interpreter (the interpreter of a virtual environment whose
editable install is the other checkout), in rotating order within every round, with the same
measurement as `slidr bench side` (bench/side.py: open-loop generator, latency from the
scheduled send, share of clicks scored by the model, main-thread CPU per click from /proc, the
redis-server's CPU per click). Servers and their redis-servers are pinned to --server-cpus,
this process (the generator) to --gen-cpus.

    python -m slidr.bench.side_ab --rates 5000,20000 --rounds 3 --duration 5 \\
        --server echo=echo --server before-embedded=embedded@/path/to/old/venv/bin/python \\
        --server embedded=embedded --out ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any


class _Servers:
    """What bench.side._one needs: port and pids by name."""

    def __init__(self) -> None:
        self.procs: dict[str, Any] = {}

    def port(self, name: str) -> int:
        return int(self.procs[name].port)

    def pids(self, name: str) -> tuple[int | None, int | None]:
        p = self.procs[name]
        proc = getattr(p, "proc", None)
        rproc = getattr(getattr(p, "redis", None), "proc", None)
        return (proc.pid if proc is not None else None,
                rproc.pid if rproc is not None else None)


def parse_server(text: str) -> tuple[str, str, str | None, dict[str, str]]:
    """NAME=STORE[@PYTHON][:key=value,...] -> (name, store, python or None, daemon args)."""
    name, _, rest = text.partition("=")
    spec, _, kv = rest.partition(":")
    store, _, python = spec.partition("@")
    if not name or store not in ("echo", "embedded", "redis"):
        raise ValueError(f"--server wants NAME=echo|embedded|redis[@PYTHON][:k=v,...], "
                         f"not {text!r}")
    args = dict(x.split("=", 1) for x in kv.split(",") if x)
    return name, store, python or None, args


def start_servers(servers: list[tuple[str, str, str | None, dict[str, str]]],
                  cpus: str | None, procs: dict[str, Any]) -> None:
    """Start each parsed server (parse_server's tuples) pinned to `cpus`, into `procs` by name
    as it comes up (the caller stops what is there, also after a failed start): the echo
    server, or a slidrd on its store, run by PYTHON when given (another build, for a
    before/after in the same rounds)."""
    from slidr.bench.daemon import DaemonRun
    from slidr.bench.echo_server import EchoProcess
    for name, store, python, args in servers:
        if store == "echo":
            procs[name] = EchoProcess(cpus=cpus).start()
            continue
        real = sys.executable
        sys.executable = python or real  # DaemonRun starts `sys.executable -m slidr...`
        try:
            procs[name] = DaemonRun(store, dict(args), cpus=cpus, redis_cpus=cpus).start()
        finally:
            sys.executable = real


def run(servers: list[tuple[str, str, str | None, dict[str, str]]], rates: list[float],
        rounds: int, duration: float, warmup: float, connections: int, cpus: str,
        log: Any = None) -> dict[str, Any]:
    from slidr.bench import side

    s = _Servers()
    runs: list[dict[str, Any]] = []
    try:
        start_servers(servers, cpus, s.procs)
        names = [x[0] for x in servers]
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for rate in rates:
                for name in order:
                    res = side._one(s, name, rate, duration, warmup, connections)
                    res["round"] = r
                    runs.append(res)
                    if log is not None:
                        log(f"round {r + 1}/{rounds} {name:18s} @ {rate:,.0f}/s: p99.9 "
                            f"{res['p99_9'] or float('nan'):.2f} ms, scored "
                            f"{res['model_scored'] if res['model_scored'] is not None else '-'}"
                            f", CPU {res['main_thread_cpu_us_per_click']:.1f} us/click")
    finally:
        for p in s.procs.values():
            p.stop()
    table = []
    for rate in rates:
        for name in names:
            xs = [x for x in runs if x["server"] == name and x["rate"] == rate]
            row: dict[str, Any] = {"server": name, "rate": rate}
            for k in ("p50", "p99", "p99_9", "model_scored", "main_thread_cpu_us_per_click",
                      "redis_cpu_us_per_click", "achieved_rate"):
                v = [x[k] for x in xs if x[k] is not None and x[k] == x[k]]
                row[k] = statistics.median(v) if v else None
            table.append(row)
    return {"rates": rates, "rounds": rounds, "duration_s": duration, "warmup_s": warmup,
            "connections": connections, "cpus": cpus,
            "servers": [{"name": n, "store": st, "python": py, "args": a}
                        for n, st, py, a in servers],
            "runs": runs, "table": table}


def lines(res: dict[str, Any]) -> list[str]:
    def f(v: Any, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)
    out = [f"{'server':18s} {'rate/s':>8s} {'p50':>7s} {'p99':>7s} {'p99.9':>7s} {'scored':>8s} "
           f"{'CPU us/click':>12s} {'redis us':>8s}"]
    for r in res["table"]:
        sc = r["model_scored"]
        out.append(f"{r['server']:18s} {r['rate']:>8,.0f} {f(r['p50']):>7s} {f(r['p99']):>7s} "
                   f"{f(r['p99_9']):>7s} {f(sc and 100 * sc):>7s}% "
                   f"{f(r['main_thread_cpu_us_per_click'], '.1f'):>12s} "
                   f"{f(r['redis_cpu_us_per_click'], '.1f'):>8s}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slidr.bench.side_ab")
    p.add_argument("--server", action="append", required=True,
                   help="NAME=echo|embedded|redis[@PYTHON][:key=value,...] (repeat)")
    p.add_argument("--rates", default="5000,20000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--gen-cpus", default="1")
    p.add_argument("--out", help="write the JSON report here")
    a = p.parse_args(argv)
    servers = [parse_server(x) for x in a.server]
    if a.gen_cpus:
        os.sched_setaffinity(0, {int(c) for c in a.gen_cpus.split(",")})
    res = run(servers, [float(x) for x in a.rates.split(",")], a.rounds, a.duration, a.warmup,
              a.connections, a.server_cpus, log=lambda m: print(m, file=sys.stderr, flush=True))
    res["loadavg_end"] = os.getloadavg()
    res["command"] = " ".join(["python -m slidr.bench.side_ab", *(argv or sys.argv[1:])])
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    print("\n".join(lines(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
