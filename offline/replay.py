"""Feature replay: stream a click log in time order through the same feature kernel the daemon
uses, so training features and serving features cannot drift apart.

The counters are causal (each click sees only the clicks before it) and the store processes a
batch in arrival order, so the batch size changes speed, never the features.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from slidr.ext import reference

from slidr.contract import DEVICES, iter_log_chunks
from slidr.featurespec import N_FEATURES, RAW_WIDTH, finish
from slidr.kernel import NATIVE, FeatureKernel, Store, native
from slidr.util import Progress

DEFAULT_BATCH = 16_384
# Rows per chunk read from the log (validated, hashed and counted as one unit).
CHUNK_ROWS = 131_072


@dataclass
class Replay:
    """Features and the per-click columns the offline pipeline needs, all in log order."""

    features: np.ndarray  # float32 (n, N_FEATURES)
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
        from slidr.files import parquet_file
        return int(parquet_file(path, "click log").metadata.num_rows)
    return None


def _prepare(tbl: Any, hash_columns: Any) -> dict[str, Any]:
    """One validated chunk -> the kernel's columns, key hashes included (no per-click Python
    strings: the keys are hashed from the arrow buffers), plus what the Replay keeps."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = tbl.column_names
    n = tbl.num_rows
    li = tbl.column("logged_in").to_numpy(zero_copy_only=False).astype(bool)
    uid = tbl.column("user_id") if "user_id" in names else None
    # contract.ClickBatch.from_columns: device names -> codes, missing / null tz -> 0.
    dev = pc.index_in(tbl.column("device"), value_set=pa.array(DEVICES))
    c: dict[str, Any] = {
        "n": n,
        "ts": np.ascontiguousarray(tbl.column("ts").to_numpy(), dtype=np.int64),
        "li": li,
        "dev": dev.to_numpy(zero_copy_only=False).astype(np.uint8),
        "tz": (pc.fill_null(tbl.column("tz_offset_min"), 0).to_numpy(zero_copy_only=False)
               .astype(np.int16) if "tz_offset_min" in names else np.zeros(n, np.int16)),
        "pur": (tbl.column("purchased").to_numpy(zero_copy_only=False).astype(bool)
                if "purchased" in names else None),
        "rob": (tbl.column("is_robot").to_numpy(zero_copy_only=False).astype(bool)
                if "is_robot" in names else None),
        "uid": uid.to_pylist() if uid is not None else [None] * n,
    }
    # spec 4: the log's ad_id and user_agent (either may be missing: all absent)
    c["uh"], c["sh"], c["ih"], c["hll"], c["eh"] = hash_columns(
        uid, tbl.column("session_id"), tbl.column("ip"), li,
        tbl.column("ad_id") if "ad_id" in names else None,
        tbl.column("user_agent") if "user_agent" in names else None)
    return c


_END = object()


