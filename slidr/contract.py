"""The click contract: one source of truth for the click record (docs/contract.md).

Everything that reads or writes clicks imports from here: the daemon validates requests with
`validate_click`, the offline pipeline streams logs with `iter_log_chunks`, and both turn clicks
into the columnar `ClickBatch` the feature kernel consumes.
"""

from __future__ import annotations

import ipaddress
import reprlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEVICES: tuple[str, ...] = ("desktop", "mobile", "app")
DEVICE_CODE: dict[str, int] = {d: i for i, d in enumerate(DEVICES)}

MAX_ID_LEN = 128
MAX_UA_LEN = 512
TZ_MIN, TZ_MAX = -720, 840
# Sanity bounds for epoch milliseconds: 2000-01-01 .. 2100-01-01.
TS_MIN, TS_MAX = 946_684_800_000, 4_102_444_800_000

# name -> (kind, required)
FIELDS: dict[str, tuple[str, bool]] = {
    "click_id": ("id", True),
    "ts": ("ts", True),
    "session_id": ("id", True),
    "user_id": ("id_or_null", False),
    "ip": ("ip", True),
    "device": ("device", True),
    "logged_in": ("bool", True),
    "tz_offset_min": ("tz", False),
    "user_agent": ("ua", False),
    "ad_id": ("id_or_null", False),
}
REQUIRED = tuple(k for k, (_, req) in FIELDS.items() if req)
OFFLINE_FIELDS: dict[str, str] = {"purchased": "bool", "is_robot": "bool"}
CUSTOMER_FIELDS = ("user_id", "recency_days", "frequency", "monetary")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


