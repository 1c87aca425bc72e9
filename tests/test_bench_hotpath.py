"""The hot-path measuring tools, small and fast: `slidr bench batch` (cost per micro-batch),
`slidr bench side`'s table and plot, and the decoder fuzzer (a short run must find nothing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from slidr.bench import batch_cost, side


def test_batch_cost_splits_fixed_and_marginal():
    res = batch_cost.run(("embedded",), sizes=(1, 16), seconds=0.05)
    e = res["stores"]["embedded"]
    p1, p16 = e["points"]["1"], e["points"]["16"]
    assert p1["batches"] >= 30 and p16["batches"] >= 30
    assert 0 < p1["cpu_us"] < p16["cpu_us"]  # 16 clicks cost more than one
    assert e["fixed_cpu_us_per_batch"] > 0 and e["marginal_cpu_us_per_click"] > 0
    lines = batch_cost.lines(res)
    assert lines[0].startswith("embedded: fixed") and len(lines) == 3


def test_side_table_ratios_and_plot(tmp_path):
    runs = []
    for r in range(3):
        for name, p999, cpu, fo in (("echo", 2.0, 40.0, None), ("embedded", 3.0, 60.0, 1.0),
                                    ("redis", 4.0 + r, 80.0, 0.99)):
            runs.append({"server": name, "rate": 5000.0, "round": r, "p50": 0.2, "p99": 1.0,
                         "p99_9": p999, "model_scored": fo, "achieved_rate": 5000.0,
                         "main_thread_cpu_us_per_click": cpu, "process_cpu_us_per_click": cpu,
                         "redis_cpu_us_per_click": 9.0 if name == "redis" else None})
    res = {"rates": [5000.0], "rounds": 3, "duration_s": 1.0, "runs": runs}
    # the table is what run() builds from the runs: medians, ratios to echo
    table = []
    for name in side.SERVERS:
        xs = [x for x in runs if x["server"] == name]
        row = {"server": name, "rate": 5000.0}
        for k in ("p50", "p99", "p99_9", "model_scored", "main_thread_cpu_us_per_click",
                  "redis_cpu_us_per_click"):
            row[k] = side._med([x[k] for x in xs])
        table.append(row)
    for row in table:
        row["p99_9_vs_echo"] = row["p99_9"] / table[0]["p99_9"]
        row["cpu_vs_echo"] = row["main_thread_cpu_us_per_click"] / 40.0
    res["table"] = table
    assert table[2]["p99_9"] == 5.0 and table[2]["p99_9_vs_echo"] == 2.5
    text = "\n".join(side.lines(res))
    assert "redis" in text and "99.00%" in text and "2.50" in text
    side.plot(res, tmp_path / "side.png")
    assert (tmp_path / "side.png").stat().st_size > 10_000


@pytest.mark.parametrize("pure", [False, True])
def test_fuzz_decode_short_run_finds_nothing(pure):
    env = {"SLIDR_PURE_PYTHON": "1", "SLIDR_REQUIRE_NATIVE": "0"} if pure else {}
    import os
    r = subprocess.run([sys.executable, "-m", "slidr.bench.fuzz_decode", "--frames",
                        "3000" if pure else "20000", "--through-daemon", "0.1"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["inflight_after"] == 0 and res["connections_left_open"] <= 1
    assert res["native"] is (not pure)
    assert res["hot_clicks_decoded"] > 0 and res["statuses"]["too_deep"] > 0


def test_side_closed_loop_one_click_at_a_time():
    """The closed-loop mode answers every click (a lost answer would hang, not pass) and
    reports CPU per click for each server with the ratio to echo."""
    res = side.closed_loop(clicks=300, rounds=1)
    by = {r["server"]: r for r in res["table"]}
    assert set(by) == {"echo", "embedded"} and len(res["runs"]) == 2
    assert by["echo"]["cpu_vs_echo"] in (1.0, None)  # None: under one clock tick of CPU
    assert all(r["main_thread_cpu_us_per_click"] >= 0 for r in res["runs"])
