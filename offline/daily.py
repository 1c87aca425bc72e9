"""The daily retrain: data guardrails -> labels -> features -> train -> calibrate -> model
guardrails -> publish (and promote) or refuse.

Exit codes (for schedulers; the table of every command is slidr/exits.py): 0 published,
2 bad input (a missing or unreadable log, a contract violation), 3 refused by a data guardrail,
4 refused by a model guardrail (calibration infeasible counts as one), 1 failed (any other
error). A refusal keeps the current model serving and says exactly which check failed and why.

Crash safety: everything is built in a work directory; the registry is touched only by
Registry.publish (a complete bundle renamed into place) and the atomic pointer swap, so killing
this job at any point leaves the registry as it was or with one more complete, verified bundle.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr import exits, progress
from slidr.defaults import CALIBRATION, COMMON, TRAINING
from slidr.options import field_from
from slidr.registry import BundleError, Registry
from slidr.util import write_json

from . import guardrails as gr

EXIT_PUBLISHED = exits.OK
EXIT_FAILED = exits.FAILED
EXIT_BAD_INPUT = exits.USAGE
EXIT_DATA = exits.REFUSED_DATA
EXIT_MODEL = exits.REFUSED_MODEL

# Files of a training output that go into the candidate bundle (scores stay in the work dir).
TRAIN_FILES_SUFFIXES = (".onnx", ".json", ".html", ".png")


@dataclass
class DailyConfig:
    # Defaults shared with the flags, calibrate and docs/cli.md: slidr/defaults.py.
    fpr_budget: float = field_from(CALIBRATION["fpr_budget"])
    min_coverage: float = field_from(CALIBRATION["min_coverage"])
    slice_min_coverage: dict[str, float] = field_from(CALIBRATION["slice_min_coverage"])
    min_purchasing: int = field_from(CALIBRATION["min_purchasing"])
    k: int = field_from(TRAINING["k"])
    epochs: int = field_from(TRAINING["epochs"])
    val_days: int | None = field_from(TRAINING["val_days"])  # None: train.auto_val_days
    newest_day: str = field_from(TRAINING["newest_day"])  # pipeline.TrainConfig.newest_day
    # Published thresholds: "slice" (default), "global" (global@budget) or "auto" (slice-level
    # unless its leave-one-day-out evidence on the validation days says global@budget is
    # better); see calibrate.CalibConfig.method.
    method: str = field_from(CALIBRATION["method"])
    seed: int = field_from(COMMON["seed"])
    progress: bool = True  # progress bars (slidr/progress.py decides where they show)
    refit: bool = field_from(TRAINING["refit"])
    weighting: str = field_from(TRAINING["weighting"])
    training: str = field_from(TRAINING["training"])
    ensemble: int = field_from(TRAINING["ensemble"])
    newest_weight: float = field_from(TRAINING["newest_weight"])
    train_sample: int = field_from(TRAINING["train_sample"])
    engine: str = field_from(TRAINING["engine"])  # "spark": offline/spark_engine.py
    spark_master: str = field_from(TRAINING["spark_master"])
    memory_budget: float = field_from(TRAINING["memory_budget"])
    guard: gr.GuardrailConfig = field(default_factory=gr.GuardrailConfig)
    sign_key: bytes | None = None  # sign the published bundle (registry.SIGNATURE)


class _Stop(Exception):
    def __init__(self, code: int, status: str, checks: list[gr.Check]) -> None:
        super().__init__(status)
        self.code = code
        self.status = status
        self.checks = checks


def run_daily(clicks: str | Path, customers: str | Path | None, registry: str | Path,
              work: str | Path | None = None, cfg: DailyConfig | None = None,
              log: Callable[[str], None] = print,
              train_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Run the daily job; returns a result dict with `exit_code`, `status`, `version`,
    `reason`, `checks`. Never raises for refusals; errors become exit_code 1.
    `train_fn(clicks, customers, out_dir, cfg)` replaces the training pipeline (tests)."""
    cfg = cfg or DailyConfig()
    cfg.guard.fpr_budget = cfg.fpr_budget
    cfg.guard.min_coverage = cfg.min_coverage
    cfg.guard.slice_min_coverage = dict(cfg.slice_min_coverage)
    reg = Registry(registry)
    own_work = work is None
    wdir = Path(tempfile.mkdtemp(prefix="slidr-daily-")) if work is None else Path(work)
    wdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res: dict[str, Any] = {"started": _now(), "clicks": str(clicks), "registry": str(registry),
                           "work": str(wdir), "version": None, "checks": [], "steps": {}}
    try:
        res.update(_run(Path(clicks), customers, reg, wdir, cfg, log, res, train_fn))
    except _Stop as s:
        res.update({"exit_code": s.code, "status": s.status, "reason": gr.explain(s.checks)})
    except Exception as e:  # the job failed; the registry is untouched
        if isinstance(e, ValueError | FileNotFoundError | IsADirectoryError | PermissionError):
            # Bad input (a missing or unreadable file, a row that breaks the contract): the
            # message names the file, row and field; no traceback needed.
            res.update({"exit_code": EXIT_BAD_INPUT, "status": "bad_input",
                        "reason": str(e) or type(e).__name__})
        else:
            res.update({"exit_code": EXIT_FAILED, "status": "failed",
                        "reason": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()})
    cur = reg.pointers().get("current") if reg.pointers_path.exists() else None
    res.update({"finished": _now(), "seconds": round(time.time() - t0, 2), "current": cur})
    try:
        run_log = reg.path / "runs" / (f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
                                       f"-{res['status']}.json")
        write_json(run_log, _clean(res))
        res["run_log"] = str(run_log)
    except OSError as e:  # a run log that cannot be written must not hide the outcome
        log(f"daily: could not write the run log: {e}")
    if own_work and (res["exit_code"] == EXIT_PUBLISHED or not any(wdir.iterdir())):
        shutil.rmtree(wdir, ignore_errors=True)
        res["work"] = None
    return res