class ContractError(ValueError):
    """A click (or a log row) violates the contract. Names the field, the value and the row."""

    def __init__(self, field: str, value: Any, problem: str, row: int | None = None,
                 source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.row = row
        self.source = source
        where = ""
        if source is not None:
            where += f"{source}: "
        if row is not None:
            where += f"row {row}: "
        shown = _REPR.repr(value)  # bounded in depth and length: a value may be hostile
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if field.startswith("<"):  # the file itself (its name, its format): no field, no value
            super().__init__(f"{where}{problem}")
        elif value is None and row is None:  # a column missing from the whole file
            super().__init__(f"{where}field '{field}' {problem}")
        else:
            super().__init__(f"{where}field '{field}' {problem} (got {shown})")


def _check_id(field: str, v: Any, row: int | None, nullable: bool, maxlen: int = MAX_ID_LEN) -> None:
    if v is None:
        if nullable:
            return
        raise ContractError(field, v, "is required", row)
    if not isinstance(v, str):
        raise ContractError(field, v, f"must be a string, not {type(v).__name__}", row)
    if not v and not nullable:
        raise ContractError(field, v, "must not be empty", row)
    if len(v) > maxlen:
        raise ContractError(field, v, f"is longer than {maxlen} characters", row)


def _check_ip(v: Any, row: int | None) -> None:
    if not isinstance(v, str):
        raise ContractError("ip", v, f"must be a string, not {type(v).__name__}", row)
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ContractError("ip", v, "is not an IPv4 or IPv6 address", row) from None


def validate_click(c: Any, row: int | None = None) -> None:
    """Raise ContractError for the first violation in one click mapping."""
    if not isinstance(c, Mapping):
        raise ContractError("<click>", c, f"must be a map, not {type(c).__name__}", row)
    for name in REQUIRED:
        if name not in c or c[name] is None:
            raise ContractError(name, c.get(name), "is required", row)
    for name, (kind, _req) in FIELDS.items():
        if name not in c:
            continue
        v = c[name]
        if kind == "id":
            _check_id(name, v, row, nullable=False)
        elif kind == "id_or_null":
            _check_id(name, v, row, nullable=True)
        elif kind == "ua":
            _check_id(name, v, row, nullable=True, maxlen=MAX_UA_LEN)
        elif kind == "ts":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ContractError(name, v, "must be an integer (epoch milliseconds)", row)
            if not TS_MIN <= v < TS_MAX:
                raise ContractError(name, v, "is not epoch milliseconds between 2000 and 2100", row)
        elif kind == "ip":
            _check_ip(v, row)
        elif kind == "device":
            if not isinstance(v, str) or v not in DEVICE_CODE:  # a list is not hashable
                raise ContractError(name, v, f"must be one of {', '.join(DEVICES)}", row)
        elif kind == "bool":
            if not isinstance(v, bool):
                raise ContractError(name, v, "must be a boolean", row)
        elif kind == "tz":
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ContractError(name, v, "must be an integer (minutes)", row)
            if not TZ_MIN <= v <= TZ_MAX:
                raise ContractError(name, v, f"must be in [{TZ_MIN}, {TZ_MAX}]", row)
    if c["logged_in"] and not c.get("user_id"):
        raise ContractError("user_id", c.get("user_id"), "is required when logged_in is true", row)


def user_key(logged_in: bool, user_id: str | None, session_id: str) -> str:
    """The per-user counter key: the customer id when logged in, else the session."""
    if logged_in and user_id:
        return "u\x00" + user_id
    return "s\x00" + session_id


@dataclass
class ClickBatch:
    """Columnar clicks in arrival order: what the feature kernel consumes."""

    ts: np.ndarray  # int64 epoch ms
    user_key: list[str]
    session_id: list[str]
    ip: list[str]
    device: np.ndarray  # uint8 codes into DEVICES
    logged_in: np.ndarray  # uint8 0/1
    tz_offset_min: np.ndarray  # int16
    # spec 4's entity keys: str or None (absent) per click; None as a whole = all absent
    ad_id: list[str | None] | None = None
    user_agent: list[str | None] | None = None

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def from_clicks(cls, clicks: Sequence[Mapping[str, Any]], validate: bool = True) -> ClickBatch:
        if validate:
            for i, c in enumerate(clicks):
                validate_click(c, i)
        n = len(clicks)
        ts = np.fromiter((c["ts"] for c in clicks), dtype=np.int64, count=n)
        li = [bool(c["logged_in"]) for c in clicks]
        sess = [c["session_id"] for c in clicks]
        ukeys = [user_key(li[i], clicks[i].get("user_id"), sess[i]) for i in range(n)]
        return cls(
            ts=ts,
            user_key=ukeys,
            session_id=sess,
            ip=[c["ip"] for c in clicks],
            device=np.fromiter((DEVICE_CODE[c["device"]] for c in clicks), dtype=np.uint8, count=n),
            logged_in=np.array(li, dtype=np.uint8),
            tz_offset_min=np.fromiter(((c.get("tz_offset_min") or 0) for c in clicks),
                                      dtype=np.int16, count=n),
            ad_id=[c.get("ad_id") for c in clicks],
            user_agent=[c.get("user_agent") for c in clicks],
        )

    @classmethod
    def from_columns(cls, cols: Mapping[str, Any]) -> ClickBatch:
        """From already-validated columns (numpy arrays or lists), e.g. a log chunk."""
        ts = np.asarray(cols["ts"], dtype=np.int64)
        n = ts.shape[0]
        li = np.asarray(cols["logged_in"], dtype=bool)
        sess = list(cols["session_id"])
        uid = cols.get("user_id")
        uid_list = list(uid) if uid is not None else [None] * n
        ukeys = [user_key(bool(li[i]), uid_list[i], sess[i]) for i in range(n)]
        dev = cols["device"]
        if isinstance(dev, np.ndarray) and dev.dtype.kind in "iu":
            dcodes = dev.astype(np.uint8)
        else:
            dcodes = np.fromiter((DEVICE_CODE[d] for d in dev), dtype=np.uint8, count=n)
        tz = cols.get("tz_offset_min")
        tza = (np.zeros(n, dtype=np.int16) if tz is None
               else np.nan_to_num(np.asarray(tz, dtype=np.float64)).astype(np.int16))
        ad, ua = cols.get("ad_id"), cols.get("user_agent")
        return cls(ts=ts, user_key=ukeys, session_id=sess, ip=list(cols["ip"]), device=dcodes,
                   logged_in=li.astype(np.uint8), tz_offset_min=tza,
                   ad_id=list(ad) if ad is not None else [None] * n,
                   user_agent=list(ua) if ua is not None else [None] * n)

    def slice(self, start: int, stop: int) -> ClickBatch:
        return ClickBatch(self.ts[start:stop], self.user_key[start:stop],
                          self.session_id[start:stop], self.ip[start:stop],
                          self.device[start:stop], self.logged_in[start:stop],
                          self.tz_offset_min[start:stop],
                          None if self.ad_id is None else self.ad_id[start:stop],
                          None if self.user_agent is None else self.user_agent[start:stop])


def slice_name(device_code: int, logged_in: int) -> str:
    """Slice = device x logged-in, e.g. 'mobile/in', 'desktop/out'."""
    return f"{DEVICES[device_code]}/{'in' if logged_in else 'out'}"


# The one slice table. SLICES is the order reports list slices in (device-major, "in" first);
# SLICE_BY_CODE[device_code * 2 + logged_in] is the name of a click's slice, the index every
# per-slice array (thresholds, counters) uses.
SLICES: tuple[str, ...] = tuple(slice_name(d, li) for d in range(len(DEVICES)) for li in (1, 0))
SLICE_BY_CODE: tuple[str, ...] = tuple(slice_name(d, li) for d in range(len(DEVICES))
                                       for li in (0, 1))


def slice_names(device: Any, logged_in: Any) -> np.ndarray:
    """Vectorised slice_name: device codes (ints) or device names (str, spelled through even
    when unknown) and logged_in flags -> an array of slice names."""
    dev = np.asarray(device)
    li = np.asarray(logged_in).astype(bool)
    if dev.dtype.kind in "OUS":
        return np.char.add(np.char.add(dev.astype(str), "/"), np.where(li, "in", "out"))
    return np.array(SLICE_BY_CODE, dtype=object)[dev.astype(np.int64) * 2 + li.astype(np.int64)]


# ---------------------------------------------------------------- log files (Parquet / CSV)

def _arrow():
    import pyarrow as pa
    import pyarrow.compute as pc
    return pa, pc


def _native_kernel():
    from slidr.ext import kernel_native
    return kernel_native if hasattr(kernel_native, "not_ipv4") else None


def _check_ip_column_native(k, arr, base_row: int) -> bool:
    """IP column check in one native pass: strict dotted quads pass; every other row (IPv6 or
    garbage) goes through ipaddress. False when the column is not a plain string array."""
    bufs = k._arrow_utf8(arr, "ip", True)
    if bufs is None:
        return False
    odd = np.flatnonzero(k.not_ipv4(*bufs))
    seen: dict[str, bool] = {}
    for j in odd.tolist():
        v = arr[j].as_py()
        ok = seen.get(v)
        if ok is None:
            try:
                ipaddress.ip_address(v)
                ok = True
            except ValueError:
                ok = False
            seen[v] = ok
        if not ok:
            raise ContractError("ip", v, "is not an IPv4 or IPv6 address", base_row + j)
    return True


def _dictionary_column_problem(pa, pc, name: str, kind: str, required: bool, arr,
                               fail) -> None:
    dic, ind = arr.dictionary, arr.indices

    def fail_d(dmask, problem: str) -> None:
        bad = np.flatnonzero(pc.fill_null(dmask, False).to_numpy(zero_copy_only=False))
        if bad.size:
            fail(pc.fill_null(pc.is_in(ind, value_set=pa.array(bad, ind.type)), False), problem)

    if required and dic.null_count:
        fail_d(pc.is_null(dic), "is required")
    maxlen = MAX_UA_LEN if kind == "ua" else MAX_ID_LEN
    fail_d(pc.greater(pc.utf8_length(dic), maxlen), f"is longer than {maxlen} characters")
    if kind == "id":
        fail_d(pc.equal(pc.binary_length(dic), 0), "must not be empty")
    if kind == "device":
        fail_d(pc.invert(pc.fill_null(pc.is_in(dic, value_set=pa.array(DEVICES)), True)),
               f"must be one of {', '.join(DEVICES)}")


def _column_problem(pa, pc, name: str, arr, base_row: int, extra: Mapping[str, str]) -> None:
    """Vectorised checks of one column of a chunk; raise ContractError at the first bad row."""
    kind = FIELDS[name][0] if name in FIELDS else extra[name]
    required = FIELDS[name][1] if name in FIELDS else True

    def fail(mask, problem: str) -> None:
        idx = pc.index(mask, True).as_py()
        if idx is not None and idx >= 0:
            raise ContractError(name, arr[idx].as_py(), problem, base_row + idx)

    if required and arr.null_count:
        fail(pc.is_null(arr), "is required")
    t = arr.type
    if (pa.types.is_dictionary(t) and kind in ("id", "id_or_null", "ua", "device")
            and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))):
        # Dictionary-encoded strings (iter_log_chunks(read_dictionary=...)): check each distinct
        # value once, then report the first row that uses a bad one.
        _dictionary_column_problem(pa, pc, name, kind, required, arr, fail)
        return
    if pa.types.is_dictionary(t):
        arr = pc.cast(arr, t.value_type)
        t = arr.type
    if kind in ("id", "id_or_null", "ua", "ip", "device"):
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise ContractError(name, arr[0].as_py() if len(arr) else None,
                                f"must be a string column, not {t}", base_row)
        if pa.types.is_null(t):
            return
        maxlen = MAX_UA_LEN if kind == "ua" else MAX_ID_LEN
        # Byte lengths come straight from the offsets; a UTF-8 string has at most as many
        # characters as bytes, so count characters only when some value has > maxlen bytes.
        blens = pc.binary_length(arr)
        mm = pc.min_max(blens).as_py()
        if mm["max"] is not None and mm["max"] > maxlen:
            fail(pc.greater(pc.utf8_length(arr), maxlen), f"is longer than {maxlen} characters")
        if kind == "id" and mm["min"] == 0:
            fail(pc.equal(blens, 0), "must not be empty")
        if kind == "device":
            fail(pc.invert(pc.fill_null(pc.is_in(arr, value_set=pa.array(DEVICES)), True)),
                 f"must be one of {', '.join(DEVICES)}")
        if kind == "ip":
            k = _native_kernel()
            if k is not None and _check_ip_column_native(k, arr, base_row):
                return
            # Cheap vectorised shape check; ipaddress for the rare odd-looking value.
            ok = pc.match_substring_regex(arr, r"^(\d{1,3}\.){3}\d{1,3}$|:")
            bad = pc.index(pc.invert(pc.fill_null(ok, True)), True).as_py()
            if bad is not None and bad >= 0:
                _check_ip(arr[bad].as_py(), base_row + bad)
            v4 = pc.fill_null(pc.match_substring_regex(arr, r"^(\d{1,3}\.){3}\d{1,3}$"), False)
            if pc.any(v4).as_py():
                parts = pc.split_pattern(pc.filter(arr, v4), ".")
                flat = pc.cast(pc.list_flatten(parts), pa.int32())
                if pc.max(flat).as_py() > 255:
                    sub = pc.filter(arr, v4)
                    for j in range(len(sub)):
                        try:
                            ipaddress.ip_address(sub[j].as_py())
                        except ValueError:
                            pos = pc.index(arr, sub[j]).as_py()
                            raise ContractError("ip", sub[j].as_py(),
                                                "is not an IPv4 or IPv6 address",
                                                base_row + pos) from None
    elif kind == "ts":
        if not pa.types.is_integer(t):
            raise ContractError(name, arr[0].as_py() if len(arr) else None,
                                f"must be integer epoch milliseconds, not {t}", base_row)
        mm = pc.min_max(arr).as_py()
        if mm["min"] is not None and (mm["min"] < TS_MIN or mm["max"] >= TS_MAX):
            fail(pc.or_(pc.less(arr, TS_MIN), pc.greater_equal(arr, TS_MAX)),
                 "is not epoch milliseconds between 2000 and 2100")
    elif kind == "bool":
        if not pa.types.is_boolean(t):
            raise ContractError(name, arr[0].as_py() if len(arr) else None,
                                f"must be a boolean column, not {t}", base_row)
    elif kind == "tz":
        if pa.types.is_null(t):
            return
        if not pa.types.is_integer(t):
            raise ContractError(name, arr[0].as_py() if len(arr) else None,
                                f"must be an integer column (minutes), not {t}", base_row)
        mm = pc.min_max(arr).as_py()
        if mm["min"] is not None and (mm["min"] < TZ_MIN or mm["max"] > TZ_MAX):
            fail(pc.fill_null(pc.or_(pc.less(arr, TZ_MIN), pc.greater(arr, TZ_MAX)), False),
                 f"must be in [{TZ_MIN}, {TZ_MAX}]")


