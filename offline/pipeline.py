"""`slidr train` end to end: replay -> weak labels -> split -> model + baselines -> metrics ->
report, written into an output directory that appears only when complete."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidr import progress
from slidr.contract import CUSTOMER_FIELDS, slice_names
from slidr.defaults import CALIBRATION, COMMON, TRAINING
from slidr.featurespec import N_FEATURES, SPEC_HASH, spec_dict
from slidr.options import field_from
from slidr.util import atomic_dir, atomic_open, write_json

from . import baselines, featurestore, metrics, replay, train

SCORERS = ("model", "logistic", "velocity")
# Stages of `slidr train` (slidr/progress.py: one line each when stderr is not a terminal).
STAGES = ("replay", "labels", "model", "baselines", "metrics", "export", "report")


@dataclass
class TrainConfig:
    # Defaults shared with the flags and docs/cli.md: slidr/defaults.py.
    k: int = field_from(TRAINING["k"])
    seed: int = field_from(COMMON["seed"])
    epochs: int = field_from(TRAINING["epochs"])
    fpr_target: float = field_from(CALIBRATION["fpr_budget"])  # `slidr train --fpr-budget`
    # Days before the test day held out for validation (early stopping, and the days that
    # `slidr calibrate` fits thresholds on). More days: steadier slice-level calibration, fewer
    # training days.
    # None: train.auto_val_days (3 days on logs of 9+ days, 1 on 6-7 days).
    val_days: int | None = field_from(TRAINING["val_days"])
    # "test": the newest day is the held-out test day; "train": it is trained on and the day
    # before it is the test day; "auto": "train" on logs of 8+ days (train.resolve_newest).
    newest_day: str = field_from(TRAINING["newest_day"])
    hidden: tuple[int, ...] = (64, 32)
    weight_decay: float = 1e-4
    batch_size: int = 16_384  # replay batch (store round trip)
    # One torch thread: the MLP is too small to gain from two, and with two, a busy second
    # core (another job, the daemon) makes every step wait on a thread barrier (measured 6x
    # slower under load).
    threads: int = 1
    progress: bool = True
    use_native: bool | None = None
    refit: bool = field_from(TRAINING["refit"])
    weighting: str = field_from(TRAINING["weighting"])
    training: str = field_from(TRAINING["training"])
    ensemble: int = field_from(TRAINING["ensemble"])
    newest_weight: float = field_from(TRAINING["newest_weight"])
    train_sample: int = field_from(TRAINING["train_sample"])
    memory_budget: float = field_from(TRAINING["memory_budget"])


def model_arch(training: str, hidden: tuple[int, ...], ensemble: int = 1) -> str:
    """The published net's shape in words (metrics.json, the report)."""
    widths = train.published_widths(training, hidden, ensemble)
    text = (f"{N_FEATURES} -> {' -> '.join(map(str, widths))} -> 1, ReLU, sigmoid; "
            "standardisation inside the graph")
    many = (f"; {ensemble} such nets from different random starts side by side, their "
            "logits averaged") if ensemble > 1 else ""
    if training == "joint":
        return text + many
    second = (f"{'-'.join(map(str, train.STAGE2_HIDDEN))} on all {N_FEATURES} features")
    if training == "staged":
        second += (f" and {'-'.join(map(str, train.STAGE2_HIDDEN))} on the "
                   f"{len(train.ENTITY_COLS)} entity features, each")
    return (text + f"; {training}: {'-'.join(map(str, hidden))} units on the "
            f"{len(train.STAGE1_COLS)} user, session and IP features, then {second} with the "
            "first stage's logit as offset (side by side, block-diagonal)" + many)


def load_customers(path: str | Path | None):
    """Customers table (user_id, recency_days, frequency, monetary) as a pyarrow Table."""
    if path is None:
        return None
    from slidr.files import read_table
    path = Path(path)
    tbl = read_table(path, "customers table")
    missing = [c for c in CUSTOMER_FIELDS if c not in tbl.column_names]
    if missing:
        raise ValueError(f"{path}: customers table lacks column(s) {', '.join(missing)} "
                         f"(has: {', '.join(tbl.column_names)})")
    return tbl


def weak_labels(rp: replay.Replay, customers) -> tuple[np.ndarray, str]:
    from . import labels
    wl = labels.weak_labels(rp.purchased, rp.user_id, rp.logged_in, customers)
    return np.asarray(wl, dtype=np.int8), label_text(customers)


def label_text(customers) -> str:
    return ("purchase or high RFM (slidr.offline.labels)" if customers is not None
            and customers.num_rows else
            "purchase only: no (or an empty) customers table (slidr.offline.labels)")


def chunk_labeller(customers) -> Any:
    """chunk -> int8 weak labels (1 = human), the RFM scores computed once for the whole log."""
    from . import labels
    sc = labels.rfm_scores(customers) if customers is not None else None

    def wl(ch: replay.ReplayChunk) -> np.ndarray:
        pur = ch.purchased if ch.purchased is not None else np.zeros(len(ch), bool)
        return np.asarray(labels.weak_labels(pur, ch.user_id, ch.logged_in, customers,
                                             scores=sc), np.int8)
    return wl


