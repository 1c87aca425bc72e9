"""`slidr demo`: the whole product on one machine, end to end.

simulate a click log -> daily job (guardrails, weak labels, features, train, calibrate,
guardrails, publish) -> start slidrd on the embedded store -> replay the held-out last day
through the client library at a steady rate -> print IVR / FPR / coverage / precision /
recall per slice and the latency percentiles measured from each click's scheduled send time.

Every step is the same command an operator runs; the demo only strings them together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from slidr.defaults import BENCH, CALIBRATION, COMMON, TRAINING
from slidr.exits import CommandError
from slidr.options import add
from slidr.util import stop_process

CONTRACT_COLS = ("click_id", "ts", "session_id", "user_id", "ip", "device", "logged_in",
                 "tz_offset_min", "user_agent", "ad_id")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate, train, calibrate, publish, serve, replay a day",
                       description=__doc__)
    add(p, COMMON["out"], help="working directory (a later run reuses its simulated log when "
                               "the settings are the same)")
    # 10 days: `slidr train` keeps 3 validation (calibration) days on logs of 9+ days, 6
    # training days, and the last day held out (the per-command defaults: slidr/defaults.py).
    add(p, COMMON["days"])
    add(p, COMMON["clicks_per_day"])
    add(p, COMMON["seed"])
    add(p, BENCH["rate"], help="clicks/s at which the held-out day is replayed")
    p.add_argument("--max-replay", type=int, default=100_000,
                   help="at most this many clicks of the last day are replayed")
    p.add_argument("--warm-days", type=int, default=0,
                   help="days before the held-out day replayed into the daemon first (0 = all "
                        "of them: the live features then equal the offline ones)")
    add(p, TRAINING["epochs"])
    add(p, CALIBRATION["fpr_budget"])
    add(p, CALIBRATION["min_coverage"])
    p.set_defaults(func=run)


def _step(n: int, total: int, what: str) -> None:
    print(f"\n=== [{n}/{total}] {what}", flush=True)


def _slidr(*args: str) -> None:
    cmd = [sys.executable, "-m", "slidr.cli", *args]
    print("$ slidr " + " ".join(args), flush=True)
    sys.stdout.flush()
    rc = subprocess.call(cmd, stdout=sys.stdout.fileno() if sys.stdout is sys.__stdout__
                         else sys.stderr.fileno())
    if rc != 0:
        # The step printed its own one-line error; the demo stops with the same code.
        raise CommandError(f"`slidr {' '.join(args)}` exited with {rc}", rc)


def _free_port() -> int:
    from slidr.testing.redis_server import free_port
    return free_port()


def run(args: argparse.Namespace) -> int:
    """With --json the steps' output goes to stderr and stdout gets only the result."""
    import contextlib
    if not args.json:
        return _run(args)
    with contextlib.redirect_stdout(sys.stderr):
        result = _run(args)
    json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


