"""The options the `slidr` commands share, each declared once (slidr/options.py says how).

A flag that means the same thing in two commands is declared here and added with
`options.add(parser, SHARED["name"])`; the configuration dataclasses of the offline job
(calibrate.CalibConfig, guardrails.GuardrailConfig, daily.DailyConfig, pipeline.TrainConfig) take
their defaults from the same declarations (`options.field_from`). docs/cli.md's tables are
generated from here (`python -m slidr.defaults --markdown`), and tests/test_cli_convention.py
fails when a command, a dataclass or the docs disagree with it.

Light on purpose: the CLI imports it to build its parser.
"""

from __future__ import annotations

from pathlib import Path

from .options import REQUIRED, Opt


def _group(*opts: Opt) -> dict[str, Opt]:
    return {o.name: o for o in opts}


# Inputs, outputs and reproducibility.
COMMON = _group(
    Opt("clicks", Path, REQUIRED, "click log in the click contract (Parquet or CSV), sorted by ts "
        "(docs/contract.md)", metavar="FILE"),
    Opt("customers", Path, None, "customers table (user_id, recency_days, frequency, monetary); "
        "omit for logs that have none: the weak labels are then purchase-only",
        metavar="FILE"),
    Opt("registry", Path, REQUIRED, "model registry directory", metavar="DIR"),
    Opt("out", Path, REQUIRED, "where the output goes", metavar="PATH",
        per_command={"demo": (Path("demo-out"), "a working directory a first run can reuse")}),
    Opt("seed", int, 7, "random seed: the same seed and inputs give the same output", lo=0),
    Opt("days", int, 8, "UTC days to simulate", lo=1, hi=366,
        per_command={"demo": (10, "3 validation days, 6 training days and the held-out day")}),
    Opt("clicks_per_day", int, 200_000, "about this many simulated clicks per day", lo=100,
        hi=50_000_000,
        per_command={"demo": (60_000, "keeps the whole demo near a minute on 2 cores")}),
    Opt("redis", str, None, "Redis URL (redis://, rediss:// or unix://) of a counter store to "
        "use instead of the embedded one", metavar="URL"),
    Opt("redis_mode", str, "auto", "what --redis points at: a Redis Cluster node (cluster: "
        "the slot map is read from it, several comma-separated seed URLs allowed), a single "
        "Redis (standalone), or ask the server (auto; a server that does not answer is taken "
        "as standalone)", choices=("auto", "cluster", "standalone")),
)