def build_features(clicks: str | Path, customers, path: str | Path, cfg: TrainConfig,
                   store: Any = None, plan: MemoryPlan | None = None,
                   on_chunk: Any = None) -> featurestore.FeatureStore:
    """Replay the log once, chunk by chunk, into a feature directory at `path`
    (offline/featurestore.py): features, weak labels and what training needs, in Parquet
    partitions; memory is one chunk whatever the log's size."""
    plan = plan or MemoryPlan.for_budget(cfg.memory_budget)
    stream = replay.iter_replay(clicks, store=store, use_native=cfg.use_native,
                                batch_size=min(cfg.batch_size, plan.chunk_rows),
                                progress=cfg.progress, chunk_rows=plan.chunk_rows)
    return featurestore.write(stream, path, chunk_labeller(customers), cfg.weighting,
                              on_chunk=on_chunk)


GIB = 1 << 30
MIB = 1 << 20


@dataclass
class MemoryPlan:
    """What a memory budget allows (docs/scale.md, "Memory budget"): the replay's chunk size,
    the most training rows held at once (beyond that, a stratified sample of that size), and
    whether the validation days' features are held or streamed from disk each epoch.

    Bytes per click measured on the simulator's logs (bench/results/daily-scale-8m-32m-2026-12-04/):
    the replay holds ~3 chunks in flight at ~2.4 KB a click (Arrow table, hashes, raw
    counters, features); a training row ~230 B (features, their per-epoch shuffled copy,
    label, weight, the permutation); a held-out click ~48 B through training (its per-click
    columns, the slice, the heuristic) and ~230 B while its scores are written, calibrated
    and checked after training (measured: 3.45 GiB peak at 12.2M held-out clicks); a
    validation click held for early stopping 110 B. When the held-out days do not fit, they
    are scored and calibrated on a uniform sample of the size that does (eval_sample)."""

    budget: int
    chunk_rows: int
    base: int = 900 * MIB  # interpreter, torch, pyarrow, onnxruntime, matplotlib
    CHUNK_B = 2400
    TRAIN_B = 230
    EVAL_B = 230
    HELD_B = 48
    VAL_B = 110
    MIN_TRAIN_ROWS = 20_000
    MIN_EVAL_ROWS = 200_000

    @classmethod
    def for_budget(cls, gib: float) -> MemoryPlan:
        budget = int(gib * GIB)
        # A third of what the base leaves to the replay's chunks (3 in flight); the replay
        # runs before training holds anything.
        chunk = int((budget - cls.base) / 3 / 3 / cls.CHUNK_B) if budget > cls.base else 0
        chunk = min(replay.CHUNK_ROWS, chunk)
        if chunk < 4096:
            raise MemoryBudgetError(
                f"--memory-budget {gib:g} GiB is too small: the job needs at least "
                f"{cls.min_gib():.2f} GiB (the libraries take ~{cls.base / GIB:.2f} GiB; "
                "the replay then needs room for chunks of >= 4096 clicks)")
        return cls(budget=budget, chunk_rows=chunk)

    @classmethod
    def min_gib(cls) -> float:
        return (cls.base + 3 * 3 * cls.CHUNK_B * 4096) / GIB

    def eval_rows(self, n_eval: int) -> int:
        """Held-out clicks scored and calibrated: all `n_eval` when they fit (EVAL_B a click
        after training), else the largest sample that does; raises MemoryBudgetError when
        even MIN_EVAL_ROWS do not fit."""
        fits = max(int((self.budget - self.base) / self.EVAL_B), 0)
        if n_eval <= fits:
            return n_eval
        if fits < self.MIN_EVAL_ROWS:
            raise MemoryBudgetError(
                f"--memory-budget {self.budget / GIB:g} GiB is too small for this log: a "
                f"calibration sample of its held-out days ({self.MIN_EVAL_ROWS:,} of "
                f"{n_eval:,} clicks, scored and calibrated in memory) needs about "
                f"{(self.base + self.MIN_EVAL_ROWS * self.EVAL_B) / GIB:.2f} GiB; give a "
                "larger --memory-budget")
        return fits

    def fit(self, n_eval: int, n_val: int, n_test: int) -> tuple[int, bool]:
        """(most training rows held, validation features held in memory?) once the held-out
        days are known; raises MemoryBudgetError when even they do not fit.

        Training holds the held-out days' per-click columns (HELD_B a click; of the
        calibration sample when they do not all fit, eval_rows) and, for the refit, the test
        day's features; the held-out days' scoring and calibration come after training has
        let go of its rows (EVAL_B a click), so the two are not added."""
        n_eval = self.eval_rows(n_eval)
        free = self.budget - self.base - n_eval * self.HELD_B - n_test * 4 * N_FEATURES
        hold_val = n_val * self.VAL_B <= free * 0.25
        if hold_val:
            free -= n_val * self.VAL_B
        rows = int(free * 0.9 / self.TRAIN_B)
        if rows < self.MIN_TRAIN_ROWS:
            need = (self.base + n_eval * self.HELD_B + n_test * 4 * N_FEATURES
                    + self.MIN_TRAIN_ROWS * self.TRAIN_B) / 0.9
            raise MemoryBudgetError(
                f"--memory-budget {self.budget / GIB:g} GiB is too small for this log: its "
                f"held-out days ({n_eval:,} clicks held; the test day's {n_test:,} clicks' "
                f"features for the export), and a training sample of "
                f"{self.MIN_TRAIN_ROWS:,} clicks need about {need / GIB:.2f} GiB; give a "
                "larger --memory-budget or fewer --val-days")
        return rows, hold_val


