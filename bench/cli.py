"""`slidr bench kernel|run|sweep|echo|side|batch|micro [--json]`: micro-benchmarks and load tests.

Heavy imports (numpy, hdrh, matplotlib, onnx) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from slidr.exits import FAILED

# A load test that did not complete (the daemon died, the generator fell behind): exit 1.
EXIT_ABORTED = FAILED


def register(sub: Any) -> None:
    from slidr.defaults import BENCH, COMMON
    from slidr.options import add
    p = sub.add_parser("bench", help="micro-benchmarks and load tests (see bench/README.md)")
    bs = p.add_subparsers(dest="bench_command", metavar="WHAT")
    bs.required = True

    k = bs.add_parser("kernel", help="feature-kernel throughput by batch size (embedded, Redis)")
    add(k, BENCH["seconds"])
    add(k, COMMON["redis"], shown="a throwaway redis-server on loopback",
        help="Redis URL of the store to measure")
    k.set_defaults(func=cmd_kernel)

    for name, helptext in (("run", "one open-loop load run against slidrd"),
                           ("sweep", "highest rate that holds p99.9 under a target")):
        r = bs.add_parser(name, help=helptext,
                          description="A flag given overrides the --scenario file, which "
                                      "overrides the defaults shown.")
        r.add_argument("--target", metavar="HOST:PORT",
                       help="a running daemon on loopback (default: the scenario's daemon)")
        r.add_argument("--scenario", metavar="FILE.toml",
                       help="bench/scenarios/*.toml: load shape, and a daemon to start "
                            "(default: none)")
        r.add_argument("--metrics", metavar="URL",
                       help="the daemon's Prometheus endpoint, for the queue/store/model split "
                            "(default: the scenario daemon's)")
        for key in ("rate", "duration", "warmup", "connections", "procs", "arrivals", "tick_us",
                    "drain"):
            add(r, BENCH[key], config_default=True)
        add(r, COMMON["out"], required=False, default=None, shown="var/bench/KIND-NAME-TIME",
            help="directory for report.json and the plots")
        r.add_argument("--no-calibrate", action="store_true",
                       help="skip the echo-server floor/ceiling (else cached per session)")
        add(r, BENCH["gen_cpus"])
        r.add_argument("--daemon-cpus", metavar="LIST",
                       help="pin a daemon started from a scenario, e.g. 0 (default: none)")
        r.add_argument("--redis-cpus", metavar="LIST",
                       help="pin the redis-server a Redis scenario starts, e.g. 1 "
                            "(default: none)")
        if name == "sweep":
            r.add_argument("--target-ms", type=float, help="p99.9 target in ms (default: 5)")
            r.add_argument("--start-rate", type=float, help="first rate (default: 1000)")
            add(r, BENCH["max_rate"], config_default=True)
            r.add_argument("--factor", type=float, help="geometric step (default: 2)")
            r.add_argument("--repeat", type=int, help="runs per rate (default: 3)")
            r.add_argument("--bisect", type=int,
                           help="bisection steps after a failure (default: 3)")
            r.add_argument("--max-fail-open", type=float,
                           help="largest fail-open share that still passes (default: 0.001)")
            r.add_argument("--max-time", type=float, help="time budget in s (default: 1800)")
            r.set_defaults(func=cmd_sweep)
        else:
            r.add_argument("--floor", type=float, default=0.0, metavar="SECONDS",
                           help="first probe the machine's stall floor on every usable CPU at "
                                "once for this long (`bench hiccup --together`) and report it "
                                "beside the run (0: off)")
            r.set_defaults(func=cmd_run)

    e = bs.add_parser("echo", help="the generator against a do-nothing echo server: "
                                   "its latency floor and rate ceiling")
    add(e, BENCH["connections"])
    add(e, BENCH["procs"])
    add(e, BENCH["tick_us"])
    e.add_argument("--floor-rate", type=float, default=1000.0,
                   help="rate of the latency-floor measurement")
    add(e, BENCH["max_rate"])
    e.add_argument("--step-seconds", type=float, default=2.0,
                   help="seconds per step of the ceiling search")
    e.add_argument("--refresh", action="store_true", help="ignore the cached calibration")
    add(e, COMMON["out"], required=False, default=None, shown="none",
        help="also write the calibration to this JSON file")
    add(e, BENCH["gen_cpus"])
    e.add_argument("--echo-cpus", metavar="LIST",
                   help="pin the echo server to these CPUs (default: none)")
    e.set_defaults(func=cmd_echo)

    h = bs.add_parser("hiccup", help="the machine's stall floor: wake-up lateness and CPU "
                                     "lost while spinning, per CPU")
    h.add_argument("--cpus", default=None, metavar="LIST",
                   help="CPUs to probe one after another (default: each usable CPU)")
    h.add_argument("--seconds-per-cpu", type=float, default=4.0,
                   help="seconds each CPU is probed")
    h.add_argument("--together", action="store_true",
                   help="probe all the CPUs at the same time (as in a load test: generator and "
                        "server both running) instead of one after another")
    add(h, COMMON["out"], required=False, default=None, shown="none",
        help="also write the probes to this JSON file")
    h.set_defaults(func=cmd_hiccup)

    co = bs.add_parser("cost", help="the daemon's CPU per click by stage, in-process (no "
                                    "sockets): intake, prepare, kernel, finish, model, decide")
    co.add_argument("--shapes", default="1x4,2x4,5x4,20x4", metavar="FxR,...",
                    help="frames per read x reads per loop pass (batch = F*R)")
    co.add_argument("--clicks-per-shape", type=int, default=40_000,
                    help="measured clicks per shape")
    co.set_defaults(func=cmd_cost)

    sd = bs.add_parser("side", help="echo, slidrd embedded and slidrd on a local Redis side by "
                                    "side: interleaved rounds at a list of rates")
    sd.add_argument("--rates", default="5000,20000,40000", metavar="R,R,...",
                    help="offered rates in clicks/s (default: 5000,20000,40000)")
    sd.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; medians over them (default: 3)")
    add(sd, BENCH["duration"])
    add(sd, BENCH["warmup"])
    add(sd, BENCH["connections"])
    sd.add_argument("--server-cpus", metavar="LIST",
                    help="pin every server (and its redis-server) to these CPUs, e.g. 0 "
                         "(default: none)")
    add(sd, BENCH["gen_cpus"])
    add(sd, COMMON["out"], required=False, default=None, shown="var/bench/side-TIME",
        help="directory for report.json and side-by-side.png")
    sd.set_defaults(func=cmd_side)

    bb = bs.add_parser("batch", help="the daemon's cost per micro-batch: fixed per batch and "
                                     "marginal per click, at batch sizes 1, 4, 64, 512")
    add(bb, BENCH["seconds"])
    bb.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="also count instructions per batch with perf stat over N batches "
                         "(default: 0, off; where perf cannot count them they are left out)")
    bb.add_argument("--store", action="append", choices=("embedded", "redis"),
                    help="measure only this store (repeatable; default: both, Redis on a "
                         "throwaway redis-server)")
    bb.add_argument("--with-decision-log", action="store_true",
                    help="write the decision log as production does, so its per-click records "
                         "are in the cost (default: off)")
    add(bb, COMMON["out"], required=False, default=None, shown="none",
        help="also write the result to this JSON file")
    bb.set_defaults(func=cmd_batch)

    cl = bs.add_parser("cluster", help="the counter store on 1 vs 3 Redis Cluster shards: "
                                       "script calls, bytes and Redis CPU per click",
                       description="Starts throwaway local clusters (redis-server, redis-cli "
                                   "on loopback) and pushes one synthetic click stream through "
                                   "the cluster store per batch size; docs/cluster.md reads "
                                   "the results.")
    add(cl, BENCH["seconds"])
    cl.add_argument("--shards", default="1,3", metavar="N,...",
                    help="shard (master) counts to compare (default: 1,3)")
    cl.add_argument("--batches", default="1,16,128", metavar="B,...",
                    help="batch sizes (default: 1,16,128)")
    cl.add_argument("--rounds", type=int, default=3, metavar="N",
                    help="interleaved rounds per point, median kept (default: 3)")
    add(cl, COMMON["out"], required=False, default=None, shown="none",
        help="also write cluster.json, cluster.png and README.md (with the command) here")
    cl.set_defaults(func=cmd_cluster)

    m = bs.add_parser("micro", help="protocol, store and model costs per request / batch")
    add(m, BENCH["seconds"])
    add(m, COMMON["redis"], shown="a throwaway redis-server on loopback",
        help="Redis URL of the store to measure")
    m.add_argument("--only", action="append", choices=("protocol", "store", "model"),
                   help="measure only these (repeatable; default: all three)")
    m.set_defaults(func=cmd_micro)

    ab = bs.add_parser("abuse", help="hostile traffic against a real slidrd: poison clicks, a "
                                     "2099 click, garbage floods, connection waves, tricklers, "
                                     "10M distinct keys")
    ab.add_argument("--scenarios", default="poison,future,flood,waves,trickle,store,store_daemon",
                    help="comma-separated (default: the first seven): poison, future, flood, "
                         "waves, trickle, store, store_daemon, store_full, store_fill")
    ab.add_argument("--quick", action="store_true",
                    help="small sizes, a smoke test (default: the full sizes)")
    add(ab, COMMON["out"], required=False, default=None, shown="none",
        help="also write abuse.json here")
    ab.add_argument("--store-clicks", type=int, default=0,
                    help="clicks of the store scenarios (store, store_daemon, store_full, "
                         "store_fill; 0 = each one's own count)")
    ab.set_defaults(func=cmd_abuse)


def _log(msg: str) -> None:
    from slidr import progress
    if progress.mode() != progress.OFF:  # --quiet
        print(msg, file=sys.stderr, flush=True)


def _pin(cpus: str | None) -> None:
    if cpus:
        import os
        os.sched_setaffinity(0, {int(c) for c in _cpu_list(cpus)})


def _cpu_list(s: str) -> list[int]:
    out: list[int] = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


# ---------------------------------------------------------------- kernel / micro


def cmd_kernel(a: argparse.Namespace) -> int:
    try:
        from slidr.bench import kernel_bench
    except ImportError as e:
        raise RuntimeError("the kernel micro-benchmark (slidr.bench.kernel_bench) is not "
                           f"installed in this tree yet ({e})") from None
    kw: dict[str, Any] = {}
    params = inspect.signature(kernel_bench.run).parameters
    if "seconds_per_point" in params:
        kw["seconds_per_point"] = a.seconds
    if "redis_url" in params:
        kw["redis_url"] = a.redis
    res = kernel_bench.run(**kw)
    if a.json:
        _print_json(res)
    else:
        for kind in ("embedded", "redis"):
            pts = ", ".join(f"batch {b}: {v:,.0f} clicks/s" for b, v in res.get(kind, {}).items())
            print(f"{kind:9s} {pts}")
        print(f"bytes per key: {res.get('bytes_per_key')}")
    return 0


def cmd_side(a: argparse.Namespace) -> int:
    from slidr.bench import report, side
    _pin(a.gen_cpus)
    try:
        rates = [float(x) for x in a.rates.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rates must be numbers separated by commas, not {a.rates!r}") from None
    if not rates or min(rates) <= 0:
        raise ValueError("--rates needs at least one positive rate")
    if a.rounds < 1:
        raise ValueError("--rounds must be at least 1")
    out = _out_dir(a, "side", "")
    res = side.run(rates, a.rounds, a.duration, a.warmup, a.connections, a.server_cpus, _log)
    res["machine"] = report.machine()
    res["source"] = report.source_state()
    res["command"] = " ".join(["slidr", "bench", "side", *sys.argv[3:]])
    out.mkdir(parents=True, exist_ok=True)
    report.save_json(out / "report.json", res)
    try:
        side.plot(res, out / "side-by-side.png")
    except Exception as e:  # noqa: BLE001 - a plot must never hide the numbers
        _log(f"plot skipped: {e}")
    if a.json:
        _print_json(res)
    else:
        print("\n".join(side.lines(res)))
        print(f"report: {out / 'report.json'}")
    return 0


def cmd_batch(a: argparse.Namespace) -> int:
    from slidr.bench import batch_cost
    if a.instructions < 0:
        raise ValueError("--instructions must be 0 (off) or a number of batches")
    res = batch_cost.run(tuple(a.store or ("embedded", "redis")), seconds=a.seconds,
                         instructions=a.instructions, decision_log=a.with_decision_log)
    if a.out:
        from slidr.bench import report
        res["command"] = " ".join(["slidr", "bench", "batch", *sys.argv[3:]])
        report.save_json(a.out, res)
    if a.json:
        _print_json(res)
    else:
        print("\n".join(batch_cost.lines(res)))
    return 0


def cmd_micro(a: argparse.Namespace) -> int:
    from slidr.bench import micro
    res = micro.run(a.seconds, a.redis, tuple(a.only or ("protocol", "store", "model")))
    if a.json:
        _print_json(res)
    else:
        print("\n".join(micro.lines(res)))
    return 0


def cmd_abuse(a: argparse.Namespace) -> int:
    from slidr.bench import abuse
    a.out = a.out or ""
    return abuse.main_args(a)


def cmd_cluster(a: argparse.Namespace) -> int:
    from slidr.bench import cluster
    try:
        shards = tuple(int(x) for x in a.shards.split(","))
        batches = tuple(int(x) for x in a.batches.split(","))
        if not shards or not batches or min(shards + batches) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"--shards and --batches want positive integers like 1,3, not "
                         f"{a.shards!r} / {a.batches!r}") from None
    _log(f"bench cluster: shards {shards}, batches {batches}, {a.seconds:g} s per point")
    if a.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, not {a.rounds}")
    res = cluster.run(shards, batches, seconds=a.seconds, rounds=a.rounds)
    if a.out is not None:
        cmd = (f"slidr bench cluster --seconds {a.seconds:g} --shards {a.shards} "
               f"--batches {a.batches} --rounds {a.rounds} --out {a.out}")
        cluster.write(res, Path(a.out), cmd)
    if a.json:
        _print_json(res)
    else:
        print("\n".join(cluster.lines(res)))
    return 0


def cmd_cost(a: argparse.Namespace) -> int:
    from slidr.bench import cost
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in a.shapes.split(",")]
        if any(len(s) != 2 for s in shapes):
            raise ValueError
    except ValueError:
        raise ValueError(f"--shapes wants FxR pairs like 5x4,20x4, not {a.shapes!r}") from None
    res = cost.run([(s[0], s[1]) for s in shapes], a.clicks_per_shape)
    if a.json:
        _print_json(res)
    else:
        print("\n".join(cost.lines(res)))
    return 0


# ---------------------------------------------------------------- echo


def cmd_echo(a: argparse.Namespace) -> int:
    from slidr.bench import report
    from slidr.bench.sweep import calibrate_echo, calibration_line
    _pin(a.gen_cpus)
    c = calibrate_echo(a.connections, a.procs, a.tick_us, refresh=a.refresh,
                       floor_rate=a.floor_rate, ceiling_max=a.max_rate, step_s=a.step_seconds,
                       cpus=a.echo_cpus, log=None if a.json else _log)
    if a.out:
        report.save_json(a.out, c)
    if a.json:
        slim = {k: v for k, v in c.items() if k != "floor"}
        slim["floor"] = {k: v for k, v in c["floor"].items() if k != "hist"}
        json.dump(slim, sys.stdout, indent=2)
        print()
    else:
        print(calibration_line(c))
        print(report.machine_line(c["machine"]))
    return 0


def cmd_hiccup(a: argparse.Namespace) -> int:
    import os

    from slidr.bench import hiccup, report
    cpus = _cpu_list(a.cpus) if a.cpus else sorted(os.sched_getaffinity(0))
    res: dict[str, Any] = {"machine": report.machine(), "together": bool(a.together),
                           "probes": []}
    if a.together:
        res["probes"] = hiccup.probe_together([int(c) for c in cpus], a.seconds_per_cpu)
    else:
        res["probes"] = [hiccup.probe(int(c), a.seconds_per_cpu) for c in cpus]
    if not a.json:
        for r in res["probes"]:
            print(hiccup.line(r), flush=True)
    if a.out:
        report.save_json(a.out, res)
    if a.json:
        _print_json(res)
    return 0


# ---------------------------------------------------------------- run / sweep

_LOAD_KEYS = ("rate", "duration", "warmup", "connections", "procs", "arrivals", "tick_us", "drain")
_SWEEP_KEYS = {"target_ms": "target_ms", "start_rate": "start", "max_rate": "max_rate",
               "factor": "factor", "repeat": "repeat", "bisect": "bisect_steps",
               "max_fail_open": "max_fail_open", "max_time": "max_time_s"}


def scenario_options() -> dict[str, dict[str, Any]]:
    """Each table of a scenario file -> its keys' declarations (slidr/options.py)."""
    from slidr.slidrd.config import OPTIONS as DAEMON

    from slidr.defaults import BENCH
    from slidr.options import Opt
    sweep = {
        "target_ms": Opt("target_ms", float, 5.0, "p99.9 target (ms)", lo=0.0, lo_open=True),
        "start_rate": Opt("start_rate", float, 1000.0, "first rate", lo=0.0, lo_open=True),
        "max_rate": BENCH["max_rate"],
        "factor": Opt("factor", float, 2.0, "geometric step", lo=1.0, lo_open=True),
        "repeat": Opt("repeat", int, 3, "runs per rate", lo=1, hi=100),
        "bisect": Opt("bisect", int, 3, "bisection steps after a failure", lo=0, hi=20),
        "max_fail_open": Opt("max_fail_open", float, 0.001, "largest fail-open share that "
                             "still passes", lo=0.0, hi=1.0),
        "max_time": Opt("max_time", float, 1800.0, "time budget (s)", lo=0.0, lo_open=True)}
    daemon = {k: o for k, o in DAEMON.items() if k not in ("registry", "port", "host")}
    daemon["store"] = Opt("store", str, "embedded", "counter store of the daemon started",
                          choices=("embedded", "redis", "cluster"))
    top = {"name": Opt("name", str, "", "scenario name (default: the file name)"),
           "description": Opt("description", str, "", "one line for the reports"),
           "mode": Opt("mode", str, "run", "what the scenario is for",
                       choices=("run", "sweep"))}
    return {"": top, "load": {k: BENCH[k] for k in _LOAD_KEYS}, "daemon": daemon,
            "sweep": sweep}


