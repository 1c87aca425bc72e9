"""No false alarms from the deviation monitor: normal simulated days through a daemon with the
default monitor settings, a new daily model swapped in each day.

    python -m slidr.bench.monitor_days --out DIR [--days 7] [--first-days 3]
                                      [--clicks-per-day 80000] [--rate 700] [--epochs 4]
                                      [--val-days N] [--method slice] [--min-purchasing 30]
                                      [--daemon-arg=--monitor-sustain=3 ...]

Steps: simulate DAYS days; train the first model with `slidr daily` on days 0..FIRST-1 and start
slidrd on it (every option at its default unless --daemon-arg); send those days as fast as the
daemon takes them (history for the counters); then for each following day: send the day at
RATE clicks per second (at 1,400/s the default 30 s windows hold their 20,000 clicks), run
`slidr daily` on the days so far, which publishes and promotes the next model unless its
guardrails refuse it (the reason is recorded), and reload the daemon. The monitor's state is
read every few seconds; the result (rollbacks, alerts, windows judged, the range of IVR ratios
against each kind of reference, and per swapped-in model how close its windows came to their
bands) is written to DIR/result.json; exit 1 when the monitor rolled anything back.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sender:
    """score_many on one TCP connection, paced to `rate` clicks per second (0 = no pacing)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.up = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.mid = 0
        self.errors = 0
        self.fail_open = 0
        self.sent = 0

    def send_day(self, clicks: list[dict[str, Any]], rate: float, batch: int = 250) -> None:
        t0 = time.monotonic()
        for s in range(0, len(clicks), batch):
            part = clicks[s:s + batch]
            self.mid += 1
            self.sock.sendall(msgpack.packb([0, self.mid, "score_many", [part]]))
            while True:
                msg = self._recv()
                if msg[0] == 1 and msg[1] == self.mid:
                    break
            if msg[2] is not None:
                self.errors += len(part)
            else:
                for d in msg[3]:
                    if "error" in d:
                        self.errors += 1
                    elif str(d.get("reason", "")).startswith("fail_open"):
                        self.fail_open += 1
            self.sent += len(part)
            if rate > 0:
                ahead = (s + len(part)) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

    def _recv(self) -> Any:
        while True:
            for msg in self.up:
                return msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("slidrd closed the connection")
            self.up.feed(data)