class MemoryBudgetError(ValueError):
    """The memory budget cannot hold the smallest job (a bad flag value: exit 2)."""


def _source_note(clicks: Path, has_customers: bool, has_truth: bool, n: int,
                 n_purchasing: int) -> dict[str, Any]:
    """What the numbers can mean for this log (shown at the top of the report)."""
    # Importers leave a manifest beside the log; any mention of TalkingData is enough.
    src = clicks.name.lower()
    for name in ("source.json", "manifest.json", "import.json"):
        side = clicks.parent / name
        if side.exists():
            try:
                src += " " + side.read_text()[:100_000].lower()
            except OSError:
                pass
    if "talkingdata" in src:
        return {"kind": "talkingdata", "text": (
            "TalkingData AdTracking log imported into the click contract: 'purchased' is the "
            "app-download attribution (is_attributed), there is no customers table (labels are "
            "purchase-only) and no ground truth. With a small random sample of the full "
            f"185M-row log (here {n:,} clicks), the per-user/session/IP counters are nearly "
            "empty, because almost every key is seen once. The ROC-AUC reported here therefore "
            "measures how well the per-row time and slice signal ranks attributed clicks; it is "
            "NOT comparable with the ~0.98 AUC of published full-data TalkingData solutions, "
            "which rely on counts and 'next click' gaps over all 185M rows. With "
            f"{n_purchasing:,} attributed clicks in the whole sample, the test day's FPR moves "
            "in coarse steps and an FPR target below 1/(its attributed clicks) means "
            "'invalidate nothing that scores like an attributed click'.")}
    if not has_truth and not has_customers:
        return {"kind": "real-no-customers", "text": (
            "Real log without a customers table or ground truth: weak labels are purchases "
            "only, and precision/recall against truth cannot be measured.")}
    if has_truth:
        return {"kind": "simulated", "text": (
            "Simulated log with ground truth (is_robot): true precision and recall are shown "
            "beside the weak-label metrics; is_robot is never a feature or a training label.")}
    return {"kind": "real", "text": "Real log without ground truth: only weak-label metrics."}


def _check_inputs(fs: featurestore.FeatureStore, split_days: dict[str, np.ndarray]) -> None:
    if len(fs) == 0:
        raise ValueError("the click log has no rows")
    if not fs.day_purchases.any():
        raise ValueError("the click log has no purchasing clicks (purchased is false everywhere): "
                         "FPR and the human weak label are undefined")
    for name in ("val", "test"):
        m = np.isin(fs.days, split_days[name])
        if not fs.day_purchases[m].any():
            raise ValueError(f"no purchasing clicks on the {name} day (day "
                             f"{int(split_days[name][0])}): FPR cannot be measured there")
    m = np.isin(fs.days, split_days["train"])
    humans, n = int(fs.day_humans[m].sum()), int(fs.day_clicks[m].sum())
    if humans == 0 or humans == n:
        raise ValueError("the training days hold only one weak-label class "
                         f"({'robot' if humans == 0 else 'human'}); nothing to learn")


def run(clicks: str | Path, customers: str | Path | None, out: str | Path,
        cfg: TrainConfig | None = None, store: Any = None, log=print,
        features: featurestore.FeatureStore | None = None,
        work: str | Path | None = None) -> dict[str, Any]:
    """Train, evaluate and write the output directory; returns a summary dict.

    features: the log's feature directory when the caller has it already (`slidr daily`
    replays the log once, for its drift guardrail and for training); otherwise the log is
    replayed here into a feature directory under `work` (default: a temporary directory beside
    `out`, removed at the end). Memory is bounded by cfg.memory_budget (MemoryPlan): training
    rows beyond what it holds are a stratified sample; everything else streams from disk."""
    cfg = cfg or TrainConfig()
    if not 0.0 < cfg.fpr_target < 1.0:
        raise ValueError(f"--fpr-budget must be in (0, 1), got {cfg.fpr_target}")
    if cfg.k < 0:
        raise ValueError(f"--k must be >= 0, got {cfg.k}")
    clicks = Path(clicks)
    if not clicks.exists():
        raise FileNotFoundError(f"click log not found: {clicks}")
    plan = MemoryPlan.for_budget(cfg.memory_budget)
    cust = load_customers(customers)  # fail early, before the long replay
    if features is not None:
        return _run(clicks, customers, cust, Path(out), cfg, plan, features)
    out = Path(out)
    import shutil
    import tempfile
    if work is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        wdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.features-", dir=out.parent))
    else:
        wdir = Path(work)
        if (wdir / featurestore.MANIFEST).exists():
            shutil.rmtree(wdir)
    try:
        progress.stage("replay")
        fs = build_features(clicks, cust, wdir, cfg, store=store, plan=plan)
        return _run(clicks, customers, cust, out, cfg, plan, fs)
    finally:
        if work is None:
            shutil.rmtree(wdir, ignore_errors=True)


