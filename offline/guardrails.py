"""Guardrails of the daily retrain (the SLIDR article, "Deployment").

Data guardrails run before training, on the click log (and, once features are replayed, on the
features): schema and nulls, enough days, purchase-label ("human") density in every clock hour
of the log and in every hour of the week, volume per slice, and feature drift (PSI per feature
against the feature statistics stored in the current bundle). The hourly density check is the
one the article names: when purchase labels go missing for a few hours, a model trained on that
data learns to invalidate those hours' traffic.

Model guardrails run before publishing, on the candidate and the current model scored on the same
held-out day: overall FPR within budget, IVR (overall and per slice) within deviation bands of the
current model, an absolute IVR ceiling, per-slice robotic coverage floors, and non-degenerate
scores (spread, share of identical scores, AUC against the weak label).

Every check returns a `Check` (name, passed, value, limit, message); any failed check refuses.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr.contract import REQUIRED, slice_names
from slidr.defaults import CALIBRATION, GUARDRAILS
from slidr.options import field_from

HOUR_MS = 3_600_000


@dataclass
class Check:
    name: str
    passed: bool
    value: Any
    limit: Any
    message: str
    kind: str = "data"
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GuardrailConfig:
    # Every limit is declared (default, range, help) in slidr/defaults.py GUARDRAILS: the
    # `slidr daily` flags, the [guardrails] table of --guardrail-config FILE.toml and
    # docs/cli.md come from the same declarations. The FPR budget and the coverage floors are
    # the calibration's (CALIBRATION); `slidr daily` sets them from its calibration flags.
    min_days: int = field_from(GUARDRAILS["min_days"])
    min_hour_density_ratio: float = field_from(GUARDRAILS["min_hour_density_ratio"])
    min_expected_purchases: float = field_from(GUARDRAILS["min_expected_purchases"])
    max_window_hours: int = field_from(GUARDRAILS["max_window_hours"])
    density_alpha: float = field_from(GUARDRAILS["density_alpha"])
    min_week_hour_density_ratio: float = field_from(GUARDRAILS["min_week_hour_density_ratio"])
    min_slice_clicks: int = field_from(GUARDRAILS["min_slice_clicks"])
    min_slice_purchases: int = field_from(GUARDRAILS["min_slice_purchases"])
    max_psi: float = field_from(GUARDRAILS["max_psi"])
    psi_bins: int = field_from(GUARDRAILS["psi_bins"])
    fpr_budget: float = field_from(CALIBRATION["fpr_budget"])
    fpr_tolerance: float = field_from(GUARDRAILS["fpr_tolerance"])
    ivr_band: float = field_from(GUARDRAILS["ivr_band"])
    slice_ivr_band: float = field_from(GUARDRAILS["slice_ivr_band"])
    slice_ivr_abs_slack: float = field_from(GUARDRAILS["slice_ivr_abs_slack"])
    max_ivr: float = field_from(GUARDRAILS["max_ivr"])
    min_coverage: float = field_from(CALIBRATION["min_coverage"])
    slice_min_coverage: dict[str, float] = field_from(CALIBRATION["slice_min_coverage"])
    coverage_slack: float = field_from(GUARDRAILS["coverage_slack"])
    min_heuristic_clicks: int = field_from(GUARDRAILS["min_heuristic_clicks"])
    min_score_std: float = field_from(GUARDRAILS["min_score_std"])
    max_identical_share: float = field_from(GUARDRAILS["max_identical_share"])
    min_auc_margin: float = field_from(GUARDRAILS["min_auc_margin"])
    min_auc_z: float = field_from(GUARDRAILS["min_auc_z"])
    min_auc_heuristic: float = field_from(GUARDRAILS["min_auc_heuristic"])
    coverage_alpha: float = field_from(GUARDRAILS["coverage_alpha"])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The limits set in a guardrail config (TOML: a [guardrails] table, or its keys at the top
    level; a JSON object of the same keys is read too, see JSON_NOTE), each checked against its declaration; raises OptionError naming the file, the key
    and the value (an unknown key gets suggestions)."""
    from slidr.options import OptionError, check_table, load_toml
    p = Path(path)
    values = _load_json(p) if p.suffix == ".json" else load_toml(p, "guardrails")
    not_here = sorted(set(values) & {"fpr_budget", "min_coverage", "slice_min_coverage"})
    if not_here:
        flag = "--" + not_here[0].replace("_", "-")
        raise OptionError(f"{p}: '{not_here[0]}' is a calibration setting, not a guardrail "
                          f"limit: give it to `slidr daily {flag}`")
    return check_table(values, GUARDRAILS, str(p))


JSON_NOTE = ("{path}: a JSON guardrail config is read and checked like a TOML one, but TOML is "
             "the format of every slidr config file: write the same keys as `max_psi = 0.3` "
             "under [guardrails] in a .toml file")


