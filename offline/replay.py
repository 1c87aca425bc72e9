"""Feature replay: stream a click log in time order through the same feature kernel the daemon
uses, so training features and serving features cannot drift apart.

The counters are causal (each click sees only the clicks before it) and the store processes a
batch in arrival order, so the batch size changes speed, never the features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr.contract import batch_from_table, iter_log_chunks
from slidr.featurespec import N_FEATURES, finish
from slidr.kernel import FeatureKernel, Store, hash_keys, native
from slidr.util import Progress

DEFAULT_BATCH = 16_384


@dataclass
class Replay:
    """Features and the per-click columns the offline pipeline needs, all in log order."""

    features: np.ndarray  # float32 (n, 24)
    ts: np.ndarray  # int64 epoch ms
    tz_offset_min: np.ndarray  # int16
    device: np.ndarray  # uint8 codes into contract.DEVICES
    logged_in: np.ndarray  # bool
    session_hash: np.ndarray  # uint64, the kernel's session key hash
    user_id: list[Any]  # str | None, for RFM weak labels
    purchased: np.ndarray  # bool
    is_robot: np.ndarray | None  # bool, simulated logs only
    seconds: float = 0.0
    store_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def clicks_per_s(self) -> float:
        return len(self) / self.seconds if self.seconds > 0 else float("nan")


def count_rows(path: str | Path) -> int | None:
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def replay_log(path: str | Path, store: Store | None = None, use_native: bool | None = None,
               batch_size: int = DEFAULT_BATCH, progress: bool = True,
               require_purchased: bool = True, limit: int | None = None) -> Replay:
    """Replay the log at `path` (Parquet or CSV, validated by the contract loader).

    store: a counter store (embedded by default; e.g. slidr.store_redis.RedisStore for a replay
    that fills a shared Redis). The batch size sets the store round trips (one per batch).
    """
    kernel = FeatureKernel(store=store, use_native=use_native)
    fin = native.finish_into if (kernel.use_native and hasattr(native, "finish_into")) else finish
    require = ("purchased",) if require_purchased else ()
    total = count_rows(path)
    bar = Progress(total or 1, "replay", enabled=progress and total is not None)
    feats: list[np.ndarray] = []
    cols: dict[str, list[Any]] = {k: [] for k in ("ts", "tz", "dev", "li", "sh", "pur", "rob")}
    user_ids: list[Any] = []
    has_robot: bool | None = None
    t0 = time.perf_counter()
    n_done = 0
    for tbl in iter_log_chunks(path, chunk_rows=max(batch_size, 65_536), require=require):
        if limit is not None and n_done >= limit:
            break
        if limit is not None and n_done + tbl.num_rows > limit:
            tbl = tbl.slice(0, limit - n_done)
        if has_robot is None:
            has_robot = "is_robot" in tbl.column_names
        batch = batch_from_table(tbl)
        n = len(batch)
        out = np.empty((n, N_FEATURES), dtype=np.float32)
        sh_all = np.empty(n, dtype=np.uint64)
        for a in range(0, n, batch_size):
            b = min(a + batch_size, n)
            sub = batch.slice(a, b) if (a, b) != (0, n) else batch
            # FeatureKernel.features inlined to keep the session hash for the heuristic.
            uh, sh, ih, hll = hash_keys(sub, kernel.use_native)
            raw = kernel.store.update(sub.ts, uh, sh, ih, hll)
            fin(raw, sub.ts, sub.tz_offset_min, sub.logged_in, sub.device, out[a:b])
            sh_all[a:b] = sh
            bar.update(b - a)
        feats.append(out)
        cols["ts"].append(batch.ts)
        cols["tz"].append(batch.tz_offset_min)
        cols["dev"].append(batch.device)
        cols["li"].append(batch.logged_in.astype(bool))
        cols["sh"].append(sh_all)
        if "purchased" in tbl.column_names:
            cols["pur"].append(tbl.column("purchased").to_numpy(zero_copy_only=False).astype(bool))
        if has_robot:
            cols["rob"].append(tbl.column("is_robot").to_numpy(zero_copy_only=False).astype(bool))
        user_ids.extend(tbl.column("user_id").to_pylist() if "user_id" in tbl.column_names
                        else [None] * n)
        n_done += n
    bar.close()
    seconds = time.perf_counter() - t0

    def cat(k: str, dtype: Any) -> np.ndarray:
        return np.concatenate(cols[k]) if cols[k] else np.zeros(0, dtype=dtype)

    return Replay(
        features=np.concatenate(feats) if feats else np.zeros((0, N_FEATURES), np.float32),
        ts=cat("ts", np.int64), tz_offset_min=cat("tz", np.int16), device=cat("dev", np.uint8),
        logged_in=cat("li", bool), session_hash=cat("sh", np.uint64), user_id=user_ids,
        purchased=cat("pur", bool) if cols["pur"] else np.zeros(n_done, dtype=bool),
        is_robot=cat("rob", bool) if has_robot else None,
        seconds=seconds, store_name=getattr(kernel.store, "name", type(kernel.store).__name__),
    )
