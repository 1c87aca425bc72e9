"""Walk-forward evaluation of detection on a simulated scenario (`slidr evaluate`).

A scenario is a simulated log (offline/simulate.py) in which robot families the earlier days
never showed appear on a given day and persist. The walk does what the daily job does, day by
day: for each day t from --from-day on, it trains on the `window` days ending at t (held-out
split: the last of them is the guardrail day, the days before it validation, the rest
training; weak labels only, never the truth), calibrates the thresholds on the validation days,
optionally trains the published model again on every day of the window (`refit`), and scores
day t + 1, which nothing in the fit has seen. Reported per scored day: the share of each robot
family caught (truth from truth.parquet), true precision and recall, the realised FPR against
the budget, and the same shares for a trivial rule ("more than 10 clicks in the session's past
hour") as the floor any detector should reach on first sight.

Features come from one replay of the whole log through the same kernel the daemon runs, so a
scored day's counters hold what the live daemon's would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr.contract import slice_names
from slidr.defaults import CALIBRATION, TRAINING
from slidr.options import field_from

RULE_CLICKS = 10  # the trivial rule: more than this many clicks in the session's past hour
HOUR_MS = 3_600_000


@dataclass
class EvalConfig:
    window: int = 8  # days of log each daily retrain sees (ending at the day it runs on)
    from_day: int | None = None  # first day the walk retrains on (default: window - 1)
    epochs: int = field_from(TRAINING["epochs"])
    fpr_budget: float = field_from(CALIBRATION["fpr_budget"])
    refit: bool = True
    # refit thresholds: keep each slice's FPR corrected for the in-sample bias as `slidr daily
    # --refit` does ("fpr_corrected"), uncorrected ("fpr"), or keep its IVR ("ivr")
    transfer: str = "fpr_corrected"
    weighting: str = field_from(TRAINING["weighting"])
    training: str = field_from(TRAINING["training"])
    ensemble: int = field_from(TRAINING["ensemble"])
    newest_weight: float = field_from(TRAINING["newest_weight"])
    newest_day: str = field_from(TRAINING["newest_day"])
    k: int = field_from(TRAINING["k"])
    seed: int = 0
    hidden: tuple[int, ...] = (64, 32)
    progress: bool = False
    # scope of a weak label 1 (offline/labels.py LABEL_SCOPES): the click, its session, or its
    # session and logged-out IP-day
    label_scope: str = "click"
    # > 0: the logged-out label-0 clicks of an IP-day with at least this many sessions and no
    # purchase get weight cells of their own (labels.crowded_ip_days); 0: off
    crowded_ip_sessions: int = 0
    # > 0: the logged-out label-0 clicks of an ad-day whose clicks jumped while its purchases
    # did not (Poisson lower tail below this, labels.starved_ad_days) weigh more (below); 0: off
    starved_ads: float = 0.0
    # with starved_ads: > 0: the marked clicks stay in their weight cells, their weight times
    # this (the mean weight kept); 0: they get weight cells of their own
    starved_weight: float = 20.0
    extra: dict[str, Any] = field(default_factory=dict)


def rule_past_hour(session_key: np.ndarray, ts: np.ndarray, clicks: int = RULE_CLICKS
                   ) -> np.ndarray:
    """bool per click: the click's session has more than `clicks` clicks in the hour ending at
    the click (the click included), counted from the log itself."""
    n = ts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, code = np.unique(np.asarray(session_key), return_inverse=True)
    order = np.lexsort((ts, code))
    t0 = int(ts.min())
    key = code[order].astype(np.int64) * (1 << 40) + (ts[order].astype(np.int64) - t0)
    first = np.searchsorted(key, key - HOUR_MS + 1, side="left")
    count = np.arange(n) - first + 1
    out = np.empty(n, dtype=bool)
    out[order] = count > clicks
    return out


def load_truth(clicks: Path) -> np.ndarray | None:
    """Family name per click (truth.parquet beside the clicks, in their order), or None."""
    p = Path(clicks).parent / "truth.parquet"
    if not p.exists():
        return None
    import pyarrow.parquet as pq
    return np.asarray(pq.read_table(p, columns=["family"]).column("family").to_pylist(),
                      dtype=object)


def _ips(clicks: Path, n: int) -> np.ndarray:
    """IP code per click of the log at `clicks`, in log order (the replay's order)."""
    import pyarrow.parquet as pq
    col = pq.read_table(clicks, columns=["ip"]).column("ip").combine_chunks()
    if len(col) != n:
        raise ValueError(f"{clicks}: {len(col)} IPs for {n} replayed clicks")
    return col.dictionary_encode().indices.to_numpy(zero_copy_only=False)


def _ads(clicks: Path, n: int) -> np.ndarray:
    """Ad code per click of the log at `clicks` (log order), -1 where it has no ad."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    col = pq.read_table(clicks, columns=["ad_id"]).column("ad_id").combine_chunks()
    if len(col) != n:
        raise ValueError(f"{clicks}: {len(col)} ad ids for {n} replayed clicks")
    col = pc.if_else(pc.equal(col, ""), pa.scalar(None, col.type), col)
    return col.dictionary_encode().indices.fill_null(-1).to_numpy(zero_copy_only=False)


def _apply(score: np.ndarray, slices: np.ndarray, th: dict[str, Any]) -> np.ndarray:
    t = np.full(score.size, float(th["default"]))
    for s, v in (th.get("slices") or {}).items():
        t[slices == s] = float(v)
    return score > t


def walk(clicks: str | Path, customers: str | Path | None, cfg: EvalConfig | None = None,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the walk; returns {"config", "days": [per scored day], "families", ...}."""
    import torch

    from . import calibrate as cal
    from . import labels, metrics, replay, train
    from .pipeline import load_customers, weak_labels
    cfg = cfg or EvalConfig()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    clicks = Path(clicks)
    fam = load_truth(clicks)
    rp = replay.replay_log(clicks, progress=cfg.progress)
    if fam is None:
        fam = np.where(rp.is_robot, "robot", "human").astype(object) if rp.is_robot is not None \
            else None
    if fam is None or fam.shape[0] != len(rp):
        raise ValueError(f"{clicks}: no ground truth (truth.parquet or is_robot) to evaluate "
                         "against; `slidr evaluate` needs a simulated log")
    wl, _ = weak_labels(rp, load_customers(customers))
    day = train.day_index(rp.ts)
    if cfg.label_scope != "click":
        wl = labels.scoped_labels(wl, cfg.label_scope, session=rp.session_hash,
                                  ip=_ips(clicks, len(rp)) if cfg.label_scope == "ip_day"
                                  else None, day=day, logged_in=rp.logged_in)
    y = (1 - wl).astype(np.int8)
    n_days = int(day.max()) + 1
    slices = slice_names(rp.device, rp.logged_in)
    heur = metrics.session_hour_heuristic(rp.session_hash, rp.ts, cfg.k)
    rule = rule_past_hour(rp.session_hash, rp.ts)
    cells = train.weight_cells(rp.ts, rp.tz_offset_min, rp.logged_in, y, cfg.weighting)
    if cfg.crowded_ip_sessions > 0:
        cells = train.split_cells(cells, labels.crowded_ip_days(
            wl, rp.session_hash, _ips(clicks, len(rp)), day, rp.logged_in,
            cfg.crowded_ip_sessions))
    boost = cfg.starved_weight
    starved = None
    if cfg.starved_ads > 0:
        starved = labels.starved_ad_days(wl, _ads(clicks, len(rp)), day, rp.logged_in,
                                         cfg.starved_ads)
        if boost <= 0:
            cells = train.split_cells(cells, starved)

    def weights(rows: np.ndarray) -> np.ndarray:
        w = train.sample_weights(cells[rows])
        if starved is None or boost <= 0:
            return w
        b = np.where(starved[rows], w * boost, w)
        return (b * (w.sum() / b.sum())).astype(np.float32)

    robot = fam != "human"
    families = sorted(set(fam[robot].tolist()))
    x = rp.features
    first = cfg.window - 1 if cfg.from_day is None else cfg.from_day
    first = max(first, 3)
    rows: list[dict[str, Any]] = []
    for t in range(first, n_days - 1):
        t0 = time.perf_counter()
        lo = max(0, t - cfg.window + 1)
        win = (day >= lo) & (day <= t)
        d_w = day[win] - lo
        split = train.time_split(d_w, val_days=None, newest=cfg.newest_day)
        tr, va, te = (np.flatnonzero(win)[split[k]] for k in ("train", "val", "test"))
        # As `slidr daily` trains: the window's newest day (t), when trained on, weighs
        # cfg.newest_weight times as much as each other day.
        w_tr = train.recency_weights(weights(tr), day[tr], cfg.newest_weight, newest=t)
        w_va = weights(va)
        ho = train.fit_mlp(x[tr], y[tr], w_tr, x[va], y[va], w_va, training=cfg.training,
                           ensemble=cfg.ensemble, hidden=cfg.hidden, epochs=cfg.epochs,
                           seed=cfg.seed, progress=False, label="mlp")
        fit_rows = np.concatenate([va, te])
        s_fit = train.predict(ho.model, x[fit_rows]).astype(np.float64)
        cols = {"score": s_fit, "slice": slices[fit_rows], "day": day[fit_rows],
                "purchased": rp.purchased[fit_rows], "heuristic": heur[fit_rows],
                "split": np.where(np.isin(fit_rows, te), "test", "val"),
                "is_robot": robot[fit_rows]}
        try:
            res = cal.calibrate(cols, cal.CalibConfig(fpr_budget=cfg.fpr_budget,
                                                      **cfg.extra.get("calib", {})))
            th = res["thresholds"]
        except cal.CalibrationInfeasible as e:
            log(f"evaluate: day {t}: calibration infeasible ({e}); global@budget used")
            th = {"default": float(metrics.threshold_for_fpr(
                s_fit[cols["split"] == "val"], cols["purchased"][cols["split"] == "val"],
                cfg.fpr_budget)), "slices": {}}
        model = ho.model
        ratio = 1.0
        if cfg.refit:
            allr = np.flatnonzero(win)
            w_all = train.recency_weights(weights(allr), day[allr], cfg.newest_weight, newest=t)
            rf = train.fit_mlp(x[allr], y[allr], w_all, x[te], y[te], w_all[np.isin(allr, te)],
                               training=cfg.training, ensemble=cfg.ensemble,
                               hidden=cfg.hidden, seed=cfg.seed,
                               progress=False, label="mlp refit", **train.refit_schedule(ho))
            model = rf.model
            if cfg.transfer == "fpr_corrected":
                ratio = cal.in_sample_ratio(train.predict(ho.model, x[tr]), rp.purchased[tr],
                                            s_fit[cols["split"] == "val"],
                                            cols["purchased"][cols["split"] == "val"],
                                            cfg.fpr_budget)
            th = cal.transfer_thresholds(th, cols, train.predict(model, x[fit_rows]),
                                         "ivr" if cfg.transfer == "ivr" else "fpr", ratio)
        nxt = np.flatnonzero(day == t + 1)
        sc = train.predict(model, x[nxt]).astype(np.float64)
        inv = _apply(sc, slices[nxt], th)
        pur, rob, f_n, r_n = rp.purchased[nxt], robot[nxt], fam[nxt], rule[nxt]
        inv_o = sc > (metrics.threshold_for_fpr(sc, pur, cfg.fpr_budget) if pur.any()
                      else np.inf)
        row: dict[str, Any] = {
            "trained_through_day": t, "scored_day": t + 1, "window_days": [lo, t],
            "clicks": int(nxt.size), "purchasing": int(pur.sum()),
            "fpr": float(inv[pur].mean()) if pur.any() else float("nan"),
            "ivr": float(inv.mean()),
            "precision": float((inv & rob).sum() / max(inv.sum(), 1)),
            "recall": float((inv & rob).sum() / max(rob.sum(), 1)),
            "rule_fpr": float(r_n[pur].mean()) if pur.any() else float("nan"),
            "in_sample_ratio": ratio,
            # Model quality without the calibration's noise: ROC-AUC against the truth, and
            # recall at one global threshold set on the scored day's own purchasing clicks to
            # spend exactly the budget (an oracle threshold, for comparing models).
            "auc": metrics.roc_auc(sc, rob),
            "oracle_recall": float((inv_o & rob).sum() / max(rob.sum(), 1)),
            "caught": {}, "rule_caught": {}, "family_clicks": {}, "oracle_caught": {},
            "seconds": round(time.perf_counter() - t0, 1)}
        for f in families:
            m = f_n == f
            row["family_clicks"][f] = int(m.sum())
            if m.any():
                row["caught"][f] = float(inv[m].mean())
                row["rule_caught"][f] = float(r_n[m].mean())
                row["oracle_caught"][f] = float(inv_o[m].mean())
        # How much of the new family the weak label calls non-human on the training window.
        rows.append(row)
        log(f"evaluate: trained through day {t}, scored day {t + 1}: FPR {row['fpr']:.4f} "
            f"precision {row['precision']:.3f} recall {row['recall']:.3f}; caught " + ", ".join(
                f"{f} {v:.2f}" for f, v in row["caught"].items()))
    # The day a family appears: its first day with at least a quarter of its busiest day's
    # clicks (families in local time zones spill a few clicks into the UTC day before).
    first_seen = {}
    for f in families:
        per = np.bincount(day[fam == f], minlength=n_days)
        first_seen[f] = int(np.flatnonzero(per >= 0.25 * per.max())[0])
    return {"config": asdict(cfg), "clicks": str(clicks), "days": rows, "families": families,
            "first_day": first_seen, "summary": summarize(rows, first_seen, cfg.fpr_budget),
            "seconds": round(time.perf_counter() - t_all, 1)}


def summarize(rows: list[dict[str, Any]], first_seen: dict[str, int],
              budget: float) -> dict[str, Any]:
    """Pooled FPR vs the budget, and per family: caught on first sight (the day it appears,
    scored by a model that never saw it), the day after (one retrain that saw one day of it)
    and the trivial rule on first sight."""
    n_p = sum(r["purchasing"] for r in rows)
    fp = sum(r["fpr"] * r["purchasing"] for r in rows if r["purchasing"])
    out: dict[str, Any] = {"pooled_fpr": fp / n_p if n_p else float("nan"),
                           "fpr_budget": budget,
                           "fpr_ratio": (fp / n_p) / budget if n_p else float("nan"),
                           "scored_days": len(rows), "families": {}}
    by_day = {r["scored_day"]: r for r in rows}
    for f, d0 in first_seen.items():
        e: dict[str, Any] = {"first_day": d0}
        if d0 in by_day and f in by_day[d0]["caught"]:
            e["first_sight"] = by_day[d0]["caught"][f]
            e["rule_first_sight"] = by_day[d0]["rule_caught"][f]
        if d0 + 1 in by_day and f in by_day[d0 + 1]["caught"]:
            e["after_one_retrain"] = by_day[d0 + 1]["caught"][f]
        out["families"][f] = e
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["days"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = [r["scored_day"] for r in rows]
    for f in result["families"]:
        ys = [r["caught"].get(f, np.nan) for r in rows]
        line, = ax.plot(xs, ys, marker="o", label=f)
        d0 = result["first_day"].get(f)
        if d0 is not None and d0 > min(xs, default=0):
            ax.axvline(d0, color=line.get_color(), alpha=0.25, ls="--")
    ax.plot(xs, [r["recall"] for r in rows], color="k", lw=2, label="all robots (recall)")
    ax.set_xlabel("scored day (model trained through the day before)")
    ax.set_ylabel("share caught")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("share of each robot family caught, day by day "
                 f"(FPR budget {result['config']['fpr_budget']:g}; dashed: day a family appears)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    fams = result["families"]
    head = "day  " + "  ".join(f"{f[:9]:>9}" for f in fams) + "    FPR   prec  recall"
    lines = [head]
    for r in result["days"]:
        lines.append(f"{r['scored_day']:>3}  " + "  ".join(
            f"{r['caught'][f]:>9.3f}" if f in r["caught"] else f"{'-':>9}" for f in fams)
            + f"  {r['fpr']:.4f}  {r['precision']:.3f}  {r['recall']:.3f}")
    s = result["summary"]
    lines.append(f"pooled FPR {s['pooled_fpr']:.4f} = {s['fpr_ratio']:.2f} x the budget "
                 f"{s['fpr_budget']:g} over {s['scored_days']} scored days")
    for f, e in s["families"].items():
        if "first_sight" in e or "after_one_retrain" in e:
            lines.append(f"{f}: appears day {e['first_day']}; first sight "
                         f"{e.get('first_sight', float('nan')):.3f} (rule "
                         f"{e.get('rule_first_sight', float('nan')):.3f}), after one retrain "
                         f"{e.get('after_one_retrain', float('nan')):.3f}")
    return "\n".join(lines)