def _read_ahead(it: Any, depth: int = 2) -> Any:
    """Run the iterator `it` in a thread, `depth` items ahead of the consumer. pyarrow's reads
    and compute kernels and the native hashing release the GIL, so the next chunk is read,
    validated and hashed while the kernel counts the current one. The producer's exceptions
    (ContractError...) are raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in it:
                if not put((x, None)):
                    return
        except BaseException as e:  # handed to the consumer
            put((_END, e))
            return
        put((_END, None))

    th = threading.Thread(target=work, name="replay-read-ahead", daemon=True)
    th.start()
    try:
        while True:
            x, err = q.get()
            if x is _END:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        th.join()


@dataclass
class ReplayChunk:
    """One chunk of a replay: the features of rows [start, start + n) of the log and the
    per-click columns the offline pipeline needs, in log order."""

    start: int
    features: np.ndarray  # float32 (n, N_FEATURES)
    ts: np.ndarray
    tz_offset_min: np.ndarray
    device: np.ndarray
    logged_in: np.ndarray
    session_hash: np.ndarray
    user_id: list[Any]
    purchased: np.ndarray | None  # None when the log has no purchased column
    is_robot: np.ndarray | None

    def __len__(self) -> int:
        return int(self.ts.shape[0])


class ReplayStream:
    """Iterate to replay a click log chunk by chunk (ReplayChunk in log order). Counters are
    carried from one chunk to the next in one store, so the features do not depend on the
    chunk size: concatenated, the chunks equal replay_log's arrays exactly. Memory is one
    chunk (plus the read-ahead), whatever the log's size. After the iteration: `seconds`,
    `rows`, `store_name`."""

    def __init__(self, path: str | Path, store: Store | None = None,
                 use_native: bool | None = None, batch_size: int = DEFAULT_BATCH,
                 progress: bool = True, require_purchased: bool = True,
                 limit: int | None = None, threads: bool = True,
                 chunk_rows: int | None = None) -> None:
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1 (got {chunk_rows})")
        self.path = Path(path)
        self.batch_size = batch_size
        self.progress = progress
        self.require_purchased = require_purchased
        self.limit = limit
        self.threads = threads
        self.chunk_rows = chunk_rows if chunk_rows is not None else max(batch_size, CHUNK_ROWS)
        if (store is None and threads and (NATIVE if use_native is None else use_native)
                and native is not None):
            # The daemon's store, sweeping an eighth as often: the sweep only frees keys past
            # their TTL (+ grace) and the log is checked to be in time order, so the counters
            # are the same; it saves ~1/8 of the replay's CPU at the cost of more dead keys
            # held meanwhile.
            store = native.EmbeddedStore(capacity_hint=1 << 16, sweep_scan=1)
        self.kernel = FeatureKernel(store=store, use_native=use_native)
        self.store_name = getattr(self.kernel.store, "name", type(self.kernel.store).__name__)
        self.seconds = 0.0
        self.rows = 0
        self.total = count_rows(self.path)
        if self.total is not None and limit is not None:
            self.total = min(self.total, limit)
        self._started = False

    def __iter__(self) -> Iterator[ReplayChunk]:
        if self._started:
            raise RuntimeError("a ReplayStream is iterated once (its counters have moved on)")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[ReplayChunk]:
        kernel = self.kernel
        batch_size = self.batch_size
        fin = (native.finish_into if (kernel.use_native and hasattr(native, "finish_into"))
               else finish)
        hash_columns = (native.hash_key_columns
                        if kernel.use_native and hasattr(native, "hash_key_columns")
                        else reference.hash_key_columns)
        split = (self.threads and hasattr(kernel.store, "update_tables")
                 and fin is not finish)
        require = ("purchased",) if self.require_purchased else ()
        limit = self.limit
        bar = Progress(self.total or 1, "replay",
                       enabled=self.progress and self.total is not None)
        # Two raw counter buffers, reused: chunk k + 1 is counted while chunk k is finished.
        raw_bufs: list[np.ndarray | None] = [None, None]
        t0 = time.perf_counter()

        def chunks() -> Any:
            got = 0
            for tbl in iter_log_chunks(self.path, chunk_rows=self.chunk_rows,
                                       require=require, read_dictionary=("user_agent",)):
                if limit is not None and got >= limit:
                    return
                if limit is not None and got + tbl.num_rows > limit:
                    tbl = tbl.slice(0, limit - got)
                got += tbl.num_rows
                yield _prepare(tbl, hash_columns)

        def record(c: dict[str, Any], out: np.ndarray, start: int) -> ReplayChunk:
            return ReplayChunk(start=start, features=out, ts=c["ts"], tz_offset_min=c["tz"],
                               device=c["dev"], logged_in=c["li"], session_hash=c["sh"],
                               user_id=c["uid"], purchased=c["pur"], is_robot=c["rob"])

        pool = ThreadPoolExecutor(1, thread_name_prefix="replay-ips") if split else None
        st = kernel.store
        # With the split, chunk k's features are finished (half in the worker) while chunk
        # k + 1 is counted; chunk k is handed out once that finish is done.
        pending: Any = None
        held: ReplayChunk | None = None
        n_done = 0
        n_chunks = 0
        try:
            for c in (_read_ahead(chunks()) if self.threads else chunks()):
                n = c["n"]
                ts, uh, sh, ih, hll, tz = c["ts"], c["uh"], c["sh"], c["ih"], c["hll"], c["tz"]
                eh, li = c["eh"], c["li"]
                out = np.empty((n, N_FEATURES), dtype=np.float32)
                spans = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
                if pool is not None:
                    # Chunk k uses buffer k % 2: chunk k - 2's finish, its last user, is done.
                    k = n_chunks % 2
                    buf = raw_bufs[k]
                    if buf is None or buf.shape[0] < n:
                        buf = raw_bufs[k] = np.empty((n, RAW_WIDTH), dtype=np.float64)
                    raw = buf[:n]

                    def count(tables: int, raw: np.ndarray = raw, ts: np.ndarray = ts,
                              uh: np.ndarray = uh, sh: np.ndarray = sh, ih: np.ndarray = ih,
                              hll: np.ndarray = hll, tz: np.ndarray = tz, eh: np.ndarray = eh,
                              li: np.ndarray = li, spans: list = spans) -> None:
                        for a, b in spans:
                            st.update_tables(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b],
                                             raw[a:b], tables, tz[a:b], eh[a:b], li[a:b])

                    # the entity table (three lookups per click) in the worker, users,
                    # sessions and IPs here: about the same work
                    ips = pool.submit(count, 8)
                    count(7)
                    ips.result()
                    if pending is not None:
                        pending.result()
                        pending = None
                    if held is not None:
                        yield held
                        held = None
                    # Finish the features: the first half in the worker (after it, the worker
                    # counts the next chunk's IPs), the second half here.
                    h = n // 2
                    pending = pool.submit(fin, raw[:h], ts[:h], c["tz"][:h], c["li"][:h],
                                          c["dev"][:h], out[:h])
                    fin(raw[h:], ts[h:], c["tz"][h:], c["li"][h:], c["dev"][h:], out[h:])
                    held = record(c, out, n_done)
                    bar.update(n)
                else:
                    for a, b in spans:
                        raw = st.update(ts[a:b], uh[a:b], sh[a:b], ih[a:b], hll[a:b], tz[a:b],
                                        eh[a:b], li[a:b])
                        fin(raw, ts[a:b], c["tz"][a:b], c["li"][a:b], c["dev"][a:b],
                            out[a:b])
                        bar.update(b - a)
                    yield record(c, out, n_done)
                n_done += n
                n_chunks += 1
            if pending is not None:
                pending.result()
            if held is not None:
                yield held
        finally:
            # rows and seconds are set once, when the stream ends (they count the consumer's
            # time between chunks too).
            if pool is not None:
                pool.shutdown(wait=True)
            bar.close()
            self.rows = n_done
            self.seconds = time.perf_counter() - t0


def chunks_of(rp: Replay, chunk_rows: int) -> Iterator[ReplayChunk]:
    """A replay held whole (e.g. computed on Spark) as ReplayChunks of at most chunk_rows, for
    what takes a stream (offline/featurestore.py write)."""
    n = len(rp)
    for a in range(0, n, max(chunk_rows, 1)):
        b = min(a + chunk_rows, n)
        yield ReplayChunk(start=a, features=rp.features[a:b], ts=rp.ts[a:b],
                          tz_offset_min=rp.tz_offset_min[a:b], device=rp.device[a:b],
                          logged_in=rp.logged_in[a:b], session_hash=rp.session_hash[a:b],
                          user_id=rp.user_id[a:b], purchased=rp.purchased[a:b],
                          is_robot=None if rp.is_robot is None else rp.is_robot[a:b])


def iter_replay(path: str | Path, **kw: Any) -> ReplayStream:
    """Replay the log at `path` chunk by chunk: `for chunk in iter_replay(path): ...`.
    Keywords as replay_log's, plus chunk_rows (rows read, validated and counted as one unit;
    the features do not depend on it)."""
    return ReplayStream(path, **kw)


def replay_log(path: str | Path, store: Store | None = None, use_native: bool | None = None,
               batch_size: int = DEFAULT_BATCH, progress: bool = True,
               require_purchased: bool = True, limit: int | None = None,
               threads: bool = True, chunk_rows: int | None = None) -> Replay:
    """Replay the log at `path` (Parquet or CSV, validated by the contract loader) and hold
    every click's features in memory (iter_replay streams them chunk by chunk instead).

    store: a counter store (embedded by default; e.g. slidr.store_redis.RedisStore for a replay
    that fills a shared Redis). The batch size sets the store round trips (one per batch).
    threads: read, validate and hash the next chunk in a thread while the kernel counts this
    one; with the native embedded store, also count the IP table (and finish half of each
    chunk's features) in a second thread while this one counts users and sessions. The tables
    are independent and each still sees the clicks in log order, so the features are the same.
    """
    stream = ReplayStream(path, store=store, use_native=use_native, batch_size=batch_size,
                          progress=progress, require_purchased=require_purchased, limit=limit,
                          threads=threads, chunk_rows=chunk_rows)
    # One features array filled chunk by chunk when the row count is known (no concatenation
    # of the whole log).
    feats_all = (np.empty((stream.total, N_FEATURES), np.float32)
                 if stream.total is not None else None)
    feats: list[np.ndarray] = []
    cols: dict[str, list[Any]] = {k: [] for k in ("ts", "tz", "dev", "li", "sh", "pur", "rob")}
    user_ids: list[Any] = []
    has_robot: bool | None = None
    n_done = 0
    for ch in stream:
        n = len(ch)
        if has_robot is None:
            has_robot = ch.is_robot is not None
        if feats_all is not None and n_done + n <= feats_all.shape[0]:
            feats_all[n_done:n_done + n] = ch.features
        else:
            if feats_all is not None:  # the file had more rows than its metadata said
                feats.append(feats_all[:n_done])
                feats_all = None
            feats.append(ch.features)
        cols["ts"].append(ch.ts)
        cols["tz"].append(ch.tz_offset_min)
        cols["dev"].append(ch.device)
        cols["li"].append(ch.logged_in)
        cols["sh"].append(ch.session_hash)
        if ch.purchased is not None:
            cols["pur"].append(ch.purchased)
        if has_robot and ch.is_robot is not None:
            cols["rob"].append(ch.is_robot)
        user_ids.extend(ch.user_id)
        n_done += n

    def cat(k: str, dtype: Any) -> np.ndarray:
        return np.concatenate(cols[k]) if cols[k] else np.zeros(0, dtype=dtype)

    return Replay(
        features=(feats_all[:n_done] if feats_all is not None
                  else np.concatenate(feats) if feats else np.zeros((0, N_FEATURES), np.float32)),
        ts=cat("ts", np.int64), tz_offset_min=cat("tz", np.int16), device=cat("dev", np.uint8),
        logged_in=cat("li", bool), session_hash=cat("sh", np.uint64), user_id=user_ids,
        purchased=cat("pur", bool) if cols["pur"] else np.zeros(n_done, dtype=bool),
        is_robot=cat("rob", bool) if has_robot else None,
        seconds=stream.seconds, store_name=stream.store_name,
    )
