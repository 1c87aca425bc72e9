"""The on-disk features (offline/featurestore.py) and the memory plan (pipeline.MemoryPlan)."""

from __future__ import annotations

import numpy as np
import pytest
from slidr.offline import featurestore, pipeline, replay, simulate, train


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    d = tmp_path_factory.mktemp("fslog")
    simulate.write_outputs(simulate.simulate(simulate.SimParams(days=4, clicks_per_day=1500,
                                                                seed=5)), d)
    return d


def test_feature_directory_equals_the_whole_replay(log, tmp_path):
    whole = replay.replay_log(log / "clicks.parquet", progress=False)
    cfg = pipeline.TrainConfig(progress=False)
    stream = replay.iter_replay(log / "clicks.parquet", progress=False, chunk_rows=777)
    fs = featurestore.write(stream, tmp_path / "f", pipeline.chunk_labeller(None), cfg.weighting)
    assert len(fs.parts) > 3
    got = fs.load([featurestore.FEATURES, "ts", "session_hash", "purchased"])
    assert np.array_equal(got[featurestore.FEATURES], whole.features)
    assert np.array_equal(got["ts"], whole.ts)
    assert np.array_equal(got["session_hash"], whole.session_hash)
    # By day, and by row, in bounded batches.
    day = train.day_index(whole.ts)
    last = fs.days[-1:]
    sel = fs.load([featurestore.FEATURES], days=last)[featurestore.FEATURES]
    assert np.array_equal(sel, whole.features[day == day.max()])
    rows = np.sort(np.random.default_rng(1).choice(len(fs), 500, replace=False))
    by_row = fs.load([featurestore.FEATURES], rows=rows)[featurestore.FEATURES]
    assert np.array_equal(by_row, whole.features[rows])
    assert all(b[featurestore.FEATURES].shape[0] <= 100
               for b in fs.iter_batches([featurestore.FEATURES], batch_rows=100))
    assert int(fs.day_clicks.sum()) == len(whole)
    assert fs.day_cells.sum() == len(whole) and fs.day_strata.sum() == len(whole)


def test_streamed_sample_keeps_each_strata_quota_and_moments_match():
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 20, 50_000)
    counts = np.bincount(strata, minlength=288)
    quota = train.stratum_quotas(counts, 5000)
    keys = train.stratified_positions(counts, quota, seed=3)
    ords = train.StratumOrdinals(counts)
    kept = np.concatenate([np.isin(ords.keys(strata[a:a + 999]), keys)
                           for a in range(0, strata.size, 999)])
    assert np.array_equal(np.bincount(strata[kept], minlength=288), quota)
    x = rng.normal(size=(10_000, 24)).astype(np.float32)
    m = train.RunningMoments(24)
    for a in range(0, 10_000, 1234):
        m.update(x[a:a + 1234])
    mean, std = m.standardisation()
    ref_mean, ref_std = train.standardisation(x)
    assert np.allclose(mean, ref_mean, atol=1e-6) and np.allclose(std, ref_std, rtol=1e-5)


def test_memory_budget_too_small_is_a_clear_error():
    with pytest.raises(pipeline.MemoryBudgetError, match="too small"):
        pipeline.MemoryPlan.for_budget(0.5)
    plan = pipeline.MemoryPlan.for_budget(4.0)
    assert plan.chunk_rows == replay.CHUNK_ROWS
    rows, hold = plan.fit(1_000_000, 600_000, 400_000)
    assert rows > 1_000_000 and hold
    # Held-out days beyond the budget: a calibration sample (tests/test_memory_plan.py).
    small = pipeline.MemoryPlan.for_budget(1.5)
    assert small.eval_rows(50_000_000) < 50_000_000
    small.fit(50_000_000, 48_000_000, 2_000_000)
    with pytest.raises(pipeline.MemoryBudgetError, match="training sample"):
        small.fit(50_000_000, 30_000_000, 20_000_000)  # the test day's features (refit, export)


def test_memory_plan_checks_training_and_calibration_apart():
    """The held-out days are calibrated after training let go of its rows: the 32M-click log
    of bench/results/daily-scale-8m-32m-2026-12-04 (12.2M held-out clicks) fits 4 GiB with a
    training sample and streamed validation; twice its held-out days are calibrated on a
    sample."""
    plan = pipeline.MemoryPlan.for_budget(4.0)
    rows, hold = plan.fit(12_163_418, 8_060_667, 4_102_751)
    assert 5_000_000 < rows < 19_925_052 and not hold
    assert plan.base + 12_163_418 * plan.EVAL_B < plan.budget
    n = plan.eval_rows(24_000_000)
    assert 12_163_418 < n < 24_000_000 and plan.base + n * plan.EVAL_B <= plan.budget