def _csv_convert_options(pa):
    import pyarrow.csv as pcsv
    types = {"click_id": pa.string(), "ts": pa.int64(), "session_id": pa.string(),
             "user_id": pa.string(), "ip": pa.string(), "device": pa.string(),
             "logged_in": pa.bool_(), "tz_offset_min": pa.int32(), "user_agent": pa.string(),
             "ad_id": pa.string(), "purchased": pa.bool_(), "is_robot": pa.bool_()}
    return pcsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                               true_values=["true", "True", "1"],
                               false_values=["false", "False", "0"])


def iter_log_chunks(path: str | Path, chunk_rows: int = 262_144,
                    require: Iterable[str] = (), check_order: bool = True,
                    read_dictionary: Iterable[str] = ()) -> Iterator[Any]:
    """Stream a click log (Parquet or CSV) as validated pyarrow Tables of <= chunk_rows rows.

    Raises ContractError naming the file, the row number (0-based data row) and the field at the
    first violation; with check_order, also when ts decreases between consecutive rows.
    read_dictionary: string columns to read from Parquet as dictionary arrays (much cheaper for
    a column with few distinct values, e.g. user_agent); validated all the same.
    """
    pa, pc = _arrow()
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise FileNotFoundError(f"click log not found: {path}")
    extra = {k: v for k, v in OFFLINE_FIELDS.items() if k in set(require)}
    need = list(REQUIRED) + [k for k in require if k not in REQUIRED]
    reader: Iterator[Any]
    if path.suffix in (".parquet", ".pq"):
        from .files import parquet_file
        pf = parquet_file(path, "click log")
        names = pf.schema_arrow.names
        as_dict = [c for c in read_dictionary if c in names
                   and pa.types.is_string(pf.schema_arrow.field(c).type)]
        if as_dict:
            pf = parquet_file(path, "click log", read_dictionary=as_dict)
        reader = (pa.Table.from_batches([b]) for b in pf.iter_batches(batch_size=chunk_rows))
    elif path.suffix in (".csv", ".gz") or path.name.endswith(".csv.gz"):
        import pyarrow.csv as pcsv
        try:
            r = pcsv.open_csv(path, convert_options=_csv_convert_options(pa),
                              read_options=pcsv.ReadOptions(block_size=1 << 22))
        except pa.ArrowInvalid as e:
            raise ContractError("<file>", src, f"could not be read as CSV: {e}",
                                source=str(src)) from None
        names = r.schema.names

        def _gen():
            while True:
                try:
                    b = r.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as e:
                    # pyarrow names the row in its own message; keep it.
                    raise ContractError("<csv>", src, f"has a bad value: {e}",
                                        source=str(src)) from None
                yield pa.Table.from_batches([b])
        reader = _gen()
    else:
        raise ContractError("<file>", src, "a click log must end in .parquet or .csv",
                            source=str(src))
    missing = [k for k in need if k not in names]
    if missing:
        raise ContractError(missing[0], None,
                            f"column is missing from {src} (missing: {', '.join(missing)}; "
                            f"has: {', '.join(names)})")
    row = 0
    last_ts: int | None = None
    for tbl in reader:
        if tbl.num_rows == 0:
            continue
        for name in tbl.column_names:
            if name in FIELDS or name in extra:
                try:
                    _column_problem(pa, pc, name, tbl.column(name).combine_chunks(), row, extra)
                except ContractError as e:
                    e.source = src
                    e.args = (f"{src}: {e.args[0]}",)
                    raise
        if "logged_in" in tbl.column_names and "user_id" in tbl.column_names:
            bad = pc.and_(tbl.column("logged_in"), pc.is_null(tbl.column("user_id")))
            idx = pc.index(bad.combine_chunks(), True).as_py()
            if idx is not None and idx >= 0:
                raise ContractError("user_id", None, "is required when logged_in is true",
                                    row + idx, src)
        if check_order:
            ts = tbl.column("ts").to_numpy()
            if last_ts is not None and ts[0] < last_ts:
                raise ContractError("ts", int(ts[0]), f"is earlier than the row before "
                                    f"({last_ts}); the log must be sorted by ts", row, src)
            d = np.flatnonzero(np.diff(ts) < 0)
            if d.size:
                i = int(d[0]) + 1
                raise ContractError("ts", int(ts[i]), f"is earlier than the row before "
                                    f"({int(ts[i - 1])}); the log must be sorted by ts",
                                    row + i, src)
            last_ts = int(ts[-1])
        yield tbl
        row += tbl.num_rows


def batch_from_table(tbl: Any) -> ClickBatch:
    """A validated pyarrow Table chunk -> ClickBatch."""
    cols: dict[str, Any] = {
        "ts": tbl.column("ts").to_numpy(),
        "session_id": tbl.column("session_id").to_pylist(),
        "ip": tbl.column("ip").to_pylist(),
        "device": tbl.column("device").to_pylist(),
        "logged_in": tbl.column("logged_in").to_numpy(zero_copy_only=False),
    }
    if "user_id" in tbl.column_names:
        cols["user_id"] = tbl.column("user_id").to_pylist()
    if "tz_offset_min" in tbl.column_names:
        cols["tz_offset_min"] = tbl.column("tz_offset_min").to_numpy(zero_copy_only=False)
    for name in ("ad_id", "user_agent"):
        if name in tbl.column_names:
            cols[name] = tbl.column(name).to_pylist()
    return ClickBatch.from_columns(cols)
