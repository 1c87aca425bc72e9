"""Feature replay on Spark: the same counters as offline.replay, computed per entity.

The counters are sequential per entity key and independent across keys and across the
embedded store's tables (users, sessions, IPs, and the entity table of ads, IP x ad pairs and
user agents; featurespec.RAW_SPANS gives each table's raw columns).
So, for each table, the clicks are partitioned by that table's key hash, sorted within each
partition by the log row number (the single-machine replay's order: arrival order, whatever
the timestamps say), and the same Cython kernel (EmbeddedStore.update_tables with that table's
bit) runs over each partition with mapInArrow. Every key lives in exactly one partition
and sees its clicks in log order, so its counters equal the replay's. The entity table holds
up to three keys per click (ad, IP x ad, user agent; a click without ad_id or user_agent has
fewer): each click is exploded into one row per present key, the rows partitioned by key and
sorted by (row number, kind: the order the store takes a click's keys in), and each kind's raw
columns go back to their click; a kind the click does not have gets the store's values for an
absent key. The raw blocks are joined back by row number and finished into features by the
same finish function.

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
ENTITY_BIT = 8
# The entity keys' staged columns, in the order of the store's eh columns (ad, IP x ad, user
# agent); 0 = the click has no such key.
ENTITY_KEYS = ("ah", "xh", "gh")
DAY_MS = 86_400_000
FAULT_ENV = "SLIDR_SPARK_FAULT_ONCE"  # tests: a marker path; first attempt of partition 0 exits
# tests: a marker path; the first attempt of the writing stage's partition 0 exits after
# writing its first part
WRITE_FAULT_ENV = "SLIDR_SPARK_WRITE_FAULT_ONCE"


def stage_log(path: str | Path, out: str | Path, chunk_rows: int = 131_072,
              require_purchased: bool = True, keep: bool = True) -> dict[str, Any]:
    """Validate and hash the log at `path` into a Parquet file of kernel inputs (row number
    `rid` = position in the log) and the per-click columns the feature directory needs
    (`uid`, `pur`, `rob`). Returns the row count `n`, the first click's UTC day `day0`,
    `has_robot`, and with `keep` the per-click columns a Replay holds besides the features
    (in log order; without it the driver holds none)."""
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
    kept: dict[str, list[Any]] = {k: [] for k in ("ts", "tz", "dev", "li", "sh", "pur", "rob")}
    user_ids: list[Any] = []
    day0: int | None = None
    has_robot = False
    try:
        for tbl in iter_log_chunks(path, chunk_rows=chunk_rows, require=require,
                                   read_dictionary=("user_agent",)):
            c = _prepare(tbl, hash_columns)
            n = c["n"]
            hll = np.ascontiguousarray(c["hll"], dtype=np.uint8)
            eh = np.ascontiguousarray(c["eh"], dtype=np.uint64)
            cols = {
                "rid": pa.array(np.arange(n_done, n_done + n, dtype=np.int64)),
                "ts": pa.array(c["ts"]),
                "uh": pa.array(np.asarray(c["uh"], np.uint64).view(np.int64)),
                "sh": pa.array(np.asarray(c["sh"], np.uint64).view(np.int64)),
                "ih": pa.array(np.asarray(c["ih"], np.uint64).view(np.int64)),
                **{k: pa.array(np.ascontiguousarray(eh[:, j]).view(np.int64))
                   for j, k in enumerate(ENTITY_KEYS)},
                "hll": pa.array(hll.view(np.int32).reshape(n)),
                "tz": pa.array(c["tz"].astype(np.int16)),
                "li": pa.array(c["li"]),
                "dev": pa.array(c["dev"].astype(np.int16)),
                "uid": pa.array(c["uid"], pa.string()),
                "pur": pa.array(c["pur"] if c["pur"] is not None else np.zeros(n, bool)),
            }
            if day0 is None:
                day0 = int(c["ts"][0] // DAY_MS) if n else None
                has_robot = c["rob"] is not None
            if has_robot:
                cols["rob"] = pa.array(c["rob"] if c["rob"] is not None else np.zeros(n, bool))
            t = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(str(out), t.schema)
            writer.write_table(t)
            if keep:
                for k in kept:
                    if c[k] is not None:
                        kept[k].append(c[k])
                user_ids.extend(c["uid"])
            n_done += n
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an empty log: an empty staged file with the schema
        raise ValueError(f"click log has no rows: {path}")
    return {"n": n_done, "day0": day0, "has_robot": has_robot, "user_id": user_ids,
            **{k: (np.concatenate(v) if v else None) for k, v in kept.items()}}


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
            tz = (b.column("tz").to_numpy().astype(np.int32) if bit == 4
                  else np.zeros(n, np.int32))
            li = (b.column("li").to_numpy(zero_copy_only=False).astype(np.uint8) if bit == 4
                  else np.zeros(n, np.uint8))
            raw = store.update_tables(ts, uh, sh, ih, hll, None, bit, tz, None, li)
            cols = [b.column("rid")] + [pa.array(np.ascontiguousarray(raw[:, j]))
                                        for j in range(lo, hi)]
            yield pa.RecordBatch.from_arrays(cols, ["rid"] + [f"r{j}" for j in range(lo, hi)])
    return run


def entity_absent() -> np.ndarray:
    """The entity table's raw columns for a click with none of the three keys (what the store
    gives for key 0): the value of a kind's columns on a click without that kind."""
    from slidr.kernel import native
    lo, hi = RAW_SPANS["entity"]
    z = np.zeros(1, np.uint64)
    raw = native.EmbeddedStore().update_tables(np.zeros(1, np.int64), z, z, z,
                                               np.zeros((1, 4), np.uint8), tables=ENTITY_BIT,
                                               eh=np.zeros((1, 3), np.uint64))
    return np.ascontiguousarray(raw[0, lo:hi])


