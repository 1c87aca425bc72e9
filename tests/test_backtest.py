"""slidr backtest: walk-forward fits never see their held-out day, pooled counts are the sums
of the per-day counts, the bootstrap and the --require-win gate, outputs, bad input; on
synthetic scores with a day column and on a small simulated, trained log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from slidr.offline import backtest as bt
from slidr.offline import calibrate as cal
from slidr.offline.report import clean as bt_clean

from slidr.cli import main as cli_main

CALIB = {"min_coverage": 0.5, "slice_min_coverage": {"*/in": 0.0}}
# The synthetic slices with 3x their model scale shifts: one global threshold fits them badly.
STRONG = {s: dict(v, shift=3 * v["shift"]) for s, v in cal.SYNTH_SLICES.items()}


def write_scores(path: Path, n: int, seed: int, days: int) -> Path:
    """A scores.parquet like `slidr train` writes, from synthetic scores with a day column."""
    d = cal.synthetic_scores(n, seed=seed, slices=STRONG)
    day = np.random.default_rng(seed + 100).integers(0, days, d["score"].size)
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"slice": d["slice"], "purchased": d["purchased"],
                             "robot_heuristic": d["heuristic"], "is_robot": d["is_robot"],
                             "day": (day + 6).astype(np.int32),
                             "split": np.where(day == days - 1, "test", "val"),
                             "score_model": d["score"].astype(np.float32)}),
                   path / "scores.parquet")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("bt")
    return [write_scores(base / "r5", 100_000, 5, 5), write_scores(base / "r6", 100_000, 6, 5)]


@pytest.fixture(scope="module")
def result(runs):
    return bt.run_backtest(runs, [0.01, 0.02], val_days=2, calib=CALIB, n_boot=500)


# ---------------------------------------------------------------- walk forward, no leakage

def test_walk_fits_on_the_days_before() -> None:
    assert bt.walk([6, 7, 8, 9, 10], 2) == [(8, [6, 7]), (9, [7, 8]), (10, [8, 9])]
    # Gaps in the scored days: the K scored days before t, whatever their dates.
    assert bt.walk([0, 2, 5, 6], 2) == [(5, [0, 2]), (6, [2, 5])]
    assert bt.walk([3, 4], 2) == []


def test_rows_fit_strictly_before_their_held_out_day(result, runs) -> None:
    rows = result["rows"]
    assert len(rows) == 2 * 3 * 2  # runs x held-out days (8, 9, 10) x budgets
    for r in rows:
        assert r["fit_days"] == [r["test_day"] - 2, r["test_day"] - 1]
        assert max(r["fit_days"]) < r["test_day"]
    assert {(r["run"], r["test_day"]) for r in rows} == {
        (str(p), t) for p in runs for t in (8, 9, 10)}
    with pytest.raises(ValueError, match="before the held-out day"):
        cols, day = bt.load(runs[0], "score_model")
        bt.evaluate_day(cols, day, str(runs[0]), 9, [8, 9], [0.01], CALIB)


def test_held_out_day_never_enters_its_fit(runs) -> None:
    """Scrambling day t (and everything after it) changes nothing that was fitted for day t;
    it only changes what day t's evaluation counts."""
    cols, day = bt.load(runs[0], "score_model")
    rng = np.random.default_rng(0)
    scr = dict(cols)
    m = day >= 9
    scr["score"] = cols["score"].copy()
    scr["score"][m] = rng.random(int(m.sum()))
    scr["purchased"] = cols["purchased"].copy()
    scr["purchased"][m] = rng.random(int(m.sum())) < 0.05
    a = bt.evaluate_day(cols, day, "r", 9, [7, 8], [0.01], CALIB)[0]
    b = bt.evaluate_day(scr, day, "r", 9, [7, 8], [0.01], CALIB)[0]
    for k in ("slice", "global_budget", "global_knee"):
        assert a["thresholds"][k] == b["thresholds"][k], k
    assert a["chosen_method"] == b["chosen_method"]
    assert a["budget_correction"] == b["budget_correction"]
    # The held-out counts did change (the scrambling reached day 9's evaluation).
    assert a["slice"]["invalidated"] != b["slice"]["invalidated"]
    assert a["population"] != b["population"]