def load_scenario(path: str | Path) -> dict[str, Any]:
    """A scenario file, checked in full: every key known (with suggestions), of its type and
    in range; the first problem is one line naming the file, the table, the key and value."""
    from slidr.options import OptionError, check_table, suggest
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scenario not found: {p}")
    try:
        sc = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML: {e}") from None
    spec = scenario_options()
    tables = [k for k in spec if k]
    for key, value in sc.items():
        if key in tables:
            if not isinstance(value, dict):
                raise OptionError(f"{p}: '{key}' must be a table ([{key}])")
            check_table(value, spec[key], f"{p} [{key}]")
        elif key in spec[""]:
            check_table({key: value}, spec[""], str(p))
        else:
            raise OptionError(f"{p}: unknown top-level key '{key}'"
                              f"{suggest(key, [*spec[''], *tables])}")
    sc.setdefault("name", p.stem)
    return sc


def _spec(a: argparse.Namespace, sc: dict[str, Any]) -> Any:
    from slidr.bench.loadgen import LoadSpec
    spec = LoadSpec(label=sc.get("name", ""))
    vals = dict(sc.get("load", {}))
    for key in _LOAD_KEYS:
        v = getattr(a, key, None)
        if v is not None:
            vals[key] = v
    spec = replace(spec, **vals)
    if a.target:
        host, _, port = a.target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--target must be HOST:PORT, got {a.target!r}")
        spec = replace(spec, host=host, port=int(port))
    return spec


