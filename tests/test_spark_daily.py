"""`slidr daily --engine spark` publishes on a simulated log, with the thresholds and held-out
metrics of `--engine local` on the same log (the features, hence the training sample, are the
same). Needs pyspark and Java 17 (see test_spark_engine.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slidr.offline import daily
from test_daily import loose_cfg, loose_flags
from test_spark_engine import _need_spark

from slidr.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from slidr.offline import simulate as s
    out = tmp_path_factory.mktemp("sim") / "log"
    s.write_outputs(s.simulate(s.SimParams(days=4, clicks_per_day=12_000, seed=11)), out)
    return out


def test_daily_on_spark_publishes_what_the_local_engine_publishes(sim: Path,
                                                                  tmp_path: Path) -> None:
    _need_spark()
    local_reg, spark_reg = tmp_path / "reg-local", tmp_path / "reg-spark"
    res_local = daily.run_daily(sim / "clicks.parquet", sim / "customers.parquet", local_reg,
                                tmp_path / "work-local", loose_cfg(), log=lambda m: None)
    assert res_local["exit_code"] == daily.EXIT_PUBLISHED, res_local["reason"]
    work = tmp_path / "work-spark"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "slidr.cli", "daily", "--clicks",
                        str(sim / "clicks.parquet"), "--customers", str(sim / "customers.parquet"),
                        "--registry", str(spark_reg), "--work", str(work),
                        *loose_flags(tmp_path), "--engine", "spark",
                        "--spark-master", "local[4]", "--json"],
                       capture_output=True, text=True, timeout=600)
    res = json.loads(r.stdout)
    assert r.returncode == 0 and res["exit_code"] == daily.EXIT_PUBLISHED, \
        (res.get("reason"), r.stderr[-3000:])
    a, b = Registry(local_reg).current_verified(), Registry(spark_reg).current_verified()
    assert a is not None and b is not None
    assert a.thresholds == b.thresholds
    ma, mb = a.manifest["metrics"], b.manifest["metrics"]  # held-out day, what daily published
    assert ma["test"] == mb["test"] and ma["test_slices"] == mb["test_slices"]
    assert ma["test"]["n"] > 0
    assert (a.path / "feature_stats.json").read_text() == \
        (b.path / "feature_stats.json").read_text()
