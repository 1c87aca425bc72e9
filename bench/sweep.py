"""Measured points, echo calibration and sweeps.

- `measure(spec, metrics_url)`: one open-loop run plus the daemon's own Prometheus split of the
  measured window (scraped at the end of warmup and at the end; absent endpoint tolerated).
- `calibrate_echo(...)`: the generator against the do-nothing echo server: its latency floor
  (a low-rate run) and its ceiling (highest rate it keeps on schedule). Cached per boot and
  generator shape for a few hours, so a sweep can print it next to its results cheaply.
- `sweep(...)`: the highest offered rate whose p99.9 (median of repeats) stays under the target
  with no errors, almost no fail-open answers and the offered rate actually delivered: step up
  geometrically until a point fails, then bisect between the last pass and the first failure.
"""

from __future__ import annotations

import copy
import json
import statistics
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from slidr.bench import report
from slidr.bench.loadgen import LoadSpec, one_line, run_load

CALIBRATION_CACHE = Path("var/bench/echo-calibration.json")
CALIBRATION_MAX_AGE_S = 4 * 3600


def measure(spec: LoadSpec, metrics_url: str | None = None) -> dict[str, Any]:
    before: dict[str, Any] = {}
    timers: list[threading.Timer] = []

    def on_start(t_ns: int) -> None:
        if not metrics_url:
            return
        # Scrape the daemon when the measured window opens (end of warmup).
        delay = max(0.0, (t_ns - time.monotonic_ns()) / 1e9 + spec.warmup)
        t = threading.Timer(delay, lambda: before.__setitem__("m", report.scrape(metrics_url)))
        t.daemon = True
        t.start()
        timers.append(t)

    rep = run_load(spec, on_start=on_start)
    for t in timers:
        t.cancel()
    after = report.scrape(metrics_url) if metrics_url else None
    rep["server"] = report.server_split(before.get("m"), after)
    return rep


# ---------------------------------------------------------------- echo calibration


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "?"


def _calib_key(connections: int, procs: int, tick_us: int) -> dict[str, Any]:
    return {"boot_id": _boot_id(), "connections": connections, "procs": procs, "tick_us": tick_us}


def calibrate_echo(connections: int = 8, procs: int = 1, tick_us: int = 100,
                   cache: Path | None = CALIBRATION_CACHE, refresh: bool = False,
                   floor_rate: float = 1000.0, floor_s: float = 3.0,
                   ceiling_start: float = 1000.0, ceiling_max: float = 256_000.0,
                   step_s: float = 2.0, max_lag_ms: float = 5.0, cpus: str | None = None,
                   log: Any = None) -> dict[str, Any]:
    """Latency floor and rate ceiling of this generator shape against the echo server."""
    from slidr.bench.echo_server import EchoProcess
    key = _calib_key(connections, procs, tick_us)
    if cache is not None and not refresh and cache.is_file():
        try:
            old = json.loads(cache.read_text())
            if (old.get("key") == key
                    and time.time() - old.get("recorded_unix", 0) < CALIBRATION_MAX_AGE_S):
                old["cached"] = True
                return old
        except (OSError, ValueError):
            pass
    steps = []
    with EchoProcess(cpus=cpus) as echo:
        base = LoadSpec(port=echo.port, connections=connections, procs=procs, tick_us=tick_us,
                        label="echo")
        fl = run_load(replace(base, rate=floor_rate, duration=floor_s, warmup=1.0))
        if log:
            log(f"echo floor @ {floor_rate:,.0f}/s: {one_line(fl)}")
        # Double the rate until the generator stops delivering (achieved < 90% of offered):
        # the on-schedule ceiling is the highest step that also kept send lag low (on a shared
        # machine a lower step can be late from noise; `steps` lists them all); the
        # throughput ceiling is the most it ever delivered, late or not.
        ceiling = 0.0
        throughput = 0.0
        rate = ceiling_start
        while rate <= ceiling_max:
            r = run_load(replace(base, rate=rate, duration=step_s, warmup=0.5, drain=1.0))
            ok = (not r["aborted"] and r["achieved_rate"] >= 0.95 * rate
                  and r["send_lag_ms"].get("p99", 1e9) <= max_lag_ms)
            steps.append({"rate": rate, "ok": ok, "achieved_rate": r["achieved_rate"],
                          "latency_ms": r["latency_ms"], "send_lag_ms": r["send_lag_ms"]})
            if log:
                log(f"echo step @ {rate:,.0f}/s {'ok  ' if ok else 'late'}: {one_line(r)}")
            throughput = max(throughput, r["achieved_rate"])
            if ok:
                ceiling = rate
            if r["aborted"] or r["achieved_rate"] < 0.9 * rate:
                break
            rate *= 2
    lat = fl["latency_ms"]
    out = {
        "key": key,
        "recorded_unix": time.time(),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": report.machine(),
        "floor": {"rate": floor_rate, "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"),
                  "p99_ms": lat.get("p99"), "p99_9_ms": lat.get("p99_9"),
                  "max_ms": lat.get("max"), "send_lag_ms": fl["send_lag_ms"],
                  "service_ms": fl["service_ms"], "hist": fl["hist"]},
        "ceiling_rate": ceiling,
        "ceiling_rule": f"highest of the doubling steps from {ceiling_start:g}/s with achieved "
                        f">= 95% of offered and send-lag p99 <= {max_lag_ms:g} ms",
        "throughput_ceiling": throughput,
        "throughput_rule": "highest achieved rate of any step (late sends included); steps "
                           "stop when achieved < 90% of offered",
        "steps": steps,
        "cached": False,
    }
    if cache is not None:
        report.save_json(cache, out)
    return out