def _run(args: argparse.Namespace) -> Any:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, reg, work = out / "data", out / "registry", out / "work"
    t_all = time.perf_counter()

    _step(1, 5, f"simulate {args.days} days x {args.clicks_per_day:,} clicks")
    # Reuse an earlier demo's log only when it was simulated with the same settings.
    params = {"days": args.days, "clicks_per_day": args.clicks_per_day, "seed": args.seed}
    stamp = data / "demo-params.json"
    try:
        same = json.loads(stamp.read_text()) == params
    except (OSError, ValueError):
        same = False
    if same and (data / "clicks.parquet").exists():
        print(f"(reusing {data}: simulated with the same settings)")
    else:
        if data.exists():
            print(f"(removing {data}: simulated with other settings)")
            shutil.rmtree(data)
        _slidr("simulate", "--out", str(data), "--days", str(args.days),
               "--clicks-per-day", str(args.clicks_per_day), "--seed", str(args.seed))
        stamp.write_text(json.dumps(params) + "\n")

    _step(2, 5, "daily job: guardrails -> labels -> features -> train -> calibrate -> publish")
    _slidr("daily", "--clicks", str(data / "clicks.parquet"), "--customers",
           str(data / "customers.parquet"), "--registry", str(reg), "--work", str(work),
           "--epochs", str(args.epochs), "--seed", str(args.seed),
           "--fpr-budget", str(args.fpr_budget), "--min-coverage", str(args.min_coverage),
           # the last day is replayed through slidrd below as the held-out day
           "--newest-day", "test")
    for report in (work / "candidate" / "report.html", work / "train" / "report.html"):
        if report.exists():
            print(f"training + calibration report: {report}")
            break

    _step(3, 5, "start slidrd on the embedded store")
    port, mport = _free_port(), _free_port()
    admin = out / "admin.sock"
    dlog = out / "decisions"
    cmd = [sys.executable, "-m", "slidr.slidrd.main", "serve", "--registry", str(reg),
           "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(mport),
           "--admin-socket", str(admin), "--decision-log", str(dlog),
           # a replay of a simulated log: its clicks may be stamped ahead of this clock
           "--max-clock-skew-s", "0"]
    print("$ slidrd " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, stdout=sys.stdout.fileno() if sys.stdout is sys.__stdout__
                            else sys.stderr.fileno())
    try:
        result = asyncio.run(_replay(args, data, port, proc))
        stats = _admin_stats(admin)
    finally:
        stop_process(proc, 30)
    result["server_stats"] = stats
    # The machine's own floor right after the run, to read the latency against: how often a
    # request arriving at a random moment waits for its vCPU (slidr bench hiccup --together).
    from slidr.bench import hiccup
    result["machine_floor"] = hiccup.probe_together(sorted(os.sched_getaffinity(0)), 2.0)
    result["parity"] = _offline_parity(work / "train" / "scores.parquet", result)
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    _print_result(result, mport)
    from slidr.util import write_json
    write_json(out / "demo.json", result)
    print(f"\nJSON: {out / 'demo.json'}")
    return result if args.json else 0


