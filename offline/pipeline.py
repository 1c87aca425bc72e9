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
from slidr.featurespec import SPEC_HASH, spec_dict
from slidr.options import field_from
from slidr.util import atomic_dir, atomic_open, write_json

from . import baselines, metrics, replay, train

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
    train_sample: int = field_from(TRAINING["train_sample"])


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
    how = ("purchase or high RFM (slidr.offline.labels)" if customers is not None
           and customers.num_rows else
           "purchase only: no (or an empty) customers table (slidr.offline.labels)")
    return np.asarray(wl, dtype=np.int8), how


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


def _check_inputs(rp: replay.Replay, wl: np.ndarray, day: np.ndarray,
                  split: dict[str, np.ndarray]) -> None:
    if len(rp) == 0:
        raise ValueError("the click log has no rows")
    if not rp.purchased.any():
        raise ValueError("the click log has no purchasing clicks (purchased is false everywhere): "
                         "FPR and the human weak label are undefined")
    for name in ("val", "test"):
        if not rp.purchased[split[name]].any():
            raise ValueError(f"no purchasing clicks on the {name} day (day {int(day[split[name]][0])})"
                             ": FPR cannot be measured there")
    y = 1 - wl[split["train"]]
    if y.min() == y.max():
        raise ValueError("the training days hold only one weak-label class "
                         f"({'robot' if y[0] else 'human'}); nothing to learn")