# Training (offline/pipeline.py TrainConfig, offline/daily.py DailyConfig).
TRAINING = _group(
    Opt("k", int, 20, "robotic-coverage heuristic: a session with more than K clicks in one UTC "
        "hour counts as robotic", lo=1, metavar="K"),
    Opt("epochs", int, 20, "maximum training epochs (early stopping on the validation days; "
        "the second stage of --training staged runs exactly this many)",
        lo=1, hi=10_000, per_command={"demo": (12, "keeps the demo near a minute")}),
    Opt("val_days", int, None, "days before the test day held out for validation (early "
        "stopping and calibration)", lo=1, hi=60,
        default_text="3 on logs of 9+ days, 2 on 8 days, 1 on shorter logs"),
    Opt("newest_day", str, "auto", "what the log's newest day is for: 'train' (trained on, "
        "so a robot family that appeared yesterday is learnt tonight; the day before it is the "
        "held-out test day and the --val-days days before that validation, so thresholds are "
        "still calibrated and judged on days the model did not train on), 'test' (held out "
        "as the test day: a family that appeared on it is first learnt --val-days + 1 days "
        "later) or 'auto' ('train' on logs of 8 or more days, 'test' on shorter ones)",
        choices=("auto", "train", "test"),
        per_command={"demo": ("test", "the demo replays the newest day through slidrd as the "
                                      "held-out day")}),
    Opt("refit", bool, False, "after the held-out evaluation, train the published model again "
        "on every day of the log, the newest included, for the epochs early stopping chose; "
        "its thresholds keep each slice's calibrated FPR (a robot that appeared in the last "
        "days is learnt the same day; the held-out numbers are the held-out model's)"),
    Opt("weighting", str, "label", "sample weights: 'label' (equal total weight per "
        "logged-in x weak-label cell) or 'cells' (the article: per local hour x day of week x "
        "logged-in x weak-label cell, which divides a robot's extra volume in its hours away)",
        choices=("label", "cells")),
    Opt("training", str, "staged", "how the MLP learns: 'staged' (a net on the user, session "
        "and IP features first, with early stopping; then, side by side, a net on every "
        "feature and a net on the entity features alone (ads, (IP, ad) pairs, user agents, "
        "the user's gap regularity), each starting from the first one's score and learning "
        "only what it leaves unexplained, for exactly --epochs epochs; one merged net is "
        "published), 'staged-all' (the second net on every feature only: a narrower net "
        "that catches less of a new campaign's first clicks) or 'joint' (one net on every "
        "feature, which loses recall on ordinary traffic: docs/features.md)",
        choices=("staged", "staged-all", "joint")),
    Opt("ensemble", int, 1, "nets trained side by side from different random starts, their "
        "logits averaged in the one published net (each as --training says): which of a new "
        "family's few hundred clicks one net learns depends on its random start, and the "
        "average ranks more surely (3: recall at 1% FPR about +1 point on stock logs). "
        "Training takes K times as long and the daemon's model call grows with the width "
        "(3: about +3-5 us of CPU per click on CPU; docs/offline.md)", lo=1, hi=16,
        metavar="K"),
    Opt("newest_weight", float, 1.0, "when the newest day is trained on (--newest-day), it "
        "weighs this many times as much as each other training day: the model scores the "
        "non-purchase odds of the training days' mix, and a family that appeared yesterday "
        "is in one day of that mix but in all of tomorrow. 2 catches more of such a family "
        "the next day, but moved the held-out FPR of one stock log of ten past its guardrail "
        "(docs/offline.md) (1: every day alike)", lo=0.0, lo_open=True, hi=100.0, metavar="X"),
    Opt("train_sample", int, 0, "train on a stratified sample of at most N of the training "
        "days' clicks (strata: slice x local hour x weak label, each kept in proportion with "
        "at least a few hundred clicks; weights undo the sampling); bounds training time and "
        "memory on large logs. 0 = every click", lo=0, metavar="N"),
    Opt("engine", str, "local", "feature replay engine of `slidr daily`: this process (local) "
        "or Spark (spark: the clicks partitioned by each entity key, the same kernel per "
        "partition; needs the spark extra and Java 17)", choices=("local", "spark")),
    Opt("spark_master", str, "local[4]", "Spark master URL of --engine spark (local[N] runs "
        "Spark in this machine with N cores)", metavar="URL"),
    Opt("memory_budget", float, 4.0, "memory the job may use, in GiB (a machine of 8 GiB or "
        "more runs the default): sets the replay's chunk size and the most training clicks "
        "held at once (beyond it, a stratified sample; features stream from disk) and "
        "calibrated (beyond it, a uniform sample of the held-out days); too small for the "
        "smallest samples is an error that says how much is needed (docs/scale.md)",
        lo=0.0, lo_open=True, metavar="GIB"),
)