def _out_dir(a: argparse.Namespace, kind: str, label: str) -> Path:
    if a.out:
        return Path(a.out)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path("var/bench") / f"{kind}-{label or 'adhoc'}-{stamp}"


class _Session:
    """The daemon a scenario starts (or the --target given), and its metrics URL."""

    def __init__(self, a: argparse.Namespace, sc: dict[str, Any]) -> None:
        self.a = a
        self.sc = sc
        self.daemon: Any = None

    def __enter__(self) -> _Session:
        d = self.sc.get("daemon")
        if self.a.target or not d:
            if not self.a.target:
                raise ValueError("give --target HOST:PORT or a --scenario with a [daemon] table")
            return self
        from slidr.bench.daemon import DaemonRun
        d = dict(d)
        store = d.pop("store", "embedded")
        _log(f"starting slidrd ({store} store, {d}) ...")
        self.daemon = DaemonRun(store=store, daemon_args=d, cpus=self.a.daemon_cpus,
                                redis_cpus=getattr(self.a, "redis_cpus", None)).start()
        _log(f"slidrd on 127.0.0.1:{self.daemon.port}, metrics {self.daemon.metrics_url}")
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.daemon is not None:
            died = not self.daemon.alive()
            self.daemon.stop(keep=died or exc_type is not None)
            if died:
                _log(f"slidrd exited during the run; its log: {self.daemon.log_path}")

    def apply(self, spec: Any) -> Any:
        if self.daemon is not None:
            return replace(spec, host="127.0.0.1", port=self.daemon.port)
        return spec

    @property
    def metrics(self) -> str | None:
        if self.a.metrics:
            return self.a.metrics
        return self.daemon.metrics_url if self.daemon is not None else None

    def alive(self) -> bool:
        return self.daemon is None or self.daemon.alive()

    def describe(self) -> dict[str, Any] | None:
        if self.daemon is None:
            return None
        return {"store": self.daemon.store, "args": self.daemon.daemon_args,
                # the interpreter as "python": a result file names no machine's paths
                "command": " ".join("python" if a == sys.executable else a
                                    for a in self.daemon.cmd)}