def run(clicks: str | Path, customers: str | Path | None, out: str | Path,
        cfg: TrainConfig | None = None, store: Any = None, log=print,
        features: replay.Replay | None = None) -> dict[str, Any]:
    """Train, evaluate and write the output directory; returns a summary dict.

    features: the log's replay when the caller has it already (`slidr daily` replays the log
    once, for its drift guardrail and for training); otherwise the log is replayed here."""
    cfg = cfg or TrainConfig()
    if not 0.0 < cfg.fpr_target < 1.0:
        raise ValueError(f"--fpr-budget must be in (0, 1), got {cfg.fpr_target}")
    if cfg.k < 0:
        raise ValueError(f"--k must be >= 0, got {cfg.k}")
    clicks = Path(clicks)
    if not clicks.exists():
        raise FileNotFoundError(f"click log not found: {clicks}")
    cust = load_customers(customers)  # fail early, before the long replay
    import torch
    torch.set_num_threads(cfg.threads)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    progress.stage("replay")
    rp = features if features is not None else replay.replay_log(
        clicks, store=store, use_native=cfg.use_native, batch_size=cfg.batch_size,
        progress=cfg.progress)
    timings["replay_s"] = rp.seconds
    t = progress.stage("labels")
    if len(rp) == 0:
        raise ValueError(f"{clicks}: the click log has no rows")
    wl, label_source = weak_labels(rp, cust)
    y = (1 - wl).astype(np.int8)  # 1 = robot by weak label
    day = train.day_index(rp.ts)
    val_days = cfg.val_days if cfg.val_days is not None else train.auto_val_days(
        int(np.unique(day).size))
    split = train.time_split(day, val_days=val_days)
    _check_inputs(rp, wl, day, split)
    heur = metrics.session_hour_heuristic(rp.session_hash, rp.ts, cfg.k)
    cells = train.weight_cells(rp.ts, rp.tz_offset_min, rp.logged_in, y, cfg.weighting)
    slices = slice_names(rp.device, rp.logged_in)
    timings["labels_s"] = time.perf_counter() - t

    x = rp.features
    tr, va, te = split["train"], split["val"], split["test"]
    idx_tr, w_tr, sample_info = _training_rows(tr, cells, rp, y, cfg)
    x_tr, y_tr = x[idx_tr], y[idx_tr]
    w_va = train.sample_weights(cells[va])
    t = progress.stage("model")
    mlp = train.fit(x_tr, y_tr, w_tr, x[va], y[va], w_va, hidden=cfg.hidden,
                    weight_decay=cfg.weight_decay, epochs=cfg.epochs, seed=cfg.seed,
                    progress=cfg.progress, label="mlp")
    timings["train_mlp_s"] = time.perf_counter() - t
    t = progress.stage("baselines")
    logi = baselines.fit_logistic(x_tr, y_tr, w_tr, x[va], y[va], w_va, seed=cfg.seed,
                                  epochs=cfg.epochs, progress=cfg.progress)
    timings["train_logistic_s"] = time.perf_counter() - t
    final = mlp.model
    refit_info = None
    if cfg.refit:
        # The published model learns from every day, the newest included (a robot family
        # that appeared in the last days is otherwise first trained on days later); as many
        # epochs as early stopping chose on the held-out split.
        t = time.perf_counter()
        allw = train.sample_weights(cells)
        idx_all, w_all, _ = _training_rows(np.ones(len(rp), bool), cells, rp, y, cfg)
        n_ep = max(mlp.best_epoch + 1, 1)
        every = idx_all.size == len(rp)  # no sample: no copy of the features
        ref = train.fit(x if every else x[idx_all], y if every else y[idx_all], w_all, x[te],
                        y[te], allw[te], hidden=cfg.hidden, weight_decay=cfg.weight_decay,
                        epochs=n_ep, patience=n_ep + 1,
                        seed=cfg.seed, progress=cfg.progress, label="mlp refit")
        final = ref.model
        # How much more FPR this training spends on days it has not seen than on days it
        # trained on (the held-out model: training vs validation days); the refit model's
        # thresholds are moved on purchasing clicks it trained on (calibrate.in_sample_ratio).
        from . import calibrate as cal
        ratio = cal.in_sample_ratio(train.predict(mlp.model, x[tr]), rp.purchased[tr],
                                    train.predict(mlp.model, x[va]), rp.purchased[va],
                                    cfg.fpr_target)
        refit_info = {"days": "all", "epochs": n_ep, "seconds": ref.seconds,
                      "history": ref.history, "in_sample_ratio": ratio}
        timings["refit_s"] = time.perf_counter() - t

    ev = va | te
    refit_scores = train.predict(final, x[ev]) if cfg.refit else None
    scores = {"model": train.predict(mlp.model, x[ev]),
              "logistic": train.predict(logi.model, x[ev]),
              "velocity": baselines.velocity_score(x[ev])}
    is_te = te[ev]
    is_va = va[ev]
    cols_all = {"purchased": rp.purchased[ev], "heuristic": heur[ev], "weak_label": wl[ev],
                "is_robot": rp.is_robot[ev] if rp.is_robot is not None else None}
    sl_ev = slices[ev]

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
    if rp.is_robot is not None:
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
    note = _source_note(clicks, cust is not None and cust.num_rows > 0, rp.is_robot is not None,
                        len(rp), int(rp.purchased.sum()))
    days_list = np.unique(day).tolist()
    meta: dict[str, Any] = {
        "created_unix": time.time(),
        "clicks": str(clicks.resolve()), "customers": str(Path(customers).resolve())
        if customers else None,
        "n_clicks": len(rp), "days": days_list,
        "split": {"rule": f"by UTC day: last day = test, the {val_days} day(s) before = "
                          "validation, all earlier days = train (never random)",
                  "train_days": [d for d in days_list if d < days_list[-1 - val_days]],
                  "val_day": days_list[-2], "val_days": days_list[-1 - val_days:-1],
                  "test_day": days_list[-1],
                  "n_train": int(tr.sum()), "n_val": int(va.sum()), "n_test": int(te.sum())},
        "label_source": label_source,
        "weak_label_human_share": float(wl.mean()),
        "config": {"k": cfg.k, "seed": cfg.seed, "val_days": val_days, "epochs_max": cfg.epochs,
                   "fpr_target": cfg.fpr_target, "hidden": list(cfg.hidden),
                   "weight_decay_hidden": cfg.weight_decay, "replay_batch": cfg.batch_size},
        "model": {"arch": f"24 -> {' -> '.join(map(str, cfg.hidden))} -> 1, ReLU, sigmoid; "
                          "standardisation inside the graph",
                  "best_epoch": mlp.best_epoch, "epochs_run": mlp.epochs_run,
                  "history": mlp.history},
        "logistic": {"best_epoch": logi.best_epoch, "epochs_run": logi.epochs_run,
                     "history": logi.history},
        "sample_weights": train.WEIGHTING_TEXT[cfg.weighting],
        "train_sample": sample_info,
        "refit": refit_info,
        "replay": {"store": rp.store_name, "clicks_per_s": rp.clicks_per_s,
                   "seconds": rp.seconds},
        "feature_spec_hash": SPEC_HASH,
        "source": note,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
    }

    from . import report
    with atomic_dir(out) as tmp:
        t = progress.stage("export")
        meta["onnx_parity"] = train.export_onnx(final, tmp / "model.onnx", x[te])
        timings["onnx_s"] = time.perf_counter() - t
        write_json(tmp / "feature_spec.json", {**spec_dict(), "spec_hash": SPEC_HASH})
        _write_scores(tmp / "scores.parquet", rp, ev, split, day, slices, wl, heur, scores,
                      refit_scores)
        t = progress.stage("report")
        doc = {"fpr_target": cfg.fpr_target,
               "threshold_set_on": "test day (each scorer's own threshold gives overall test "
                                   "FPR = fpr_target); threshold_from_validation shows the "
                                   "deployable variant",
               "operating_rule": "invalid iff score > threshold",
               "coverage_k": cfg.k,
               "coverage_definition": f"clicks whose session has > {cfg.k} clicks in the same "
                                      "UTC clock hour (ts // 3600000), counted over the whole log",
               "test_day": days_list[-1], "source": note,
               "comparison": comparison, "label_quality": label_quality,
               **results}
        report.write(tmp, doc, curves, scores, is_te, cols_all, meta)
        timings["report_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        meta["timings"] = timings
        write_json(tmp / "training_meta.json", meta)
    return {"out": str(Path(out).resolve()), "report": str(Path(out).resolve() / "report.html"),
            "n_clicks": len(rp), "timings": timings, "comparison": comparison,
            "metrics": {k: results[k]["overall"] for k in SCORERS},
            "onnx_parity": meta["onnx_parity"], "source": note["kind"]}



def _training_rows(mask: np.ndarray, cells: np.ndarray, rp: replay.Replay, y: np.ndarray,
                   cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """(row indices, weights, sample description) of the rows `mask` a model trains on: all
    of them, or with cfg.train_sample a stratified sample (train.stratified_sample) whose
    weights are the full rows' weights times the inverse inclusion probability, mean 1."""
    idx = np.flatnonzero(mask)
    w = train.sample_weights(cells[idx])
    if not cfg.train_sample or idx.size <= cfg.train_sample:
        return idx, w, None
    strata = train.sample_strata(rp.ts[idx], rp.tz_offset_min[idx], rp.device[idx],
                                 rp.logged_in[idx], y[idx])
    pick, inv_p = train.stratified_sample(strata, cfg.train_sample, cfg.seed)
    ws = w[pick].astype(np.float64) * inv_p
    ws *= ws.size / ws.sum()
    info = {"rows": int(pick.size), "of": int(idx.size), "strata": int(np.unique(strata).size),
            "rule": "slice x local hour x weak label; each stratum in proportion, at least "
                    f"{train.MIN_PER_STRATUM} clicks (or all it has); weights x 1 / inclusion "
                    "probability"}
    return idx[pick], ws.astype(np.float32), info


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


def _write_scores(path: Path, rp: replay.Replay, ev: np.ndarray, split: dict[str, np.ndarray],
                  day: np.ndarray, slices: np.ndarray, wl: np.ndarray, heur: np.ndarray,
                  scores: dict[str, np.ndarray], refit_scores: np.ndarray | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slidr.contract import DEVICES
    cols: dict[str, Any] = {
        "ts": pa.array(rp.ts[ev], pa.int64()),
        "day": pa.array(day[ev], pa.int32()),
        "split": pa.array(np.where(split["test"][ev], "test", "val").tolist(), pa.string()),
        "slice": pa.array(slices[ev].tolist(), pa.string()),
        "device": pa.array(np.array(DEVICES, dtype=object)[rp.device[ev]].tolist(), pa.string()),
        "logged_in": pa.array(rp.logged_in[ev], pa.bool_()),
        "purchased": pa.array(rp.purchased[ev], pa.bool_()),
        "weak_label": pa.array(wl[ev], pa.int8()),
        "robot_heuristic": pa.array(heur[ev], pa.bool_()),
    }
    if rp.is_robot is not None:
        cols["is_robot"] = pa.array(rp.is_robot[ev], pa.bool_())
    for k in SCORERS:
        cols[f"score_{k}"] = pa.array(scores[k], pa.float32())
    if refit_scores is not None:  # the published (refit) model; score_model is held-out
        cols["score_refit"] = pa.array(refit_scores, pa.float32())
    with atomic_open(path, "wb") as f:
        pq.write_table(pa.table(cols), f)