# Calibration (offline/calibrate.py CalibConfig): `slidr calibrate`, `backtest`, `daily`, `demo`.
CALIBRATION = _group(
    Opt("fpr_budget", float, 0.01, "overall FPR budget: share of purchasing (human) clicks that "
        "may be invalidated", lo=0.0, hi=1.0, lo_open=True, hi_open=True,
        per_command={"demo": (0.02, "a short simulated log has few purchasing clicks per "
                                    "slice; at 0.01 their coverage floors are mostly "
                                    "infeasible")}),
    # 0.5 was infeasible at a 1% budget on most simulated days (docs/calibration.md).
    Opt("min_coverage", float, 0.2, "minimum robotic coverage per slice (share of its "
        "heuristic-robotic clicks invalidated)", lo=0.0, hi=1.0),
    # The k-clicks heuristic mostly flags heavy-clicking customers in logged-in traffic, so by
    # default it sets no floor there (docs/calibration.md).
    Opt("slice_min_coverage", dict, {"*/in": 0.0}, "per-slice minimum coverage overriding "
        "--min-coverage, fnmatch patterns allowed (repeatable; giving any replaces the "
        "default)", lo=0.0, hi=1.0, metavar="SLICE=VALUE"),
    Opt("min_purchasing", int, 200, "slices with fewer purchasing clicks on the fitted days use "
        "the global@budget threshold", lo=1),
    Opt("method", str, "slice", "published thresholds: slice (slice-level), global "
        "(global@budget), global_knee (the global knee; calibrate only), auto (slice-level "
        "unless leave-one-day-out evidence says global@budget is better)",
        choices=("slice", "global", "auto", "global_knee")),
    Opt("refine_iters", int, 8, "rounds of local refinement of each slice's quadratic around "
        "its operating point (0 = one quadratic over the whole fit range)", lo=0, hi=100),
    Opt("coverage_margin", float, 0.0, "fit the coverage floors at min coverage + this margin",
        lo=0.0, hi=1.0),
    Opt("budget_correction", str, "lodo", "lodo: measure the slice-level overspend on each "
        "fitted day left out and solve with budget / that ratio; none: the budget as given",
        choices=("lodo", "none")),
    Opt("fpr_estimate", str, "empirical", "slice FPR at a threshold with k of n purchasing "
        "clicks above: empirical k/n or order_stat (k+1)/(n+1) (a margin that left the "
        "published thresholds spending 0.73-0.84 of the budget on held-out days: "
        "docs/calibration.md)",
        choices=("order_stat", "empirical")),
    Opt("select_fpr_tolerance", float, 0.05, "auto: slice-level's mean left-out FPR may exceed "
        "global@budget's by this fraction", lo=0.0, hi=10.0),
    Opt("floor_every_day", bool, False, "coverage floors met on every fitted day, not only on "
        "their pool"),
    Opt("fpr_prior", float, 0.0, "pseudo purchasing clicks of the pooled FPR curve added to "
        "each slice's (0 = each slice on its own clicks)", lo=0.0),
    Opt("fit_range", float, 4.0, "each slice's quadratic is fitted over FPR in [0, max(this x "
        "budget, 2 x floor, --fit-min-fpr)]", lo=1.0, hi=100.0),
    Opt("fit_min_fpr", float, 0.02, "smallest upper end of a slice's fit range", lo=0.0,
        hi=1.0, lo_open=True),
    Opt("refine_window", float, 2.0, "local refinement refits on [f / this, f x this] around "
        "each slice's FPR f", lo=1.0, lo_open=True, hi=100.0),
    Opt("refine_min_width", float, 0.004, "narrowest local refinement window (FPR)", lo=0.0,
        hi=1.0),
    Opt("score_col", str, "score_model", "score column of scores.parquet"),
)

# Guardrails (offline/guardrails.py GuardrailConfig): `slidr daily` flags and the
# [guardrails] table of its --guardrail-config FILE.toml. The FPR budget and the coverage floors
# the model guardrails check are the calibration's (above), not separate settings.
GUARDRAILS = _group(
    Opt("min_days", int, 3, "data: the log must span at least this many UTC days", lo=2),
    Opt("min_hour_density_ratio", float, 0.3, "data: an hour's purchase density may not fall "
        "below this share of the same hour-of-day's median", lo=0.0, hi=1.0),
    Opt("min_expected_purchases", float, 15.0, "data: windows expecting fewer purchases are not "
        "judged", lo=0.0),
    Opt("max_window_hours", int, 6, "data: purchase outages are looked for in runs of 1..N "
        "consecutive hours", lo=1, hi=168),
    Opt("density_alpha", float, 1e-6, "data: Poisson lower tail below which a purchase "
        "shortfall is not chance", lo=0.0, hi=1.0, lo_open=True),
    Opt("min_week_hour_density_ratio", float, 0.3, "data: purchase density per hour of the week "
        "vs the overall median", lo=0.0, hi=1.0),
    Opt("min_slice_clicks", int, 500, "data: minimum clicks per slice in the log", lo=0),
    Opt("min_slice_purchases", int, 20, "data: minimum purchases per slice in the log", lo=0),
    Opt("max_psi", float, 0.25, "data: feature drift limit (population stability index per "
        "feature vs the current model's training data)", lo=0.0),
    Opt("psi_bins", int, 10, "data: bins of the drift (PSI) histograms", lo=2, hi=1000),
    Opt("fpr_tolerance", float, 0.5, "model: held-out FPR may exceed the budget by this fraction "
        "(+3 standard errors)", lo=0.0),
    Opt("ivr_band", float, 0.5, "model: allowed relative IVR change vs the current model",
        lo=0.0),
    Opt("slice_ivr_band", float, 1.0, "model: allowed relative IVR change per slice", lo=0.0),
    Opt("slice_ivr_abs_slack", float, 0.01, "model: plus this absolute IVR slack per slice "
        "(small slices)", lo=0.0, hi=1.0),
    Opt("max_ivr", float, 0.6, "model: absolute IVR ceiling", lo=0.0, hi=1.0),
    Opt("coverage_slack", float, 0.15, "model: held-out coverage may fall this far below a "
        "slice's floor (coverage moves between the fitted days and the test day)", lo=0.0,
        hi=1.0),
    Opt("min_heuristic_clicks", int, 30, "model: slices with fewer heuristic-robotic clicks are "
        "too noisy for the coverage check", lo=0),
    Opt("min_score_std", float, 0.01, "model: minimum spread (std) of the scores", lo=0.0),
    Opt("max_identical_share", float, 0.5, "model: largest share of identical scores", lo=0.0,
        hi=1.0),
    # Weak labels are noisy (most "non-human" clicks are humans who did not buy), so even a good
    # model scores only ~0.55 against them (simulated: 0.54 with 0.84 against the truth).
    Opt("min_auc_margin", float, 0.02, "model: AUC against the weak label must be at least 0.5 "
        "+ max(this, z x its standard error under chance)", lo=0.0, hi=0.5),
    Opt("min_auc_z", float, 5.0, "model: the z of --min-auc-margin", lo=0.0),
    Opt("min_auc_heuristic", float, 0.6, "model: minimum AUC against the k-clicks heuristic",
        lo=0.0, hi=1.0),
    Opt("coverage_alpha", float, 0.01, "model: a slice's held-out coverage below its floor "
        "refuses only when the binomial lower tail P(X <= covered | heuristic clicks, floor), "
        "clicks counted as the effective number of sessions behind them, is below this (a "
        "shortfall that chance does not explain)", lo=0.0, hi=1.0, lo_open=True),
)