def _run(clicks: Path, customers: str | Path | None, reg: Registry, wdir: Path,
         cfg: DailyConfig, log: Callable[[str], None], res: dict[str, Any],
         train_fn: Callable[..., Any] | None) -> dict[str, Any]:
    from . import calibrate as cal
    if not clicks.exists():
        raise FileNotFoundError(f"click log not found: {clicks}")
    checks: list[gr.Check] = []

    def record(new: list[gr.Check]) -> None:
        checks.extend(new)
        res["checks"] = [c.as_dict() for c in checks]

    # 1. Data guardrails on the raw log.
    t = progress.stage("data guardrails")
    from . import pipeline
    plan = pipeline.MemoryPlan.for_budget(cfg.memory_budget)  # a budget too small: exit 2
    record(gr.check_log_stream(clicks, cfg.guard, plan.chunk_rows))
    res["steps"]["data_guardrails_s"] = round(time.perf_counter() - t, 3)
    if not all(c.passed for c in checks):
        raise _Stop(EXIT_DATA, "refused_data", checks)

    # 2. The current model (if any, and only if servable).
    cur = None
    try:
        cur = reg.current_verified()
    except BundleError as e:
        log(f"daily: current bundle is not servable ({e}); comparing against no model")
        res["current_unservable"] = str(e)
    res["compared_with"] = cur.version if cur else None

    # 3. Features (the same kernel the daemon runs), written to Parquet partitions in the work
    # directory as the replay goes; the drift guardrail and training read them from there.
    t = progress.stage("features")
    from slidr.featurespec import FEATURE_NAMES

    from . import featurestore
    tcfg = _train_config(cfg)
    fdir = wdir / "features"
    if fdir.exists():
        shutil.rmtree(fdir)
    if cfg.engine == "spark":
        # The features computed on Spark (equal to the replay's) and written to the same
        # layout by the executors; this process holds no per-click data meanwhile.
        from .spark_engine import build_features_spark
        pipeline.load_customers(customers)  # a bad customers table fails here, not on Spark
        fs = build_features_spark(clicks, customers, fdir, tcfg.weighting,
                                  master=cfg.spark_master, chunk_rows=plan.chunk_rows,
                                  work=wdir / "spark")
    else:
        fs = pipeline.build_features(clicks, pipeline.load_customers(customers), fdir, tcfg,
                                     plan=plan)
    res["steps"]["replay_s"] = round(time.perf_counter() - t, 3)
    ref = _read_json(cur.path / "feature_stats.json") if cur else None
    record([_check_drift(fs, FEATURE_NAMES, ref, cfg.guard)])
    if not checks[-1].passed:
        raise _Stop(EXIT_DATA, "refused_data", checks)

    # 4. Train (labels, features, model, baselines, metrics, report).
    t = progress.stage("train")
    train_dir = wdir / "train"
    if train_fn is not None:
        train_fn(clicks, customers, train_dir, cfg)
    else:
        pipeline.run(clicks, customers, train_dir, tcfg, log=lambda *a, **k: None, features=fs)
    res["steps"]["train_s"] = round(time.perf_counter() - t, 3)
    # Held-out days beyond the memory budget: calibrated on a uniform sample (docs/scale.md).
    smp = (_read_json(train_dir / "training_meta.json") or {}).get("eval_sample")
    if smp:
        res["eval_sample"] = smp
        log(f"daily: calibration sample of {smp['rows']:,} of {smp['of']:,} held-out clicks "
            f"(rate {smp['rate']:.4f}, {smp['by']})")

    # 5. Calibrate on the validation days, evaluate on the held-out test day.
    t = progress.stage("calibrate")
    cand = wdir / "candidate"
    if cand.exists():
        shutil.rmtree(cand)
    cand.mkdir(parents=True)
    for p in sorted(train_dir.iterdir()):
        if p.is_file() and p.suffix in TRAIN_FILES_SUFFIXES:
            shutil.copyfile(p, cand / p.name)
    try:
        # The scores are not held here during calibration: it keeps only its split's copies.
        result = cal.calibrate(cal.load_scores(train_dir / "scores.parquet"),
                               cal.CalibConfig(fpr_budget=cfg.fpr_budget,
                                               min_coverage=cfg.min_coverage,
                                               slice_min_coverage=cfg.slice_min_coverage,
                                               min_purchasing=cfg.min_purchasing,
                                               method=cfg.method))
    except cal.CalibrationInfeasible as e:
        record([gr.Check("calibration_feasible", False, e.details.get("min_budget"),
                         cfg.fpr_budget, str(e), "model", details=e.details)])
        raise _Stop(EXIT_MODEL, "refused_model", checks) from None
    cal.write_outputs(result, cand)
    if cfg.refit:
        # The published model was trained again on every day (pipeline, TrainConfig.refit):
        # its thresholds keep each slice's calibrated FPR on the fitted days.
        import pyarrow.parquet as pq
        new = pq.read_table(train_dir / "scores.parquet", columns=["score_refit"]).column(
            "score_refit").to_numpy().astype(np.float64)
        cols = cal.load_scores(train_dir / "scores.parquet")
        meta = _read_json(train_dir / "training_meta.json") or {}
        ratio = float((meta.get("refit") or {}).get("in_sample_ratio", 1.0))
        write_json(cand / "thresholds.json",
                   cal.transfer_thresholds(_read_json(cand / "thresholds.json"), cols, new,
                                           in_sample_ratio=ratio))
        res["refit"] = True
    res["calibration"] = cal.summary(result)
    res["calibration_method"] = cal.chosen_method(result)
    log(f"daily: {cal.selection_text(result)}")
    res["steps"]["calibrate_s"] = round(time.perf_counter() - t, 3)
    write_json(cand / "feature_stats.json", _feature_stats(fs, FEATURE_NAMES, plan))

    # 6. Model guardrails: candidate vs current on the same held-out clicks.
    t = progress.stage("model guardrails")
    test = _test_rows(train_dir / "scores.parquet")
    th = _read_json(cand / "thresholds.json")
    if "refit" in th:  # judged on the held-out model's scores, with its own thresholds
        th = {"default": th["refit"]["held_out_default"],
              "slices": th["refit"]["held_out_slices"]}
    cur_score = cur_th = None
    if cur is not None:
        # The same test-day clicks: every one, or the calibration sample's (`row`).
        sel = ({"days": fs.days[-1:]} if test.get("row") is None else {"rows": test["row"]})
        ts_te = fs.load(["ts"], **sel)["ts"]
        if ts_te.size != test["score"].size or not np.array_equal(ts_te, test["ts"]):
            raise RuntimeError("the test rows of scores.parquet do not line up with the replay")
        del ts_te
        cur_score = _score_onnx_batches(
            cur.model_path, (b[featurestore.FEATURES]
                             for b in fs.iter_batches([featurestore.FEATURES], **sel)))
        cur_th = cur.thresholds
    record(gr.check_model(test["score"], th, test, cur_score, cur_th, cfg.guard))
    res["steps"]["model_guardrails_s"] = round(time.perf_counter() - t, 3)
    summary = gr.summarize(checks)
    write_json(cand / "guardrails.json", _clean(summary))
    if not summary["passed"]:
        raise _Stop(EXIT_MODEL, "refused_model", checks)

    # 7. Publish and promote (one lock; the bundle is verified before the pointer moves).
    progress.stage("publish")
    chosen = result["evaluation"][cal.chosen_eval_key(result)]["test"]
    # test / test_slices: what the bundle's thresholds decide on the held-out day, overall and
    # per slice; slidrd's deviation monitor expects live IVR near these (slidrd/monitor.py).
    metrics = {"test": chosen["overall"],
               "test_slices": {s: {k: v.get(k) for k in ("n", "ivr", "fpr", "coverage")}
                               for s, v in chosen.get("slices", {}).items()},
               "method": cal.chosen_method(result),
               "compared_with": res["compared_with"]}
    version = reg.publish(cand, metrics=_clean(metrics), guardrails=_clean(summary),
                          promote=True, sign_key=cfg.sign_key)
    log(f"daily: published and promoted {version}"
        + (f" (previous: {res['compared_with']})" if res["compared_with"] else ""))
    return {"exit_code": EXIT_PUBLISHED, "status": "published", "version": version,
            "reason": "all guardrails passed"}


