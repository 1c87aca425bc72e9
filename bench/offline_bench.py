"""Offline benchmark: feature-replay throughput and the wall time of the whole `slidr train`.

    python -m slidr.bench.offline_bench [--clicks F --customers F] [--days 8]
        [--clicks-per-day 200000] [--seed 7] [--work DIR] [--repeat 3] [--json]

Replay throughput is the median of --repeat runs per batch size (all runs are kept in the
JSON, with the 1-minute load average before and after: on a small shared machine the load moves
the numbers by 2x, so compare runs taken at similar load).

Without --clicks it makes a log with the simulator (`slidr.offline.simulate`); when that module
is missing it falls back to a small built-in generator (said so in the output: the numbers then
measure speed only, not model quality). Writes bench/results/offline_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def synth_log(out: Path, days: int, per_day: int, seed: int) -> tuple[Path, Path]:
    """Vectorised stand-in log (contract columns + purchased + is_robot) for speed runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    t0 = 1_700_006_400_000
    n_target = days * per_day
    n_sess = n_target // 3
    robot = rng.random(n_sess) < 0.05
    size = np.where(robot, rng.integers(10, 60, n_sess), rng.integers(1, 5, n_sess))
    start = t0 + rng.integers(0, days * 86_400_000, n_sess)
    sess = np.repeat(np.arange(n_sess), size)
    gaps = np.where(np.repeat(robot, size), rng.exponential(3_000, sess.size),
                    rng.exponential(90_000, sess.size))
    cs = np.cumsum(gaps)
    first = np.r_[0, np.cumsum(size)[:-1]]
    within = cs - np.repeat(cs[first] - gaps[first], size)
    ts = np.repeat(start, size) + within.astype(np.int64)
    keep = ts < t0 + days * 86_400_000
    order = np.argsort(ts[keep], kind="stable")
    sess, ts = sess[keep][order], ts[keep][order]
    rob = robot[sess]
    li = (rng.random(n_sess) < 0.4)[sess]
    n = ts.size
    ipn = np.where(rob, rng.integers(0, 2000, n_sess)[sess], rng.integers(0, 2**24, n_sess)[sess])
    uid = rng.integers(0, 200_000, n_sess)[sess]
    s_ids = np.char.add("s", sess.astype(str))
    tbl = pa.table({
        "click_id": np.char.add("c", np.arange(n).astype(str)),
        "ts": ts, "session_id": s_ids,
        "user_id": pa.array(np.where(li, np.char.add("u", uid.astype(str)), None).tolist(),
                            pa.string()),
        "ip": np.char.add("10.", np.char.add((ipn >> 16).astype(str), np.char.add(
            ".", np.char.add(((ipn >> 8) & 255).astype(str), np.char.add(
                ".", (ipn & 255).astype(str)))))),
        "device": np.array(["desktop", "mobile", "app"])[rng.integers(0, 3, n_sess)[sess]],
        "logged_in": li, "tz_offset_min": np.zeros(n, np.int32),
        "purchased": (~rob) & (rng.random(n) < 0.03), "is_robot": rob})
    clicks = out / "clicks.parquet"
    pq.write_table(tbl, clicks)
    cust = out / "customers.parquet"
    m = 200_000
    pq.write_table(pa.table({"user_id": np.char.add("u", np.arange(m).astype(str)),
                             "recency_days": rng.integers(0, 365, m),
                             "frequency": rng.integers(0, 50, m),
                             "monetary": rng.gamma(2.0, 50.0, m)}), cust)
    return clicks, cust


def make_log(work: Path, days: int, per_day: int, seed: int) -> tuple[Path, Path, str]:
    try:
        from slidr.offline import simulate as sim_mod
    except ImportError:
        c, u = synth_log(work, days, per_day, seed)
        return c, u, "bench built-in generator (simulator absent)"
    sim = work / f"sim-{days}x{per_day}-s{seed}"
    if not (sim / "clicks.parquet").exists():
        res = sim_mod.simulate(sim_mod.SimParams(days=days, clicks_per_day=per_day, seed=seed))
        sim_mod.write_outputs(res, sim)
    return sim / "clicks.parquet", sim / "customers.parquet", "slidr.offline.simulate"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clicks")
    ap.add_argument("--customers")
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--clicks-per-day", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", default="/tmp/slidr-offline-bench")
    ap.add_argument("--batch", type=int, nargs="*", default=[512, 4096, 16384])
    ap.add_argument("--repeat", type=int, default=3, help="replay runs per batch size")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if a.clicks:
        clicks, cust, source = Path(a.clicks), (Path(a.customers) if a.customers else None), \
            "given"
        gen_s = 0.0
    else:
        clicks, cust, source = make_log(work, a.days, a.clicks_per_day, a.seed)
        gen_s = time.perf_counter() - t

    from slidr.offline import replay

    from slidr.kernel import NATIVE
    res: dict = {"source": source, "clicks": str(clicks), "generate_s": gen_s,
                 "native_kernel": NATIVE, "cpus": os.cpu_count(),
                 "python": platform.python_version(), "replay": {}}
    for b in a.batch:
        runs = []
        load0 = os.getloadavg()[0]
        for _ in range(max(1, a.repeat)):
            rp = replay.replay_log(clicks, batch_size=b, progress=False)
            res["n_clicks"] = len(rp)
            runs.append((rp.seconds, rp.clicks_per_s))
            del rp
        sec = sorted(r[0] for r in runs)[len(runs) // 2]
        res["replay"][str(b)] = {"seconds": sec, "clicks_per_s": res["n_clicks"] / sec,
                                 "runs_clicks_per_s": [round(r[1]) for r in runs],
                                 "load_1min": [load0, os.getloadavg()[0]]}
    if not a.skip_train:
        out = work / "train-out"
        argv2 = [sys.executable, "-m", "slidr.cli", "train", "--clicks", str(clicks),
                 "--out", str(out), "--json", "--quiet", "--seed", str(a.seed)]
        if cust:
            argv2 += ["--customers", str(cust)]
        t = time.perf_counter()
        p = subprocess.run(argv2, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode:
            sys.stderr.write(p.stderr)
            return p.returncode
        summary = json.loads(p.stdout)
        res["train"] = {"wall_s": wall, "timings": summary["timings"],
                        "model_beats_all_everywhere":
                            summary["comparison"]["model_beats_all_everywhere"],
                        "out": str(out)}
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "offline_bench.json", "w") as f:
        json.dump(res, f, indent=2)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"log: {res.get('n_clicks', 0):,} clicks ({source})")
        for b, r in res["replay"].items():
            print(f"replay batch {b:>6}: {r['clicks_per_s']:>12,.0f} clicks/s "
                  f"({r['seconds']:.2f} s, median of {len(r['runs_clicks_per_s'])}; "
                  f"load {r['load_1min'][0]:.1f}-{r['load_1min'][1]:.1f})")
        if "train" in res:
            print(f"slidr train wall time: {res['train']['wall_s']:.1f} s "
                  f"(timings {json.dumps({k: round(v, 1) for k, v in res['train']['timings'].items()})})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