def start_slidrd(out: Path, reg: Path, port: int, adm: Path, env: dict[str, str],
                 extra: list[str]) -> tuple[subprocess.Popen[bytes], Any]:
    """`slidrd serve` on the registry with a 1 s deadline (the bench judges the monitor, not
    latency), its output in out/slidrd.log: (the process, the open log file)."""
    log = open(out / "slidrd.log", "wb")  # noqa: SIM115 - the caller closes it
    proc = subprocess.Popen([sys.executable, "-m", "slidr.slidrd.main", "serve", "--registry",
                             str(reg), "--port", str(port), "--admin-socket", str(adm),
                             "--deadline-ms", "1000", *extra],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def wait_ready(proc: subprocess.Popen[bytes], adm: Path, out: Path) -> None:
    """Until the daemon's admin socket exists (60 s at most), then a moment for its loop."""
    for _ in range(600):
        if adm.exists():
            break
        if proc.poll() is not None:
            raise RuntimeError(f"slidrd exited: {(out / 'slidrd.log').read_text()}")
        time.sleep(0.1)
    time.sleep(0.5)


def simulated_days(out: Path, days: int, clicks_per_day: int, seed: int
                   ) -> tuple[Path, Any, np.ndarray]:
    """The simulated log under out/sim (made once, reused when present): its folder, the clicks
    table and each click's day."""
    import pyarrow.parquet as pq
    from slidr.offline import simulate as sim
    from slidr.offline.train import day_index
    simdir = out / "sim"
    if not (simdir / "clicks.parquet").exists():
        sim.write_outputs(sim.simulate(sim.SimParams(days=days, clicks_per_day=clicks_per_day,
                                                     seed=seed)), simdir)
    tbl = pq.read_table(simdir / "clicks.parquet")
    return simdir, tbl, day_index(tbl.column("ts").to_numpy())


def _clicks(tbl: Any) -> list[dict[str, Any]]:
    from slidr.contract import FIELDS
    cols = [c for c in FIELDS if c in tbl.column_names]
    out = tbl.select(cols).to_pylist()
    for c in out:
        for k in [k for k, v in c.items() if v is None]:
            del c[k]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work and result directory")
    p.add_argument("--days", type=int, default=7, help="simulated days (default 7)")
    p.add_argument("--clicks-per-day", type=int, default=80_000, help="default 80000")
    p.add_argument("--rate", type=float, default=700.0,
                   help="clicks per second for the days after a swap (default 700)")
    p.add_argument("--seed", type=int, default=3, help="simulation seed (default 3)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    p.add_argument("--first-days", type=int, default=3,
                   help="days the first model is trained on (default 3)")
    p.add_argument("--loose-ivr", action="store_true",
                   help="also loosen the IVR guardrails (a new model may then decide very "
                        "differently from the current one: what the monitor is there to catch)")
    p.add_argument("--val-days", type=int, default=None,
                   help="`slidr daily --val-days` (default: the daily job's own)")
    p.add_argument("--method", default="slice", choices=("slice", "global", "auto"),
                   help="`slidr daily --method` (default slice)")
    p.add_argument("--min-purchasing", type=int, default=30,
                   help="`slidr daily --min-purchasing` (default 30)")
    p.add_argument("--daemon-arg", action="append", default=[],
                   help="extra `slidrd serve` argument (repeatable), e.g. --monitor-sustain=3")
    args = p.parse_args(argv)

    import pyarrow.parquet as pq
    from slidr.offline import daily
    from slidr.offline.guardrails import GuardrailConfig
    from slidr.slidrd.cli_admin import call

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    simdir, tbl, day = simulated_days(out, args.days, args.clicks_per_day, args.seed)
    n_days = int(day.max()) + 1
    # Weak models on small simulated data: the guardrails looser than the daily job's tests
    # (the AUC floor off, and the day-of-week drift of a few days' log allowed), so that
    # every day publishes: the point is the daily swap, and the
    # thresholds are still calibrated to the FPR budget on the days before.
    # The IVR guardrails (candidate vs current, overall and per slice, and the ceiling) stay
    # at their defaults unless --loose-ivr: they are what makes a day's new model "normal".
    loose_ivr = {"ivr_band": 5, "slice_ivr_band": 50, "max_ivr": 0.9} if args.loose_ivr else {}
    guard = GuardrailConfig(fpr_tolerance=20, min_slice_purchases=10, min_auc_margin=-0.5,
                            min_auc_z=-1e6, min_auc_heuristic=0.0, max_psi=10.0, **loose_ivr)
    cfg = daily.DailyConfig(epochs=args.epochs, fpr_budget=0.05, min_coverage=0.2,
                            min_purchasing=args.min_purchasing, guard=guard,
                            val_days=args.val_days, method=args.method)
    reg = out / "registry"
    result: dict[str, Any] = {"days": n_days, "clicks_per_day": args.clicks_per_day,
                              "rate": args.rate, "daemon_args": args.daemon_arg,
                              "loose_ivr": args.loose_ivr,
                              "dailies": [], "samples": []}

    def run_daily(last: int) -> dict[str, Any]:
        prefix = out / f"days-0-{last}.parquet"
        pq.write_table(tbl.filter(day <= last), prefix)
        t = time.monotonic()
        res = daily.run_daily(prefix, simdir / "customers.parquet", reg, work=out / f"work-{last}",
                              cfg=cfg, log=lambda *_a, **_k: None)
        info = {"trained_on_days": f"0-{last}", "status": res["status"],
                "version": res.get("version"), "seconds": round(time.monotonic() - t, 1)}
        failed = [c for c in res.get("checks") or [] if not c.get("passed", True)]
        if failed:
            info["refused_by"] = {c["name"]: c["message"] for c in failed}
        if res.get("version"):
            from slidr.registry import Registry
            m = Registry(reg).bundle(res["version"]).manifest["metrics"]
            info["test_ivr"] = (m.get("test") or {}).get("ivr")
        result["dailies"].append(info)
        print(f"daily on days 0-{last}: {info}", flush=True)
        return res

    first = args.first_days - 1
    run_daily(first)
    port, adm = _free_port(), out / "admin.sock"
    env = {**os.environ, "SLIDR_REQUIRE_NATIVE": "1"}
    proc, log = start_slidrd(out, reg, port, adm, env, args.daemon_arg)
    try:
        wait_ready(proc, adm, out)
        sender = Sender(port)

        def sample(label: str) -> dict[str, Any]:
            mon = call(str(adm), "stats")["monitor"]
            s = {"t": round(time.monotonic() - t_start, 1), "label": label,
                 "version": mon["version"], "windows": mon["windows"],
                 "reference": (mon["reference"] or {}).get("source"),
                 "ratios": mon["ratios"], "counts": mon["counts"],
                 "last_window": mon["last_window"], "previous_live": mon["previous_live"],
                 "judging": mon["judging"], "reference_ivr": mon["reference"],
                 "window_ivr": mon.get("window_ivr"), "bands": mon.get("bands"),
                 "deviating": mon["deviating_windows"], "restored": mon.get("restored")}
            result["samples"].append(s)
            return s

        history = [_clicks(tbl.filter(day == d)) for d in range(first + 1)]
        for d, clicks in enumerate(history):
            sender.send_day(clicks, 0.0)
            print(f"day {d} sent fast ({len(clicks):,} clicks): {sample(f'day {d}')}", flush=True)
        for d in range(first + 1, n_days):
            clicks = _clicks(tbl.filter(day == d))
            t = time.monotonic()
            sent = 0
            for s in range(0, len(clicks), max(int(args.rate * 5), 1)):
                part = clicks[s:s + max(int(args.rate * 5), 1)]
                sender.send_day(part, args.rate)
                sent += len(part)
                sample(f"day {d}")
            print(f"day {d} sent at {args.rate:.0f}/s ({len(clicks):,} clicks, "
                  f"{time.monotonic() - t:.0f} s): {result['samples'][-1]}", flush=True)
            if d < n_days - 1:
                res = run_daily(d)
                if res.get("version"):
                    r = call(str(adm), "reload")
                    print(f"reload: {r['previous']} -> {r['version']}", flush=True)
        final = call(str(adm), "stats")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    mon = final["monitor"]
    ratios: dict[str, list[float]] = {}
    seen: set[tuple[str, int]] = set()
    for s in result["samples"]:
        key = (s["version"], s["windows"])
        if s["reference"] and key not in seen and s["ratios"]:
            seen.add(key)
            ratios.setdefault(s["reference"], []).extend(
                v for v in s["ratios"].values() if v is not None and np.isfinite(v))
    # What a comparison with the previous model's live figures alone would have seen: the
    # judged windows' IVR over the previous bundle's last windows (overall).
    live_only = []
    seen_live: set[tuple[str, int]] = set()
    for s in result["samples"]:
        key = (s["version"], s["windows"])
        lw, pl = s["last_window"], s["previous_live"]
        if lw and pl and pl["ivr"] and key not in seen_live and s["judging"]:
            seen_live.add(key)
            live_only.append(lw["ivr"] / pl["ivr"])
    # Per judged bundle: how close its windows came to their bands (the live IVR over the
    # band's edge; the monitor fires beyond 1, after monitor_z standard errors more).
    swaps: dict[str, dict[str, Any]] = {}
    seen_w: set[tuple[str, int]] = set()
    for s in result["samples"]:
        key = (s["version"], s["windows"])
        if key in seen_w or not s.get("bands") or s["reference"] != "previous_same_clicks":
            continue
        seen_w.add(key)
        sw = swaps.setdefault(s["version"], {"windows": 0, "max_deviating": 0,
                                             "highest": [0.0, ""], "lowest": [math.inf, ""]})
        sw["windows"] += 1
        sw["max_deviating"] = max(sw["max_deviating"], s["deviating"])
        for k, (lo, hi) in s["bands"].items():
            live = (s["window_ivr"] or {}).get(k)
            if live is None:
                continue
            if hi > 0 and live / hi > sw["highest"][0]:
                sw["highest"] = [round(live / hi, 3), k]
            if lo > 0 and live / lo < sw["lowest"][0]:
                sw["lowest"] = [round(live / lo, 3), k]
    result["swaps"] = swaps
    result["live_figures_ratio_range"] = ([round(min(live_only), 3), round(max(live_only), 3),
                                           len(live_only)] if live_only else None)
    result["monitor"] = {"counts": mon["counts"], "windows": mon["windows"],
                         "events": mon["events"]}
    result["ratio_range"] = {k: [round(min(v), 3), round(max(v), 3), len(v)]
                             for k, v in ratios.items()}
    result["sent"] = sender.sent
    result["errors"] = sender.errors
    result["fail_open"] = sender.fail_open
    result["seconds"] = round(time.monotonic() - t_start, 1)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("monitor", "swaps", "ratio_range",
                                             "live_figures_ratio_range", "sent", "errors",
                                             "fail_open", "dailies", "seconds")},
                     indent=2, default=str))
    return 0 if mon["counts"]["rollback"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
