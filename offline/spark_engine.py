"""Feature replay on Spark: the same counters as offline.replay, computed per entity.

The counters are sequential per entity key and independent across keys and across entity
kinds (the embedded store's tables: users -> raw columns 0-4, sessions -> 5-12, IPs -> 13-36;
featurespec.RAW_SPANS).
So, for each kind, the clicks are partitioned by that kind's key hash, sorted within each
partition by the log row number (the single-machine replay's order: arrival order, whatever
the timestamps say), and the same Cython kernel (EmbeddedStore.update_tables with that kind's
table bit) runs over each partition with mapInArrow. Every key lives in exactly one partition
and sees its clicks in log order, so its counters equal the replay's. The three raw blocks are
joined back by row number and finished into features by the same finish function.

Staging: the driver streams the log once through the contract loader (validation, the same key
hashing as the replay) into a Parquet file of kernel inputs with the row number; Spark reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from slidr.featurespec import N_FEATURES, RAW_SPANS, RAW_WIDTH

# (table bit, key column, first raw column, end raw column)
KINDS: tuple[tuple[int, str, int, int], ...] = (
    (1, "uh", *RAW_SPANS["user"]), (2, "sh", *RAW_SPANS["session"]), (4, "ih", *RAW_SPANS["ip"]))
FAULT_ENV = "SLIDR_SPARK_FAULT_ONCE"  # tests: a marker path; first attempt of partition 0 exits


def stage_log(path: str | Path, out: str | Path, chunk_rows: int = 131_072,
              require_purchased: bool = True) -> dict[str, Any]:
    """Validate and hash the log at `path` into a Parquet file of kernel inputs (row number
    `rid` = position in the log). Returns the per-click columns a Replay holds besides the
    features (in log order), and the row count `n`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from slidr.ext import reference
    from slidr.offline.replay import _prepare

    from slidr.contract import iter_log_chunks
    from slidr.kernel import native

    hash_columns = (native.hash_key_columns if native is not None
                    and hasattr(native, "hash_key_columns") else reference.hash_key_columns)
    require = ("purchased",) if require_purchased else ()
    writer = None
    n_done = 0
    keep: dict[str, list[Any]] = {k: [] for k in ("ts", "tz", "dev", "li", "sh", "pur", "rob")}
    user_ids: list[Any] = []
    try:
        for tbl in iter_log_chunks(path, chunk_rows=chunk_rows, require=require,
                                   read_dictionary=("user_agent",)):
            c = _prepare(tbl, hash_columns)
            n = c["n"]
            hll = np.ascontiguousarray(c["hll"], dtype=np.uint8)
            cols = {
                "rid": pa.array(np.arange(n_done, n_done + n, dtype=np.int64)),
                "ts": pa.array(c["ts"]),
                "uh": pa.array(np.asarray(c["uh"], np.uint64).view(np.int64)),
                "sh": pa.array(np.asarray(c["sh"], np.uint64).view(np.int64)),
                "ih": pa.array(np.asarray(c["ih"], np.uint64).view(np.int64)),
                "hll": pa.array(hll.view(np.int32).reshape(n)),
                "tz": pa.array(c["tz"].astype(np.int16)),
                "li": pa.array(c["li"]),
                "dev": pa.array(c["dev"].astype(np.int16)),
            }
            t = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(str(out), t.schema)
            writer.write_table(t)
            for k in keep:
                if c[k] is not None:
                    keep[k].append(c[k])
            user_ids.extend(c["uid"])
            n_done += n
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an empty log: an empty staged file with the schema
        raise ValueError(f"click log has no rows: {path}")
    return {"n": n_done, "user_id": user_ids,
            **{k: (np.concatenate(v) if v else None) for k, v in keep.items()}}


def _count_partition(bit: int, lo: int, hi: int) -> Any:
    """mapInArrow function: one partition of one entity kind, batches in rid order."""

    # Read on the driver when the plan is built and shipped with the function (a Python
    # worker forked earlier would not see a variable set later).
    fault = os.environ.get(FAULT_ENV)

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from slidr.kernel import native
        if fault:
            from pyspark import TaskContext
            tc = TaskContext.get()
            if tc is not None and tc.partitionId() == 0 and tc.attemptNumber() == 0 \
                    and not os.path.exists(fault):
                Path(fault).write_text("killed\n")
                os._exit(137)
        store = native.EmbeddedStore()
        for b in batches:
            n = b.num_rows
            if n == 0:
                continue
            ts = b.column("ts").to_numpy()
            key = b.column(("uh", "sh", "ih")[bit.bit_length() - 1]).to_numpy().view(np.uint64)
            zero = np.zeros(n, np.uint64)
            hll = (b.column("hll").to_numpy().astype(np.int32).view(np.uint8).reshape(n, 4)
                   if bit == 4 else np.zeros((n, 4), np.uint8))
            uh = key if bit == 1 else zero
            sh = key if bit == 2 else zero
            ih = key if bit == 4 else zero
            raw = store.update_tables(ts, uh, sh, ih, hll, None, bit)
            cols = [b.column("rid")] + [pa.array(np.ascontiguousarray(raw[:, j]))
                                        for j in range(lo, hi)]
            yield pa.RecordBatch.from_arrays(cols, ["rid"] + [f"r{j}" for j in range(lo, hi)])
    return run


