"""Weak labels: human = purchased OR a logged-in customer with a high RFM score."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from slidr.offline.labels import (
    RFMConfig,
    crowded_ip_days,
    entity_labels,
    quantile_score,
    rfm_scores,
    scoped_labels,
    weak_labels,
)


def customers(n: int = 100):
    i = np.arange(n)
    # Customer k: recency n-k days, frequency k, monetary 10k -> higher k is better on all three.
    return pa.table({"user_id": [f"u{k}" for k in i], "recency_days": (n - i).astype(np.int32),
                     "frequency": i.astype(np.int32), "monetary": (10.0 * i)})


def test_quantile_scores_direction_and_ties():
    v = np.arange(10, dtype=float)
    assert quantile_score(v, 5).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert quantile_score(v, 5, higher_is_better=False).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    tied = quantile_score(np.array([0, 0, 0, 0, 0, 0, 0, 0, 5, 9.0]), 5)
    assert len(set(tied[:8].tolist())) == 1  # equal values, equal score
    assert quantile_score(np.zeros(0), 5).shape == (0,)


def test_default_threshold_is_about_top_fifth():
    sc = rfm_scores(customers(100))
    assert sc.recency[-1] == 5 and sc.recency[0] == 1  # lower recency_days is better
    assert 0.15 <= sc.high.mean() <= 0.2
    assert sc.high[-1] and not sc.high[0]


def test_weights_and_explicit_threshold():
    sc = rfm_scores(customers(100), RFMConfig(weights=(0.0, 0.0, 1.0), threshold=5))
    assert sc.threshold == 5 and sc.high.sum() == 20
    sc2 = rfm_scores(customers(100), RFMConfig(top_share=0.5))
    assert 0.4 <= sc2.high.mean() <= 0.5


def test_weak_labels_rules():
    cust = customers(100)
    purchased = np.array([True, False, False, False, False, True])
    user = [None, "u99", "u99", "u0", "nobody", "u0"]
    logged_in = np.array([False, True, False, True, True, True])
    y = weak_labels(purchased, user, logged_in, cust)
    assert y.dtype == np.int8
    # purchase -> human; high-RFM logged in -> human; same id but logged out -> not;
    # low RFM -> not; unknown customer -> not; purchase overrides low RFM.
    assert y.tolist() == [1, 1, 0, 0, 0, 1]


def test_no_customers_table_means_purchase_only():
    y = weak_labels([True, False], [None, "u1"], [False, True], None)
    assert y.tolist() == [1, 0]
    empty = customers(0)
    assert weak_labels([False], ["u1"], [True], empty).tolist() == [0]


def test_clear_errors():
    bad = pa.table({"user_id": ["a"], "recency_days": [1], "frequency": [1]})
    with pytest.raises(ValueError, match="missing column.*monetary"):
        rfm_scores(bad)
    nan = pa.table({"user_id": ["a", "b"], "recency_days": [1, 2], "frequency": [1, 2],
                    "monetary": [1.0, None]})
    with pytest.raises(ValueError, match="monetary.*row 1"):
        rfm_scores(nan)
    with pytest.raises(ValueError, match="same length"):
        weak_labels([True], ["a", "b"], [True], customers(5))
    with pytest.raises(ValueError, match="top_share"):
        RFMConfig(top_share=1.5)
    # Plain dict of columns works too.
    d = {"user_id": ["a", "b"], "recency_days": [1, 9], "frequency": [3, 1],
         "monetary": [5.0, 1.0]}
    assert weak_labels([False, False], ["a", "b"], [True, True], d).tolist() == [1, 0]


def test_on_simulated_log():
    from slidr.offline.simulate import SimParams, simulate
    r = simulate(SimParams(days=1, clicks_per_day=20_000, seed=2))
    c = r.clicks
    y = weak_labels(c.column("purchased").to_numpy(zero_copy_only=False),
                    c.column("user_id").to_pylist(),
                    c.column("logged_in").to_numpy(zero_copy_only=False), r.customers)
    rob = c.column("is_robot").to_numpy(zero_copy_only=False)
    # Weak labels are slightly wrong, as in life: a few robots look human (stolen accounts with
    # a high RFM score) and most humans are not labelled human (they never buy).
    assert 0 < y[rob].mean() < 0.02
    assert y[~rob].mean() > 5 * y[rob].mean()


def test_numeric_customer_ids_match_string_click_ids():
    d = {"user_id": [11, 22], "recency_days": [1, 9], "frequency": [3, 1], "monetary": [5.0, 1.0]}
    assert weak_labels([False, False], ["11", "22"], [True, True], d).tolist() == [1, 0]


def test_entity_labels_spread_a_purchase_over_its_entity():
    lab = [0, 1, 0, 0, 0]
    assert entity_labels(lab, ["s1", "s1", "s2", "s1", "s3"]).tolist() == [1, 1, 0, 1, 0]
    assert entity_labels([], []).tolist() == []
    with pytest.raises(ValueError, match="same length"):
        entity_labels([1], ["a", "b"])


def test_scoped_labels():
    lab = np.array([1, 0, 0, 0, 0, 0], np.int8)
    sess = np.array([7, 7, 8, 9, 10, 11], np.uint64)
    ip = ["a", "a", "a", "a", "b", "a"]
    day = [0, 0, 0, 0, 0, 1]
    li = [False, False, False, True, False, False]
    assert scoped_labels(lab, "click").tolist() == lab.tolist()
    assert scoped_labels(lab, "session", session=sess).tolist() == [1, 1, 0, 0, 0, 0]
    # IP "a" bought on day 0: its logged-out clicks that day are human; the logged-in click
    # (its own account decides), IP "b" and IP "a" on day 1 stay 0.
    got = scoped_labels(lab, "ip_day", session=sess, ip=ip, day=day, logged_in=li)
    assert got.tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="one of click, session, ip_day"):
        scoped_labels(lab, "user")
    with pytest.raises(ValueError, match="session key"):
        scoped_labels(lab, "session")
    with pytest.raises(ValueError, match="IP, day and logged_in"):
        scoped_labels(lab, "ip_day", session=sess)


def test_session_scope_on_simulated_log():
    from slidr.offline.simulate import SimParams, simulate
    r = simulate(SimParams(days=1, clicks_per_day=20_000, seed=2))
    c = r.clicks
    y = weak_labels(c.column("purchased").to_numpy(zero_copy_only=False),
                    c.column("user_id").to_pylist(),
                    c.column("logged_in").to_numpy(zero_copy_only=False), r.customers)
    ys = scoped_labels(y, "session", session=c.column("session_id").to_pylist())
    rob = c.column("is_robot").to_numpy(zero_copy_only=False)
    # Widening keeps every click label 1 and labels more humans: robots rarely buy, so their
    # share moves far less than the humans' does.
    assert (ys >= y).all()
    assert ys[~rob].mean() > 1.3 * y[~rob].mean()
    assert ys[rob].mean() < 0.05


def test_crowded_ip_days_and_their_weight_cells():
    from slidr.offline.train import sample_weights, split_cells
    # IP "a": 3 sessions on day 0, no purchase; IP "b": 3 sessions, one bought; IP "a" on
    # day 1: one session; the logged-in click of "a" on day 0 is never marked.
    ip = ["a", "a", "a", "a", "b", "b", "b", "a"]
    sess = [1, 2, 3, 3, 4, 5, 6, 7]
    day = [0, 0, 0, 0, 0, 0, 0, 1]
    li = [False, False, False, True, False, False, False, False]
    lab = [0, 0, 0, 0, 0, 1, 0, 0]
    got = crowded_ip_days(lab, sess, ip, day, li, min_sessions=3)
    assert got.tolist() == [True, True, True, False, False, False, False, False]
    assert not crowded_ip_days(lab, sess, ip, day, li, min_sessions=4).any()
    cells = np.array([1, 1, 1, 3, 1, 0, 1, 1])
    split = split_cells(cells, got)
    assert split.tolist() == [673, 673, 673, 3, 1, 0, 1, 1]
    assert split_cells(cells, None) is cells
    w = sample_weights(split)
    # four non-empty cells, equal total weight each
    assert np.allclose([w[split == c].sum() for c in (0, 1, 3, 673)], 2.0)


def test_recency_weights_scale_the_last_day_keep_the_mean():
    from slidr.offline.train import recency_weights
    w = np.ones(6, np.float32)
    day = np.array([0, 0, 1, 1, 2, 2])
    r = recency_weights(w, day, 4.0)
    assert np.isclose(r.mean(), 1.0)
    assert np.isclose(r[day == 2].sum(), 4 * r[day == 1].sum())
    assert np.allclose(recency_weights(w, day, 1.0), w)
    assert recency_weights(np.zeros(0), np.zeros(0), 3.0).size == 0


def test_evaluate_walk_takes_the_label_and_weight_options(tmp_path):
    from slidr.offline import evaluate as ev

    from slidr.cli import main
    out = tmp_path / "log"
    assert main(["simulate", "--out", str(out), "--days", "5", "--clicks-per-day", "6000",
                 "--seed", "3", "--new-families", "all", "--appear-day", "3", "--quiet"]) == 0
    cfg = ev.EvalConfig(window=4, from_day=3, epochs=2, label_scope="ip_day",
                        crowded_ip_sessions=5, newest_weight=3.0)
    res = ev.walk(out / "clicks.parquet", out / "customers.parquet", cfg, log=lambda m: None)
    assert res["config"]["label_scope"] == "ip_day"
    assert res["config"]["crowded_ip_sessions"] == 5
    assert [d["scored_day"] for d in res["days"]] == [4]
    assert 0.0 <= res["days"][0]["recall"] <= 1.0
    with pytest.raises(ValueError, match="label scope"):
        ev.walk(out / "clicks.parquet", out / "customers.parquet",
                ev.EvalConfig(window=4, from_day=3, epochs=1, label_scope="user"),
                log=lambda m: None)
