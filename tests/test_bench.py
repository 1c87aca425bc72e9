"""The bench's own correctness: the load generator against the echo server (rates, percentiles,
coordinated omission, faults), histogram merging across processes, the metrics parser, the CLI.

Rates are low and runs short (the suite must stay under a minute on a shared 2-core machine);
assertions are about what the generator must get right, not about how fast this machine is.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace

import pytest
from slidr.bench import hist
from slidr.bench.echo_server import EchoProcess
from slidr.bench.loadgen import LoadSpec, run_load
from slidr.bench.report import parse_prom, server_split, split_line

pytestmark = pytest.mark.timeout(60)

FAST = dict(pool=2000, click_source="builtin", connections=4, drain=2.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: nothing listens there


@pytest.fixture(scope="module")
def echo():
    with EchoProcess() as e:
        yield e


def test_low_rate_against_echo_is_sane(echo):
    rep = run_load(LoadSpec(port=echo.port, rate=500, duration=2.0, warmup=0.5, **FAST))
    assert rep["aborted"] is None
    assert rep["error_count"] == 0 and rep["unanswered"] == 0 and rep["bad_responses"] == 0
    assert rep["scheduled"] == 1000 and rep["answered"] == 1000
    assert abs(rep["achieved_rate"] - 500) <= 50, rep["achieved_rate"]
    lat = rep["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert lat["p50"] < 50  # loopback echo: anything near this is a generator bug
    # Latency is from the scheduled time, so it is never below the service time.
    assert lat["p50"] >= rep["service_ms"]["p50"]
    assert rep["send_lag_ms"]["count"] == 1000


def test_poisson_arrivals_hit_the_rate(echo):
    rep = run_load(LoadSpec(port=echo.port, rate=800, duration=2.0, warmup=0.2,
                            arrivals="poisson", **FAST))
    assert rep["aborted"] is None
    assert abs(rep["scheduled"] - 1600) < 5 * 40  # 5 sigma of a Poisson count
    assert abs(rep["achieved_rate"] - 800) <= 80


def test_stall_shows_in_the_tail_no_coordinated_omission():
    # The echo server blocks its loop for 200 ms at request 600 (t ~ 1.2 s into a 3 s run at
    # 500/s). ~100 requests are scheduled during the stall; measured from their scheduled
    # times they wait up to 200 ms, so p99.9 and max must show it. A closed-loop generator
    # would report one slow request per connection and a clean p99.9.
    with EchoProcess(stall_at_request=600, stall_ms=200) as e:
        rep = run_load(LoadSpec(port=e.port, rate=500, duration=3.0, warmup=0.0, **FAST))
    assert rep["aborted"] is None and rep["unanswered"] == 0
    lat = rep["latency_ms"]
    assert lat["max"] >= 180, lat
    assert lat["p99_9"] >= 150, lat
    assert lat["p99"] >= 100, lat  # ~3% of requests were delayed by >100 ms
    # The generator kept its schedule during the stall: its own send lag stays small.
    assert rep["send_lag_ms"]["p99"] < 100


def test_unreachable_daemon_gives_clear_error_and_partial_report():
    t = time.monotonic()
    rep = run_load(LoadSpec(port=_closed_port(), rate=1000, duration=5, warmup=1, **FAST))
    assert time.monotonic() - t < 10
    assert rep["aborted"].startswith("cannot connect to 127.0.0.1:")
    assert "refused" in rep["aborted"].lower()
    assert rep["answered"] == 0 and rep["latency_ms"] == {"count": 0}


def test_cli_unreachable_one_line_and_json(tmp_path, capsys):
    from slidr.cli import main
    out = tmp_path / "run"
    rc = main(["bench", "run", "--target", f"127.0.0.1:{_closed_port()}", "--duration", "1",
               "--warmup", "0", "--no-calibrate", "--out", str(out)])
    assert rc == 1  # aborted: exit 1 (slidr/exits.py)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "aborted" in ln]
    assert len(lines) == 1 and "cannot connect" in lines[0]
    rep = json.loads((out / "report.json").read_text())
    assert rep["aborted"].startswith("cannot connect") and "machine" in rep


def test_cli_run_with_floor_probe_reports_it(echo, tmp_path, capsys):
    from slidr.cli import main
    out = tmp_path / "run"
    rc = main(["bench", "run", "--target", f"127.0.0.1:{echo.port}", "--rate", "300",
               "--duration", "1", "--warmup", "0", "--no-calibrate", "--floor", "0.3",
               "--out", str(out)])
    assert rc == 0
    assert "machine floor (all CPUs busy)" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["machine_floor"] and all("arrival_waits_over" in r["spin_gaps"]
                                        for r in rep["machine_floor"])


def test_daemon_dying_mid_run_aborts_with_partial_numbers():
    with EchoProcess(die_after=1.5) as e:
        t = time.monotonic()
        rep = run_load(LoadSpec(port=e.port, rate=400, duration=6.0, warmup=0.0, **FAST))
    assert time.monotonic() - t < 8  # stopped at the failure, not at the end of the schedule
    assert rep["aborted"] and "lost" in rep["aborted"]
    assert rep["answered"] > 100
    assert rep["latency_ms"]["count"] >= rep["answered"]


def test_bad_target_values_are_refused():
    with pytest.raises(ValueError, match="loopback"):
        LoadSpec(host="10.1.2.3").check()
    with pytest.raises(ValueError, match="rate"):
        LoadSpec(rate=0).check()


def test_histograms_merge_across_two_processes(echo):
    spec = LoadSpec(port=echo.port, rate=400, duration=1.5, warmup=0.3, procs=2, **FAST)
    rep = run_load(spec)
    assert rep["aborted"] is None, rep["aborted"]
    assert rep["scheduled"] == 600 and rep["answered"] == 600
    assert hist.decode(rep["hist"]["latency"]).get_total_count() == 600
    assert abs(rep["achieved_rate"] - 400) <= 40
    # Constant arrivals from 2 processes interleave into one evenly spaced stream.
    from slidr.bench.loadgen import schedule_ns
    both = sorted([*schedule_ns(replace(spec), 0).tolist(), *schedule_ns(spec, 1).tolist()])
    gaps = {b - a for a, b in zip(both, both[1:], strict=False)}
    assert max(gaps) - min(gaps) <= 1


def test_hist_merge_of_encoded_equals_recording_together():
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.integers(10_000, 5_000_000, 5000)
    b = rng.integers(10_000, 50_000_000, 3000)
    ha, hb, hab = hist.new(), hist.new(), hist.new()
    hist.record_ns(ha, a)
    hist.record_ns(hb, b)
    hist.record_ns(hab, np.concatenate([a, b]))
    m = hist.merge([json.loads(json.dumps(hist.encode(ha))), hist.encode(hb), ""])
    assert m.get_total_count() == 8000
    for p in (50, 99, 99.9, 100):
        assert m.get_value_at_percentile(p) == hab.get_value_at_percentile(p)


PROM_BEFORE = """# HELP slidr_latency_seconds x
slidr_latency_seconds_bucket{stage="model",le="0.0001"} 0
slidr_latency_seconds_bucket{stage="model",le="0.001"} 10
slidr_latency_seconds_bucket{stage="model",le="+Inf"} 10
slidr_latency_seconds_sum{stage="model"} 0.005
slidr_latency_seconds_count{stage="model"} 10
slidr_batch_size_sum 100
slidr_batch_size_count 10
slidr_fail_open_total{cause="deadline"} 1
"""
PROM_AFTER = """slidr_latency_seconds_bucket{stage="model",le="0.0001"} 50
slidr_latency_seconds_bucket{stage="model",le="0.001"} 109
slidr_latency_seconds_bucket{stage="model",le="+Inf"} 110
slidr_latency_seconds_sum{stage="model"} 0.015
slidr_latency_seconds_count{stage="model"} 110
slidr_batch_size_sum 500
slidr_batch_size_count 20
slidr_fail_open_total{cause="deadline"} 4
slidr_fail_open_total{cause="store_down"} 2
garbage line
"""


def test_prometheus_split_is_a_delta_of_the_window():
    s = server_split(parse_prom(PROM_BEFORE), parse_prom(PROM_AFTER))
    m = s["stages"]["model"]
    assert m["count"] == 100
    assert m["mean_ms"] == pytest.approx(0.1)
    assert m["p50_le_ms"] == pytest.approx(0.1) and m["p99_le_ms"] == pytest.approx(1.0)
    assert s["mean_batch"] == pytest.approx(40.0)
    assert s["fail_open"] == {"deadline": 3, "store_down": 2}
    assert server_split(None, None) is None


def test_prometheus_parser_reads_the_daemon_format():
    metrics_mod = pytest.importorskip("slidr.slidrd.metrics")
    import numpy as np
    m = metrics_mod.Metrics()
    m.latency["total"].observe_many(np.array([0.0002, 0.0004, 0.003]))
    s = server_split(None, parse_prom(m.render()))
    assert s["stages"]["total"]["count"] == 3
    assert s["stages"]["total"]["p99_le_ms"] == pytest.approx(3.0)


def test_server_split_loop_lag_and_gc():
    metrics_mod = pytest.importorskip("slidr.slidrd.metrics")
    m = metrics_mod.Metrics()
    for v in (0.00004, 0.0006, 0.0021):
        m.loop_lag.observe(v)
    s = server_split(None, parse_prom(m.render()))
    assert s["loop_lag"]["count"] == 3
    assert s["loop_lag"]["max_le_ms"] == pytest.approx(3.0)  # 2.1 ms lands in the 3 ms bucket
    assert s["gc"]["count"] == 0 and s["gc"]["max_le_ms"] is None
    assert "loop lag max <= 3.0 ms" in split_line(s)


def test_sweep_against_echo_finds_a_passing_rate(echo):
    from slidr.bench.sweep import sweep
    base = LoadSpec(port=echo.port, duration=1.0, warmup=0.2, **FAST)
    res = sweep(base, target_ms=1000.0, start=200, max_rate=400, factor=2, repeat=1,
                bisect_steps=0, max_time_s=30)
    assert res["best_rate"] == 400 and res["first_failing_rate"] is None
    assert [p["pass"] for p in res["points"]] == [True, True]


def test_sweep_fails_a_point_that_only_fails_open():
    from slidr.bench.sweep import passes
    p = {"aborted": None, "rate": 1000, "latency_ms": {"p99_9": {"median": 1.0}}, "errors": 0,
         "unanswered": 0, "answered": 1000, "fail_open": 500,
         "achieved_rate": {"median": 1000.0}}
    ok, why = passes(p, 5.0, 0.001)
    assert not ok and "fail-open" in why


def test_clicks_are_contract_valid_frames():
    import msgpack
    from slidr.bench.clicks import builtin_clicks, frame, pack_prefixes

    from slidr.contract import validate_click
    cs = builtin_clicks(300, seed=2)
    assert len({c["session_id"] for c in cs}) < 300  # sessions repeat, as in real traffic
    pre = pack_prefixes(cs)
    msg = msgpack.unpackb(frame(42, pre[7], 1_763_900_000_123), raw=False)
    assert msg[:3] == [0, 42, "score"]
    validate_click(msg[3][0])
    assert msg[3][0]["ts"] == 1_763_900_000_123 and msg[3][0]["click_id"] == cs[7]["click_id"]


def test_cli_micro_protocol_json(capsys):
    from slidr.cli import main
    assert main(["bench", "micro", "--only", "protocol", "--seconds", "0.05", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"]["decode_request"]["median_us"] > 0


def test_sweep_steps_down_when_the_start_rate_fails(monkeypatch):
    from slidr.bench import sweep as sw

    def fake_point(spec, repeat, metrics_url, log=None, alive=None):
        p999 = 1.0 if spec.rate <= 300 else 50.0
        return {"rate": spec.rate, "aborted": None, "latency_ms": {"p99_9": {"median": p999}},
                "errors": 0, "unanswered": 0, "answered": 100, "fail_open": 0,
                "achieved_rate": {"median": float(spec.rate)}}
    monkeypatch.setattr(sw, "point", fake_point)
    res = sw.sweep(LoadSpec(), target_ms=5, start=1000, factor=2, bisect_steps=2, repeat=1)
    assert res["best_rate"] is not None and 250 <= res["best_rate"] <= 300
    assert res["first_failing_rate"] is not None


def test_hiccup_probe_measures_and_rejects_bad_input():
    from slidr.bench import hiccup
    r = hiccup.probe(cpu=None, seconds=0.2, sleep_us=200)
    w = r["wake_late_ms"]
    assert w["count"] >= 5  # ~400 sleeps of 0.2 ms in 0.1 s on an idle box, far fewer when busy
    assert 0 <= w["p50"] <= w["p99"] <= w["p99_9"] <= w["max"]
    assert 0.0 <= r["spin_gaps"]["lost_share"] < 1.0
    assert "wake-up late" in hiccup.line(r)
    with pytest.raises(ValueError):
        hiccup.probe(seconds=0)


def test_hiccup_arrival_waits_formula():
    import numpy as np
    from slidr.bench import hiccup
    # One 3 ms gap in 1000 ms: an arrival waits > 1 ms during its first 2 ms, > 2 ms during 1 ms.
    w = hiccup.arrival_waits(np.array([3.0, 0.05]), 1000.0)
    assert w["1ms"] == pytest.approx(0.002) and w["2ms"] == pytest.approx(0.001)
    assert w["0.5ms"] == pytest.approx(0.0025) and w["5ms"] == 0.0


def test_hiccup_together_probes_every_cpu():
    import os

    from slidr.bench import hiccup
    cpus = sorted(os.sched_getaffinity(0))[:2]
    rs = hiccup.probe_together(cpus, seconds=0.2)
    assert [r["cpu"] for r in rs] == cpus
    for r in rs:
        aw = r["spin_gaps"]["arrival_waits_over"]
        assert aw["0.5ms"] >= aw["1ms"] >= aw["2ms"] >= aw["5ms"] >= 0.0
    line = hiccup.floor_line(rs)
    assert line.startswith("machine floor") and all(f"cpu{c} " in line for c in cpus)


def test_cost_breakdown_accounts_for_the_wall_time():
    from slidr.bench import cost
    (r,) = cost.run([(2, 3)], clicks=300)
    p = r["us_per_click"]
    assert r["mean_batch"] == pytest.approx(6.0, rel=0.35)
    assert all(p[s] > 0 for s in cost.STAGES)
    assert sum(p.values()) == pytest.approx(r["wall_us_per_click"], rel=0.02)
    assert "frames/read" in cost.lines([r])[0]
    with pytest.raises(ValueError):
        cost.run([(0, 1)], clicks=300)
