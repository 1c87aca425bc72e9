"""offline/metrics.py on small hand-computed examples."""

import math

import numpy as np
import pytest
from slidr.offline import metrics


def test_ivr_fpr_coverage_precision_recall_by_hand():
    # 10 clicks; threshold 0.5 invalidates clicks 0, 1, 2, 5 (score > 0.5; 0.5 itself is valid)
    score = np.array([0.9, 0.8, 0.7, 0.5, 0.1, 0.6, 0.2, 0.3, 0.4, 0.0])
    purchased = np.array([0, 1, 0, 1, 1, 0, 0, 0, 1, 0], bool)
    heur = np.array([1, 1, 0, 0, 0, 1, 1, 0, 0, 0], bool)
    robot = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 0], bool)
    weak = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0], np.int8)  # 1 = human
    m = metrics.evaluate(score, 0.5, purchased, heur, weak, robot)
    assert m["invalidated"] == 4
    assert m["ivr"] == pytest.approx(4 / 10)
    assert m["fpr"] == pytest.approx(1 / 4)  # click 1 of purchasers 1, 3, 4, 8
    assert m["coverage"] == pytest.approx(3 / 4)  # 0, 1, 5 of heuristic 0, 1, 5, 6
    assert m["precision"] == pytest.approx(3 / 4)  # 0, 2, 5 robots among 0, 1, 2, 5
    assert m["recall"] == pytest.approx(3 / 4)  # robots 0, 2, 5, 6
    assert m["weak_precision"] == pytest.approx(3 / 4)
    assert m["weak_recall"] == pytest.approx(3 / 5)  # weak non-human 0, 2, 5, 6, 9


def test_empty_denominators_are_nan_not_errors():
    m = metrics.evaluate(np.array([0.9, 0.1]), 0.5, np.zeros(2, bool), np.zeros(2, bool))
    assert m["ivr"] == 0.5 and math.isnan(m["fpr"]) and math.isnan(m["coverage"])


def test_roc_auc_by_hand_with_ties():
    # positives 0.8, 0.4 ; negatives 0.4, 0.2 -> pairs: (0.8>0.4) 1, (0.8>0.2) 1,
    # (0.4=0.4) 0.5, (0.4>0.2) 1 -> 3.5 / 4
    assert metrics.roc_auc(np.array([0.8, 0.4, 0.4, 0.2]),
                           np.array([1, 1, 0, 0], bool)) == pytest.approx(0.875)
    assert metrics.roc_auc(np.array([0.1, 0.9]), np.array([0, 1], bool)) == 1.0
    assert math.isnan(metrics.roc_auc(np.array([0.1, 0.9]), np.array([1, 1], bool)))


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 20, 300).astype(float)
    y = rng.random(300) < 0.3
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert metrics.roc_auc(s, y) == pytest.approx(pairs)


def test_threshold_for_fpr_hits_the_target():
    purchased = np.ones(100, bool)
    score = np.arange(100) / 100.0
    t = metrics.threshold_for_fpr(score, purchased, 0.05)
    assert (score > t).sum() == 5
    t0 = metrics.threshold_for_fpr(score, purchased, 0.0)
    assert (score > t0).sum() == 0
    # Ties never push FPR above the target.
    tied = np.r_[np.zeros(90), np.ones(10)]
    t = metrics.threshold_for_fpr(tied, np.ones(100, bool), 0.05)
    assert (tied > t).mean() <= 0.05
    with pytest.raises(ValueError, match="no purchasing clicks"):
        metrics.threshold_for_fpr(score, np.zeros(100, bool), 0.01)


def test_curve_is_monotone_and_spans_fpr():
    rng = np.random.default_rng(0)
    s = rng.random(2000)
    p = rng.random(2000) < 0.2
    c = metrics.ivr_fpr_curve(s, p, heuristic=rng.random(2000) < 0.1, n_points=50)
    assert np.all(np.diff(c["fpr"]) >= 0) and np.all(np.diff(c["ivr"]) >= 0)
    assert c["fpr"][0] == 0.0 and c["fpr"][-1] == pytest.approx(1.0, abs=0.01)
    assert c["coverage"].shape == (50,)


def test_session_hour_heuristic_counts_per_session_and_clock_hour():
    h = 3_600_000
    base = 1_700_000_000 // 3600 * h  # on an hour boundary
    sess = np.array([1, 1, 1, 1, 2, 2, 1])
    ts = np.array([0, 1, 2, 3, 4, 5, h + 1]) + base
    # session 1 has 4 clicks in the first hour, 1 in the next; session 2 has 2
    assert metrics.session_hour_heuristic(sess, ts, 3).tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert metrics.session_hour_heuristic(sess, ts, 1).tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert metrics.session_hour_heuristic(sess, ts, 4).sum() == 0


def test_sliced_evaluation_has_every_slice_and_own_threshold():
    rng = np.random.default_rng(1)
    n = 600
    s = rng.random(n)
    sl = np.array(["desktop/in", "mobile/out", "app/out"], dtype=object)[rng.integers(0, 3, n)]
    cols = {"purchased": rng.random(n) < 0.3, "heuristic": rng.random(n) < 0.2,
            "weak_label": (rng.random(n) < 0.5).astype(np.int8), "is_robot": None}
    r = metrics.evaluate_sliced(s, 0.5, cols, sl, 0.1)
    assert set(r["slices"]) == {"desktop/in", "mobile/out", "app/out"}
    for m in r["slices"].values():
        assert m["fpr_at_own_threshold"] <= 0.1
    assert sum(m["n"] for m in r["slices"].values()) == n
