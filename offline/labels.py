"""Weak labels, as in the SLIDR article: a click is *human* (1) if it led to a purchase or came
from a customer account with a high RFM score; every other click is *non-human* (0).

RFM scoring: each of recency (fewer days is better), frequency and monetary is scored 1..q by
quantile over the customers table (q = 5: quintiles); the combined score is their sum, or a
weighted sum. "High" means a combined score at or above a threshold; by default the threshold is
the score that puts about the top `top_share` (20%) of customers above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slidr.contract import CUSTOMER_FIELDS


@dataclass(frozen=True)
class RFMConfig:
    quantiles: int = 5
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # recency, frequency, monetary
    # Absolute combined-score threshold for "high"; None -> chosen from top_share.
    threshold: float | None = None
    top_share: float = 0.20

    def __post_init__(self) -> None:
        if self.quantiles < 2:
            raise ValueError(f"RFMConfig.quantiles must be >= 2, got {self.quantiles}")
        if len(self.weights) != 3 or any(w < 0 for w in self.weights) or sum(self.weights) == 0:
            raise ValueError(f"RFMConfig.weights must be 3 non-negative numbers, not all 0: "
                             f"{self.weights}")
        if not 0.0 < self.top_share < 1.0:
            raise ValueError(f"RFMConfig.top_share must be in (0, 1), got {self.top_share}")


@dataclass
class RFMScores:
    user_id: np.ndarray  # object array of str
    recency: np.ndarray  # int8 1..q (q = most recent)
    frequency: np.ndarray
    monetary: np.ndarray
    score: np.ndarray  # float64 combined
    threshold: float
    high: np.ndarray  # bool

    def summary(self) -> dict[str, Any]:
        return {"customers": int(self.user_id.shape[0]), "threshold": float(self.threshold),
                "high_share": float(self.high.mean()) if self.high.size else 0.0}


def _columns(customers: Any) -> dict[str, np.ndarray]:
    """Accept a pyarrow Table, a pandas DataFrame or a mapping of columns."""
    if hasattr(customers, "column_names"):  # pyarrow.Table
        names = list(customers.column_names)
        get = lambda k: customers.column(k).to_numpy(zero_copy_only=False)  # noqa: E731
    elif hasattr(customers, "columns") and hasattr(customers, "__getitem__"):  # DataFrame
        names = list(customers.columns)
        get = lambda k: np.asarray(customers[k])  # noqa: E731
    elif isinstance(customers, dict):
        names = list(customers)
        get = lambda k: np.asarray(customers[k])  # noqa: E731
    else:
        raise TypeError(f"customers must be a table or a mapping of columns, "
                        f"not {type(customers).__name__}")
    missing = [c for c in CUSTOMER_FIELDS if c not in names]
    if missing:
        raise ValueError(f"customers table is missing column(s) {', '.join(missing)} "
                         f"(needs {', '.join(CUSTOMER_FIELDS)}; has {', '.join(names) or 'none'})")
    out = {"user_id": np.asarray(get("user_id"), dtype=object)}
    for c in CUSTOMER_FIELDS[1:]:
        try:
            v = np.asarray(get(c), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"customers column '{c}' must be numeric") from None
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"customers column '{c}' has a missing or non-finite value at row "
                             f"{int(bad[0])} ({bad.size} such rows)")
        out[c] = v
    nulls = np.flatnonzero(np.array([u is None for u in out["user_id"]], dtype=bool))
    if nulls.size:
        raise ValueError(f"customers column 'user_id' is null at row {int(nulls[0])}")
    return out


def quantile_score(values: np.ndarray, q: int, higher_is_better: bool = True) -> np.ndarray:
    """Score 1..q by quantile rank (ties share a score: rank by value, not by position)."""
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    v = values if higher_is_better else -values
    # Fraction of customers strictly below each value -> bucket; ties land together.
    srt = np.sort(v)
    below = np.searchsorted(srt, v, side="left") / n
    return (np.floor(below * q).astype(np.int64) + 1).clip(1, q).astype(np.int8)


def rfm_scores(customers: Any, cfg: RFMConfig | None = None) -> RFMScores:
    cfg = cfg or RFMConfig()
    c = _columns(customers)
    r = quantile_score(c["recency_days"], cfg.quantiles, higher_is_better=False)
    f = quantile_score(c["frequency"], cfg.quantiles)
    m = quantile_score(c["monetary"], cfg.quantiles)
    wr, wf, wm = cfg.weights
    score = wr * r + wf * f + wm * m
    if cfg.threshold is not None:
        thr = float(cfg.threshold)
    elif score.size:
        # The smallest score whose tail holds at most ~top_share of customers (ties kept whole);
        # if even the top score holds more, the top score.
        vals = np.unique(score)[::-1]
        thr = float(vals[0])
        for v in vals:
            if (score >= v).mean() > cfg.top_share + 1e-12:
                break
            thr = float(v)
    else:
        thr = float("inf")
    return RFMScores(c["user_id"], r, f, m, score, thr, score >= thr)


def weak_labels(purchased: Any, user_id: Sequence[Any] | np.ndarray, logged_in: Any,
                customers_table: Any, cfg: RFMConfig | None = None,
                scores: RFMScores | None = None) -> np.ndarray:
    """int8 per click: 1 = human (purchase, or a logged-in customer with a high RFM score),
    0 = non-human. A user id missing from the customers table counts as not high; with no
    customers table at all (None, e.g. an imported log), the labels are purchases only."""
    pur = np.asarray(purchased, dtype=bool)
    li = np.asarray(logged_in, dtype=bool)
    n = pur.shape[0]
    uid = np.asarray(user_id, dtype=object)
    if li.shape[0] != n or uid.shape[0] != n:
        raise ValueError(f"purchased, user_id and logged_in must have the same length "
                         f"({n}, {uid.shape[0]}, {li.shape[0]})")
    if scores is None and customers_table is None:
        return pur.astype(np.int8)
    sc = scores if scores is not None else rfm_scores(customers_table, cfg)
    high = np.zeros(n, dtype=bool)
    if sc.high.any() and n:
        import pyarrow as pa
        import pyarrow.compute as pc
        # Customer ids read from a CSV may come back as integers; clicks carry strings.
        hit = pc.is_in(pa.array(uid, type=pa.string()),
                       value_set=pa.array([str(u) for u in sc.user_id[sc.high]], type=pa.string()))
        high = pc.fill_null(hit, False).to_numpy(zero_copy_only=False) & li
    return (pur | high).astype(np.int8)


# Scope of a weak label 1 (human): the click that bought ("click", the article's rule), every
# click of a session with a human click ("session"), or in addition every logged-out click of
# an IP on a UTC day on which that IP has a human click ("ip_day").
LABEL_SCOPES = ("click", "session", "ip_day")
LABEL_SCOPE_TEXT = {
    "click": "the click itself: its purchase, or its account's high RFM score",
    "session": "the click's session: 1 when any click of the session is labelled 1",
    "ip_day": "the click's session, and for a logged-out click also its IP on that UTC day: "
              "1 when any click of the IP that day is labelled 1",
}


def entity_labels(labels: Any, key: Any) -> np.ndarray:
    """int8 per click: 1 for every click whose entity (equal `key`) has at least one click
    labelled 1, else 0. A purchase speaks for the whole entity: a session or an IP that
    bought is human in all its clicks, not only in the one that bought."""
    lab = np.asarray(labels).astype(bool)
    k = np.asarray(key)
    if k.shape[0] != lab.shape[0]:
        raise ValueError(f"labels and key must have the same length ({lab.shape[0]}, "
                         f"{k.shape[0]})")
    if lab.size == 0:
        return np.zeros(0, dtype=np.int8)
    _, inv = np.unique(k, return_inverse=True)
    inv = inv.reshape(-1)
    hit = np.bincount(inv, weights=lab, minlength=int(inv.max()) + 1) > 0
    return hit[inv].astype(np.int8)


def scoped_labels(labels: Any, scope: str, session: Any = None, ip: Any = None,
                  day: Any = None, logged_in: Any = None) -> np.ndarray:
    """Click weak labels (weak_labels) widened to `scope` (LABEL_SCOPES). session: a session
    key per click; ip, day, logged_in: an IP key, the UTC day index and the logged-in flag per
    click (scope "ip_day" only). Label 0 stays "not known to be human": no purchase anywhere
    in the entity."""
    lab = np.asarray(labels, dtype=np.int8)
    if scope not in LABEL_SCOPES:
        raise ValueError(f"label scope must be one of {', '.join(LABEL_SCOPES)}, not {scope!r}")
    if scope == "click":
        return lab
    if session is None:
        raise ValueError(f"label scope {scope!r} needs the session key of each click")
    out = entity_labels(lab, session)
    if scope == "ip_day":
        if ip is None or day is None or logged_in is None:
            raise ValueError("label scope 'ip_day' needs the IP, day and logged_in of each click")
        _, ip_code = np.unique(np.asarray(ip), return_inverse=True)
        d = np.asarray(day, dtype=np.int64)
        key = ip_code.reshape(-1).astype(np.int64) * (int(d.max()) + 1 if d.size else 1) + d
        by_ip = entity_labels(lab, key).astype(bool) & ~np.asarray(logged_in, dtype=bool)
        out = (out.astype(bool) | by_ip).astype(np.int8)
    return out


def crowded_ip_days(labels: Any, session: Any, ip: Any, day: Any, logged_in: Any,
                    min_sessions: int = 10) -> np.ndarray:
    """bool per click: a logged-out click of an IP that carries at least `min_sessions`
    sessions on that UTC day and no click labelled 1 (human) that day. Many visitors behind
    one address and not one purchase among them: the clicks least likely to be human among
    the label-0 ones (carrier NATs and offices carry many sessions too, and they buy)."""
    lab = np.asarray(labels).astype(bool)
    n = lab.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, ip_code = np.unique(np.asarray(ip), return_inverse=True)
    d = np.asarray(day, dtype=np.int64)
    _, key = np.unique(ip_code.reshape(-1).astype(np.int64) * (int(d.max()) + 1) + d,
                       return_inverse=True)
    key = key.reshape(-1)
    _, s_code = np.unique(np.asarray(session), return_inverse=True)
    pairs = np.unique(key.astype(np.int64) * n + s_code.reshape(-1))
    sessions = np.bincount(pairs // n, minlength=int(key.max()) + 1)
    bought = np.bincount(key, weights=lab, minlength=int(key.max()) + 1) > 0
    return (sessions[key] >= min_sessions) & ~bought[key] & ~np.asarray(logged_in, dtype=bool)


def starved_ad_days(labels: Any, ad: Any, day: Any, logged_in: Any, p_value: float = 0.01,
                    min_expected: float = 5.0, min_jump: float = 3.0,
                    history_days: int = 7) -> np.ndarray:
    """bool per click: a logged-out click labelled 0 of an ad-day whose logged-out clicks
    multiplied while its purchases did not (a campaign drained by click fraud, installs claimed
    by injected clicks): the label-0 clicks least likely to be human. An ad-day is marked when
    (1) its n logged-out clicks are at least `min_jump` times the median of the ad's logged-out
    clicks over the `history_days` days before (days without a click count 0; a day with no
    day before it is never marked), and (2) they hold k label-1 clicks (purchases) against a
    Poisson mean mu = n * (that day's logged-out label-1 share), mu >= min_expected and
    P(K <= k) < p_value. (1) keeps the ads that are popular every day out: among enough of
    them, one day with few purchases is chance. ad: an integer code per click, negative for a
    click without an ad (never marked)."""
    from scipy.stats import poisson
    lab = np.asarray(labels).astype(bool)
    n = lab.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    a = np.asarray(ad, dtype=np.int64)
    has = a >= 0
    out_ = ~np.asarray(logged_in, dtype=bool)
    d = np.asarray(day, dtype=np.int64)
    d0 = int(d.min())
    d = d - d0
    nd = int(d.max()) + 1
    _, code = np.unique(np.maximum(a, 0), return_inverse=True)
    code = code.reshape(-1)
    na = int(code.max()) + 1
    m = out_ & has
    key = code * nd + d
    clicks = np.bincount(key[m], minlength=na * nd).astype(np.float64).reshape(na, nd)
    bought = np.bincount(key[m], weights=lab[m], minlength=na * nd).reshape(na, nd)
    base = (np.bincount(d[m], weights=lab[m], minlength=nd)
            / np.maximum(np.bincount(d[m], minlength=nd), 1))
    mu = clicks * base[None, :]
    starved = (mu >= min_expected) & (poisson.cdf(bought, mu) < p_value)
    jump = np.zeros_like(starved)
    for t in range(1, nd):
        past = np.median(clicks[:, max(0, t - history_days):t], axis=1)
        jump[:, t] = clicks[:, t] >= min_jump * np.maximum(past, 1.0)
    return (starved & jump).reshape(-1)[key] & m & ~lab