def _count_entities(lo: int, hi: int) -> Any:
    """mapInArrow function: one partition of the exploded entity rows (rid, kind, key, ts, tz,
    ih, hll), in (rid, kind) order -> rid and the entity table's raw columns, only the row's
    kind's span filled (the other kinds' columns null)."""
    w = (hi - lo) // len(ENTITY_KEYS)
    names = [f"r{j}" for j in range(lo, hi)]

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from slidr.kernel import native
        store = native.EmbeddedStore()
        for b in batches:
            n = b.num_rows
            if n == 0:
                continue
            ts = b.column("ts").to_numpy()
            kind = b.column("kind").to_numpy().astype(np.intp)
            eh = np.zeros((n, len(ENTITY_KEYS)), np.uint64)
            eh[np.arange(n), kind] = b.column("key").to_numpy().view(np.uint64)
            ih = b.column("ih").to_numpy().view(np.uint64)
            hll = b.column("hll").to_numpy().astype(np.int32).view(np.uint8).reshape(n, 4)
            tz = b.column("tz").to_numpy().astype(np.int32)
            zero = np.zeros(n, np.uint64)
            raw = store.update_tables(ts, zero, zero, ih, hll, tables=ENTITY_BIT, tz=tz, eh=eh)
            cols = [b.column("rid")]
            for j in range(lo, hi):
                k = (j - lo) // w
                mine = kind == k
                cols.append(pa.array(np.ascontiguousarray(raw[:, j]), mask=~mine))
            yield pa.RecordBatch.from_arrays(cols, ["rid"] + names)
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



class _Run:
    """A job's work directory and Spark session: the directory is a temporary one unless
    `work` is given, the session the caller's unless it passes none (then one on `master`,
    started when first asked for, after the driver's own staging). Both are let go of at the
    end of the `with` block when this run made them."""

    def __init__(self, spark: Any, master: str, work: str | Path | None) -> None:
        import tempfile
        self.own_dir = work is None
        self.wdir = Path(tempfile.mkdtemp(prefix="slidr-spark-")) if work is None else Path(work)
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.own = spark is None
        self.master = master
        self._spark = spark

    def session(self) -> Any:
        if self._spark is None:
            self._spark = spark_session(self.master)
        return self._spark

    def store_name(self) -> str:
        return f"spark:{self.master if self.own else self._spark.sparkContext.master}"

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil
        if self.own and self._spark is not None:
            self._spark.stop()
        if self.own_dir:
            shutil.rmtree(self.wdir, ignore_errors=True)

def _counted(spark: Any, staged: str | Path, partitions: int, columns: tuple[str, ...]) -> Any:
    """The staged log's `columns` joined by rid with each entity kind's raw counters
    (r0 .. r{RAW_WIDTH-1}), each kind counted in its own key partitioning."""
    from pyspark.sql import functions as F
    df = spark.read.parquet(str(staged))
    joined = df.select(*columns)
    for bit, key, lo, hi in KINDS:
        schema = "rid long, " + ", ".join(f"r{j} double" for j in range(lo, hi))
        part = (df.select("rid", "ts", key, "hll", "tz", "li").repartition(partitions, key)
                .sortWithinPartitions("rid")
                .mapInArrow(_count_partition(bit, lo, hi), schema))
        joined = joined.join(part, "rid")
    # The entity table: one row per (click, present key), partitioned by key.
    lo, hi = RAW_SPANS["entity"]
    rows = None
    for k, name in enumerate(ENTITY_KEYS):
        r = (df.where(F.col(name) != 0)
             .select("rid", F.lit(k).cast("int").alias("kind"), F.col(name).alias("key"),
                     "ts", "tz", "ih", "hll"))
        rows = r if rows is None else rows.unionByName(r)
    assert rows is not None
    cols = [f"r{j}" for j in range(lo, hi)]
    schema = "rid long, " + ", ".join(f"{c} double" for c in cols)
    ent = (rows.repartition(partitions, "key").sortWithinPartitions("rid", "kind")
           .mapInArrow(_count_entities(lo, hi), schema)
           .groupBy("rid").agg(*(F.max(c).alias(c) for c in cols)))  # one kind per column
    absent = entity_absent()
    joined = joined.join(ent, "rid", "left").fillna(
        {c: float(absent[j]) for j, c in enumerate(cols)})
    return joined


