"""Training: time split, sample weights, the robot MLP (and the logistic baseline, the same code
without hidden layers), early stopping, ONNX export with a parity check.

The exported model takes raw kernel features (standardisation is inside the graph) and returns
robot_prob = 1 - P(human) per click, so the daemon feeds the kernel output straight in.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr.defaults import TRAINING
from slidr.featurespec import FEATURE_NAMES, N_FEATURES, local_hour_dow
from slidr.util import Progress, atomic_open

DAY_MS = 86_400_000
PARITY_TOL = 1e-4
ONNX_INPUT = "features"
ONNX_OUTPUT = "robot_prob"


# ------------------------------------------------------------------ split and weights

def day_index(ts: np.ndarray) -> np.ndarray:
    """Whole UTC days since the first click's UTC day (int32)."""
    d = np.asarray(ts, dtype=np.int64) // DAY_MS
    return (d - d.min()).astype(np.int32) if d.size else d.astype(np.int32)


MIN_TRAIN_DAYS_AUTO = 5
MAX_VAL_DAYS_AUTO = 3


def auto_val_days(n_days: int) -> int:
    """Default validation window: 3 days when the log keeps >= 5 training days besides them and
    the test day, fewer on shorter logs, at least 1 (6- and 7-day logs: 1, 8 days: 2, 9+: 3).
    Slice-level calibration fits on these days; on simulated logs a 3-day window gains +2..+5%
    IVR over the global threshold at equal realised FPR where one day gains -0.1..+3.4%
    (docs/calibration.md, "Held-out days")."""
    return int(max(1, min(MAX_VAL_DAYS_AUTO, n_days - 1 - MIN_TRAIN_DAYS_AUTO)))


NEWEST_DAY = ("auto", "train", "test")
NEWEST_TRAIN_MIN_DAYS = 8  # 'auto' trains on the newest day from this many days on


def resolve_newest(newest: str, n_days: int) -> str:
    """'train' or 'test' for a log of `n_days` days: 'auto' trains on the newest day on logs of
    8+ days (2 validation days, the test day and 5 training days, the newest among them) and
    holds it out as the test day on shorter ones."""
    if newest not in NEWEST_DAY:
        raise ValueError(f"newest must be one of {', '.join(NEWEST_DAY)}, got {newest!r}")
    if newest == "auto":
        return "train" if n_days >= NEWEST_TRAIN_MIN_DAYS else "test"
    return newest


def time_split(day: np.ndarray, min_days: int = 3, val_days: int | None = 1,
               newest: str = "test") -> dict[str, np.ndarray]:
    """Boolean masks by day, never random. newest='test': the last day is test, the
    `val_days` days before it are validation (early stopping and calibration), everything
    earlier is training. newest='train': the last day is trained on, so a robot family that
    appeared on it is learnt the same day; the day before it is test and the `val_days` days
    before that validation (both still held out), everything earlier is training too.
    newest='auto': resolve_newest. val_days=None: auto_val_days(number of days), which keeps
    5 training days, the newest one among them when it is trained on."""
    days = np.unique(day)
    newest = resolve_newest(newest, int(days.size))
    spare = 1 if newest == "train" else 0
    if val_days is None:
        val_days = auto_val_days(int(days.size))
    if val_days < 1:
        raise ValueError(f"val_days must be >= 1, got {val_days}")
    need = max(min_days, val_days + 2 + spare)
    if days.size < need:
        what = "train days, " + ("the newest day trained on, " if spare else "")
        raise ValueError(f"the log covers {days.size} day(s); training needs at least {need} "
                         f"({what}{val_days} validation day(s), one test day)")
    test_day = days[-1 - spare]
    first_val = days[-1 - spare - val_days]
    newest_tr = (day == days[-1]) if spare else np.zeros(np.shape(day), bool)
    return {"train": (day < first_val) | newest_tr,
            "val": (day >= first_val) & (day < test_day), "test": day == test_day}


WEIGHTING_TEXT = {
    "cells": "equal total weight per non-empty cell of local hour x day of week x logged_in x "
             "weak label (672 cells), computed separately on each split",
    "label": "equal total weight per non-empty cell of logged_in x weak label (4 cells), "
             "computed separately on each split",
}