def test_day_counts_match_calibrate_own_evaluation(runs, result) -> None:
    row = next(r for r in result["rows"] if r["run"] == str(runs[1]) and r["test_day"] == 9
               and r["budget"] == 0.02)
    cols, day = bt.load(runs[1], "score_model")
    keep = np.isin(day, [7, 8, 9])
    c = cal.subset(cols, keep)
    c["split"] = np.where(day[keep] == 9, "test", "val")
    ev = cal.calibrate(c, cal.CalibConfig(fpr_budget=0.02, **CALIB))["evaluation"]
    for m in bt.EVAL_METHODS:
        v, o = bt.day_view(row, m, CALIB), ev[m]["test"]["overall"]
        for k in ("ivr", "fpr", "coverage", "precision", "recall"):
            assert v[k] == pytest.approx(o[k], abs=1e-12), (m, k)
        met = ev[m]["test"]["coverage_floors_met"]
        assert v["floors"] == met, m


# ---------------------------------------------------------------- pooling and bootstrap

def test_pooled_counts_are_the_sums_of_the_days(result) -> None:
    rows = result["rows"]
    for p in result["pooled"]:
        days = [r for r in rows if r["budget"] == p["budget"] and "infeasible" not in r]
        assert p["days"] == len(days)
        for s, v in p["slices"].items():
            for f in ("clicks", "purchasing", "heuristic", "robots"):
                assert v["population"][f] == sum(r["population"][s][f] for r in days)
                assert v["invalidated"][f] == sum(bt.method_counts(r, p["method"])[s][f]
                                                  for r in days)
            assert v["fpr"] == v["invalidated"]["purchasing"] / v["population"]["purchasing"]
            assert v["floor_met"] == (v["coverage"] >= v["min_coverage"] - 1e-9)
            assert v["min_coverage"] == (0.0 if s.endswith("/in") else 0.5)
        inv, pop = p["invalidated"], p["population"]
        assert inv["clicks"] == sum(v["invalidated"]["clicks"] for v in p["slices"].values())
        assert p["ivr"] == inv["clicks"] / pop["clicks"]
        assert p["fpr"] == inv["purchasing"] / pop["purchasing"]
        # Floors of 0 ('*/in=0') are no floors: neither met nor judged.
        assert p["floors_judged"] == 3  # */out
        assert p["floors_met"] == sum(v["floor_met"] is True for s, v in p["slices"].items()
                                      if s.endswith("/out"))
        # The per-run pooled rows add up to the pooled row.
        per_run = [q for q in result["pooled_by_run"]
                   if q["budget"] == p["budget"] and q["method"] == p["method"]]
        assert len(per_run) == 2
        for f in ("clicks", "purchasing", "heuristic"):
            assert sum(q["invalidated"][f] for q in per_run) == inv[f]
            assert sum(q["population"][f] for q in per_run) == pop[f]
    # "chosen" is slice-level or global@budget, day by day.
    for b in (0.01, 0.02):
        ch = bt._pooled(result, b, "chosen")["invalidated"]["clicks"]
        days = [r for r in rows if r["budget"] == b]
        assert ch == sum(bt.total(r["slice" if r["chosen_method"] == "slice"
                                    else "global_budget"]["invalidated"])["clicks"]
                         for r in days)


def test_per_day_summary_counts(result) -> None:
    for s in result["per_day_summary"]:
        days = [r for r in result["rows"] if r["budget"] == s["budget"]]
        views = [(bt.day_view(r, "slice", CALIB), bt.day_view(r, "global_budget", CALIB))
                 for r in days]
        assert s["days"] == len(days) == 6
        assert s["slice_ivr_higher"] == sum(a["ivr"] > g["ivr"] for a, g in views)
        assert s["slice_fpr_le"] == sum(a["fpr"] <= g["fpr"] for a, g in views)
        assert s["slice_both"] <= min(s["slice_ivr_higher"], s["slice_fpr_le"])
        assert s["slice_floors_met"] == sum(a["floors_met"] for a, _ in views)