def _run(clicks: Path, customers: str | Path | None, cust: Any, out: Path, cfg: TrainConfig,
         plan: MemoryPlan, fs: featurestore.FeatureStore) -> dict[str, Any]:
    import torch
    torch.set_num_threads(cfg.threads)
    F = featurestore.FEATURES
    t_all = time.perf_counter()
    timings: dict[str, float] = {"replay_s": fs.seconds}
    t = progress.stage("labels")
    if len(fs) == 0:
        raise ValueError(f"{clicks}: the click log has no rows")
    if fs.manifest.get("weighting") != cfg.weighting:
        raise ValueError(f"{fs.path}: features written for weighting "
                         f"{fs.manifest.get('weighting')!r}, training asks {cfg.weighting!r}")
    label_source = label_text(cust)
    days = fs.days
    newest = train.resolve_newest(cfg.newest_day, int(days.size))
    val_days = (cfg.val_days if cfg.val_days is not None
                else train.auto_val_days(int(days.size)))
    sd = train.time_split(days.astype(np.int32), val_days=val_days, newest=newest)
    split_days = {k: days[m] for k, m in sd.items()}
    _check_inputs(fs, split_days)
    d_tr, d_va, d_te = split_days["train"], split_days["val"], split_days["test"]
    d_ev = np.concatenate([d_va, d_te])
    n_tr, n_va, n_te = fs.rows_in(d_tr), fs.rows_in(d_va), fs.rows_in(d_te)
    n_ev = n_va + n_te
    max_rows, hold_val = plan.fit(n_ev, n_va, n_te)
    cap = min(max_rows, cfg.train_sample) if cfg.train_sample else max_rows
    n_hold = plan.eval_rows(n_ev)

    def cell_counts(ds: np.ndarray) -> np.ndarray:
        return fs.day_cells[np.isin(days, ds)].sum(axis=0)

    # The held-out days' per-click columns (small: the days calibration works on), of every
    # held-out click or, when they do not fit the budget, of a uniform sample (eval_sample).
    ev_names = ["ts", "day", "device", "logged_in", "purchased", "weak_label",
                *(["is_robot"] if fs.has_robot else [])]
    ev_rows: np.ndarray | None = None
    eval_info: dict[str, Any] | None = None
    if n_hold < n_ev:
        ev_rows, eval_info = eval_sample(fs, d_ev, n_hold, cfg.seed)
        eval_info["by"] = f"--memory-budget {cfg.memory_budget:g} GiB"
        progress.detail(f"calibration sample {ev_rows.size:,} of {n_ev:,} held-out clicks "
                        f"(rate {eval_info['rate']:.4f})")
        heur = session_hour_heuristic_at(fs, d_ev, ev_rows, cfg.k)
        ev_cols = fs.load([*ev_names, "session_hash"], rows=ev_rows)
    else:
        ev_cols = fs.load([*ev_names, "session_hash"], days=d_ev)
        heur = metrics.session_hour_heuristic(ev_cols["session_hash"], ev_cols["ts"], cfg.k)
    wl_ev = ev_cols["weak_label"]
    day_ev = ev_cols["day"]
    is_te = day_ev == d_te[0]
    is_va = ~is_te
    slices_ev = slice_names(ev_cols["device"], ev_cols["logged_in"])
    timings["labels_s"] = time.perf_counter() - t

    # Training rows: every click of the training days, or a stratified sample of `cap`.
    x_tr, y_tr, w_tr, stdz, sample_info = _training_set(fs, d_tr, cap, cfg, plan,
                                                        explicit=bool(cfg.train_sample))
    cc_va = cell_counts(d_va)
    if hold_val:
        va = fs.load([F, "weak_label", "cell"], days=d_va)
        x_va, y_va = va[F], (1 - va["weak_label"]).astype(np.int8)
        w_va = train.sample_weights(va["cell"].astype(np.int64), cc_va)
        del va
        vb = None
    else:
        x_va = y_va = w_va = None
        vb = _val_batches(fs, d_va, cc_va)
    t = progress.stage("model")
    mlp = train.fit_mlp(x_tr, y_tr, w_tr, x_va, y_va, w_va, training=cfg.training,
                        ensemble=cfg.ensemble, hidden=cfg.hidden, weight_decay=cfg.weight_decay,
                        epochs=cfg.epochs,
                        seed=cfg.seed, progress=cfg.progress, label="mlp", standardise=stdz,
                        val_batches=vb)
    timings["train_mlp_s"] = time.perf_counter() - t
    t = progress.stage("baselines")
    # baselines.fit_logistic: the same net without hidden layers.
    logi = train.fit(x_tr, y_tr, w_tr, x_va, y_va, w_va, hidden=(), weight_decay=0.0, lr=1e-2,
                     epochs=cfg.epochs, seed=cfg.seed, progress=cfg.progress, label="logistic",
                     standardise=stdz, val_batches=vb)
    timings["train_logistic_s"] = time.perf_counter() - t
    del x_tr, y_tr, w_tr, x_va, y_va, w_va
    te = fs.load([F, "weak_label", "cell"], days=d_te)
    x_te = te[F]
    final = mlp.model
    refit_info = None
    if cfg.refit:
        # The published model learns from every day, the newest included (a robot family
        # that appeared in the last days is otherwise first trained on days later); as many
        # epochs as early stopping chose on the held-out split.
        t = time.perf_counter()
        w_te_all = train.sample_weights(te["cell"].astype(np.int64), cell_counts(days))
        y_te = (1 - te["weak_label"]).astype(np.int8)
        x_all, y_all, w_all, stdz_all, _ = _training_set(fs, days, cap, cfg, plan,
                                                         explicit=bool(cfg.train_sample))
        sched = train.refit_schedule(mlp)
        ref = train.fit_mlp(x_all, y_all, w_all, x_te, y_te, w_te_all, training=cfg.training,
                            ensemble=cfg.ensemble, hidden=cfg.hidden,
                            weight_decay=cfg.weight_decay, seed=cfg.seed,
                            progress=cfg.progress, label="mlp refit", standardise=stdz_all,
                            **sched)
        del x_all, y_all, w_all
        final = ref.model
        # How much more FPR this training spends on days it has not seen than on days it
        # trained on (the held-out model: training vs validation days); the refit model's
        # thresholds are moved on purchasing clicks it trained on (calibrate.in_sample_ratio).
        from . import calibrate as cal
        s_in = _purchasing_scores(fs, d_tr, mlp.model)
        s_out = _purchasing_scores(fs, d_va, mlp.model)
        ratio = cal.in_sample_ratio(s_in, np.ones(s_in.size, bool), s_out,
                                    np.ones(s_out.size, bool), cfg.fpr_target)
        refit_info = {"days": "all", "epochs": sched["epochs"], "seconds": ref.seconds,
                      "history": ref.history, "in_sample_ratio": ratio}
        timings["refit_s"] = time.perf_counter() - t
    del te

    # Scores of the held-out days, batch by batch from disk.
    n_sc = int(ev_cols["ts"].size)  # every held-out click, or the calibration sample
    scores = {k: np.empty(n_sc, np.float32) for k in SCORERS}
    refit_scores = np.empty(n_sc, np.float32) if cfg.refit else None
    k0 = 0
    # In blocks of train.predict's batch from the first held-out click: the same products as
    # scoring the whole array at once.
    batches = (fs.iter_rebatched([F], 262_144, days=d_ev) if ev_rows is None else
               fs.iter_batches([F], rows=ev_rows))
    for b in batches:
        xb = b[F]
        k1 = k0 + xb.shape[0]
        scores["model"][k0:k1] = train.predict(mlp.model, xb)
        scores["logistic"][k0:k1] = train.predict(logi.model, xb)
        scores["velocity"][k0:k1] = baselines.velocity_score(xb)
        if refit_scores is not None:
            refit_scores[k0:k1] = train.predict(final, xb)
        k0 = k1
    cols_all = {"purchased": ev_cols["purchased"], "heuristic": heur, "weak_label": wl_ev,
                "is_robot": ev_cols.get("is_robot")}
    sl_ev = slices_ev

    def sub(cols: dict[str, Any], m: np.ndarray) -> dict[str, Any]:
        return {k: (None if v is None else v[m]) for k, v in cols.items()}

    cols_te = sub(cols_all, is_te)
    t = progress.stage("metrics")
    results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, s in scores.items():
        s_te = s[is_te]
        thr_te = metrics.threshold_for_fpr(s_te, cols_te["purchased"], cfg.fpr_target)
        thr_va = metrics.threshold_for_fpr(s[is_va], cols_all["purchased"][is_va], cfg.fpr_target)
        r = metrics.evaluate_sliced(s_te, thr_te, cols_te, sl_ev[is_te], cfg.fpr_target)
        r["threshold_from_validation"] = {
            "threshold": thr_va,
            **{k: v for k, v in metrics.evaluate(
                s_te, thr_va, cols_te["purchased"], cols_te["heuristic"], cols_te["weak_label"],
                cols_te["is_robot"]).items() if k in ("ivr", "fpr", "coverage", "precision",
                                                       "recall")}}
        results[name] = r
        curves[name] = {"overall": metrics.ivr_fpr_curve(s_te, cols_te["purchased"],
                                                         cols_te["heuristic"], max_fpr=0.2)}
        for sn in sorted(set(sl_ev[is_te].tolist())):
            m = sl_ev[is_te] == sn
            if cols_te["purchased"][m].any():
                curves[name][sn] = metrics.ivr_fpr_curve(s_te[m], cols_te["purchased"][m],
                                                         max_fpr=0.2)
    timings["metrics_s"] = time.perf_counter() - t

    comparison = compare(results)
    label_quality = None
    if fs.has_robot:
        r_te = cols_te["is_robot"]
        h_te = cols_te["weak_label"].astype(bool)
        label_quality = {
            "robots_labelled_human": float((h_te & r_te).sum() / max(r_te.sum(), 1)),
            "humans_labelled_nonhuman": float((~h_te & ~r_te).sum() / max((~r_te).sum(), 1)),
            "weak_nonhuman_share": float((~h_te).mean()),
            "true_robot_share": float(r_te.mean()),
            "heuristic_precision": float((cols_te["heuristic"] & r_te).sum()
                                         / max(cols_te["heuristic"].sum(), 1)),
            "heuristic_recall": float((cols_te["heuristic"] & r_te).sum() / max(r_te.sum(), 1)),
        }
    note = _source_note(clicks, cust is not None and cust.num_rows > 0, fs.has_robot,
                        len(fs), int(fs.day_purchases.sum()))
    days_list = days.tolist()
    meta: dict[str, Any] = {
        "created_unix": time.time(),
        "clicks": str(clicks.resolve()), "customers": str(Path(customers).resolve())
        if customers else None,
        "n_clicks": len(fs), "days": days_list,
        "split": {"rule": ("by UTC day: last day = train, the day before = test, the "
                           if newest == "train" else "by UTC day: last day = test, the ")
                          + f"{val_days} day(s) before = validation, all earlier days = train "
                          "(never random)",
                  "newest_day": newest,
                  "train_days": [int(d) for d in d_tr],
                  "val_day": int(d_va[-1]), "val_days": [int(d) for d in d_va],
                  "test_day": int(d_te[0]),
                  "n_train": n_tr, "n_val": n_va, "n_test": n_te},
        "label_source": label_source,
        "weak_label_human_share": float(fs.day_humans.sum() / len(fs)),
        "config": {"k": cfg.k, "seed": cfg.seed, "val_days": val_days,
                   "newest_day": cfg.newest_day, "epochs_max": cfg.epochs,
                   "fpr_target": cfg.fpr_target, "hidden": list(cfg.hidden),
                   "weight_decay_hidden": cfg.weight_decay, "training": cfg.training,
                   "ensemble": cfg.ensemble, "newest_weight": cfg.newest_weight,
                   "replay_batch": cfg.batch_size,
                   "memory_budget_gib": cfg.memory_budget},
        "model": {"arch": model_arch(cfg.training, cfg.hidden, cfg.ensemble),
                  "best_epoch": mlp.best_epoch, "epochs_run": mlp.epochs_run,
                  "history": mlp.history},
        "logistic": {"best_epoch": logi.best_epoch, "epochs_run": logi.epochs_run,
                     "history": logi.history},
        "sample_weights": train.WEIGHTING_TEXT[cfg.weighting],
        "train_sample": sample_info,
        "eval_sample": eval_info,
        "memory": {"budget_gib": cfg.memory_budget, "chunk_rows": plan.chunk_rows,
                   "max_training_rows": max_rows, "validation_streamed": not hold_val,
                   "max_held_out_rows": n_hold},
        "refit": refit_info,
        "replay": {"store": fs.store_name, "clicks_per_s": fs.clicks_per_s,
                   "seconds": fs.seconds},
        "feature_spec_hash": SPEC_HASH,
        "source": note,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
    }

    from . import report
    with atomic_dir(out) as tmp:
        t = progress.stage("export")
        meta["onnx_parity"] = train.export_onnx(final, tmp / "model.onnx", x_te)
        del x_te
        timings["onnx_s"] = time.perf_counter() - t
        write_json(tmp / "feature_spec.json", {**spec_dict(), "spec_hash": SPEC_HASH})
        _write_scores(tmp / "scores.parquet", ev_cols, is_te, slices_ev, wl_ev, heur, scores,
                      refit_scores, rows=ev_rows)
        t = progress.stage("report")
        doc = {"fpr_target": cfg.fpr_target,
               "threshold_set_on": "test day (each scorer's own threshold gives overall test "
                                   "FPR = fpr_target); threshold_from_validation shows the "
                                   "deployable variant",
               "operating_rule": "invalid iff score > threshold",
               "coverage_k": cfg.k,
               "coverage_definition": f"clicks whose session has > {cfg.k} clicks in the same "
                                      "UTC clock hour (ts // 3600000), counted over the whole log",
               "test_day": int(d_te[0]), "source": note,
               "comparison": comparison, "label_quality": label_quality,
               **results}
        report.write(tmp, doc, curves, scores, is_te, cols_all, meta)
        timings["report_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        meta["timings"] = timings
        write_json(tmp / "training_meta.json", meta)
    return {"out": str(Path(out).resolve()), "report": str(Path(out).resolve() / "report.html"),
            "n_clicks": len(fs), "timings": timings, "comparison": comparison,
            "metrics": {k: results[k]["overall"] for k in SCORERS},
            "onnx_parity": meta["onnx_parity"], "source": note["kind"]}


def _training_set(fs: featurestore.FeatureStore, ds: np.ndarray, cap: int, cfg: TrainConfig,
                  plan: MemoryPlan, explicit: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                             tuple[np.ndarray, np.ndarray] | None, dict[str, Any] | None]:
    """(x, y, weights, standardisation or None, sample description) of the rows of days `ds`
    a model trains on: all of them when they fit in `cap` rows (read from disk in log order:
    the same arrays as the whole-log replay's rows), or a stratified sample of `cap` rows
    (train.stratum_quotas / stratified_positions: slice x local hour x weak label) whose
    weights are the rows' weights times the inverse inclusion probability (mean 1), with the
    standardisation of every row of those days (streamed)."""
    F = featurestore.FEATURES
    m = np.isin(fs.days, ds)
    cc = fs.day_cells[m].sum(axis=0)
    n = int(fs.day_clicks[m].sum())
    # The log's newest day, when these days include it, weighs cfg.newest_weight times as
    # much as each other day (train.recency_weights; the mean weight unchanged).
    newest = int(fs.days.max()) if fs.days.size else None
    if n <= cap:
        d = fs.load([F, "weak_label", "cell", "day"], days=ds)
        w = train.recency_weights(train.sample_weights(d["cell"].astype(np.int64), cc),
                                  d["day"], cfg.newest_weight, newest=newest)
        return d[F], (1 - d["weak_label"]).astype(np.int8), w, None, None
    sc = fs.day_strata[m].sum(axis=0)
    quota = train.stratum_quotas(sc, cap)
    keep = train.stratified_positions(sc, quota, cfg.seed)
    ords = train.StratumOrdinals(sc)
    moments = train.RunningMoments(featurestore.N_FEATURES)
    rows: list[np.ndarray] = []
    for b in fs.iter_batches([F, "stratum"], days=ds, with_index=True):
        moments.update(b[F])
        k = ords.keys(b["stratum"])
        i = np.searchsorted(keep, k)
        hit = (i < keep.size) & (keep[np.minimum(i, keep.size - 1)] == k)
        rows.append(b["_row"][hit])
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    d = fs.load([F, "weak_label", "cell", "stratum", "day"], rows=idx)
    st = d["stratum"].astype(np.int64)
    inv_p = (sc[st] / quota[st]).astype(np.float64)
    ws = train.sample_weights(d["cell"].astype(np.int64), cc).astype(np.float64) * inv_p
    ws = train.recency_weights(ws, d["day"], cfg.newest_weight,
                               newest=newest).astype(np.float64)
    ws *= ws.size / ws.sum()
    info = {"rows": int(idx.size), "of": n, "strata": int((sc > 0).sum()),
            "by": "--train-sample" if explicit and cap == cfg.train_sample else
                  f"--memory-budget {cfg.memory_budget:g} GiB",
            "standardisation": "every training click (streamed)",
            "rule": "slice x local hour x weak label; each stratum in proportion, at least "
                    f"{train.MIN_PER_STRATUM} clicks (or all it has); weights x 1 / inclusion "
                    "probability"}
    return d[F], (1 - d["weak_label"]).astype(np.int8), ws.astype(np.float32), \
        moments.standardisation(), info


def eval_sample(fs: featurestore.FeatureStore, ds: np.ndarray, n_max: int, seed: int
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(sorted global row indices, description) of a uniform random sample of about `n_max` of
    the clicks of days `ds`, drawn per day x sampling stratum (slice x local hour x weak label)
    at one rate, so every day, slice, hour and weak label keeps its share and the sample needs
    no weights: each stratum keeps floor(rate x its clicks) plus one with probability the
    remainder (train.stratified_positions, seeded by `seed` and the day). Memory: the
    sample's size."""
    n = fs.rows_in(ds)
    rate = min(n_max / max(n, 1), 1.0)
    rng = np.random.default_rng([seed, 0x5A4D])
    rows: list[np.ndarray] = []
    per_day: dict[str, Any] = {}
    for d in np.asarray(ds).tolist():
        sc = fs.day_strata[fs.days == d].sum(axis=0)
        exact = rate * sc
        quota = np.floor(exact).astype(np.int64)
        quota += rng.random(sc.size) < (exact - quota)
        quota = np.minimum(quota, sc)
        keep = train.stratified_positions(sc, quota, int(seed) * 1_000_003 + int(d))
        ords = train.StratumOrdinals(sc)
        for b in fs.iter_batches(["stratum"], days=[d], with_index=True):
            k = ords.keys(b["stratum"])
            i = np.searchsorted(keep, k)
            hit = (i < keep.size) & (keep[np.minimum(i, keep.size - 1)] == k)
            rows.append(b["_row"][hit])
        per_day[str(d)] = {"rows": int(quota.sum()), "of": int(sc.sum())}
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return idx, {"rows": int(idx.size), "of": n, "rate": rate, "per_day": per_day,
                 "seed": int(seed),
                 "rule": "uniform at one rate per day x slice x local hour x weak label "
                         "(no weights); calibration, held-out metrics and model guardrails "
                         "use the sample, the robot heuristic counts every held-out click"}


def session_hour_heuristic_at(fs: featurestore.FeatureStore, ds: np.ndarray,
                              rows: np.ndarray, k: int) -> np.ndarray:
    """metrics.session_hour_heuristic of the clicks of days `ds`, kept at the global rows
    `rows` (sorted): the (session, UTC hour) counts over every click of those days, streamed
    an hour at a time (the log is in ts order, so an hour's clicks are contiguous; memory:
    one hour's clicks)."""
    out: list[np.ndarray] = []
    pend: dict[str, np.ndarray] | None = None

    def flush(c: dict[str, np.ndarray]) -> None:
        h = metrics.session_hour_heuristic(c["session_hash"], c["ts"], k)
        i = np.searchsorted(rows, c["_row"])
        hit = (i < rows.size) & (rows[np.minimum(i, rows.size - 1)] == c["_row"])
        out.append(h[hit])

    for b in fs.iter_batches(["session_hash", "ts"], days=ds, with_index=True):
        if pend is not None:
            b = {c: np.concatenate([pend[c], b[c]]) for c in ("session_hash", "ts", "_row")}
        hour = b["ts"] // metrics.HOUR_MS
        cut = int(np.searchsorted(hour, hour[-1], side="left")) if hour.size else 0
        if cut:
            flush({c: v[:cut] for c, v in b.items()})
        pend = {c: v[cut:] for c, v in b.items()}
    if pend is not None and pend["ts"].size:
        flush(pend)
    return np.concatenate(out) if out else np.zeros(0, bool)


def _val_batches(fs: featurestore.FeatureStore, ds: np.ndarray, cc: np.ndarray) -> Any:
    F = featurestore.FEATURES

    def gen() -> Any:
        for b in fs.iter_batches([F, "weak_label", "cell"], days=ds):
            yield (b[F], (1 - b["weak_label"]).astype(np.int8),
                   train.sample_weights(b["cell"].astype(np.int64), cc))
    return gen


def _purchasing_scores(fs: featurestore.FeatureStore, ds: np.ndarray, model: Any) -> np.ndarray:
    F = featurestore.FEATURES
    out = [train.predict(model, b[F][b["purchased"]])
           for b in fs.iter_batches([F, "purchased"], days=ds)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Does the model beat each baseline on IVR at equal FPR, overall and per slice?"""
    out: dict[str, Any] = {}
    for base in ("logistic", "velocity"):
        rows = {"overall": (results["model"]["overall"]["ivr_at_fpr_target"],
                            results[base]["overall"]["ivr_at_fpr_target"])}
        for sn, m in results["model"]["slices"].items():
            rows[sn] = (m["ivr_at_fpr_target"], results[base]["slices"][sn]["ivr_at_fpr_target"])
        out[base] = {}
        for k, (a, b) in rows.items():
            blk_m = results["model"]["overall" if k == "overall" else "slices"]
            blk_b = results[base]["overall" if k == "overall" else "slices"]
            if k != "overall":
                blk_m, blk_b = blk_m[k], blk_b[k]
            band_m, band_b = blk_m.get("ivr_band"), blk_b.get("ivr_band")
            row = {"model_ivr": a, "baseline_ivr": b,
                   "model_wins": bool(a > b) if np.isfinite(a) and np.isfinite(b) else None,
                   # margin, band_gap, margin_exceeds_noise, within_noise (bands overlap: the
                   # difference is within the FPR estimate's sampling noise).
                   **baselines.margin_row(a, b, band_m, band_b)}
            for who, blk in (("model", blk_m), ("baseline", blk_b)):
                if "precision_at_fpr_target" in blk:
                    row[f"{who}_precision"] = blk["precision_at_fpr_target"]
                    row[f"{who}_recall"] = blk["recall_at_fpr_target"]
            out[base][k] = row
    out["model_beats_all_everywhere"] = all(
        v["model_wins"] for b in ("logistic", "velocity") for v in out[b].values()
        if v["model_wins"] is not None)
    return out


def _write_scores(path: Path, ev: dict[str, np.ndarray], is_te: np.ndarray,
                  slices: np.ndarray, wl: np.ndarray, heur: np.ndarray,
                  scores: dict[str, np.ndarray], refit_scores: np.ndarray | None = None,
                  rows_per_group: int = 1 << 20, rows: np.ndarray | None = None) -> None:
    """scores.parquet: one row per held-out click (or per click of the calibration sample,
    with its global row index in the feature directory as `row`), written a row group at a
    time (string columns built by Arrow from codes, no per-click Python strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from slidr.contract import DEVICES, SLICE_BY_CODE

    n = is_te.size
    slice_code = (ev["device"].astype(np.int64) * 2 + ev["logged_in"].astype(np.int64))
    names = pa.array(list(SLICE_BY_CODE), pa.string())
    devs = pa.array(list(DEVICES), pa.string())
    splits = pa.array(["val", "test"], pa.string())

    def groups() -> Any:
        for a in range(0, max(n, 1), rows_per_group):
            b = min(a + rows_per_group, n)
            cols: dict[str, Any] = {
                "ts": pa.array(ev["ts"][a:b], pa.int64()),
                "day": pa.array(ev["day"][a:b], pa.int32()),
                "split": pc.take(splits, pa.array(is_te[a:b].astype(np.int8))),
                "slice": pc.take(names, pa.array(slice_code[a:b])),
                "device": pc.take(devs, pa.array(ev["device"][a:b].astype(np.int64))),
                "logged_in": pa.array(ev["logged_in"][a:b], pa.bool_()),
                "purchased": pa.array(ev["purchased"][a:b], pa.bool_()),
                "weak_label": pa.array(wl[a:b], pa.int8()),
                "robot_heuristic": pa.array(heur[a:b], pa.bool_()),
            }
            if ev.get("session_hash") is not None:  # the coverage guardrail's clusters
                cols["session_hash"] = pa.array(ev["session_hash"][a:b], pa.uint64())
            if ev.get("is_robot") is not None:
                cols["is_robot"] = pa.array(ev["is_robot"][a:b], pa.bool_())
            for k in SCORERS:
                cols[f"score_{k}"] = pa.array(scores[k][a:b], pa.float32())
            if rows is not None:
                cols["row"] = pa.array(rows[a:b], pa.int64())
            if refit_scores is not None:  # the published (refit) model; score_model is held-out
                cols["score_refit"] = pa.array(refit_scores[a:b], pa.float32())
            yield pa.table(cols)

    it = groups()
    first = next(it)
    with atomic_open(path, "wb") as f, pq.ParquetWriter(f, first.schema) as w:
        w.write_table(first)
        for tbl in it:
            w.write_table(tbl)