def weight_cells(ts: np.ndarray, tz_offset_min: np.ndarray, logged_in: np.ndarray,
                 label: np.ndarray, weighting: str = "cells") -> np.ndarray:
    """Cell id of local hour-of-day x day-of-week x logged-in x label (672 cells; the
    article's weighting, "cells"), or of logged-in x label only ("label")."""
    li = np.asarray(logged_in, dtype=np.int32)
    lab = np.asarray(label, dtype=np.int32)
    if weighting == "label":
        return li * 2 + lab
    if weighting != "cells":
        raise ValueError(f"weighting must be 'cells' or 'label', not {weighting!r}")
    hour, dow = local_hour_dow(ts, tz_offset_min)
    return (((hour.astype(np.int32) * 7 + dow) * 2 + li) * 2 + lab)


def split_cells(cells: np.ndarray, own: np.ndarray | None) -> np.ndarray:
    """Weight cells with the clicks marked `own` (e.g. labels.crowded_ip_days) moved to cells
    of their own (cell id + 672), so that sample_weights gives them a cell's total weight
    instead of a share of their label's; None: the cells unchanged."""
    if own is None:
        return cells
    return np.where(np.asarray(own, dtype=bool), cells + 672, cells)


def recency_weights(w: np.ndarray, day: np.ndarray, last_day_weight: float,
                    newest: int | None = None) -> np.ndarray:
    """Sample weights `w` with the rows of day `newest` (None: the latest of `day`) scaled so
    that day weighs `last_day_weight` times what it weighed, the mean weight kept at w's.
    `w` itself when the factor is 1 or no row is of that day (the log's newest day is not
    among the rows being weighted)."""
    if float(last_day_weight) == 1.0 or np.size(w) == 0:
        return w
    d = np.asarray(day)
    hit = d == (d.max() if newest is None else newest)
    if not hit.any():
        return w
    w = np.asarray(w, dtype=np.float64)
    out = np.where(hit, w * float(last_day_weight), w)
    return (out * (w.sum() / out.sum())).astype(np.float32)