def spark_features(spark: Any, staged: str | Path, partitions: int = 8) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Features (float32 (n, N_FEATURES), in log order) of the staged log, and its rids."""
    from slidr.featurespec import finish
    from slidr.kernel import native

    joined = _counted(spark, staged, partitions, ("rid", "ts", "tz", "li", "dev"))
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
    import time

    from slidr.offline.replay import Replay

    t0 = time.perf_counter()
    with _Run(spark, master, work) as run:
        staged = run.wdir / "staged.parquet"
        cols = stage_log(path, staged, require_purchased=require_purchased)
        spark = run.session()
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
                      store_name=run.store_name())


# ------------------------------------------------------------------ feature directory

PART_SCHEMA = "file string, start long, rows long, day_min int, day_max int, counts string"
_LABELLERS: dict[str, Any] = {}  # customers path -> weak labeller, per Python worker


def _labeller(customers: str | None) -> Any:
    if customers not in _LABELLERS:
        from slidr.offline import pipeline
        _LABELLERS.clear()
        _LABELLERS[customers] = pipeline.chunk_labeller(pipeline.load_customers(customers))
    return _LABELLERS[customers]


def _write_parts(fdir: str, customers: str | None, weighting: str, day0: int, has_robot: bool,
                 chunk_rows: int) -> Any:
    """mapInArrow function: one range of rids (in rid order) with its raw counters -> the
    features, written as feature-directory parts of at most chunk_rows clicks; yields one
    summary row per part (its file, rows, days and per-day counts)."""
    fault = os.environ.get(WRITE_FAULT_ENV)

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import json

        import pyarrow as pa
        from pyspark import TaskContext
        from slidr.offline import featurestore
        from slidr.offline.replay import ReplayChunk

        from slidr.featurespec import finish
        from slidr.kernel import native

        tc = TaskContext.get()
        pid = tc.partitionId() if tc is not None else 0
        kill = bool(fault and tc is not None and pid == 0 and tc.attemptNumber() == 0
                    and not os.path.exists(fault))
        wl = _labeller(customers)
        fin = (native.finish_into if native is not None and hasattr(native, "finish_into")
               else finish)
        out_dir = Path(fdir)

        def flush(t: Any, j: int) -> Any:
            n = t.num_rows
            rid = t.column("rid").to_numpy()
            if rid[-1] - rid[0] + 1 != n or (n > 1 and not (np.diff(rid) == 1).all()):
                raise RuntimeError("spark features: a part's rows are not one run of the log")
            raw = np.empty((n, RAW_WIDTH), np.float64)
            for j2 in range(RAW_WIDTH):
                raw[:, j2] = t.column(f"r{j2}").to_numpy()
            ts = t.column("ts").to_numpy().astype(np.int64)
            tz = t.column("tz").to_numpy().astype(np.int16)
            li = t.column("li").to_numpy(zero_copy_only=False).astype(bool)
            dev = t.column("dev").to_numpy().astype(np.uint8)
            feats = np.empty((n, N_FEATURES), np.float32)
            fin(raw, ts, tz, li, dev, feats)
            del raw
            ch = ReplayChunk(
                start=int(rid[0]), features=feats, ts=ts, tz_offset_min=tz, device=dev,
                logged_in=li, session_hash=t.column("sh").to_numpy().view(np.uint64),
                user_id=t.column("uid").to_pylist(),
                purchased=t.column("pur").to_numpy(zero_copy_only=False).astype(bool),
                is_robot=(t.column("rob").to_numpy(zero_copy_only=False).astype(bool)
                          if has_robot else None))
            cols = featurestore.part_columns(ch, wl, weighting, day0, has_robot)
            name = f"part-{pid:05d}-{j:04d}.parquet"
            featurestore.write_part(out_dir, name, feats, cols)
            if kill and fault:
                Path(fault).write_text("killed\n")
                os._exit(137)
            counts = {str(d): [v[0], v[1], v[2], v[3].tolist(), v[4].tolist()]
                      for d, v in featurestore.part_counts(cols).items()}
            return pa.RecordBatch.from_pydict(
                {"file": [name], "start": [int(rid[0])], "rows": [n],
                 "day_min": [int(cols["day"][0])], "day_max": [int(cols["day"][-1])],
                 "counts": [json.dumps(counts)]},
                schema=pa.schema([("file", pa.string()), ("start", pa.int64()),
                                  ("rows", pa.int64()), ("day_min", pa.int32()),
                                  ("day_max", pa.int32()), ("counts", pa.string())]))

        # Parts end where the local replay's chunks end (every chunk_rows rows of the log), so
        # the directory's parts are the local engine's, batch for batch.
        buf: list[Any] = []
        have = 0
        first = -1
        j = 0
        for b in batches:
            if b.num_rows == 0:
                continue
            if first < 0:
                first = int(b.column("rid")[0].as_py())
            buf.append(b)
            have += b.num_rows
            while have and have >= chunk_rows - first % chunk_rows:
                cut = chunk_rows - first % chunk_rows
                t = pa.Table.from_batches(buf)
                yield flush(t.slice(0, cut), j)
                j += 1
                rest = t.slice(cut)
                buf, have, first = rest.to_batches(), rest.num_rows, first + cut
        if have:
            yield flush(pa.Table.from_batches(buf), j)
    return run


def build_features_spark(path: str | Path, customers: str | Path | None, fdir: str | Path,
                         weighting: str = "label", spark: Any = None,
                         master: str = "local[4]", partitions: int | None = None,
                         chunk_rows: int = 131_072, work: str | Path | None = None) -> Any:
    """The log's feature directory (offline/featurestore.py) computed on Spark: the counters
    per entity kind as in replay_spark, then the clicks range-partitioned by row number and
    each range finished into features, weak-labelled and written as parts straight to `fdir`
    by the executors (which must see `fdir` and `customers`: a shared file system on a
    cluster). The driver holds no per-click data: it stages the log (streamed), collects one
    summary row per part and writes the manifest. The directory equals
    pipeline.build_features' with the same chunk_rows: the same parts, row for row (only the
    parts' file names differ)."""
    import time

    from slidr.offline import featurestore

    t0 = time.perf_counter()
    fdir = Path(fdir)
    fdir.mkdir(parents=True, exist_ok=True)
    if (fdir / featurestore.MANIFEST).exists():
        raise FileExistsError(f"{fdir} holds a feature directory already")
    with _Run(spark, master, work) as run:
        staged = run.wdir / "staged.parquet"
        st = stage_log(path, staged, keep=False)
        n = int(st["n"])
        spark = run.session()
        par = int(spark.sparkContext.defaultParallelism)
        parts_n = partitions or max(4, par * 2)
        ranges = max(parts_n, -(-n // (8 * chunk_rows)))
        cols = ("rid", "ts", "tz", "li", "dev", "sh", "uid", "pur",
                *(("rob",) if st["has_robot"] else ()))
        joined = _counted(spark, staged, parts_n, cols)
        # Ranges of whole chunks (rid // chunk_rows): no chunk is split across ranges.
        from pyspark.sql import functions as F
        rows = (joined.withColumn("chunk", F.floor(F.col("rid") / chunk_rows))
                .repartitionByRange(ranges, "chunk").sortWithinPartitions("rid")
                .drop("chunk")
                .mapInArrow(_write_parts(str(fdir), None if customers is None
                                         else str(customers), weighting, int(st["day0"]),
                                         bool(st["has_robot"]), chunk_rows), PART_SCHEMA)
                .collect())
        rows = sorted(rows, key=lambda r: r["start"])
        at = 0
        for r in rows:
            if r["start"] != at:
                raise RuntimeError("spark features: the parts do not cover the log once")
            at += r["rows"]
        if at != n:
            raise RuntimeError("spark features: the parts do not cover the log once")
        import json
        keep = {r["file"] for r in rows}
        for f in fdir.iterdir():  # a failed task's leftovers
            if f.name != featurestore.MANIFEST and f.name not in keep:
                f.unlink()
        parts = [{"file": r["file"], "start": int(r["start"]), "rows": int(r["rows"]),
                  "day_min": int(r["day_min"]), "day_max": int(r["day_max"])} for r in rows]
        counts = [{int(d): [v[0], v[1], v[2], np.asarray(v[3], np.int64),
                            np.asarray(v[4], np.int64)]
                   for d, v in json.loads(r["counts"]).items()} for r in rows]
        return featurestore.write_manifest(
            fdir, parts, counts, int(st["day0"]), bool(st["has_robot"]), weighting,
            run.store_name(), time.perf_counter() - t0)