def calibration_line(c: dict[str, Any] | None) -> str:
    if not c:
        return "generator floor/ceiling: not measured"
    f = c["floor"]
    return (f"generator (echo) floor @ {f['rate']:,.0f}/s: p50 {f['p50_ms']:.3f} ms, "
            f"p99 {f['p99_ms']:.3f} ms, p99.9 {f['p99_9_ms']:.3f} ms | on-schedule ceiling "
            f"{c['ceiling_rate']:,.0f}/s, throughput ceiling "
            f"{c.get('throughput_ceiling', 0):,.0f}/s ({c['key']['procs']} proc x "
            f"{c['key']['connections']} conn){' [cached]' if c.get('cached') else ''}")


# ---------------------------------------------------------------- sweep


def _stat(vals: list[float]) -> dict[str, float]:
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def point(spec: LoadSpec, repeat: int, metrics_url: str | None, log: Any = None,
          alive: Any = None) -> dict[str, Any]:
    """`repeat` runs at one rate; the median and spread of each figure."""
    runs = []
    for k in range(repeat):
        r = measure(replace(spec, seed=spec.seed + k), metrics_url)
        runs.append(r)
        if log:
            log(f"  rate {spec.rate:,.0f}/s run {k + 1}/{repeat}: {one_line(r)}")
        if r["aborted"]:
            break
        if alive is not None and not alive():
            r["aborted"] = r["aborted"] or "the daemon exited during the run"
            break
    lat_keys = ("p50", "p90", "p99", "p99_9", "max")
    out: dict[str, Any] = {
        "rate": spec.rate,
        "repeats": len(runs),
        "latency_ms": {k: _stat([r["latency_ms"].get(k, float("nan")) for r in runs])
                       for k in lat_keys if all(k in r["latency_ms"] for r in runs)},
        "send_lag_ms": {k: _stat([r["send_lag_ms"].get(k, float("nan")) for r in runs])
                        for k in ("p50", "p99", "max") if all(k in r["send_lag_ms"] for r in runs)},
        "achieved_rate": _stat([r["achieved_rate"] for r in runs]),
        "errors": sum(r["error_count"] for r in runs),
        "fail_open": sum(r["fail_open_count"] for r in runs),
        "fail_open_by_cause": _sum_dicts([r["fail_open"] for r in runs]),
        "answered": sum(r["answered"] for r in runs),
        "unanswered": sum(r["unanswered"] for r in runs),
        "aborted": next((r["aborted"] for r in runs if r["aborted"]), None),
        "runs": [_slim(r) for r in runs],
    }
    return out


