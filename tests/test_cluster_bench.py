"""`slidr bench cluster` end to end on a one-shard cluster (seconds): the numbers come from the
servers' counters and the output folder holds the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from daemon_helpers import REPO

pytestmark = pytest.mark.redis


def test_bench_cluster_writes_results(tmp_path):
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "slidr.cli", "bench", "cluster", "--shards", "1",
                        "--batches", "1,8", "--seconds", "0.3", "--out", str(out)], cwd=REPO,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    res = json.loads((out / "cluster.json").read_text())
    assert res["command"].startswith("slidr bench cluster --seconds 0.3 --shards 1")
    one = res["shards"]["1"]
    # One shard: one script call per batch, whatever the batch size.
    assert one["1"]["script_calls_per_click"] == pytest.approx(1.0, abs=0.01)
    assert one["8"]["script_calls_per_click"] == pytest.approx(1 / 8, abs=0.01)
    for b in ("1", "8"):
        assert one[b]["clicks"] > 0 and one[b]["bytes_per_click"] > 100
        assert one[b]["redis_cpu_us_per_click"] > 0 and one[b]["script_us_per_click"] > 0
        # the script reads and writes each key once: at least 1 + 2 * 3 commands per click
        # at batch 1 (more kinds of keys, more commands)
    assert one["1"]["redis_commands_per_click"] >= 7
    assert (out / "cluster.png").stat().st_size > 1000
    assert "slidr bench cluster" in (out / "README.md").read_text()
    assert "batch" in r.stdout.decode()