def _load_days(data: Path, max_replay: int, warm_days: int = 0
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, np.ndarray]]:
    """(warm-up clicks, held-out day's clicks, their truth columns). The held-out day is the
    last UTC day, as `slidr train` splits it (train.day_index); the warm-up is the `warm_days`
    days before it (0: every earlier day, so the daemon's counters hold what the offline
    replay's did and its features, scores and decisions can be compared one to one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slidr.offline.train import day_index
    t = pq.read_table(data / "clicks.parquet")
    day = day_index(t.column("ts").to_numpy())
    last = int(day.max())
    first_warm = 0 if warm_days <= 0 else last - warm_days
    warm = t.filter(pa.array((day >= first_warm) & (day < last)))
    meas = t.filter(pa.array(day == last)).slice(0, max_replay)
    cols = [c for c in CONTRACT_COLS if c in t.column_names]
    warm_clicks = warm.select(cols).to_pylist()
    meas_clicks = meas.select(cols).to_pylist()
    truth = {c: meas.column(c).to_numpy(zero_copy_only=False)
             for c in ("purchased", "is_robot", "ts") if c in meas.column_names}
    _, truth["session_code"] = np.unique(np.asarray(meas.column("session_id").to_pylist(),
                                                    dtype=object), return_inverse=True)
    return warm_clicks, meas_clicks, truth


def _clean(c: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in c.items() if v is not None}


async def _replay(args: argparse.Namespace, data: Path, port: int, proc: subprocess.Popen) -> dict[str, Any]:
    from slidr.client import AsyncClient

    warm, meas, truth = _load_days(data, args.max_replay, args.warm_days)
    async with AsyncClient([f"127.0.0.1:{port}"], deadline=0.5, pool_size=1,
                           health_interval=0) as client:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"slidrd exited with {proc.returncode} before it was ready")
            try:
                await client.ping(timeout=0.5)
                break
            except Exception:
                if time.monotonic() - t0 > 120:
                    raise RuntimeError("slidrd did not answer ping within 120 s") from None
                await asyncio.sleep(0.2)
        print(f"slidrd ready on 127.0.0.1:{port} ({time.monotonic() - t0:.1f} s incl. model warm-up)")

        what = "every earlier day" if args.warm_days <= 0 else f"the {args.warm_days} day(s) before"
        _step(4, 5, f"replay: warm counters with {what} ({len(warm):,} clicks, as fast as "
                    f"possible), then the held-out day ({len(meas):,} clicks) at {args.rate:,.0f}/s")
        tw = time.perf_counter()
        for i in range(0, len(warm), 256):
            await client.score_many([_clean(c) for c in warm[i:i + 256]], deadline=5.0)
        print(f"warm-up: {len(warm):,} clicks in {time.perf_counter() - tw:.1f} s")

        n = len(meas)
        decisions: list[Any] = [None] * n
        lat = np.zeros(n, dtype=np.float64)
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        async def one(i: int, sched: float) -> None:
            decisions[i] = await client.score(_clean(meas[i]), deadline=0.1)
            lat[i] = loop.time() - sched

        start = loop.time() + 0.05
        i = 0
        last_print = start
        while i < n:
            now = loop.time()
            while i < n and start + i / args.rate <= now:
                t = asyncio.ensure_future(one(i, start + i / args.rate))
                pending.add(t)
                t.add_done_callback(pending.discard)
                i += 1
            if now - last_print >= 5.0:
                last_print = now
                print(f"  sent {i:,}/{n:,}", flush=True)
            await asyncio.sleep(min(0.001, max(0.0, start + i / args.rate - loop.time())))
        if pending:
            await asyncio.gather(*pending)
        elapsed = loop.time() - start
    return _evaluate(decisions, lat, truth, elapsed)


def _evaluate(decisions: list[Any], lat: np.ndarray, truth: dict[str, np.ndarray],
              elapsed: float) -> dict[str, Any]:
    from slidr.offline.metrics import session_hour_heuristic
    n = len(decisions)
    inv = np.array([bool(d["invalid"]) for d in decisions])
    reasons: dict[str, int] = {}
    for d in decisions:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    slices = np.array([d.get("slice") or "?" for d in decisions], dtype=object)
    purchased = truth.get("purchased", np.zeros(n, bool)).astype(bool)
    robot = truth.get("is_robot")
    heur = session_hour_heuristic(truth["session_code"], truth["ts"], 20)

    def block(m: np.ndarray) -> dict[str, Any]:
        r: dict[str, Any] = {"clicks": int(m.sum()), "ivr": float(inv[m].mean()) if m.any() else 0.0,
                             "fpr": float(inv[m & purchased].mean()) if (m & purchased).any() else None,
                             "coverage": float(inv[m & heur].mean()) if (m & heur).any() else None}
        if robot is not None:
            rb = robot.astype(bool)
            tp = int((inv & rb & m).sum())
            r["precision"] = tp / max(int((inv & m).sum()), 1)
            r["recall"] = tp / max(int((rb & m).sum()), 1)
            r["robot_share"] = float(rb[m].mean()) if m.any() else 0.0
        return r

    overall = block(np.ones(n, bool))
    live = {"ts": truth["ts"], "invalid": inv,
            "model": np.array([d["reason"] == "model" for d in decisions]),
            "score": np.array([float(d.get("score") or 0.0) for d in decisions]),
            "threshold": np.array([float(d.get("threshold") or 0.0) for d in decisions])}
    per_slice = {s: block(slices == s) for s in sorted(set(slices.tolist()))}
    q = np.percentile(lat * 1000.0, [50, 90, 99, 99.9]) if n else [0, 0, 0, 0]
    return {"clicks": n, "achieved_rate": n / elapsed if elapsed > 0 else 0.0, "live": live,
            "reasons": reasons, "overall": overall, "slices": per_slice,
            "latency_ms": {"p50": q[0], "p90": q[1], "p99": q[2], "p99.9": q[3],
                           "max": float(lat.max() * 1000.0) if n else 0.0}}


def _offline_parity(scores: Path, r: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's answers for the held-out day against the offline scores of the same clicks
    (`slidr train`'s test split, same model, features from the offline replay of the whole
    log): training/serving parity, seen by the user. None when it cannot be compared."""
    import pyarrow.parquet as pq
    live = r.pop("live", None)
    if not scores.exists() or live is None:
        return None
    t = pq.read_table(scores, columns=["ts", "split", "score_model"])
    te = t.column("split").to_numpy(zero_copy_only=False) == "test"
    off_ts = t.column("ts").to_numpy()[te]
    off = t.column("score_model").to_numpy()[te].astype(np.float64)
    n = live["score"].size
    if off.size < n or not np.array_equal(off_ts[:n], live["ts"]):
        return {"compared": 0, "reason": "the offline test split is not the replayed day"}
    m = live["model"]  # clicks the model scored (not failed open)
    diff = np.abs(off[:n][m] - live["score"][m])
    same = (off[:n][m] > live["threshold"][m]) == live["invalid"][m]
    return {"compared": int(m.sum()), "decisions_equal": int(same.sum()),
            "max_abs_score_diff": float(diff.max()) if diff.size else 0.0}


