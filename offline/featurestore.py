"""The replayed features on disk: Parquet partitions written chunk by chunk as the replay runs,
read back in bounded batches (docs/scale.md, "On-disk features").

Layout of a feature directory:

    manifest.json          rows, columns, day0, per-part row ranges and days, aggregate counts
    part-00000.parquet     one replay chunk: rows [start, start + rows) of the log, in log order
    part-00001.parquet
    ...

Columns of every part: the N_FEATURES features, `f_` + their name (float32, in
slidr.featurespec.FEATURE_NAMES order; `f_logged_in` is the feature, `logged_in` the click's flag), then
`ts` (int64 epoch ms), `tz_offset_min` (int16), `device` (uint8 code into contract.DEVICES),
`logged_in` (bool), `session_hash` (uint64, the kernel's session key hash), `purchased` (bool),
`weak_label` (int8, 1 = human), `day` (int32, UTC days since the log's first UTC day), `cell`
(int16, the training weight cell), `stratum` (int16, slice x local hour x weak label), and
`is_robot` (bool) on simulated logs.

The manifest's `counts` hold what training, sampling and the input checks need without another
pass: clicks, purchases and weak-label humans per day, and per day the clicks of each weight cell
and each sampling stratum.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidr.featurespec import FEATURE_NAMES, N_FEATURES
from slidr.util import atomic_open

from . import train

MANIFEST = "manifest.json"
FORMAT = 1
N_CELLS = 672
N_STRATA = 288
# Per-click columns besides the features (is_robot only when the log has it).
COLUMNS = ("ts", "tz_offset_min", "device", "logged_in", "session_hash", "purchased",
           "weak_label", "day", "cell", "stratum")
DTYPES: dict[str, Any] = {"ts": np.int64, "tz_offset_min": np.int16, "device": np.uint8,
                          "logged_in": bool, "session_hash": np.uint64, "purchased": bool,
                          "weak_label": np.int8, "day": np.int32, "cell": np.int16,
                          "stratum": np.int16, "is_robot": bool}
FEATURES = "features"  # pseudo column: the (n, N_FEATURES) float32 matrix
# The features' column names in a part ("f_" + the feature's name: some features share a name
# with a per-click column, e.g. logged_in).
FEATURE_COLUMNS: tuple[str, ...] = tuple("f_" + n for n in FEATURE_NAMES)


class FeatureStore:
    """A feature directory (see the module doc): read by day and by row, in bounded batches."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path / MANIFEST) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.path}: feature directory format "
                             f"{self.manifest.get('format')} (this slidr reads {FORMAT})")
        self.parts: list[dict[str, Any]] = self.manifest["parts"]
        c = self.manifest["counts"]
        self.days = np.asarray(c["days"], np.int64)
        self.day_clicks = np.asarray(c["clicks"], np.int64)
        self.day_purchases = np.asarray(c["purchases"], np.int64)
        self.day_humans = np.asarray(c["humans"], np.int64)
        self.day_cells = np.asarray(c["cells"], np.int64).reshape(-1, N_CELLS)
        self.day_strata = np.asarray(c["strata"], np.int64).reshape(-1, N_STRATA)

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    @property
    def has_robot(self) -> bool:
        return bool(self.manifest["has_robot"])

    @property
    def seconds(self) -> float:
        return float(self.manifest["replay"]["seconds"])

    @property
    def store_name(self) -> str:
        return str(self.manifest["replay"]["store"])

    @property
    def clicks_per_s(self) -> float:
        s = self.seconds
        return len(self) / s if s > 0 else float("nan")

    def rows_in(self, days: Iterable[int]) -> int:
        m = np.isin(self.days, np.asarray(list(days), np.int64))
        return int(self.day_clicks[m].sum())

    def iter_batches(self, columns: Sequence[str], days: Iterable[int] | None = None,
                     rows: np.ndarray | None = None, batch_rows: int = 262_144,
                     with_index: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Dicts of numpy columns (FEATURES: the (n, N_FEATURES) float32 matrix) of at most about
        `batch_rows` rows, in log order: every row, the rows of `days`, or the rows whose global
        index is in `rows` (sorted int64). with_index adds `_row`, each row's global index."""
        import pyarrow.parquet as pq
        want_days = None if days is None else np.asarray(sorted(set(days)), np.int64)
        rows = None if rows is None else np.asarray(rows, np.int64)
        names = [c for c in columns if c != FEATURES]
        read = list(dict.fromkeys(
            ([*FEATURE_COLUMNS] if FEATURES in columns else []) + names
            + (["day"] if want_days is not None else [])))
        for p in self.parts:
            a, n = int(p["start"]), int(p["rows"])
            if want_days is not None and not np.any((want_days >= p["day_min"])
                                                    & (want_days <= p["day_max"])):
                continue
            if rows is not None:
                lo, hi = np.searchsorted(rows, [a, a + n])
                if lo == hi:
                    continue
                local = rows[lo:hi] - a
            else:
                local = None
            pf = pq.ParquetFile(self.path / p["file"])
            off = 0
            for b in pf.iter_batches(batch_size=batch_rows, columns=read):
                m = b.num_rows
                sel: np.ndarray | None = None
                if want_days is not None:
                    d = b.column("day").to_numpy()
                    keep = np.isin(d, want_days)
                    if not keep.any():
                        off += m
                        continue
                    sel = None if keep.all() else np.flatnonzero(keep)
                if local is not None:
                    i0, i1 = np.searchsorted(local, [off, off + m])
                    if i0 == i1:
                        off += m
                        continue
                    idx = local[i0:i1] - off
                    sel = idx if sel is None else np.intersect1d(sel, idx, assume_unique=True)
                out: dict[str, np.ndarray] = {}
                if FEATURES in columns:
                    x = np.empty((m if sel is None else sel.size, N_FEATURES), np.float32)
                    for j in range(N_FEATURES):
                        col = b.column(FEATURE_COLUMNS[j]).to_numpy()
                        x[:, j] = col if sel is None else col[sel]
                    out[FEATURES] = x
                for c in names:
                    col = b.column(c).to_numpy(zero_copy_only=False)
                    out[c] = col if sel is None else col[sel]
                if with_index:
                    out["_row"] = a + off + (np.arange(m, dtype=np.int64) if sel is None
                                             else sel.astype(np.int64))
                off += m
                yield out

    def iter_rebatched(self, columns: Sequence[str], size: int, days: Iterable[int] | None = None,
                       rows: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
        """iter_batches cut into batches of exactly `size` rows (the last one shorter), counted
        from the first selected row: the batches a whole-array loop of that step would see."""
        buf: list[dict[str, np.ndarray]] = []
        have = 0
        for b in self.iter_batches(columns, days=days, rows=rows,
                                   batch_rows=min(size, 262_144)):
            buf.append(b)
            have += next(iter(b.values())).shape[0]
            while have >= size:
                cat = {c: np.concatenate([x[c] for x in buf]) for c in columns}
                yield {c: v[:size] for c, v in cat.items()}
                rest = {c: v[size:] for c, v in cat.items()}
                have -= size
                buf = [rest] if have else []
        if have:
            yield {c: np.concatenate([x[c] for x in buf]) for c in columns}

    def load(self, columns: Sequence[str], days: Iterable[int] | None = None,
             rows: np.ndarray | None = None, batch_rows: int = 262_144) -> dict[str, np.ndarray]:
        """The columns of the selected rows as whole arrays (filled batch by batch: one copy)."""
        if rows is not None:
            total = int(np.asarray(rows).size)
        elif days is not None:
            total = self.rows_in(days)
        else:
            total = len(self)
        out: dict[str, np.ndarray] = {}
        for c in columns:
            out[c] = (np.empty((total, N_FEATURES), np.float32) if c == FEATURES
                      else np.empty(total, DTYPES.get(c, np.float32)))
        k = 0
        for b in self.iter_batches(columns, days=days, rows=rows, batch_rows=batch_rows):
            n = next(iter(b.values())).shape[0]
            for c in columns:
                out[c][k:k + n] = b[c]
            k += n
        if k != total:
            raise RuntimeError(f"{self.path}: read {k} rows, the manifest says {total}")
        return out


def part_columns(ch: Any, weak_labels: Callable[[Any], np.ndarray], weighting: str,
                 day0: int, has_robot: bool) -> dict[str, np.ndarray]:
    """The per-click columns of one part (see the module doc) for a replay chunk `ch`."""
    n = len(ch)
    day = (ch.ts // train.DAY_MS - day0).astype(np.int32)
    wl = np.asarray(weak_labels(ch), np.int8)
    y = (1 - wl).astype(np.int8)
    pur = ch.purchased if ch.purchased is not None else np.zeros(n, bool)
    cell = train.weight_cells(ch.ts, ch.tz_offset_min, ch.logged_in, y,
                              weighting).astype(np.int16)
    stratum = train.sample_strata(ch.ts, ch.tz_offset_min, ch.device, ch.logged_in,
                                  y).astype(np.int16)
    cols: dict[str, np.ndarray] = {
        "ts": ch.ts, "tz_offset_min": ch.tz_offset_min, "device": ch.device,
        "logged_in": ch.logged_in, "session_hash": ch.session_hash, "purchased": pur,
        "weak_label": wl, "day": day, "cell": cell, "stratum": stratum}
    if has_robot:
        cols["is_robot"] = ch.is_robot if ch.is_robot is not None else np.zeros(n, bool)
    return cols


def part_counts(cols: dict[str, np.ndarray]) -> dict[int, list[Any]]:
    """day -> [clicks, purchases, weak-label humans, clicks per weight cell, per stratum]."""
    day, pur, wl = cols["day"], cols["purchased"], cols["weak_label"]
    out: dict[int, list[Any]] = {}
    for d in range(int(day[0]), int(day[-1]) + 1):
        a, b = np.searchsorted(day, [d, d + 1])
        if a == b:
            continue
        out[d] = [int(b - a), int(pur[a:b].sum()), int(wl[a:b].sum()),
                  np.bincount(cols["cell"][a:b], minlength=N_CELLS),
                  np.bincount(cols["stratum"][a:b], minlength=N_STRATA)]
    return out


def write_part(path: Path, name: str, features: np.ndarray, cols: dict[str, np.ndarray],
               compression: str = "lz4") -> None:
    """One part file: the features as f_ columns, then the per-click columns (written under a
    temporary name and renamed: a part that exists is complete)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq
    arrays = [pa.array(features[:, j]) for j in range(N_FEATURES)]
    names = list(FEATURE_COLUMNS)
    for k, v in cols.items():
        arrays.append(pa.array(np.asarray(v, DTYPES[k])))
        names.append(k)
    tmp = path / f".{name}.tmp-{os.getpid()}"
    pq.write_table(pa.Table.from_arrays(arrays, names=names), tmp, compression=compression)
    os.replace(tmp, path / name)


def write_manifest(path: Path, parts: list[dict[str, Any]], counts: list[dict[int, list[Any]]],
                   day0: int | None, has_robot: bool, weighting: str, store_name: str,
                   seconds: float) -> FeatureStore:
    """manifest.json of the parts (in log order, each with its per-day counts) -> the store."""
    agg: dict[int, list[Any]] = {}
    for c in counts:
        for d, v in c.items():
            if d not in agg:
                agg[d] = [0, 0, 0, np.zeros(N_CELLS, np.int64), np.zeros(N_STRATA, np.int64)]
            for i in range(5):
                agg[d][i] = agg[d][i] + v[i]
    present = sorted(d for d in agg if agg[d][0] > 0)
    manifest = {
        "format": FORMAT, "rows": int(sum(p["rows"] for p in parts)), "day0": day0,
        "has_robot": bool(has_robot), "weighting": weighting,
        "columns": [*FEATURE_COLUMNS, *COLUMNS, *(["is_robot"] if has_robot else [])],
        "parts": parts,
        "counts": {"days": present,
                   **{k: [int(agg[d][i]) for d in present]
                      for i, k in enumerate(("clicks", "purchases", "humans"))},
                   "cells": [agg[d][3].tolist() for d in present],
                   "strata": [agg[d][4].tolist() for d in present]},
        "replay": {"store": store_name, "seconds": float(seconds)},
    }
    with atomic_open(path / MANIFEST, "w") as f:
        json.dump(manifest, f)
    return FeatureStore(path)


def write(stream: Any, path: str | Path, weak_labels: Callable[[Any], np.ndarray],
          weighting: str = "label", on_chunk: Callable[[Any, dict[str, np.ndarray]], None]
          | None = None, compression: str = "lz4") -> FeatureStore:
    """Run the replay `stream` (replay.iter_replay) and write each chunk as one Parquet part
    under `path` (created; it must not hold a manifest yet), with its weak labels
    (`weak_labels(chunk)` -> int8, 1 = human), day, weight cell and sampling stratum.
    `on_chunk(chunk, columns)` sees each chunk (streaming statistics). Returns the store."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if (path / MANIFEST).exists():
        raise FileExistsError(f"{path} holds a feature directory already")
    parts: list[dict[str, Any]] = []
    counts: list[dict[int, list[Any]]] = []
    day0: int | None = None
    has_robot: bool | None = None
    t0 = time.perf_counter()
    n_total = 0
    for ch in stream:
        n = len(ch)
        if n == 0:
            continue
        if has_robot is None:
            has_robot = ch.is_robot is not None
        if day0 is None:
            day0 = int(ch.ts[0] // train.DAY_MS)
        cols = part_columns(ch, weak_labels, weighting, day0, has_robot)
        name = f"part-{len(parts):05d}.parquet"
        write_part(path, name, ch.features, cols, compression)
        counts.append(part_counts(cols))
        parts.append({"file": name, "start": n_total, "rows": n,
                      "day_min": int(cols["day"][0]), "day_max": int(cols["day"][-1])})
        n_total += n
        if on_chunk is not None:
            on_chunk(ch, cols)
    return write_manifest(path, parts, counts, day0, bool(has_robot), weighting,
                          getattr(stream, "store_name", ""),
                          getattr(stream, "seconds", time.perf_counter() - t0))