# Load tests (`slidr bench ...`; bench/loadgen.py LoadSpec, bench/sweep.py). For `run` and
# `sweep` a flag overrides the --scenario file, which overrides these defaults.
BENCH = _group(
    Opt("rate", float, 1000.0, "requests per second, all generator processes together", lo=0.0,
        lo_open=True, per_command={"demo": (5000.0, "the held-out day is replayed at a steady "
                                                     "5,000 clicks/s")}),
    Opt("duration", float, 10.0, "measured seconds (after the warm-up)", lo=0.0, lo_open=True),
    Opt("warmup", float, 2.0, "seconds sent but not measured, first", lo=0.0),
    Opt("connections", int, 8, "connections per generator process", lo=1, hi=10_000),
    Opt("procs", int, 1, "generator processes", lo=1, hi=256),
    Opt("arrivals", str, "constant", "arrival process of the requests",
        choices=("constant", "poisson")),
    Opt("tick_us", int, 100, "send tick (us): < 1000 timerfd wake-ups, >= 1000 the loop's "
        "timers, 0 spin (precise, burns a core)", lo=0, hi=1_000_000),
    Opt("drain", float, 2.0, "seconds to wait for answers after the last send", lo=0.0),
    Opt("max_rate", float, 200_000.0, "highest rate tried", lo=0.0, lo_open=True,
        per_command={"bench echo": (256_000.0, "the generator's own ceiling is searched above "
                                                "any daemon's")}),
    Opt("seconds", float, 1.0, "seconds per measured point", lo=0.0, lo_open=True),
    Opt("gen_cpus", str, None, "pin the load generator to these CPUs (taskset list, e.g. 1)",
        metavar="LIST"),
)

# Every switch a leaf command has (added by slidr/cli.py and slidrd/main.py).
GLOBAL = _group(
    Opt("json", bool, False, "print the result as JSON on stdout (errors stay one line on "
        "stderr)"),
    Opt("quiet", bool, False, "no progress and no notes on stderr (errors still show)"),
    Opt("progress", bool, False, "detailed progress on stderr even when it is not a terminal "
        "(default: a live line per stage on a terminal, one line per finished stage "
        "otherwise)"),
    Opt("debug", bool, False, "on an error, print the traceback too"),
)

GROUPS = {"COMMON": COMMON, "TRAINING": TRAINING, "CALIBRATION": CALIBRATION,
          "GUARDRAILS": GUARDRAILS, "BENCH": BENCH, "GLOBAL": GLOBAL}
SHARED: dict[str, Opt] = {k: o for g in GROUPS.values() for k, o in g.items()}
assert len(SHARED) == sum(map(len, GROUPS.values())), "a name declared twice"


def markdown() -> str:
    from .options import markdown_table
    parts = []
    for title, group in (("Inputs, outputs, reproducibility", COMMON), ("Training", TRAINING),
                         ("Calibration", CALIBRATION),
                         ("Guardrails (flags of `slidr daily`, keys of its `[guardrails]` "
                          "config)", GUARDRAILS), ("Load tests (`slidr bench`)", BENCH),
                         ("Every command", GLOBAL)):
        parts.append(f"### {title}\n\n{markdown_table(group.values())}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(markdown())