def _crafted_row(budget: float, sl: tuple[int, int], gb: tuple[int, int], day: int = 0,
                 chosen: str = "slice") -> dict:
    """One held-out day with one slice: 1000 clicks, 100 purchasing, 10 heuristic; sl / gb
    = (invalidated clicks, invalidated purchasing clicks)."""
    pop = {"s/out": {"clicks": 1000, "purchasing": 100, "heuristic": 10}}

    def inv(x: tuple[int, int]) -> dict:
        return {"invalidated": {"s/out": {"clicks": x[0], "purchasing": x[1], "heuristic": 5}}}

    return {"run": "r", "run_name": "r", "test_day": day, "fit_days": [], "budget": budget,
            "population": pop, "slice": inv(sl), "global_budget": inv(gb),
            "global_knee": inv(gb), "global_matched": inv(sl), "chosen_method": chosen}


def test_bootstrap_interval() -> None:
    # Slice-level invalidates exactly 1.5x global@budget on every day: no day-to-day noise,
    # so every resample gives the same pooled gain and FPR ratio.
    rows = [_crafted_row(0.01, (150, 2), (100, 2), d) for d in range(5)]
    b = bt.bootstrap(rows, 0.01, n_boot=200, seed=1)
    assert b["days"] == 5
    assert b["slice"]["ivr_gain"] == pytest.approx(0.5)
    assert b["slice"]["ivr_gain_interval"] == pytest.approx([0.5, 0.5])
    assert b["slice"]["fpr_ratio_interval"] == pytest.approx([1.0, 1.0])
    assert b["slice"]["p_win"] == 1.0
    # One big win and four small losses: the pooled gain is positive but the interval
    # reaches below zero (the win may be left out of a resample).
    rows = [_crafted_row(0.01, (400, 2), (100, 2), 0)] + [
        _crafted_row(0.01, (95, 2), (100, 2), d) for d in range(1, 5)]
    b = bt.bootstrap(rows, 0.01, n_boot=500, seed=1)
    lo, hi = b["slice"]["ivr_gain_interval"]
    assert b["slice"]["ivr_gain"] == pytest.approx(780 / 500 - 1)
    assert lo < 0 < b["slice"]["ivr_gain"] <= hi
    assert 0 < b["slice"]["p_ivr_higher"] < 1
    assert bt.bootstrap(rows, 0.01, n_boot=500, seed=1) == b  # seeded
    assert "ivr_gain_interval" not in bt.bootstrap(rows, 0.01, n_boot=0)["slice"]


def test_bootstrap_on_real_fits(result) -> None:
    for b in result["bootstrap"]:
        p = bt._pooled(result, b["budget"], "slice")
        assert b["slice"]["ivr_gain"] == pytest.approx(p["ivr_gain_vs_global_budget"])
        lo, hi = b["slice"]["ivr_gain_interval"]
        assert lo <= hi
        flo, fhi = b["slice"]["fpr_ratio_interval"]
        assert 0 < flo <= fhi


# ---------------------------------------------------------------- the gate

def _pooled_for(rows: list[dict], calib: dict | None = None) -> list[dict]:
    return [p for b in sorted({r["budget"] for r in rows})
            for p in bt.pool(rows, b, calib or {"min_coverage": 0.5})]