def _sum_dicts(ds: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("latency_ms", "service_ms", "send_lag_ms", "achieved_rate", "sent_rate",
            "error_count", "errors", "fail_open", "fail_open_count", "unanswered", "answered",
            "aborted", "server", "hist", "started")
    return {k: copy.deepcopy(r.get(k)) for k in keep}


def passes(p: dict[str, Any], target_ms: float, max_fail_open: float) -> tuple[bool, str]:
    if p["aborted"]:
        return False, f"aborted: {p['aborted']}"
    if "p99_9" not in p["latency_ms"]:
        return False, "no answers"
    p999 = p["latency_ms"]["p99_9"]["median"]
    if p999 >= target_ms:
        return False, f"p99.9 {p999:.2f} ms >= {target_ms:g} ms"
    if p["errors"]:
        return False, f"{p['errors']} error responses"
    if p["unanswered"]:
        return False, f"{p['unanswered']} unanswered"
    answered = max(p["answered"], 1)
    if p["fail_open"] / answered > max_fail_open:
        return False, (f"fail-open {p['fail_open'] / answered:.2%} > {max_fail_open:.2%} "
                       f"(a daemon that answers 'valid' without scoring is not holding the rate)")
    if p["achieved_rate"]["median"] < 0.95 * p["rate"]:
        return False, f"achieved {p['achieved_rate']['median']:,.0f}/s < 95% of offered"
    return True, f"p99.9 {p999:.2f} ms"


def sweep(base: LoadSpec, target_ms: float = 5.0, start: float = 1000.0,
          max_rate: float = 200_000.0, factor: float = 2.0, bisect_steps: int = 3,
          repeat: int = 3, max_fail_open: float = 0.001, max_time_s: float = 1800.0,
          metrics_url: str | None = None, alive: Any = None, log: Any = None) -> dict[str, Any]:
    t_end = time.monotonic() + max_time_s
    points: list[dict[str, Any]] = []
    last_pass: float | None = None
    first_fail: float | None = None
    stopped = None

    def run_at(rate: float) -> bool:
        nonlocal stopped
        p = point(replace(base, rate=round(rate)), repeat, metrics_url, log, alive)
        ok, why = passes(p, target_ms, max_fail_open)
        p["pass"] = ok
        p["why"] = why
        points.append(p)
        if log:
            log(f"rate {rate:,.0f}/s: {'PASS' if ok else 'FAIL'} ({why})")
        if p["aborted"]:
            stopped = p["aborted"]
        return ok

    rate = start
    while rate <= max_rate and stopped is None and time.monotonic() < t_end:
        if run_at(rate):
            last_pass = rate
            rate *= factor
        else:
            first_fail = rate
            break
    # The start rate already failed: step down (at most 3 steps) to find a passing rate.
    down = 0
    while (last_pass is None and first_fail is not None and down < 3 and stopped is None
           and time.monotonic() < t_end):
        down += 1
        rate = first_fail / factor
        if run_at(rate):
            last_pass = rate
        else:
            first_fail = rate
    if last_pass is not None and first_fail is not None:
        lo, hi = last_pass, first_fail
        for _ in range(bisect_steps):
            if stopped is not None or time.monotonic() >= t_end or hi / lo < 1.05:
                break
            mid = (lo * hi) ** 0.5
            if run_at(mid):
                lo = mid
            else:
                hi = mid
        last_pass = lo
    if stopped is None and time.monotonic() >= t_end:
        stopped = f"time budget of {max_time_s:.0f}s spent"
    return {
        "target_p99_9_ms": target_ms,
        "max_fail_open": max_fail_open,
        "best_rate": last_pass,
        "first_failing_rate": first_fail,
        "points": points,
        "config": {k: v for k, v in asdict(base).items() if k not in ("extra", "rate")},
        "aborted": stopped if stopped and "budget" not in stopped else None,
        "stopped": stopped,
    }