def sample_strata(ts: np.ndarray, tz_offset_min: np.ndarray, device: np.ndarray,
                  logged_in: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Stratum id of each click for the training sample: slice (device x logged-in) x local
    hour of day x weak label."""
    hour, _ = local_hour_dow(ts, tz_offset_min)
    sl = np.asarray(device, np.int32) * 2 + np.asarray(logged_in, np.int32)
    return (sl * 24 + hour.astype(np.int32)) * 2 + np.asarray(label, np.int32)


# Every stratum keeps at least this many clicks (or all it has): a rare one (robots in a
# logged-in slice at night) keeps enough to learn from; its weight stays exact.
MIN_PER_STRATUM = 300


def stratified_sample(strata: np.ndarray, n_max: int, seed: int,
                      min_per_stratum: int = MIN_PER_STRATUM) -> tuple[np.ndarray, np.ndarray]:
    """(sorted row indices, inverse inclusion probability of each) of the stratified sample of
    rows whose stratum codes (>= 0) are `strata`, held in memory: the rule of stratum_quotas
    and the draw of stratified_positions, the ones the pipeline applies to rows on disk.
    Weighting each kept row by 1 / (kept / size of its stratum) makes every stratum weigh what
    it weighs in the full data."""
    strata = np.asarray(strata, np.int64)
    counts = np.bincount(strata)
    quota = stratum_quotas(counts, n_max, min_per_stratum)
    keep = np.isin(StratumOrdinals(counts).keys(strata),
                   stratified_positions(counts, quota, seed), assume_unique=True)
    idx = np.flatnonzero(keep)
    return idx, (counts / np.maximum(quota, 1))[strata[idx]].astype(np.float64)


def sample_weights(cells: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """float32 weights giving every non-empty cell the same total weight; mean weight 1.
    counts: the clicks of each cell over the whole split when `cells` are only some of its rows
    (a batch read from disk); None: counted on `cells`."""
    own = counts is None
    counts = (np.bincount(cells, minlength=672) if counts is None
              else np.asarray(counts)).astype(np.float64)
    n_cells = int((counts > 0).sum())
    size = cells.size if own else int(counts.sum())
    w = size / (n_cells * counts[cells])
    return w.astype(np.float32)


def stratum_quotas(counts: np.ndarray, n_max: int,
                   min_per_stratum: int = MIN_PER_STRATUM) -> np.ndarray:
    """Rows kept per stratum by stratified_sample (same rule) given the clicks of each stratum:
    its share of n_max, at least min(min_per_stratum, its size, n_max / strata present)."""
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    if n_max <= 0 or n <= n_max:
        return counts.copy()
    present = counts > 0
    floor_ = min(min_per_stratum, max(n_max // int(present.sum()), 1))
    q = np.minimum(counts, np.maximum(np.floor(n_max * counts / n).astype(np.int64), floor_))
    return np.where(present, q, 0)


def stratified_positions(counts: np.ndarray, quota: np.ndarray, seed: int) -> np.ndarray:
    """Sorted keys of the rows a stratified sample keeps, without holding a row per click: a key
    is offset[stratum] + the row's ordinal among its stratum's clicks in log order (offset: the
    clicks of the strata before it). Each stratum keeps `quota` of its clicks drawn uniformly
    without replacement (memory: the sample's size)."""
    counts = np.asarray(counts, np.int64)
    rng = np.random.default_rng(seed)
    offset = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keys = [off + np.sort(rng.choice(c, size=q, replace=False))
            for off, c, q in zip(offset.tolist(), counts.tolist(), np.asarray(quota).tolist(),
                                 strict=True) if q > 0]
    return np.concatenate(keys).astype(np.int64) if keys else np.zeros(0, np.int64)


class StratumOrdinals:
    """Each row's ordinal among its stratum's rows in log order, batch after batch (the counts
    carry across batches), as the key stratified_positions uses."""

    def __init__(self, counts: np.ndarray) -> None:
        counts = np.asarray(counts, np.int64)
        self.offset = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.seen = np.zeros(counts.size, np.int64)

    def keys(self, strata: np.ndarray) -> np.ndarray:
        s = np.asarray(strata, np.int64)
        order = np.argsort(s, kind="stable")
        ss = s[order]
        c = np.bincount(ss, minlength=self.seen.size)
        start = np.concatenate([[0], np.cumsum(c)[:-1]])
        rank = np.empty(s.size, np.int64)
        rank[order] = np.arange(s.size) - start[ss]
        out = self.offset[s] + self.seen[s] + rank
        self.seen += c
        return out


class RunningMoments:
    """Per-column mean and standard deviation of a matrix streamed in batches (Chan's pairwise
    update, float64)."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width, np.float64)
        self.m2 = np.zeros(width, np.float64)

    def update(self, x: np.ndarray) -> None:
        m = int(x.shape[0])
        if m == 0:
            return
        bm = x.mean(axis=0, dtype=np.float64)
        bv = x.var(axis=0, dtype=np.float64) * m
        n = self.n + m
        d = bm - self.mean
        self.mean = self.mean + d * (m / n)
        self.m2 = self.m2 + bv + d * d * (self.n * m / n)
        self.n = n

    def standardisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as standardisation(x) gives them for the whole matrix."""
        std = np.sqrt(self.m2 / max(self.n, 1))
        std = np.where(std < 1e-6, 1.0, std)
        return self.mean.astype(np.float32), std.astype(np.float32)


# ------------------------------------------------------------------ model

def _torch():
    import torch
    return torch


def build_model(mean: np.ndarray, std: np.ndarray, hidden: tuple[int, ...],
                n_in: int = N_FEATURES):
    torch = _torch()
    nn = torch.nn

    class RobotNet(nn.Module):
        """standardise -> [Linear -> ReLU] x len(hidden) -> Linear -> logit."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            dims = (n_in, *hidden)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:],
                                                                          strict=True))
            self.out = nn.Linear(dims[-1], 1)

        def forward(self, x):  # logits (N,)
            h = (x - self.mean) / self.std
            for lin in self.hidden:
                h = torch.relu(lin(h))
            return self.out(h).squeeze(-1)

        def robot_prob(self, x):
            return torch.sigmoid(self.forward(x))

    return RobotNet()


@dataclass
class FitResult:
    model: Any
    hidden: tuple[int, ...]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stages: list[FitResult] = field(default_factory=list)  # fit_staged: each stage's own


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std = np.where(std < 1e-6, 1.0, std)  # constant columns (e.g. an unused device) pass as is
    return mean.astype(np.float32), std.astype(np.float32)


VAL_BLOCK = 262_144  # validation rows per forward pass


def fit(x_tr: np.ndarray, y_tr: np.ndarray, w_tr: np.ndarray, x_va: np.ndarray,
        y_va: np.ndarray, w_va: np.ndarray, hidden: tuple[int, ...] = (64, 32),
        weight_decay: float = 1e-4, lr: float = 3e-3, epochs: int = 20, batch_size: int = 4096,
        patience: int = 3, seed: int = 0, progress: bool = True, label: str = "train",
        ema: float = 0.995, standardise: tuple[np.ndarray, np.ndarray] | None = None,
        val_batches: Any = None, cols: Sequence[int] | None = None,
        base: Any = None, early_stopping: bool = True) -> FitResult:
    """Weighted BCE on y = 1 for robot; L2 (weight decay) on the hidden layers' weights only;
    an exponential moving average of the weights (`ema` per step; 0 = off) is validated each
    epoch; early stopping on its weighted validation loss; returns the best epoch's averaged
    weights (same architecture, so the ONNX export and parity check are unchanged).
    The average damps the step-to-step noise of Adam on the heavily weighted sparse cells:
    without it the best epoch and the per-slice IVR moved with the torch seed.

    standardise: (mean, std) to use instead of x_tr's own (a sample trains with the statistics
    of every training click, streamed). val_batches: a callable returning an iterable of
    (x, y, w) batches of the validation rows, read batch-wise each epoch instead of x_va,
    y_va, w_va held in memory (None: those).

    cols: the input columns this net sees (None: every column); x arrays stay full width and
    the returned net takes x[:, cols] (`merge` puts nets back into one full-width net).
    base: a trained full-width net whose logit is a fixed offset added to this net's logit:
    this net learns only what the base leaves unexplained (the second stage of `fit_staged`).
    early_stopping: False trains every epoch at the full step and returns the last epoch's
    averaged weights (the validation loss is still recorded)."""
    torch = _torch()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mean, std = standardisation(x_tr) if standardise is None else standardise
    c = np.arange(x_tr.shape[1]) if cols is None else np.asarray(cols, dtype=np.int64)
    if cols is not None and np.array_equal(c, np.arange(x_tr.shape[1])):
        cols = None  # every column: no copies
    # (With a base, the output layer keeps its random start: zeroed, the hidden layers would
    # get no gradient but their weight decay, which Adam turns into full-size steps to 0.)
    model = build_model(mean[c], std[c], hidden, n_in=int(c.size))

    def sub(x: np.ndarray) -> np.ndarray:
        return x if cols is None else x[:, c]
    decay = [lin.weight for lin in model.hidden]
    no_decay = [p for n, p in model.named_parameters() if not (n.startswith("hidden.")
                                                             and n.endswith(".weight"))]
    opt = torch.optim.Adam([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    avg = copy.deepcopy(model) if ema > 0 else model  # exponential moving average of weights
    pairs = list(zip(avg.parameters(), model.parameters(), strict=True))
    # Bias-corrected average (as Adam's moments): the accumulator starts at zero and is divided
    # by 1 - ema^t, so the random initial weights never leak into the average. Without the
    # correction, a small log (few steps) would validate and export a mostly untrained net.
    acc = [torch.zeros_like(p) for p in model.parameters()] if ema > 0 else []
    t_ema = 0
    # A column subset is gathered with each epoch's shuffle (rows and columns in one copy),
    # so no subset copy of the training matrix is held besides the shuffled one.
    xt, yt, wt = (torch.from_numpy(np.ascontiguousarray(a)) for a in
                  (x_tr, y_tr.astype(np.float32), w_tr.astype(np.float32)))
    ot = ov = None  # the base's logits: fixed offsets
    ov_batches: list[Any] = []  # ... of the streamed validation batches, from the first epoch
    if base is not None:
        ot = torch.from_numpy(logits(base, x_tr))
    if val_batches is None:
        yv, wv = (torch.from_numpy(np.ascontiguousarray(a)) for a in
                  (y_va.astype(np.float32), w_va.astype(np.float32)))
        if base is not None:
            ov = torch.from_numpy(logits(base, x_va))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    n = xt.shape[0]
    steps = (n + batch_size - 1) // batch_size
    bar = Progress(epochs * steps, label, unit="batches", enabled=progress)
    best = (float("inf"), -1, None)
    hist: list[dict[str, float]] = []
    t0 = time.perf_counter()
    bad = 0
    ep = -1
    xp = yp = wp = xb = yb = wb = op = None
    for ep in range(epochs):
        model.train()
        # One gather per epoch, then contiguous slices: per-step fancy indexing costs more
        # than the tiny network's forward and backward passes. The last epoch's copy (and
        # the batch views into it) go first: two shuffled copies never coexist.
        xp = yp = wp = xb = yb = wb = op = None
        perm = torch.randperm(n, generator=g)
        xp = (xt[perm] if cols is None else
              torch.from_numpy(np.ascontiguousarray(x_tr[np.ix_(perm.numpy(), c)])))
        yp, wp = yt[perm], wt[perm]
        if ot is not None:
            op = ot[perm]
        tot = 0.0
        for i in range(steps):
            sl = slice(i * batch_size, (i + 1) * batch_size)
            xb, yb, wb = xp[sl], yp[sl], wp[sl]
            z = model(xb) if op is None else model(xb) + op[sl]
            loss = (bce(z, yb, reduction="none") * wb).sum() / wb.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema > 0:
                t_ema += 1
                with torch.no_grad():
                    for a, (_, p) in zip(acc, pairs, strict=True):
                        a.lerp_(p, 1.0 - ema)
            tot += float(loss.detach()) * xb.shape[0]
            bar.update(1)
        model.eval()
        avg.eval()
        with torch.no_grad():
            if ema > 0:
                corr = 1.0 - ema ** t_ema
                for a, (q, _) in zip(acc, pairs, strict=True):
                    q.copy_(a / corr)
            if val_batches is None:
                # Per-row losses a block of rows at a time (the network's activations for
                # millions of rows at once would take ~900 bytes a row), then the same sum.
                lv = torch.empty(x_va.shape[0], dtype=torch.float32)
                for a in range(0, x_va.shape[0], VAL_BLOCK):
                    zv = avg(torch.from_numpy(np.ascontiguousarray(sub(x_va[a:a + VAL_BLOCK]))))
                    if ov is not None:
                        zv = zv + ov[a:a + VAL_BLOCK]
                    lv[a:a + VAL_BLOCK] = bce(zv, yv[a:a + VAL_BLOCK], reduction="none")
                vl = float((lv * wv).sum() / wv.sum())
                del lv
            else:
                num = den = 0.0
                for j, (xf_, yb_, wb_) in enumerate(val_batches()):
                    xb_, yb_, wb_ = (torch.from_numpy(np.ascontiguousarray(a)) for a in
                                     (sub(xf_), yb_.astype(np.float32), wb_.astype(np.float32)))
                    zv = avg(xb_)
                    if base is not None:
                        # The base is fixed: its logits of a batch are computed once.
                        if j == len(ov_batches):
                            ov_batches.append(torch.from_numpy(logits(base, xf_)))
                        if ov_batches[j].shape[0] != xb_.shape[0]:
                            raise ValueError("val_batches must yield the same batches each call")
                        zv = zv + ov_batches[j]
                    num += float((bce(zv, yb_, reduction="none") * wb_).sum(
                        dtype=torch.float64))
                    den += float(wb_.sum(dtype=torch.float64))
                vl = num / den if den > 0 else float("nan")
        hist.append({"epoch": ep, "train_loss": tot / n, "val_loss": vl,
                     "lr": opt.param_groups[0]["lr"]})
        if not early_stopping:
            best = (vl, ep, None)  # the last epoch's averaged weights (avg holds them)
        elif vl < best[0] - 1e-5:
            best = (vl, ep, {k: v.clone() for k, v in avg.state_dict().items()})
            bad = 0
        else:
            bad += 1
            if bad >= patience:
                break
            for grp in opt.param_groups:  # halve the step on a plateau before giving up
                grp["lr"] *= 0.5
    bar.close()
    if best[2] is not None:
        model.load_state_dict(best[2])
    elif not early_stopping and avg is not model:
        model.load_state_dict(avg.state_dict())
    model.eval()
    return FitResult(model, hidden, best[1], ep + 1, hist, time.perf_counter() - t0)


def _by_blocks(fn: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """fn (a net or one of its methods) over x's rows a block at a time, float32 (N,)."""
    torch = _torch()
    out = np.empty(x.shape[0], dtype=np.float32)
    with torch.no_grad():
        for a in range(0, x.shape[0], batch_size):
            out[a:a + batch_size] = fn(
                torch.from_numpy(np.ascontiguousarray(x[a:a + batch_size]))).numpy()
    return out


def logits(model: Any, x: np.ndarray, batch_size: int = 262_144) -> np.ndarray:
    """The net's logits (N,) float32, a block of rows at a time."""
    return _by_blocks(model, x, batch_size)


def merge(parts: Sequence[tuple[Any, Sequence[int]]], n_in: int = N_FEATURES,
          scale: float = 1.0):
    """One full-width net whose logit is `scale` times the sum of the parts' logits, each part
    a net over its own input columns: the hidden layers side by side (block-diagonal weights,
    zeros between parts), so the merged net has the documented architecture (a plain MLP,
    one ONNX graph, one model call in the daemon) and computes exactly the parts' sum (scale
    1) or mean (scale 1 / number of parts)."""
    torch = _torch()
    depth = {len(m.hidden) for m, _ in parts}
    if len(depth) != 1:
        raise ValueError(f"merge: parts have different depths {sorted(depth)}")
    mean = np.zeros(n_in, np.float32)
    std = np.ones(n_in, np.float32)
    for m, c in parts:
        mean[list(c)] = m.mean.numpy()
        std[list(c)] = m.std.numpy()
    widths = [tuple(lin.out_features for lin in m.hidden) for m, _ in parts]
    hidden = tuple(int(sum(w[i] for w in widths)) for i in range(depth.pop()))
    net = build_model(mean, std, hidden, n_in=n_in)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for i, lin in enumerate(net.hidden):
            r = k = 0
            for (m, c), w in zip(parts, widths, strict=True):
                src = m.hidden[i]
                if i == 0:
                    lin.weight[r:r + w[0], list(c)] = src.weight
                else:
                    lin.weight[r:r + w[i], k:k + w[i - 1]] = src.weight
                    k += w[i - 1]
                lin.bias[r:r + w[i]] = src.bias
                r += w[i]
        k = 0
        for (m, _), w in zip(parts, widths, strict=True):
            net.out.weight[:, k:k + w[-1]] = m.out.weight * scale
            net.out.bias += m.out.bias * scale
            k += w[-1]
    net.eval()
    return net


def fit_staged(x_tr: np.ndarray, y_tr: np.ndarray, w_tr: np.ndarray, x_va: Any, y_va: Any,
               w_va: Any, base_cols: Sequence[int], hidden: tuple[int, ...] = (64, 32),
               hidden2: tuple[int, ...] = (64, 32), weight_decay: float = 1e-4,
               weight_decay2: float = 1e-4, epochs: int | tuple[int, int] = 20,
               patience: int | tuple[int, int] = 3, label: str = "train",
               cols2: Sequence[int] | None = None, early_stopping2: bool = False,
               extra2: Sequence[Sequence[int]] = (), **kw: Any) -> FitResult:
    """Two stages (the second possibly several nets side by side), one net. Stage 1 fits
    `hidden` on the base columns alone, with early stopping; stage 2 fits `hidden2` (weight
    decay `weight_decay2`) on `cols2` with stage 1's logit as a fixed offset: it learns only
    what stage 1 leaves unexplained. By default stage 2 trains for exactly its epochs
    (`early_stopping2` False): the validation days come before the newest training day, so a
    robot family that appeared since cannot lower their loss, and early stopping would end
    stage 2 before it has learnt the family. The result is the nets merged (`merge`): hidden
    widths add up, the architecture and export are unchanged.
    cols2: the columns stage 2 sees (None: every column not in base_cols).
    extra2: further second stages side by side with stage 2, one per column set, each fit
    like stage 2 on stage 1's logit alone (not on each other's): their logits add up in the
    published net. A second stage on every column can explain a new family by a conjunction
    (its sessions' regular gaps and its ad's burst on the day it appeared) that holds for
    neither a session's first click nor the next day; one on the entity columns alone must
    let the ad's and user agent's own evidence count by itself.
    epochs / patience: one value for both stages or one per stage (every second stage takes
    stage 2's). Other keywords as `fit`."""
    n_in = x_tr.shape[1]

    def colset(c: Sequence[int]) -> np.ndarray:
        return np.asarray(sorted(set(int(i) for i in c)), dtype=np.int64)
    b = colset(base_cols)
    rest = np.setdiff1d(np.arange(n_in), b) if cols2 is None else colset(cols2)
    e1, e2 = (epochs, epochs) if isinstance(epochs, int) else epochs
    p1, p2 = (patience, patience) if isinstance(patience, int) else patience
    s1 = fit(x_tr, y_tr, w_tr, x_va, y_va, w_va, hidden=hidden, weight_decay=weight_decay,
             epochs=e1, patience=p1, label=f"{label} (stage 1)", cols=b, **kw)
    base = merge([(s1.model, b)], n_in)
    if rest.size == 0 or not hidden2:
        return FitResult(base, hidden, s1.best_epoch, s1.epochs_run, s1.history, s1.seconds,
                         stages=[s1])
    # Every second stage: the same fit on its own columns over stage 1's fixed logit.
    parts = [(fit(x_tr, y_tr, w_tr, x_va, y_va, w_va, hidden=hidden2,
                  weight_decay=weight_decay2, epochs=e2, patience=p2,
                  label=f"{label} (stage 2{'' if k == 1 else f', part {k}'})", cols=c,
                  base=base, early_stopping=early_stopping2, **kw), c)
             for k, c in enumerate([rest, *(colset(c) for c in extra2)], start=1)]
    net = merge([(s1.model, b), *((f.model, c) for f, c in parts)], n_in)
    hist = [{**h, "stage": 1} for h in s1.history]
    for k, (f, _) in enumerate(parts, start=1):
        hist += [{**h, "stage": 2, "part": k} for h in f.history]
    return FitResult(net, tuple(a + c * len(parts) for a, c in zip(hidden, hidden2,
                                                                    strict=True)),
                     s1.best_epoch, s1.epochs_run + sum(f.epochs_run for f, _ in parts), hist,
                     s1.seconds + sum(f.seconds for f, _ in parts),
                     stages=[s1, *(f for f, _ in parts)])


# The user, session and IP features (every column before the user's gap regularity): stage 1
# of the staged training. Stage 2 sees every column, the entity features included, so it can
# learn how an ad's or a user agent's departure from its usual rate combines with the
# session's own signs (a campaign robot on an ad is caught, the humans on that ad are not).
# Beside it ('staged'), a second stage on the entity features alone (ENTITY_COLS) carries
# what an ad, an (IP, ad) pair or a user agent says by itself: it is all there is on a
# session's first click (bench/results/parallel-stage-2026-12-04).
STAGE1_COLS = tuple(range(FEATURE_NAMES.index("u_gap_logsd")))
ENTITY_COLS = tuple(range(len(STAGE1_COLS), N_FEATURES))
STAGE2_HIDDEN = (64, 32)
STAGE2_WEIGHT_DECAY = 1e-4
TRAININGS = ("staged", "staged-all", "joint")


def published_widths(training: str = "staged", hidden: tuple[int, ...] = (64, 32),
                     ensemble: int = int(TRAINING["ensemble"].default)) -> tuple[int, ...]:
    """Hidden widths of the net a training publishes (a staged net is its stages side by
    side, an ensemble its members side by side): the shape the daemon runs and the bench
    builds."""
    if training == "joint":
        one = hidden
    else:
        k = 2 if training == "staged" else 1
        one = tuple(a + b * k for a, b in zip(hidden, STAGE2_HIDDEN, strict=True))
    return tuple(w * ensemble for w in one)


# Seed step between ensemble members: member j trains with seed + ENSEMBLE_SEED_STEP * j.
ENSEMBLE_SEED_STEP = 7919


def fit_mlp(x_tr: np.ndarray, y_tr: np.ndarray, w_tr: np.ndarray, x_va: Any, y_va: Any,
            w_va: Any, training: str = "staged", hidden: tuple[int, ...] = (64, 32),
            weight_decay: float = 1e-4, epochs: int | tuple[int, int] = 20,
            patience: int | tuple[int, int] = 3, ensemble: int = 1, **kw: Any) -> FitResult:
    """The robot MLP as `--training` asks: 'staged' (fit_staged: STAGE1_COLS with early
    stopping, then, each with stage 1's logit as offset for exactly `epochs` epochs, one
    second stage on every column and one on ENTITY_COLS), 'staged-all' (the second stage on
    every column only) or 'joint' (fit on every column). ensemble > 1: that many such nets,
    member j seeded seed + ENSEMBLE_SEED_STEP * j, merged into one net whose logit is the
    members' mean; the result's epochs and history are the first member's, its stages every
    member's in order. Other keywords as `fit`."""
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    if ensemble > 1:
        seed = int(kw.pop("seed", 0))
        label = str(kw.pop("label", "train"))
        members = [fit_mlp(x_tr, y_tr, w_tr, x_va, y_va, w_va, training=training,
                           hidden=hidden, weight_decay=weight_decay, epochs=epochs,
                           patience=patience, seed=seed + ENSEMBLE_SEED_STEP * j,
                           label=f"{label} [{j + 1}/{ensemble}]", **kw)
                   for j in range(ensemble)]
        n_in = x_tr.shape[1]
        net = merge([(m.model, range(n_in)) for m in members], n_in, scale=1.0 / ensemble)
        f0 = members[0]
        return FitResult(net, tuple(w * ensemble for w in f0.hidden), f0.best_epoch,
                         f0.epochs_run, f0.history, sum(m.seconds for m in members),
                         stages=[st for m in members for st in m.stages])
    if training == "joint":
        if not isinstance(epochs, int) or not isinstance(patience, int):
            raise ValueError("joint training takes one epochs and one patience value")
        return fit(x_tr, y_tr, w_tr, x_va, y_va, w_va, hidden=hidden,
                   weight_decay=weight_decay, epochs=epochs, patience=patience, **kw)
    if training not in TRAININGS:
        raise ValueError(f"training must be one of {', '.join(TRAININGS)}, got {training!r}")
    return fit_staged(x_tr, y_tr, w_tr, x_va, y_va, w_va, STAGE1_COLS, hidden=hidden,
                      hidden2=STAGE2_HIDDEN, weight_decay=weight_decay,
                      weight_decay2=STAGE2_WEIGHT_DECAY, epochs=epochs, patience=patience,
                      cols2=range(x_tr.shape[1]),
                      extra2=(ENTITY_COLS,) if training == "staged" else (), **kw)


def refit_schedule(fr: FitResult) -> dict[str, Any]:
    """`fit_mlp` keywords (epochs, patience) of a refit on every day: as many epochs as early
    stopping chose on the held-out split (per stage for a staged fit; a stage without early
    stopping ran them all), and a patience that never stops the refit early."""
    if len(fr.stages) >= 2:  # every second stage runs stage 2's epochs
        ep = (max(fr.stages[0].best_epoch + 1, 1), max(fr.stages[1].best_epoch + 1, 1))
        return {"epochs": ep, "patience": (ep[0] + 1, ep[1] + 1)}
    n = max(fr.best_epoch + 1, 1)
    return {"epochs": n, "patience": n + 1}


def predict(model: Any, x: np.ndarray, batch_size: int = 262_144) -> np.ndarray:
    return _by_blocks(model.robot_prob, x, batch_size)


# ------------------------------------------------------------------ ONNX

def to_onnx(model: Any, doc: str = "slidr robot MLP"):
    """The trained net as an ONNX graph built from its weights (Sub, Div, Gemm, Relu, Sigmoid):
    no exporter tracing, so the graph is exactly the documented architecture."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    inits = [numpy_helper.from_array(sd["mean"], "mean"),
             numpy_helper.from_array(sd["std"], "std")]
    nodes = [helper.make_node("Sub", [ONNX_INPUT, "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["h0"])]
    h = "h0"
    n_hidden = len(model.hidden)
    for i in range(n_hidden):
        inits += [numpy_helper.from_array(sd[f"hidden.{i}.weight"], f"W{i}"),
                  numpy_helper.from_array(sd[f"hidden.{i}.bias"], f"b{i}")]
        nodes += [helper.make_node("Gemm", [h, f"W{i}", f"b{i}"], [f"z{i}"], transB=1),
                  helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"])]
        h = f"h{i + 1}"
    inits += [numpy_helper.from_array(sd["out.weight"], "Wout"),
              numpy_helper.from_array(sd["out.bias"], "bout"),
              numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")]
    nodes += [helper.make_node("Gemm", [h, "Wout", "bout"], ["logit"], transB=1),
              helper.make_node("Sigmoid", ["logit"], ["prob2d"]),
              helper.make_node("Reshape", ["prob2d", "flat"], [ONNX_OUTPUT])]
    graph = helper.make_graph(
        nodes, "slidr_robot_mlp",
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["N"])], inits)
    m = helper.make_model(graph, producer_name="slidr", doc_string=doc,
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8  # readable by every onnxruntime >= 1.10 and TensorRT 8.6+
    onnx.checker.check_model(m)
    return m


def export_onnx(model: Any, path: str | Path, x_check: np.ndarray,
                tol: float = PARITY_TOL) -> dict[str, Any]:
    """Write model.onnx atomically and compare ONNX Runtime with torch on `x_check`.
    Raises RuntimeError when the max abs difference exceeds `tol`."""
    import onnxruntime as ort

    m = to_onnx(model)
    with atomic_open(path, "wb") as f:
        f.write(m.SerializeToString())
    from slidr.engines.onnxruntime_runner import ort_session
    sess = ort_session(path, intra_op_threads=2)
    x = np.ascontiguousarray(x_check, dtype=np.float32)
    got = np.empty(x.shape[0], dtype=np.float32)
    for a in range(0, x.shape[0], 262_144):
        got[a:a + 262_144] = sess.run([ONNX_OUTPUT], {ONNX_INPUT: x[a:a + 262_144]})[0]
    ref = predict(model, x)
    diff = float(np.max(np.abs(got - ref))) if x.shape[0] else 0.0
    res = {"rows": int(x.shape[0]), "max_abs_diff": diff, "tolerance": tol,
           "onnxruntime": ort.__version__, "opset": 17}
    if not diff <= tol:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: max abs diff {diff:.3g} > {tol} "
                           f"on {x.shape[0]} rows")
    return res