def _calibration(a: argparse.Namespace, spec: Any) -> dict[str, Any] | None:
    if a.no_calibrate:
        return None
    from slidr.bench.sweep import calibrate_echo, calibration_line
    c = calibrate_echo(spec.connections, spec.procs, spec.tick_us,
                       log=_log if not getattr(a, "json", False) else None)
    _log(calibration_line(c))
    return c


def _calib_summary(c: dict[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"floor": {k: v for k, v in c["floor"].items() if k != "hist"},
            "ceiling_rate": c["ceiling_rate"], "recorded": c["recorded"], "key": c["key"],
            "cached": c.get("cached", False)}


def _print_json(obj: Any) -> None:
    """A result as indented JSON on stdout, without the encoded histograms (`hist`)."""
    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "hist"}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    json.dump(strip(obj), sys.stdout, indent=2, default=str)
    print()


def cmd_run(a: argparse.Namespace) -> int:
    from slidr.bench import hist, report
    from slidr.bench.loadgen import one_line
    from slidr.bench.sweep import calibration_line, measure
    _pin(a.gen_cpus)
    sc = load_scenario(a.scenario) if a.scenario else {}
    spec = _spec(a, sc)
    spec.check()
    out = _out_dir(a, "run", spec.label)
    floor = None
    if a.floor and a.floor > 0:
        import os

        from slidr.bench import hiccup
        _log(f"probing the machine floor on every CPU for {a.floor:g} s ...")
        floor = hiccup.probe_together(sorted(os.sched_getaffinity(0)), a.floor)
    with _Session(a, sc) as s:
        calib = _calibration(a, spec)
        spec = s.apply(spec)
        rep = measure(spec, s.metrics)
        if not rep["aborted"] and not s.alive():
            rep["aborted"] = "the daemon exited during the run"
        rep["daemon"] = s.describe()
    rep["machine"] = report.machine()
    rep["source"] = report.source_state()
    rep["generator_calibration"] = _calib_summary(calib)
    if floor is not None:
        rep["machine_floor"] = floor
    rep["command"] = " ".join(["slidr", "bench", "run", *sys.argv[3:]]) if len(sys.argv) > 2 else None
    report.save_json(out / "report.json", rep)
    curves = [(f"{spec.label or spec.target} @ {spec.rate:,.0f}/s", hist.decode(rep["hist"]["latency"]))]
    if calib:
        curves.append((f"echo floor @ {calib['floor']['rate']:,.0f}/s",
                       hist.decode(calib["floor"]["hist"]["latency"])))
    try:
        report.plot_percentiles(curves, out / "percentiles.png",
                                f"{spec.label or 'run'}: latency by percentile "
                                f"({spec.arrivals}, {spec.procs}x{spec.connections} conn)", 5.0)
    except Exception as e:  # noqa: BLE001 - a plot must never hide the numbers
        _log(f"plot skipped: {e}")
    if a.json:
        _print_json(rep)
    else:
        print(one_line(rep))
        print(report.split_line(rep.get("server")))
        print(calibration_line(calib))
        if floor is not None:
            from slidr.bench import hiccup
            print(hiccup.floor_line(floor))
        print(report.machine_line(rep["machine"]))
        print(f"report: {out / 'report.json'}")
    if rep["aborted"]:
        print(f"slidr bench run: aborted: {rep['aborted']} (partial report in "
              f"{out / 'report.json'})", file=sys.stderr)
        return EXIT_ABORTED
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from slidr.bench import hist, report
    from slidr.bench.sweep import calibration_line, sweep
    _pin(a.gen_cpus)
    sc = load_scenario(a.scenario) if a.scenario else {}
    spec = _spec(a, sc)
    spec.check()
    kw = {}
    for cli_key, fn_key in _SWEEP_KEYS.items():
        v = getattr(a, cli_key, None)
        if v is None:
            v = sc.get("sweep", {}).get(cli_key)
        if v is not None:
            kw[fn_key] = v
    target_ms = float(kw.get("target_ms", 5.0))
    out = _out_dir(a, "sweep", spec.label)
    with _Session(a, sc) as s:
        calib = _calibration(a, spec)
        spec = s.apply(spec)
        res = sweep(spec, metrics_url=s.metrics, alive=s.alive,
                    log=None if a.json else _log, **kw)
        res["daemon"] = s.describe()
    res["name"] = spec.label
    res["machine"] = report.machine()
    res["source"] = report.source_state()
    res["generator_calibration"] = _calib_summary(calib)
    res["command"] = " ".join(["slidr", "bench", "sweep", *sys.argv[3:]]) if len(sys.argv) > 2 else None
    report.save_json(out / "sweep.json", res)
    title = (f"{spec.label or 'sweep'}: {spec.arrivals} arrivals, {spec.procs} proc x "
             f"{spec.connections} conn, median of {kw.get('repeat', 3)} (bars: min..max)")
    try:
        if res["points"]:
            report.plot_latency_vs_rate(
                [p for p in res["points"] if p["latency_ms"]], out / "latency_vs_rate.png",
                title, target_ms, calib["floor"] if calib else None)
            curves = []
            for p in sorted(res["points"], key=lambda p: p["rate"]):
                if p["runs"] and p["runs"][0].get("hist"):
                    h = hist.merge(r["hist"]["latency"] for r in p["runs"] if r.get("hist"))
                    curves.append((f"{p['rate']:,.0f}/s {'pass' if p.get('pass') else 'fail'}", h))
            if calib:
                curves.append(("echo floor", hist.decode(calib["floor"]["hist"]["latency"])))
            report.plot_percentiles(curves, out / "percentiles.png",
                                    f"{spec.label or 'sweep'}: latency by percentile "
                                    "(repeats merged)", target_ms)
    except Exception as e:  # noqa: BLE001 - a plot must never hide the numbers
        _log(f"plot skipped: {e}")
    if a.json:
        _print_json(res)
    else:
        for p in sorted(res["points"], key=lambda p: p["rate"]):
            lat = p["latency_ms"]
            q = lat.get("p99_9", {})
            print(f"{p['rate']:>9,.0f}/s {'PASS' if p.get('pass') else 'FAIL'}  p50 "
                  f"{lat.get('p50', {}).get('median', float('nan')):.3f}  p99 "
                  f"{lat.get('p99', {}).get('median', float('nan')):.3f}  p99.9 "
                  f"{q.get('median', float('nan')):.3f} [{q.get('min', float('nan')):.3f}.."
                  f"{q.get('max', float('nan')):.3f}] ms  achieved "
                  f"{p['achieved_rate']['median']:,.0f}/s  fail-open {p['fail_open']}  "
                  f"({p.get('why')})")
        best = res["best_rate"]
        print(f"best rate holding p99.9 < {target_ms:g} ms: "
              f"{'none' if best is None else f'{best:,.0f}/s'}"
              f"{' (stopped: ' + res['stopped'] + ')' if res.get('stopped') else ''}")
        print(calibration_line(calib))
        print(report.machine_line(res["machine"]))
        print(f"report: {out / 'sweep.json'}")
    if res.get("aborted"):
        print(f"slidr bench sweep: aborted: {res['aborted']} (partial report in "
              f"{out / 'sweep.json'})", file=sys.stderr)
        return EXIT_ABORTED
    return 0