def _admin_stats(sock: Path) -> dict[str, Any] | None:
    try:
        out = subprocess.run([sys.executable, "-m", "slidr.cli", "admin", "stats", "--admin-socket",
                              str(sock), "--json"], capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "   n/a"
    return f"{v * 100:6.2f}%" if pct else f"{v:8.3f}"


def _print_result(r: dict[str, Any], mport: int) -> None:
    _step(5, 5, "decisions and latency (held-out day, through slidrd)")
    print(f"{r['clicks']:,} clicks at {r['achieved_rate']:,.0f}/s; reasons: {r['reasons']}")
    hdr = f"{'slice':<14}{'clicks':>9}{'IVR':>9}{'FPR':>9}{'coverage':>10}"
    has_truth = "precision" in r["overall"]
    if has_truth:
        hdr += f"{'robots':>9}{'precision':>11}{'recall':>9}"
    print(hdr)
    rows = [("ALL", r["overall"])] + list(r["slices"].items())
    for name, b in rows:
        line = (f"{name:<14}{b['clicks']:>9,}{_fmt(b['ivr']):>9}{_fmt(b['fpr']):>9}"
                f"{_fmt(b['coverage']):>10}")
        if has_truth:
            line += f"{_fmt(b['robot_share']):>9}{_fmt(b['precision']):>11}{_fmt(b['recall']):>9}"
        print(line)
    par = r.get("parity")
    if par and par.get("compared"):
        print(f"\nlive vs offline (same clicks, same model; offline features from `slidr train`'s "
              f"replay): decisions equal on {par['decisions_equal']:,} of {par['compared']:,} "
              f"scored clicks, max |score difference| {par['max_abs_score_diff']:.2e}")
    elif par:
        print(f"\nlive vs offline: not compared ({par.get('reason')})")
    L = r["latency_ms"]
    print(f"\nlatency from scheduled send (client side, ms): p50 {L['p50']:.3f}  p90 {L['p90']:.3f}  "
          f"p99 {L['p99']:.3f}  p99.9 {L['p99.9']:.3f}  max {L['max']:.3f}")
    if r.get("machine_floor"):
        from slidr.bench import hiccup
        print(hiccup.floor_line(r["machine_floor"]) + "; measured for 2 s after the replay")
    st = r.get("server_stats")
    if st and st.get("rss_bytes"):
        print(f"slidrd resident memory with the model loaded: {st['rss_bytes'] / 2**20:.0f} MiB")
    if st:
        keep = {k: st[k] for k in ("model", "decisions", "fail_open", "batches", "latency_ms")
                if k in st}
        print("server stats: " + json.dumps(keep or st, default=str)[:600])
    print(f"total demo wall time {r['wall_s']} s; metrics were at http://127.0.0.1:{mport}/metrics")
    if os.environ.get("SLIDR_DEMO_STRICT") and r["reasons"].get("model", 0) == 0:
        raise RuntimeError("no click was scored by the model")