def spark_session(master: str = "local[4]", app: str = "slidr-daily",
                  conf: dict[str, str] | None = None) -> Any:
    """A SparkSession whose Python workers run this interpreter (the same slidr and kernel)."""
    import sys

    from pyspark.sql import SparkSession
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    b = SparkSession.builder.master(master).appName(app)
    for k, v in (conf or {}).items():
        b = b.config(k, v)
    return (b
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.driver.memory", "1g")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate())


def spark_features(spark: Any, staged: str | Path, partitions: int = 8) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Features (float32 (n, N_FEATURES), in log order) of the staged log, and its rids."""
    from slidr.featurespec import finish
    from slidr.kernel import native

    df = spark.read.parquet(str(staged))
    joined = df.select("rid", "ts", "tz", "li", "dev")
    for bit, key, lo, hi in KINDS:
        schema = "rid long, " + ", ".join(f"r{j} double" for j in range(lo, hi))
        part = (df.select("rid", "ts", key, "hll").repartition(partitions, key)
                .sortWithinPartitions("rid")
                .mapInArrow(_count_partition(bit, lo, hi), schema))
        joined = joined.join(part, "rid")
    tbl = joined.orderBy("rid").toArrow() if hasattr(joined, "toArrow") else None
    if tbl is None:
        pdf = joined.orderBy("rid").toPandas()
        cols = {c: pdf[c].to_numpy() for c in pdf.columns}
    else:
        cols = {c: tbl.column(c).to_numpy() for c in tbl.column_names}
    n = cols["rid"].shape[0]
    raw = np.empty((n, RAW_WIDTH), np.float64)
    for j in range(RAW_WIDTH):
        raw[:, j] = cols[f"r{j}"]
    out = np.empty((n, N_FEATURES), np.float32)
    fin = native.finish_into if native is not None and hasattr(native, "finish_into") else finish
    fin(raw, cols["ts"].astype(np.int64), cols["tz"].astype(np.int16), cols["li"].astype(bool),
        cols["dev"].astype(np.uint8), out)
    return out, cols["rid"]


def replay_spark(path: str | Path, spark: Any = None, master: str = "local[4]",
                 partitions: int | None = None, require_purchased: bool = True,
                 work: str | Path | None = None) -> Any:
    """offline.replay.replay_log's Replay, with the counters computed on Spark. `spark`: an
    existing SparkSession (else one on `master`, stopped at the end). The features come back
    to the driver in log order: the daily job's drift check, training sample and held-out
    scoring read them there, as with the local engine."""
    import shutil
    import tempfile
    import time

    from slidr.offline.replay import Replay

    t0 = time.perf_counter()
    own_dir = work is None
    wdir = Path(tempfile.mkdtemp(prefix="slidr-spark-")) if work is None else Path(work)
    wdir.mkdir(parents=True, exist_ok=True)
    own = spark is None
    try:
        staged = wdir / "staged.parquet"
        cols = stage_log(path, staged, require_purchased=require_purchased)
        if own:
            spark = spark_session(master)
        parts = partitions or max(4, int(spark.sparkContext.defaultParallelism) * 2)
        feats, rid = spark_features(spark, staged, parts)
        if rid.shape[0] != cols["n"] or not np.array_equal(rid, np.arange(cols["n"])):
            raise RuntimeError("spark replay: the joined features do not cover the log once")
        n = cols["n"]
        return Replay(features=feats, ts=cols["ts"], tz_offset_min=cols["tz"],
                      device=cols["dev"], logged_in=cols["li"], session_hash=cols["sh"],
                      user_id=cols["user_id"],
                      purchased=cols["pur"] if cols["pur"] is not None else np.zeros(n, bool),
                      is_robot=cols["rob"], seconds=time.perf_counter() - t0,
                      store_name=f"spark:{master if own else spark.sparkContext.master}")
    finally:
        if own and spark is not None:
            spark.stop()
        if own_dir:
            shutil.rmtree(wdir, ignore_errors=True)