def gate(reg: Registry, candidate_dir: str | Path, checks: list[gr.Check]) -> str | None:
    """Publish + promote `candidate_dir` only if every check passed; else leave the registry
    alone and return None."""
    summary = gr.summarize(checks)
    if not summary["passed"]:
        return None
    return reg.publish(candidate_dir, guardrails=_clean(summary), promote=True)


def _train_config(cfg: DailyConfig) -> Any:
    from . import pipeline
    return pipeline.TrainConfig(k=cfg.k, seed=cfg.seed, epochs=cfg.epochs,
                                fpr_target=cfg.fpr_budget, val_days=cfg.val_days,
                                newest_day=cfg.newest_day, progress=cfg.progress,
                                refit=cfg.refit, weighting=cfg.weighting,
                                training=cfg.training, ensemble=cfg.ensemble,
                                newest_weight=cfg.newest_weight,
                                train_sample=cfg.train_sample,
                                memory_budget=cfg.memory_budget)


def _train(clicks: Path, customers: str | Path | None, out: Path, cfg: DailyConfig,
           features: Any = None) -> None:
    """The training pipeline (on the feature directory the daily job already wrote, when
    given: one pass over the log)."""
    from . import pipeline
    pipeline.run(clicks, customers, out, _train_config(cfg), log=lambda *a, **k: None,
                 features=features)


