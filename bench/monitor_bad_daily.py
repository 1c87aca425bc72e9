"""The deviation monitor end to end against a bad bundle that `slidr daily` itself made.

    python -m slidr.bench.monitor_bad_daily --out DIR [--days 6] [--clicks-per-day 120000]
                                           [--rate 1400] [--bad-fpr-budget 0.5]

Steps: simulate DAYS days; `slidr daily` on every day but the last publishes the good bundle;
slidrd serves it with every monitor option at its default (and a decision log); the days before
the last are sent as fast as it takes them (the counters' history), then steady load: the last
day's clicks, paced at RATE clicks per second on one connection, from before the first swap
until after the second; after two monitor windows, `slidr daily` runs again on the
same log with a far too high FPR budget (--fpr-budget) and its model guardrails relaxed through
its options (--ivr-band, and a --guardrail-config that lifts the slice band's slack and the IVR
ceiling): it publishes and promotes the bad bundle, and the daemon reloads. The monitor must roll the
registry back (clicks and seconds from the swap to the rollback, from its event), no request may
fail across both swaps, and `slidr replay --bad-window` must give, for every click the bad
bundle decided, what the good bundle decides (checked here with onnxruntime on the logged
features and the good bundle's thresholds.json, independently of slidr's replay code). The
result is written to DIR/result.json; exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from slidr.bench.monitor_days import (
    REPO,
    Sender,
    _clicks,
    _free_port,
    simulated_days,
    start_slidrd,
    wait_ready,
)

# A weak model on a few simulated days: the AUC floors at chance and the drift limit off, the
# FPR allowed to miss its budget (as bench/monitor_days.py), so that the good bundle publishes.
# The IVR guardrails stay at their defaults for the good bundle.
BENCH_GUARD = ["--fpr-tolerance", "20", "--min-slice-purchases", "10", "--max-psi", "10",
               "--min-purchasing", "30"]
BENCH_TOML = "min_auc_margin = 0.0\nmin_auc_z = 0.0\nmin_auc_heuristic = 0.0\n"
# The bad bundle's relaxed model guardrails (what lets it through).
DAY_MS = 86_400_000
RELAXED_TOML = BENCH_TOML + "slice_ivr_abs_slack = 1.0\nmax_ivr = 0.95\n"


class Load(threading.Thread):
    """Steady load: the day's clicks in order, paced, until stop(); when the day runs out it
    starts over as the next day (click ids made unique, timestamps a day later); counts
    errors and fail-open answers."""

    def __init__(self, port: int, clicks: list[dict[str, Any]], rate: float) -> None:
        super().__init__(daemon=True)
        self.sender = Sender(port)
        self.clicks, self.rate = clicks, rate
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            lap = 0
            while not self.halt.is_set():
                for s in range(0, len(self.clicks), 1400):
                    part = self.clicks[s:s + 1400]
                    if lap:  # the same day again, a day later (fresh ids, counters sane)
                        part = [{**c, "click_id": f"{c['click_id']}~{lap}",
                                 "ts": c["ts"] + lap * DAY_MS} for c in part]
                    self.sender.send_day(part, self.rate)
                    if self.halt.is_set():
                        return
                lap += 1
        except BaseException as e:  # reported by the main thread
            self.error = e

    def stop(self) -> None:
        self.halt.set()
        self.join(120)


def replay_check(out: Path, reg: Path, dlog: Path, bad: str, good: str,
                 env: dict[str, str]) -> dict[str, Any]:
    """`slidr replay --bad-window BAD` through the registry's current bundle, and the corrected
    decisions compared with what the good bundle decides for the same clicks: its ONNX model
    run here on the logged features, its thresholds.json applied per slice."""
    import onnxruntime as ort

    from slidr.decision_file import read_decisions
    from slidr.registry import Registry
    corrected = out / "corrected.jsonl"
    t = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "slidr.cli", "replay", "--decisions", str(dlog),
                          "--registry", str(reg), "--bad-window", bad, "--out", str(corrected),
                          "--json", "--quiet"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"slidr replay exit {run.returncode}: {run.stderr[-2000:]}")
    summary = json.loads(run.stdout)
    rows = [json.loads(line) for line in corrected.read_text().splitlines()]
    logged = {rec["click"]["click_id"]: rec for rec in read_decisions(dlog, features_as="array")
              if rec["model"] == bad}
    ids = [r["click_id"] for r in rows if logged[r["click_id"]]["features"] is not None]
    bundle = Registry(reg).bundle(good).path
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feats = np.stack([np.asarray(logged[i]["features"], np.float32) for i in ids]) \
        if ids else np.zeros((0, 1), np.float32)
    scores = np.concatenate([np.asarray(sess.run(None, {name: feats[i:i + 4096]})[0]).reshape(-1)
                             for i in range(0, len(ids), 4096)]) if ids else np.zeros(0)
    th = json.loads((bundle / "thresholds.json").read_text())
    names = [f"{logged[i]['click']['device']}/{'in' if logged[i]['click'].get('logged_in') else 'out'}"
             for i in ids]
    want = scores > np.array([float((th.get("slices") or {}).get(n, th["default"]))
                              for n in names])
    by_id = {r["click_id"]: r for r in rows}
    got = np.array([bool(by_id[i]["invalid"]) for i in ids])
    before = np.array([bool(logged[i]["decision"]["invalid"]) for i in ids])
    return {"seconds": round(time.monotonic() - t, 1), "selected": summary.get("selected"),
            "rows": len(rows), "bad_bundle_decisions_logged": len(logged),
            "compared": len(ids), "without_features": len(rows) - len(ids),
            "newly_valid": summary.get("newly_valid"),
            "newly_invalid": summary.get("newly_invalid"), "by_slice": summary.get("by_slice"),
            "equal_to_good_bundle": bool(np.array_equal(got, want)),
            "mismatches": int((got != want).sum()),
            "bad_bundle_ivr_on_window": float(before.mean()) if ids else None,
            "good_bundle_ivr_on_window": float(want.mean()) if ids else None}

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work and result directory")
    p.add_argument("--days", type=int, default=6, help="simulated days (default 6)")
    p.add_argument("--clicks-per-day", type=int, default=120_000, help="default 120000")
    p.add_argument("--rate", type=float, default=1400.0,
                   help="clicks per second of the steady load (default 1400: the default "
                        "30 s windows hold their 20,000 clicks)")
    p.add_argument("--seed", type=int, default=3, help="simulation seed (default 3)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--fpr-budget", type=float, default=0.05,
                   help="the good bundle's FPR budget (default 0.05)")
    p.add_argument("--bad-fpr-budget", type=float, default=0.5,
                   help="the bad bundle's FPR budget (default 0.5: far too high)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="longest wait for the monitor's rollback (s, default 600)")
    args = p.parse_args(argv)

    import pyarrow.parquet as pq
    from slidr.slidrd.cli_admin import call

    from slidr.registry import Registry

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    simdir, tbl, day = simulated_days(out, args.days, args.clicks_per_day, args.seed)
    last = int(day.max())
    log_path = out / f"days-0-{last - 1}.parquet"
    pq.write_table(tbl.filter(day < last), log_path)
    (out / "bench.toml").write_text(BENCH_TOML)
    (out / "relaxed.toml").write_text(RELAXED_TOML)
    reg = out / "registry"
    env = {**os.environ, "SLIDR_REQUIRE_NATIVE": "1"}
    result: dict[str, Any] = {"days": args.days, "clicks_per_day": args.clicks_per_day,
                              "rate": args.rate, "dailies": []}

    def daily(name: str, budget: float, extra: list[str], toml: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "slidr.cli", "daily", "--clicks", str(log_path),
               "--customers", str(simdir / "customers.parquet"), "--registry", str(reg),
               "--epochs", str(args.epochs), "--fpr-budget", str(budget), *BENCH_GUARD,
               *extra, "--guardrail-config", str(out / toml), "--json", "--quiet"]
        t = time.monotonic()
        run = subprocess.run(["nice", "-n", "5", *cmd], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=1800)
        res = json.loads(run.stdout) if run.stdout.strip() else {}
        info = {"bundle": name, "command": "slidr " + " ".join(
                    a if not a.startswith(str(out)) else Path(a).name for a in cmd[3:]),
                "exit": run.returncode, "status": res.get("status"),
                "version": res.get("version"), "seconds": round(time.monotonic() - t, 1)}
        if res.get("version"):
            m = Registry(reg).bundle(res["version"]).manifest["metrics"]
            info["test"] = {k: (m.get("test") or {}).get(k) for k in ("ivr", "fpr")}
        result["dailies"].append(info)
        print(f"daily ({name}): {info}", flush=True)
        if run.returncode != 0:
            raise RuntimeError(f"slidr daily ({name}) exit {run.returncode}: "
                               f"{run.stderr[-2000:]}")
        return info

    good = daily("good", args.fpr_budget, [], "bench.toml")["version"]
    port, adm, dlog = _free_port(), out / "admin.sock", out / "decisions"
    proc, log = start_slidrd(out, reg, port, adm, env, ["--decision-log", str(dlog)])
    load: Load | None = None
    try:
        wait_ready(proc, adm, out)
        # The days before as fast as the daemon takes them: the counters' history (a cold
        # daemon sees every user and IP for the first time).
        history = Sender(port)
        for d in range(last):
            history.send_day(_clicks(tbl.filter(day == d)), 0.0)
        history.sock.close()
        result["history"] = {"sent": history.sent, "errors": history.errors,
                             "fail_open": history.fail_open}
        print(f"history: {history.sent:,} clicks sent fast", flush=True)
        load = Load(port, _clicks(tbl.filter(day == last)), args.rate)
        load.start()

        def mon() -> dict[str, Any]:
            return dict(call(str(adm), "stats")["monitor"])

        while mon()["windows"] < 2:
            if load.error:
                raise load.error
            time.sleep(1.0)
        before = mon()
        result["good_serving"] = {"windows": before["windows"],
                                  "last_window": before["last_window"],
                                  "counts": before["counts"]}
        relaxed = ["--ivr-band", "50"]
        bad = daily("bad", args.bad_fpr_budget, relaxed, "relaxed.toml")["version"]
        r = call(str(adm), "reload")
        t_swap = time.monotonic()
        print(f"reload: {r['previous']} -> {r['version']}", flush=True)
        if r["version"] != bad:
            raise RuntimeError(f"the daemon did not swap to the bad bundle: {r}")
        ev = None
        while time.monotonic() - t_swap < args.timeout:
            m = mon()
            if m["counts"]["rollback"]:
                ev = m["last_event"]
                break
            if load.error:
                raise load.error
            time.sleep(0.5)
        t_detect = time.monotonic() - t_swap
        while time.monotonic() - t_swap < args.timeout + 30 and \
                call(str(adm), "info")["model"] != good:
            time.sleep(0.2)
        t_back = time.monotonic() - t_swap
        time.sleep(35.0)  # another window on the restored bundle: no flapping
        load.stop()
        if load.error:
            raise load.error
        after = call(str(adm), "stats")
    finally:
        if load is not None and load.is_alive():
            load.stop()
        proc.terminate()
        proc.wait(60)
        log.close()
    s = load.sender
    monitor = after["monitor"]
    result["swap"] = {"bad": bad, "good": good, "event": ev,
                      "wall_s_to_rollback_seen": round(t_detect, 1),
                      "wall_s_to_good_served": round(t_back, 1),
                      "monitor_counts": monitor["counts"], "monitor_windows": monitor["windows"],
                      "served_after": monitor["version"],
                      "bad_window": monitor["events"][-1] if monitor["events"] else None}
    result["load"] = {"sent": s.sent, "errors": s.errors, "fail_open": s.fail_open}
    reg_obj = Registry(reg)
    result["registry"] = {"current": reg_obj.current().version,  # type: ignore[union-attr]
                          "rejected": reg_obj.rejected()}

    result["replay"] = replay_check(out, reg, dlog, bad, good, env)
    rows_ok = result["replay"]["rows"] == result["replay"]["bad_bundle_decisions_logged"] > 0
    result["seconds"] = round(time.monotonic() - t_start, 1)
    checks = {"rolled_back": monitor["counts"]["rollback"] == 1 and ev is not None
              and ev["version"] == bad,
              "one_rollback_no_flapping": monitor["counts"]["rollback"] == 1
              and monitor["version"] == good,
              "registry_back_on_good": result["registry"]["current"] == good
              and bad in result["registry"]["rejected"],
              "zero_failed_requests": s.errors == 0,
              "replay_equals_good_bundle": result["replay"]["equal_to_good_bundle"] and rows_ok}
    result["checks"] = checks
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("dailies", "good_serving", "swap", "load",
                                             "replay", "checks", "seconds")},
                     indent=2, default=str))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