def test_gate_with_crafted_numbers() -> None:
    win = [_crafted_row(0.01, (150, 1), (100, 2), d) for d in range(3)]
    assert bt.win_gate(_pooled_for(win), [0.01])["passed"]
    # Higher IVR, but bought with more FPR.
    dearer = [_crafted_row(0.01, (150, 3), (100, 2), d) for d in range(3)]
    g = bt.win_gate(_pooled_for(dearer), [0.01])
    assert not g["passed"] and "FPR" in g["budgets"][0]["reasons"][0]
    # Equal IVR is not a win.
    tie = [_crafted_row(0.01, (100, 2), (100, 2), d) for d in range(3)]
    assert "not higher" in bt.win_gate(_pooled_for(tie), [0.01])["budgets"][0]["reasons"][0]
    # A coverage floor missed on the pooled days (5 of 10 heuristic clicks < 60%).
    g = bt.win_gate(_pooled_for(win, {"min_coverage": 0.6}), [0.01])
    assert not g["passed"] and "s/out 0.500 < 0.60" in g["budgets"][0]["reasons"][0]
    # Pooled, not per day: one losing day among winners still passes ...
    mixed = win + [_crafted_row(0.01, (90, 2), (100, 2), 9)]
    assert bt.win_gate(_pooled_for(mixed), [0.01])["passed"]
    # ... and every requested budget must pass; a budget with no feasible day fails.
    rows = win + [_crafted_row(0.02, (90, 2), (100, 2), d) for d in range(3)]
    g = bt.win_gate(_pooled_for(rows), [0.01, 0.02])
    assert not g["passed"] and [x["passed"] for x in g["budgets"]] == [True, False]
    inf = [{"run": "r", "test_day": 0, "fit_days": [], "budget": 0.01,
            "population": win[0]["population"], "infeasible": {"min_budget": 0.2}}]
    g = bt.win_gate(_pooled_for(inf), [0.01])
    assert not g["passed"] and g["budgets"][0]["reasons"] == ["no feasible held-out day"]


# ---------------------------------------------------------------- command line