def _check_drift(fs: Any, names: Any, ref: Any, guard: gr.GuardrailConfig) -> gr.Check:
    """guardrails.check_drift on the feature directory: each feature's clicks per reference bin
    counted batch by batch (exact)."""
    if not ref:
        return gr.check_drift(np.zeros((0, len(names)), np.float32), names, ref, guard)
    from . import featurestore
    have = [(j, n, np.asarray(ref["features"][n]["edges"], np.float64))
            for j, n in enumerate(names) if n in ref.get("features", {})]
    counts = {n: np.zeros(e.size + 1, np.int64) for _, n, e in have}
    for b in fs.iter_batches([featurestore.FEATURES]):
        x = b[featurestore.FEATURES]
        for j, n, e in have:
            counts[n] += np.bincount(np.searchsorted(e, x[:, j].astype(np.float64),
                                                     side="right"), minlength=e.size + 1)
    total = max(len(fs), 1)
    return gr.check_drift_fracs({n: c / total for n, c in counts.items()}, ref, guard)


def _feature_stats(fs: Any, names: Any, plan: Any, bins: int = 10) -> dict[str, Any]:
    """guardrails.feature_stats of every click, one feature column read at a time (the same
    numbers as on the whole matrix). On a log whose column does not fit in a quarter of the
    memory budget (~28 bytes a click while its quantiles are taken), the bin edges come from
    a uniform random sample of the clicks that does; the fractions, mean and std still count
    every click."""
    n = len(fs)
    limit = max(int(plan.budget / 4 / 28), 1_000_000)
    sample = None
    if n > limit:
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=limit, replace=False))
    out: dict[str, Any] = {"n": n, "features": {}}
    if sample is not None:
        out["edges_from_sample"] = int(sample.size)
    for name in names:
        fc = "f_" + name
        if sample is None:
            col = fs.load([fc])[fc].astype(np.float64)
            st = gr.feature_stats(col[:, None], [name], bins)["features"][name]
            out["features"][name] = st
            continue
        sub = fs.load([fc], rows=sample)[fc].astype(np.float64)
        edges = np.unique(np.quantile(sub, np.linspace(0, 1, bins + 1)[1:-1]))
        del sub
        cnt = np.zeros(edges.size + 1, np.int64)
        s1 = s2 = 0.0
        for b in fs.iter_batches([fc]):
            c = b[fc].astype(np.float64)
            cnt += np.bincount(np.searchsorted(edges, c, side="right"), minlength=edges.size + 1)
            s1 += float(c.sum())
            s2 += float((c * c).sum())
        mean = s1 / max(n, 1)
        out["features"][name] = {"edges": edges.tolist(), "frac": (cnt / max(n, 1)).tolist(),
                                 "mean": mean, "std": float(np.sqrt(max(s2 / max(n, 1)
                                                                        - mean * mean, 0.0)))}
    return out