def _load_json(p: Path) -> dict[str, Any]:
    """A guardrail config in JSON (an object of the same keys, or {"guardrails": {...}})."""
    import json

    from slidr.options import OptionError
    if not p.is_file():
        raise OptionError(f"config file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise OptionError(f"{p}: not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OptionError(f"{p}: cannot read: {e}") from None
    if isinstance(data, dict) and set(data) == {"guardrails"}:
        data = data["guardrails"]
    if not isinstance(data, dict):
        raise OptionError(f"{p}: must be an object of guardrail limits, not "
                          f"{type(data).__name__}")
    return data


def summarize(checks: Sequence[Check]) -> dict[str, Any]:
    failed = [c for c in checks if not c.passed]
    return {"passed": not failed, "failed": [c.name for c in failed],
            "checks": [c.as_dict() for c in checks]}


def explain(checks: Sequence[Check]) -> str:
    failed = [c for c in checks if not c.passed]
    if not failed:
        return "all guardrails passed"
    return "; ".join(f"{c.name}: {c.message}" for c in failed)


# ---------------------------------------------------------------- data guardrails

def read_log_columns(path: Any) -> dict[str, Any]:
    """The columns the data guardrails need, with null counts, without contract validation
    (a guardrail reports problems; it should not stop at the first bad row)."""
    from slidr.files import read_table
    tbl = read_table(path, "click log")
    cols: dict[str, Any] = {"_columns": list(tbl.column_names), "_nulls": {}, "_n": tbl.num_rows}
    for c in tbl.column_names:
        cols["_nulls"][c] = int(tbl.column(c).null_count)
    for c in ("ts", "device", "logged_in", "purchased"):
        if c in tbl.column_names:
            cols[c] = tbl.column(c).to_numpy(zero_copy_only=False)
    return cols


def check_schema(cols: Mapping[str, Any]) -> list[Check]:
    have = set(cols["_columns"])
    need = list(REQUIRED) + ["purchased"]
    missing = [c for c in need if c not in have]
    out = [Check("schema", not missing, missing, [], "missing column(s): " + ", ".join(missing)
                 if missing else f"all {len(need)} required columns present")]
    nulls = {c: cols["_nulls"].get(c, 0) for c in need if c in have and cols["_nulls"].get(c, 0)}
    out.append(Check("nulls", not nulls, nulls, {}, "nulls in required column(s): " + ", ".join(
        f"{c} ({n} rows)" for c, n in nulls.items()) if nulls else "no nulls in required columns"))
    n = int(cols["_n"])
    out.append(Check("rows", n > 0, n, 1, f"{n} rows" if n else "the log is empty"))
    return out


def check_log(cols: Mapping[str, Any], cfg: GuardrailConfig | None = None) -> list[Check]:
    """Data guardrails on the raw click log (before training)."""
    cfg = cfg or GuardrailConfig()
    checks = check_schema(cols)
    if not all(c.passed for c in checks):
        return checks
    ts = np.asarray(cols["ts"], dtype=np.int64)
    pur = np.asarray(cols["purchased"], dtype=bool)
    days = np.unique(ts // (24 * HOUR_MS))
    checks.append(Check("days", days.size >= cfg.min_days, int(days.size), cfg.min_days,
                        f"the log covers {days.size} UTC day(s); training needs >= {cfg.min_days}"))
    checks.append(hourly_density(ts, pur, cfg))
    checks.append(week_hour_density(ts, pur, cfg))
    dev = np.asarray(cols["device"])  # names, or contract.DEVICES codes (fewer bytes a click)
    checks.append(slice_volume(slice_names(dev if dev.dtype.kind in "iu" else dev.astype(str),
                                           np.asarray(cols["logged_in"], dtype=bool)), pur, cfg))
    return checks


def check_log_stream(path: Any, cfg: GuardrailConfig | None = None,
                     batch_rows: int = 1 << 20) -> list[Check]:
    """check_log on a Parquet log read `batch_rows` rows at a time, keeping only aggregates:
    null counts per column, clicks and purchases per clock hour and per slice. Its memory is
    one batch plus one number per hour the log spans; its checks equal check_log's. Other
    files (CSV) are read whole (read_log_columns). Only check_schema's columns are read (the
    null counts of the others are left at 0: no check reads them)."""
    from slidr.files import parquet_file
    cfg = cfg or GuardrailConfig()
    if Path(path).suffix not in (".parquet", ".pq"):
        return check_log(read_log_columns(path), cfg)
    pf = parquet_file(path, "click log")
    names = list(pf.schema_arrow.names)
    cols: dict[str, Any] = {"_columns": names, "_nulls": {c: 0 for c in names},
                            "_n": int(pf.metadata.num_rows)}
    need = ("ts", "device", "logged_in", "purchased")
    agg = all(c in names for c in need)  # else check_schema refuses: nothing to count
    read = [c for c in names if c in REQUIRED or c == "purchased"]  # check_schema's columns
    hours: dict[int, list[int]] = {}  # clock hour -> [clicks, purchases]
    vol: dict[str, int] = {}
    pv: dict[str, int] = {}
    tot_n = tot_p = 0
    for b in pf.iter_batches(batch_size=batch_rows, columns=read):
        for i, c in enumerate(read):
            cols["_nulls"][c] += int(b.column(i).null_count)
        if not agg or any(cols["_nulls"][c] for c in need):
            agg = False  # a null refuses (check_schema): stop counting, keep the null counts
            continue
        a = {c: b.column(read.index(c)).to_numpy(zero_copy_only=False) for c in need}
        ts = np.asarray(a["ts"], dtype=np.int64)
        pur = np.asarray(a["purchased"], dtype=bool)
        hour = ts // HOUR_MS
        uh, inv = np.unique(hour, return_inverse=True)
        hn = np.bincount(inv, minlength=uh.size)
        hp = np.bincount(inv, weights=pur, minlength=uh.size)
        for h, k, q in zip(uh.tolist(), hn.tolist(), hp.tolist(), strict=True):
            acc = hours.setdefault(int(h), [0, 0])
            acc[0] += int(k)
            acc[1] += int(q)
        dev = np.asarray(a["device"])
        sl = slice_names(dev if dev.dtype.kind in "iu" else dev.astype(str),
                         np.asarray(a["logged_in"], dtype=bool))
        us, sinv = np.unique(sl.astype(str), return_inverse=True)
        sn = np.bincount(sinv, minlength=us.size)
        sp = np.bincount(sinv, weights=pur, minlength=us.size)
        for s_, k, q in zip(us.tolist(), sn.tolist(), sp.tolist(), strict=True):
            vol[s_] = vol.get(s_, 0) + int(k)
            pv[s_] = pv.get(s_, 0) + int(q)
        tot_n += int(ts.size)
        tot_p += int(pur.sum())
    checks = check_schema(cols)
    if not all(c.passed for c in checks) or not agg:
        return checks
    h_sorted = sorted(hours)
    days = {h // 24 for h in h_sorted}
    checks.append(Check("days", len(days) >= cfg.min_days, len(days), cfg.min_days,
                        f"the log covers {len(days)} UTC day(s); training needs >= "
                        f"{cfg.min_days}"))
    h0 = h_sorted[0]
    n = np.zeros(h_sorted[-1] - h0 + 1, dtype=np.float64)
    p = np.zeros_like(n)
    for h in h_sorted:
        n[h - h0], p[h - h0] = hours[h]
    checks.append(hourly_density_counts(h0, n, p, cfg))
    how = (np.arange(n.size) + h0 + 72) % 168
    checks.append(week_hour_density_counts(np.bincount(how, weights=n, minlength=168),
                                           np.bincount(how, weights=p, minlength=168), cfg))
    checks.append(slice_volume_counts(vol, pv, tot_n, tot_p, cfg))
    return checks


def poisson_cdf(k: float, mu: float) -> float:
    """P(X <= k) for X ~ Poisson(mu) (no scipy in the daily job's dependencies)."""
    if mu <= 0:
        return 1.0
    k = int(k)
    logs = [-mu + i * math.log(mu) - math.lgamma(i + 1) for i in range(k + 1)]
    top = max(logs)
    return float(min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs)))


def _stamp(hour: int) -> str:
    return dt.datetime.fromtimestamp(int(hour) * 3600, dt.UTC).strftime("%Y-%m-%d %H:00Z")


def hourly_density(ts: np.ndarray, purchased: np.ndarray, cfg: GuardrailConfig) -> Check:
    """Purchase density in every run of 1..max_window consecutive clock hours of the log vs what
    the hours' own UTC hour of day usually shows (median over the log's days). A window fails when
    its purchases are below `min_hour_density_ratio` of the expected count *and* that shortfall is
    implausible by chance (Poisson lower tail < `density_alpha`), so a purchase-label outage of a
    few hours is caught even when each single hour has few purchases, and quiet night hours do
    not raise false alarms."""
    hour = ts // HOUR_MS
    h0 = int(hour.min())
    idx = (hour - h0).astype(np.int64)
    n = np.bincount(idx).astype(np.float64)
    p = np.bincount(idx, weights=purchased.astype(np.float64), minlength=n.size)
    return hourly_density_counts(h0, n, p, cfg)


def hourly_density_counts(h0: int, n: np.ndarray, p: np.ndarray, cfg: GuardrailConfig) -> Check:
    """hourly_density from the log's clicks `n` and purchases `p` in each clock hour h0,
    h0 + 1, ... (float64 counts: the check needs nothing else of the log)."""
    hod = (np.arange(n.size) + h0) % 24
    dens = np.where(n > 0, p / np.maximum(n, 1), np.nan)
    total = float(n.sum())
    overall = float(p.sum()) / total if total else 0.0
    ref = np.array([np.median(dens[(hod == h) & (n > 0)]) if ((hod == h) & (n > 0)).any()
                    else overall for h in range(24)])
    ref = np.where(ref > 0, ref, overall)
    exp_ = n * ref[hod]
    cn, cp, ce = (np.r_[0.0, np.cumsum(v)] for v in (n, p, exp_))
    bad = np.zeros(n.size, dtype=bool)
    worst, worst_at = float("inf"), None
    for length in range(1, cfg.max_window_hours + 1):
        if length > n.size:
            break
        pw = cp[length:] - cp[:-length]
        ew = ce[length:] - ce[:-length]
        ok = ew >= cfg.min_expected_purchases
        ratio = np.where(ok, pw / np.maximum(ew, 1e-12), np.inf)
        if ok.any() and ratio.min() < worst:
            worst, worst_at = float(ratio.min()), int(np.argmin(ratio))
        for i in np.flatnonzero(ok & (ratio < cfg.min_hour_density_ratio)):
            if poisson_cdf(pw[i], ew[i]) < cfg.density_alpha:
                # Blame only the window's hours that are short themselves.
                bad[i:i + length] |= (p[i:i + length]
                                      < cfg.min_hour_density_ratio * exp_[i:i + length])
    spans = []
    a = 0
    while a < bad.size:
        if bad[a]:
            b = a
            while b + 1 < bad.size and bad[b + 1]:
                b += 1
            got, want = p[a:b + 1].sum(), exp_[a:b + 1].sum()
            spans.append(f"{_stamp(h0 + a)} .. {_stamp(h0 + b + 1)} ({int(got)} purchases, "
                         f"~{want:.0f} expected, {int(n[a:b + 1].sum())} clicks)")
            a = b + 1
        else:
            a += 1
    if worst == float("inf"):
        worst = float("nan")
    msg = ("purchase labels look missing in " + "; ".join(spans) + f": density below "
           f"{cfg.min_hour_density_ratio:.0%} of the usual for those hours (Poisson p < "
           f"{cfg.density_alpha:g}); training on this would teach the model that those hours' "
           "clicks are robotic" if spans else
           f"{int((n > 0).sum())} hours checked in windows of 1-{cfg.max_window_hours} h; lowest "
           f"purchase density ratio {worst:.2f} (limit {cfg.min_hour_density_ratio})")
    return Check("human_density_hourly", not spans, worst, cfg.min_hour_density_ratio, msg,
                 details={"bad_hours": [_stamp(h0 + int(k)) for k in np.flatnonzero(bad)],
                          "worst_window_start": None if worst_at is None
                          else _stamp(h0 + worst_at)})


def week_hour_density(ts: np.ndarray, purchased: np.ndarray, cfg: GuardrailConfig) -> Check:
    """Purchase density in each of the 168 UTC hours of the week vs the median over the week
    (same ratio + Poisson rule as the hourly check)."""
    how = ((ts // HOUR_MS) + 72) % 168  # epoch day 0 was a Thursday: 0 = Monday 00h
    n = np.bincount(how, minlength=168).astype(np.float64)
    p = np.bincount(how, weights=purchased.astype(np.float64), minlength=168)
    return week_hour_density_counts(n, p, cfg)


def week_hour_density_counts(n: np.ndarray, p: np.ndarray, cfg: GuardrailConfig) -> Check:
    """week_hour_density from the clicks `n` and purchases `p` in each of the 168 hours of the
    week (float64 counts, index 0 = Monday 00h UTC)."""
    dens = np.where(n > 0, p / np.maximum(n, 1), np.nan)
    med = float(np.nanmedian(dens)) if np.isfinite(dens).any() else 0.0
    exp_ = n * med
    judged = (n > 0) & (exp_ >= cfg.min_expected_purchases)
    ratio = np.where(judged, p / np.maximum(exp_, 1e-12), np.nan)
    bad = [i for i in np.flatnonzero(judged & (ratio < cfg.min_week_hour_density_ratio))
           if poisson_cdf(p[i], exp_[i]) < cfg.density_alpha]
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    worst = float(np.nanmin(ratio)) if judged.any() else float("nan")
    msg = (f"{len(bad)} hour(s) of the week below {cfg.min_week_hour_density_ratio:.0%} of the "
           "median purchase density: " + ", ".join(f"{days[i // 24]} {i % 24:02d}h "
                                                     f"({dens[i]:.4f} vs {med:.4f})"
                                                     for i in bad[:8])
           if bad else f"{int(judged.sum())} hours of the week judged, lowest ratio {worst:.2f}")
    return Check("human_density_week_hours", not bad, worst, cfg.min_week_hour_density_ratio,
                 msg)


def slice_volume(slices: np.ndarray, purchased: np.ndarray, cfg: GuardrailConfig) -> Check:
    """Volume per slice. A slice that is absent from the log, or too thin for a threshold of
    its own (fewer than `min_slice_clicks` clicks or `min_slice_purchases` purchases), is
    reported and left to the global threshold (calibration does the same with slices short of
    purchasing clicks): a real log need not have every device or logged-in traffic. What
    refuses is a log too thin for any model: fewer clicks or purchases in total than one slice
    needs; the message says how many more it needs."""
    from slidr.contract import SLICES
    vol = {s: int((slices == s).sum()) for s in SLICES}
    pv = {s: int(purchased[slices == s].sum()) for s in SLICES}
    return slice_volume_counts(vol, pv, int(slices.size), int(purchased.sum()), cfg)


def slice_volume_counts(vol: Mapping[str, int], pv: Mapping[str, int], n: int, p: int,
                        cfg: GuardrailConfig) -> Check:
    """slice_volume from the clicks `vol` and purchases `pv` of every contract slice (SLICES)
    and the log's total clicks `n` and purchases `p` (clicks of unknown devices included)."""
    from slidr.contract import SLICES
    vol, pv = {s: int(vol.get(s, 0)) for s in SLICES}, {s: int(pv.get(s, 0)) for s in SLICES}
    absent = [s for s in SLICES if vol[s] == 0]
    thin = {s: (vol[s], pv[s]) for s in SLICES if vol[s] and (
        vol[s] < cfg.min_slice_clicks or pv[s] < cfg.min_slice_purchases)}
    ok = n >= cfg.min_slice_clicks and p >= cfg.min_slice_purchases
    need = f">= {cfg.min_slice_clicks} clicks and >= {cfg.min_slice_purchases} purchases"
    notes = []
    if absent:
        notes.append("absent from the log: " + ", ".join(absent))
    if thin:
        notes.append("too thin for a threshold of their own (" + need + "): " + ", ".join(
            f"{s} ({c} clicks, {q} purchases)" for s, (c, q) in thin.items()))
    if not ok:
        more = []
        if n < cfg.min_slice_clicks:
            more.append(f"{cfg.min_slice_clicks - n} more clicks")
        if p < cfg.min_slice_purchases:
            more.append(f"{cfg.min_slice_purchases - p} more purchases")
        msg = (f"too little data for any model: {n} clicks and {p} purchases in the whole log; "
               f"training needs {need} (" + " and ".join(more) + ")")
    elif notes:
        msg = ("; ".join(notes) + ": left to the global threshold; "
               + f"{len(SLICES) - len(absent) - len(thin)} slice(s) with enough data")
    else:
        msg = "every slice has enough clicks and purchases"
    return Check("slice_volume", ok, vol, {"clicks": cfg.min_slice_clicks,
                                           "purchases": cfg.min_slice_purchases}, msg,
                 details={"purchases": pv, "absent": absent, "global_threshold": sorted(
                     set(absent) | set(thin))})


def _effective_count(keys: np.ndarray) -> int:
    """Kish's effective sample size of clicks clustered by `keys`: (sum m_i)^2 / sum m_i^2
    over the clusters' sizes m_i (the number of clusters when they are equal, the number of
    clicks when each is alone)."""
    if keys.size == 0:
        return 0
    _, m = np.unique(keys, return_counts=True)
    m = m.astype(np.float64)
    return max(1, int(math.floor(m.sum() ** 2 / (m * m).sum() + 1e-9)))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p) (no scipy in the daily job's dependencies)."""
    if k >= n or p <= 0.0:
        return 1.0
    if k < 0:
        return 0.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    logs = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return float(min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs)))


# ---------------------------------------------------------------- feature drift

def feature_stats(x: np.ndarray, names: Sequence[str], bins: int = 10) -> dict[str, Any]:
    """Per-feature quantile bin edges and fractions (stored in the bundle as feature_stats.json)."""
    out: dict[str, Any] = {"n": int(x.shape[0]), "features": {}}
    for j, name in enumerate(names):
        col = np.asarray(x[:, j], dtype=np.float64)
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
        frac = np.bincount(np.searchsorted(edges, col, side="right"),
                           minlength=edges.size + 1) / max(col.size, 1)
        out["features"][name] = {"edges": edges.tolist(), "frac": frac.tolist(),
                                 "mean": float(col.mean()), "std": float(col.std())}
    return out


def psi(ref_frac: np.ndarray, cur_frac: np.ndarray, eps: float = 1e-4) -> float:
    a = np.clip(np.asarray(ref_frac, dtype=np.float64), eps, None)
    b = np.clip(np.asarray(cur_frac, dtype=np.float64), eps, None)
    return float(((b - a) * np.log(b / a)).sum())


def check_drift(x: np.ndarray, names: Sequence[str], ref: Mapping[str, Any] | None,
                cfg: GuardrailConfig | None = None) -> Check:
    """PSI of each feature of the new data against the reference bins of the current bundle."""
    cfg = cfg or GuardrailConfig()
    if not ref:
        return Check("feature_drift", True, None, cfg.max_psi,
                     "no reference statistics (no current model): drift not checked")
    fracs: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        r = ref.get("features", {}).get(name)
        if r is None:
            continue
        edges = np.asarray(r["edges"], dtype=np.float64)
        col = np.asarray(x[:, j], dtype=np.float64)
        fracs[name] = np.bincount(np.searchsorted(edges, col, side="right"),
                                  minlength=edges.size + 1) / max(col.size, 1)
    return check_drift_fracs(fracs, ref, cfg)


def check_drift_fracs(fracs: Mapping[str, np.ndarray], ref: Mapping[str, Any],
                      cfg: GuardrailConfig | None = None) -> Check:
    """check_drift from the new data's share of clicks in each reference bin of each feature
    (counted batch by batch when the features stream from disk)."""
    cfg = cfg or GuardrailConfig()
    vals: dict[str, float] = {}
    for name, cur in fracs.items():
        vals[name] = psi(np.asarray(ref["features"][name]["frac"]), cur)
    bad = {k: v for k, v in vals.items() if v > cfg.max_psi}
    worst = max(vals.values()) if vals else 0.0
    msg = ("feature drift vs the current model's training data: " + ", ".join(
        f"{k} PSI {v:.3f}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))
        + f" (> {cfg.max_psi})" if bad else
        f"{len(vals)} features compared, max PSI {worst:.3f} (<= {cfg.max_psi})")
    return Check("feature_drift", not bad, worst, cfg.max_psi, msg, details={"psi": vals})


# ---------------------------------------------------------------- model guardrails

def _stratified_auc(score: np.ndarray, positive: np.ndarray, stratum: np.ndarray
                    ) -> tuple[float, float]:
    """(AUC over the positive/negative pairs within each stratum, its standard error under
    chance: Mann-Whitney per stratum, weighted by its pairs)."""
    from .metrics import roc_auc
    num, pairs, var = 0.0, 0.0, 0.0
    parts = []
    for v in np.unique(stratum):
        m = stratum == v
        a, b = int(positive[m].sum()), int((~positive[m]).sum())
        if a and b:
            parts.append((roc_auc(score[m], positive[m]), a, b))
    for auc, a, b in parts:
        num += auc * a * b
        pairs += a * b
    if not pairs:
        return float("nan"), float("nan")
    for _, a, b in parts:
        var += (a * b / pairs) ** 2 * (a + b + 1) / (12.0 * a * b)
    return float(num / pairs), float(np.sqrt(var))


def _apply(score: np.ndarray, slices: np.ndarray, th: Mapping[str, Any]) -> np.ndarray:
    t = np.full(score.size, float(th["default"]))
    for s, v in (th.get("slices") or {}).items():
        t[slices == s] = float(v)
    return score > t


def _rates(inv: np.ndarray, cols: Mapping[str, Any], m: np.ndarray | None = None) -> dict[str, float]:
    if m is not None:
        inv = inv[m]
        pur, heur = cols["purchased"][m], cols["heuristic"][m]
    else:
        pur, heur = cols["purchased"], cols["heuristic"]
    return {"ivr": float(inv.mean()) if inv.size else float("nan"),
            "fpr": float(inv[pur].mean()) if pur.any() else float("nan"),
            "coverage": float(inv[heur].mean()) if heur.any() else float("nan"),
            "n_heuristic": int(heur.sum())}


def check_model(cand_score: np.ndarray, cand_th: Mapping[str, Any], cols: Mapping[str, Any],
                cur_score: np.ndarray | None = None, cur_th: Mapping[str, Any] | None = None,
                cfg: GuardrailConfig | None = None) -> list[Check]:
    """Model guardrails on held-out clicks. cols: slice, purchased, heuristic, weak_label
    (1 = human). cur_*: the current model on the same clicks (None on the first run)."""
    from .metrics import roc_auc
    cfg = cfg or GuardrailConfig()
    cand_score = np.asarray(cand_score, dtype=np.float64)
    sl = np.asarray(cols["slice"]).astype(str)
    checks: list[Check] = []

    # Degenerate scores first: nothing else means much if these fail.
    std = float(cand_score.std())
    checks.append(Check("score_spread", std >= cfg.min_score_std, std, cfg.min_score_std,
                        f"score std {std:.4f}" + (" is degenerate (almost constant scores)"
                                                  if std < cfg.min_score_std else ""), "model"))
    _, counts = np.unique(np.round(cand_score, 6), return_counts=True)
    share = float(counts.max() / cand_score.size) if cand_score.size else 1.0
    checks.append(Check("identical_scores", share <= cfg.max_identical_share, share,
                        cfg.max_identical_share,
                        f"{share:.1%} of clicks share one score value", "model"))
    wl = np.asarray(cols["weak_label"]).astype(bool)
    n0 = int(wl.sum())
    # Within logged-in and within logged-out clicks, pooled over the pairs of each (the
    # training weights balance the weak label within each; across them the label's base rate
    # differs so much, RFM labels only exist logged in, that a pooled AUC can fall below 0.5
    # for a model that ranks well within both: Simpson's paradox). A model that did not learn
    # sits at 0.5 within each.
    auc, se0 = _stratified_auc(cand_score, ~wl, np.char.endswith(sl, "/in"))
    lim = 0.5 + max(cfg.min_auc_margin, cfg.min_auc_z * se0)
    ok = bool(np.isfinite(auc) and auc >= lim)
    why = ": indistinguishable from chance, the model did not learn (shuffled or missing labels?)"
    if not ok and np.isfinite(auc) and auc >= 0.5 + cfg.min_auc_margin and n0 > 0:
        # Above the margin, held back only by the standard error of too few human-labelled
        # clicks: say how many would make this AUC distinguishable from chance.
        need = int(math.ceil((cfg.min_auc_z / (auc - 0.5)) ** 2 / 12.0))
        why = (f": not distinguishable from chance with {n0} human-labelled held-out clicks; "
               f"this AUC would be with >= {need} (a longer log or more purchases per day)")
    checks.append(Check("auc_weak_label", ok, auc, lim,
                        f"AUC against the weak label {auc:.3f} (limit {lim:.3f} = chance + "
                        f"max({cfg.min_auc_margin}, {cfg.min_auc_z:g} s.e.))"
                        + ("" if ok else why), "model"))
    heur = np.asarray(cols["heuristic"], dtype=bool)
    # Judged where the heuristic is trusted: the slices with a coverage floor (by default not
    # logged-in traffic, where it mostly flags heavy-clicking customers; docs/calibration.md).
    from .calibrate import coverage_target
    trusted = np.array([coverage_target(cfg.min_coverage, cfg.slice_min_coverage, s) > 0
                        for s in sl.tolist()], dtype=bool) if sl.size else np.zeros(0, bool)
    if not (heur & trusted).any() or heur[trusted].all():
        trusted = np.ones(heur.size, dtype=bool)
    auc_h = roc_auc(cand_score[trusted], heur[trusted])
    heur = heur[trusted]
    # The k-clicks heuristic also flags heavy-clicking humans, more on some days than others
    # (on a simulated day only 28% of its clicks were robots, and a model with AUC 0.92
    # against the truth ranked them at 0.53). So an AUC below min_auc_heuristic passes when
    # it is clearly above chance (the same rule as the weak label); a model that did not
    # learn (shuffled labels) sits at chance.
    h1, h0 = int(heur.sum()), int((~heur).sum())
    se_h = float(np.sqrt((h1 + h0 + 1) / (12.0 * max(h1, 1) * max(h0, 1))))
    lim_h = min(cfg.min_auc_heuristic, 0.5 + max(cfg.min_auc_margin, cfg.min_auc_z * se_h))
    ok_h = bool(not np.isfinite(auc_h) or auc_h >= lim_h)
    checks.append(Check("auc_heuristic", ok_h, auc_h, lim_h,
                        f"AUC against the robotic heuristic {auc_h:.3f} (limit {lim_h:.3f} = "
                        f"min({cfg.min_auc_heuristic}, chance + max({cfg.min_auc_margin}, "
                        f"{cfg.min_auc_z:g} s.e.)) on {h1} heuristic clicks of the slices with "
                        "a coverage floor)"
                        + ("" if ok_h else ": the model does not rank heuristic-robotic clicks "
                                           "above the rest"), "model"))

    inv = _apply(cand_score, sl, cand_th)
    r = _rates(inv, cols)
    # Tolerance plus 3 binomial standard errors: few purchasing clicks make FPR noisy.
    n_p = int(np.asarray(cols["purchased"], dtype=bool).sum())
    se = float(np.sqrt(cfg.fpr_budget * (1 - cfg.fpr_budget) / max(n_p, 1)))
    lim = cfg.fpr_budget * (1 + cfg.fpr_tolerance) + 3 * se
    few = ""
    if n_p * cfg.fpr_budget < 5:
        # FPR moves in steps of 1/n_p: a budget this small is not measurable on this day.
        few = (f"; {n_p} purchasing clicks measure FPR in steps of {1 / max(n_p, 1):.4f}: "
               f"judging a budget of {cfg.fpr_budget:g} needs >= "
               f"{int(math.ceil(5 / cfg.fpr_budget))} on the held-out day")
    checks.append(Check("fpr_budget", bool(r["fpr"] <= lim), r["fpr"], lim,
                        f"held-out FPR {r['fpr']:.4f} on {n_p} purchasing clicks (limit "
                        f"{lim:.4f} = budget {cfg.fpr_budget} + {cfg.fpr_tolerance:.0%} + 3 "
                        f"s.e.)" + (few if r["fpr"] > lim else ""), "model"))
    checks.append(Check("ivr_ceiling", bool(r["ivr"] <= cfg.max_ivr), r["ivr"], cfg.max_ivr,
                        f"held-out IVR {r['ivr']:.4f}" + (
                            " would invalidate an implausible share of traffic (over --max-ivr "
                            f"{cfg.max_ivr:g}; raise it only for traffic known to be mostly "
                            "robotic)" if r["ivr"] > cfg.max_ivr else ""),
                        "model"))
    from .calibrate import coverage_target
    low_cov, floors, short = {}, {}, {}
    sess = cols.get("session_hash")
    for s in sorted(set(sl.tolist())):
        m = sl == s
        floors[s] = max(coverage_target(cfg.min_coverage, cfg.slice_min_coverage, s)
                        - cfg.coverage_slack, 0.0)
        n_h = int(np.asarray(cols["heuristic"], dtype=bool)[m].sum())
        if n_h < cfg.min_heuristic_clicks or floors[s] <= 0:
            continue
        hm = np.asarray(cols["heuristic"], dtype=bool) & m
        k = int((inv & hm).sum())
        if k / n_h < floors[s]:
            # Below the floor; refuse only when chance does not explain the shortfall: the
            # coverage of heuristic clicks at exactly the floor would fall this low with
            # probability P(X <= k'), X ~ Binomial(n', floor). The heuristic marks whole
            # (session, hour)s and a threshold flags a session's clicks together, so the clicks
            # are not independent draws: n' is the effective number of sessions behind them
            # (Kish: (sum m_i)^2 / sum m_i^2 over the sessions' heuristic clicks m_i; n_h when
            # each session has one) and k' the coverage at that size.
            n_eff = _effective_count(sess[hm]) if sess is not None else n_h
            k_eff = int(math.floor(k / n_h * n_eff + 1e-9))
            pval = binom_cdf(k_eff, n_eff, floors[s])
            short[s] = (k, n_h, pval, n_eff)
            if pval < cfg.coverage_alpha:
                low_cov[s] = k / n_h

    def _cov(s: str) -> str:
        k, n_h, pval, n_eff = short[s]
        eff = f" over {n_eff} effective sessions" if n_eff != n_h else ""
        return (f"{s} ({k}/{n_h} = {k / n_h:.4f} < floor {floors[s]:.4f}, binomial p "
                f"{pval:.2g}{eff})")
    noise = [s for s in short if s not in low_cov]
    checks.append(Check("coverage_floors", not low_cov, low_cov, floors,
                        "robotic coverage below the floor in " + ", ".join(
                            _cov(s) for s in low_cov)
                        + f" (p < {cfg.coverage_alpha:g}: not chance)"
                        if low_cov else
                        "every slice meets its robotic coverage floor" + (
                            " within sampling noise: " + ", ".join(_cov(s) for s in noise)
                            + f" (p >= {cfg.coverage_alpha:g})" if noise else ""), "model",
                        details={"short": {s: {"covered": v[0], "heuristic": v[1],
                                               "p": v[2], "effective_sessions": v[3]}
                                           for s, v in short.items()}}))

    if cur_score is None or cur_th is None:
        checks.append(Check("ivr_vs_current", True, r["ivr"], None,
                            "no current model: deviation bands not checked", "model"))
        return checks
    cur_inv = _apply(np.asarray(cur_score, dtype=np.float64), sl, cur_th)
    rc = _rates(cur_inv, cols)
    dev = abs(r["ivr"] / rc["ivr"] - 1) if rc["ivr"] > 0 else (0.0 if r["ivr"] == 0 else np.inf)
    checks.append(Check("ivr_vs_current", bool(dev <= cfg.ivr_band), dev, cfg.ivr_band,
                        f"IVR {r['ivr']:.4f} vs current {rc['ivr']:.4f} on the same clicks "
                        f"(deviation {dev:.0%}, band {cfg.ivr_band:.0%})", "model",
                        details={"candidate": r, "current": rc}))
    out_band = {}
    per = {}
    for s in sorted(set(sl.tolist())):
        a, b = _rates(inv, cols, sl == s)["ivr"], _rates(cur_inv, cols, sl == s)["ivr"]
        per[s] = {"candidate": a, "current": b}
        if abs(a - b) > cfg.slice_ivr_band * b + cfg.slice_ivr_abs_slack:
            out_band[s] = (a, b)
    checks.append(Check("slice_ivr_vs_current", not out_band, {s: v[0] for s, v in out_band.items()},
                        cfg.slice_ivr_band,
                        "slice IVR outside the band: " + ", ".join(
                            f"{s} {a:.4f} vs current {b:.4f}" for s, (a, b) in out_band.items())
                        if out_band else "every slice's IVR within the band of the current model",
                        "model", details=per))
    return checks