def test_cli_outputs_and_require_win(runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bt"
    # Every slice fitted, no floors: on these scores slice-level wins clearly at 3% (pooled
    # IVR 0.193 vs 0.078 at FPR 0.0283 vs 0.0290).
    args = [*map(str, runs), "--val-days", "2", "--budgets", "0.03", "--bootstrap", "200",
            "--min-coverage", "0", "--min-purchasing", "50", "--out", str(out), "--quiet"]
    rc = cli_main(["backtest", *args, "--require-win", "--jobs", "2", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["gate"]["passed"], doc["gate"]
    for f in ("backtest.json", "backtest.html", "backtest_pooled.png", "backtest_days.png"):
        assert (out / f).stat().st_size > 0, f
    full = json.loads((out / "backtest.json").read_text())
    assert len(full["rows"]) == 6 and full["gate"] == doc["gate"]
    # Everything but the rows is a deterministic function of the rows in the file.
    again = bt.summarise(full["rows"], full["config"]["runs"], [0.03], full["config"]["calib"],
                         200, full["bootstrap"][0]["seed"])
    for k, v in again.items():
        assert json.loads(json.dumps(bt_clean(v))) == full[k], k
    page = (out / "backtest.html").read_text()
    assert "Pooled over the held-out days" in page
    # One self-contained file: the figures are embedded, nothing is loaded from beside it.
    assert page.count("src=\"data:image/png;base64,") == 2 and ".png\"" not in page
    assert "Bootstrap over held-out days" in page and "PASSED" in page
    # Parallel (2 processes) and serial runs give the same rows.
    serial = bt.run_backtest(runs, [0.03], val_days=2, n_boot=0,
                             calib={**CALIB, "min_coverage": 0.0, "min_purchasing": 50})
    strip = [{k: v for k, v in r.items() if k != "fit_s"} for r in full["rows"]]
    assert strip == json.loads(json.dumps([{k: v for k, v in r.items() if k != "fit_s"}
                                           for r in serial["rows"]]))

    # 99% coverage floors at a 0.1% budget: missed on the pooled days (by the slices on the
    # global fallback, whose floors are not enforced, if not by the others), so the gate
    # fails (exit 5) and the outputs are still written.
    bad = [*map(str, runs[:1]), "--val-days", "2", "--budgets", "0.001", "--bootstrap", "0",
           "--min-coverage", "0.99", "--out", str(tmp_path / "lose"), "--quiet"]
    assert cli_main(["backtest", *bad, "--require-win"]) == bt.EXIT_NO_WIN
    text = capsys.readouterr().out
    assert "FAILED" in text and "coverage floor missed on the pooled days" in text
    assert (tmp_path / "lose" / "backtest.html").exists()
    assert cli_main(["backtest", *bad]) == 0  # without the gate it ran: exit 0


def test_bad_input(runs, tmp_path: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "o"), "--quiet"]

    def err(*args: str) -> str:
        assert cli_main(["backtest", *args, *out]) == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "no scores.parquet" in err(str(runs[0]), str(tmp_path / "empty"))
    assert "run directory not found" in err(str(tmp_path / "nope"))
    e = err(str(runs[0]), "--val-days", "5")
    assert "5 scored day(s)" in e and "needs at least 6" in e
    assert "(0, 1)" in err(str(runs[0]), "--budgets", "0.01,1.5")
    assert "(0, 1)" in err(str(runs[0]), "--budgets", "0")
    assert "numbers" in err(str(runs[0]), "--budgets", "0.01,abc")
    assert "--val-days: 0 is out of range [1, 60]" in err(str(runs[0]), "--val-days", "0")
    assert "SLICE=VALUE" in err(str(runs[0]), "--slice-min-coverage", "desktop/out")
    nodays = tmp_path / "nodays"
    nodays.mkdir()
    pq.write_table(pq.read_table(runs[0] / "scores.parquet").drop(["day"]),
                   nodays / "scores.parquet")
    assert "'day' column" in err(str(nodays))
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_hindsight_ceiling(runs) -> None:
    cols, day = bt.load(runs[0], "score_model")
    r = bt.evaluate_day(cols, day, "r", 8, [6, 7], [0.01], CALIB, ceiling=True)[0]
    # The hindsight ceiling bounds any allocation at global@matched's FPR, which is at most
    # slice-level's realised FPR.
    gm, sl = bt.day_view(r, "global_matched", CALIB), bt.day_view(r, "slice", CALIB)
    assert gm["fpr"] <= sl["fpr"] + 1e-12
    assert r["ceiling_ivr"] >= gm["ivr"] - 1e-12


# ---------------------------------------------------------------- a simulated, trained log

@pytest.mark.slow
def test_backtest_on_a_small_simulated_run(tmp_path: Path, capsys) -> None:
    from slidr.offline import pipeline
    from slidr.offline import simulate as sim
    log = tmp_path / "log"
    sim.write_outputs(sim.simulate(sim.SimParams(days=6, clicks_per_day=12_000, seed=11)), log)
    run = tmp_path / "run"
    pipeline.run(log / "clicks.parquet", log / "customers.parquet", run,
                 pipeline.TrainConfig(k=10, epochs=3, val_days=3, progress=False))
    scored = bt.scored_days(run)
    assert scored.size == 4  # 3 validation days + the test day
    rc = cli_main(["backtest", str(run), "--val-days", "2", "--budgets", "0.01,0.03",
                   "--min-coverage", "0.2", "--min-purchasing", "50", "--bootstrap", "100",
                   "--out", str(tmp_path / "bt"), "--json", "--quiet"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    full = json.loads((tmp_path / "bt" / "backtest.json").read_text())
    assert [(r["test_day"], r["fit_days"]) for r in full["rows"] if r["budget"] == 0.03] == [
        (int(scored[2]), [int(x) for x in scored[:2]]),
        (int(scored[3]), [int(x) for x in scored[1:3]])]
    for p in doc["pooled"]:
        days = [r for r in full["rows"] if r["budget"] == p["budget"] and "infeasible" not in r]
        assert p["days"] == len(days)
        assert p["population"]["clicks"] == sum(bt.total(r["population"])["clicks"]
                                                for r in days)
        if days:
            assert p["invalidated"]["purchasing"] == sum(
                bt.total(bt.method_counts(r, p["method"]))["purchasing"] for r in days)