def _test_rows(path: Path) -> dict[str, Any]:
    """The test day's rows of scores.parquet (filtered in Arrow: the validation days' rows are
    never converted)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .calibrate import column_numpy
    names = pq.read_schema(path).names
    tbl = pq.read_table(path, columns=["ts", "split", "score_model", "slice", "purchased",
                                       "robot_heuristic", "weak_label",
                                       *(["row"] if "row" in names else []),
                                       *(["session_hash"] if "session_hash" in names else [])])
    tbl = tbl.filter(pc.equal(tbl.column("split"), "test"))
    d = {c: column_numpy(tbl.column(c)) for c in tbl.column_names if c != "split"}
    return {"ts": d["ts"].astype(np.int64), "score": d["score_model"].astype(np.float64),
            "slice": d["slice"].astype(str, copy=False), "purchased": d["purchased"].astype(bool),
            "heuristic": d["robot_heuristic"].astype(bool),
            "weak_label": d["weak_label"].astype(np.int8),
            "row": d["row"].astype(np.int64) if "row" in d else None,
            "session_hash": d["session_hash"] if "session_hash" in d else None}


def _score_onnx(model_path: Path, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
    return _score_onnx_batches(model_path, (x[i:i + batch] for i in range(0, x.shape[0], batch)))


def _score_onnx_batches(model_path: Path, batches: Any, batch: int = 65_536) -> np.ndarray:
    from slidr.engines.onnxruntime_runner import ort_session
    sess = ort_session(model_path, intra_op_threads=2)
    name = sess.get_inputs()[0].name
    out = [np.asarray(sess.run(None, {name: xb[i:i + batch]})[0]).reshape(-1)
           for xb in batches for i in range(0, xb.shape[0], batch)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _read_json(path: Path) -> Any:
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _clean(o: Any) -> Any:
    from .report import clean
    if isinstance(o, dict):
        o = {k: v for k, v in o.items() if k != "checks_obj"}
    return clean(o)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
