"""The click contract (slidr/contract.py): every violation is a ContractError naming the field;
bad log rows are reported with their row number; good logs stream in chunks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from slidr.contract import (
    SLICES,
    ClickBatch,
    ContractError,
    batch_from_table,
    iter_log_chunks,
    slice_name,
    user_key,
    validate_click,
)

TS = 1_767_225_600_000


def good(**over):
    c = {"click_id": "c1", "ts": TS, "session_id": "s1", "user_id": "u1", "ip": "192.0.2.1",
         "device": "mobile", "logged_in": True, "tz_offset_min": 60, "user_agent": "UA/1",
         "ad_id": "ad-9"}
    c.update(over)
    return c


def test_good_click_passes():
    validate_click(good())
    validate_click(good(user_id=None, logged_in=False, tz_offset_min=None, ip="2001:db8::1"))
    c = good()
    del c["tz_offset_min"], c["user_agent"], c["ad_id"]
    validate_click(c)


VIOLATIONS = [
    ("click_id", None), ("click_id", ""), ("click_id", 7), ("click_id", "x" * 129),
    ("ts", None), ("ts", "1767225600000"), ("ts", 1.5e12), ("ts", True), ("ts", 12345),
    ("ts", 5_000_000_000_000),
    ("session_id", None), ("session_id", ""), ("session_id", b"s1"), ("session_id", "s" * 129),
    ("user_id", 5), ("user_id", "u" * 129),
    ("ip", None), ("ip", "300.1.1.1"), ("ip", "not-an-ip"), ("ip", 3232235777), ("ip", ""),
    ("device", None), ("device", "tablet"), ("device", "Mobile"), ("device", 1),
    ("logged_in", None), ("logged_in", 1), ("logged_in", "true"),
    ("tz_offset_min", 841), ("tz_offset_min", -721), ("tz_offset_min", 1.0),
    ("tz_offset_min", False), ("tz_offset_min", "60"),
    ("user_agent", "a" * 513), ("user_agent", 3),
    ("ad_id", 9), ("ad_id", "a" * 129),
]


@pytest.mark.parametrize(("field", "value"), VIOLATIONS)
def test_each_violation_names_its_field(field, value):
    with pytest.raises(ContractError) as ei:
        validate_click(good(**{field: value}), row=12)
    e = ei.value
    assert e.field == field
    assert e.row == 12
    assert f"field '{field}'" in str(e) and "row 12" in str(e)
    assert isinstance(e, ValueError)


@pytest.mark.parametrize("field", ["click_id", "ts", "session_id", "ip", "device", "logged_in"])
def test_missing_required_field(field):
    c = good()
    del c[field]
    with pytest.raises(ContractError, match=f"field '{field}' is required") as ei:
        validate_click(c)
    assert ei.value.field == field


def test_logged_in_needs_user_id_and_non_map():
    with pytest.raises(ContractError) as ei:
        validate_click(good(user_id=None, logged_in=True))
    assert ei.value.field == "user_id"
    with pytest.raises(ContractError) as ei:
        validate_click(["not", "a", "map"])
    assert ei.value.field == "<click>"


def test_long_values_are_shortened_in_the_message():
    with pytest.raises(ContractError) as ei:
        validate_click(good(click_id="z" * 1000))
    assert len(str(ei.value)) < 200


def test_batch_from_clicks_reports_the_bad_click_index():
    clicks = [good(click_id=f"c{i}") for i in range(5)]
    clicks[3]["device"] = "fridge"
    with pytest.raises(ContractError) as ei:
        ClickBatch.from_clicks(clicks)
    assert ei.value.row == 3 and ei.value.field == "device"


def test_batch_columns_and_user_keys():
    clicks = [good(), good(click_id="c2", logged_in=False, user_id=None, device="app",
                           tz_offset_min=None)]
    b = ClickBatch.from_clicks(clicks)
    assert len(b) == 2
    assert b.user_key == ["u\x00u1", "s\x00s1"]
    assert b.device.tolist() == [1, 2] and b.logged_in.tolist() == [1, 0]
    assert b.tz_offset_min.tolist() == [60, 0]
    assert user_key(True, "x", "s") == "u\x00x" and user_key(False, "x", "s") == "s\x00s"
    assert slice_name(1, 1) == "mobile/in" and len(SLICES) == 6
    s = b.slice(1, 2)
    assert len(s) == 1 and s.user_key == ["s\x00s1"]


# ------------------------------------------------------------------ log files


def _table(n: int, **cols) -> pa.Table:
    base = {
        "click_id": [f"c{i}" for i in range(n)],
        "ts": pa.array([TS + 1000 * i for i in range(n)], pa.int64()),
        "session_id": [f"s{i % 7}" for i in range(n)],
        "user_id": [f"u{i % 5}" if i % 2 else None for i in range(n)],
        "ip": [f"10.0.{i % 3}.{i % 250}" for i in range(n)],
        "device": [("desktop", "mobile", "app")[i % 3] for i in range(n)],
        "logged_in": pa.array([bool(i % 2) for i in range(n)]),
        "tz_offset_min": pa.array([0] * n, pa.int32()),
        "purchased": pa.array([i % 10 == 0 for i in range(n)]),
    }
    base.update(cols)
    return pa.table(base)


def _write(tmp_path, tbl: pa.Table, fmt: str):
    p = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        pq.write_table(tbl, p, row_group_size=1000)
    else:
        pcsv.write_csv(tbl, p)
    return p


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_good_file_streams_in_chunks(tmp_path, fmt):
    n = 2500
    p = _write(tmp_path, _table(n), fmt)
    chunks = list(iter_log_chunks(p, chunk_rows=1000, require=["purchased"]))
    if fmt == "parquet":
        assert [c.num_rows for c in chunks] == [1000, 1000, 500]
    else:
        assert len(chunks) >= 1
    assert sum(c.num_rows for c in chunks) == n
    batches = [batch_from_table(c) for c in chunks]
    ts = np.concatenate([b.ts for b in batches])
    assert ts.tolist() == [TS + 1000 * i for i in range(n)]
    assert batches[0].user_key[:2] == ["s\x00s0", "u\x00u1"]


def _bad_cases(n):
    def col(name, i, v, typ=None):
        t = _table(n)
        vals = t.column(name).to_pylist()
        vals[i] = v
        return t.set_column(t.schema.get_field_index(name), name,
                            pa.array(vals, typ or t.schema.field(name).type))
    return [
        ("device", 1234, col("device", 1234, "toaster")),
        ("ip", 1500, col("ip", 1500, "999.1.2.3")),
        ("ip", 7, col("ip", 7, "hello")),
        ("session_id", 2001, col("session_id", 2001, None)),
        ("click_id", 1999, col("click_id", 1999, "")),
        ("tz_offset_min", 10, col("tz_offset_min", 10, 900)),
        ("ts", 1100, col("ts", 1100, 42)),
        ("user_id", 1301, col("user_id", 1301, None)),  # logged in without a customer id
        ("session_id", 1600, col("session_id", 1600, "x" * 200)),
    ]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("case", range(9))
def test_bad_row_reported_with_row_number(tmp_path, fmt, case):
    n = 2500
    field, row, tbl = _bad_cases(n)[case]
    p = _write(tmp_path, tbl, fmt)
    with pytest.raises(ContractError) as ei:
        for _ in iter_log_chunks(p, chunk_rows=1000):
            pass
    e = ei.value
    assert e.field == field, str(e)
    assert e.row == row, str(e)
    assert str(p) in str(e) and f"row {row}" in str(e)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_unsorted_ts_is_reported(tmp_path, fmt):
    n = 2500
    ts = [TS + 1000 * i for i in range(n)]
    ts[1700] = TS  # earlier than row 1699
    p = _write(tmp_path, _table(n, ts=pa.array(ts, pa.int64())), fmt)
    with pytest.raises(ContractError, match="sorted by ts") as ei:
        list(iter_log_chunks(p, chunk_rows=1000))
    assert ei.value.field == "ts" and ei.value.row == 1700
    # Across a chunk boundary: the first row of a chunk is compared with the last of the previous.
    ts = [TS + 1000 * i for i in range(n)]
    ts[1000] = TS
    p = _write(tmp_path, _table(n, ts=pa.array(ts, pa.int64())), "parquet")
    with pytest.raises(ContractError) as ei:
        list(iter_log_chunks(p, chunk_rows=1000))
    assert ei.value.row == 1000
    assert len(list(iter_log_chunks(p, chunk_rows=1000, check_order=False))) == 3


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_missing_columns_named(tmp_path, fmt):
    p = _write(tmp_path, _table(10).drop_columns(["ip", "device"]), fmt)
    with pytest.raises(ContractError, match="missing: ip, device") as ei:
        next(iter_log_chunks(p))
    assert ei.value.field == "ip"
    p = _write(tmp_path, _table(10).drop_columns(["purchased"]), fmt)
    with pytest.raises(ContractError) as ei:
        next(iter_log_chunks(p, require=["purchased"]))
    assert ei.value.field == "purchased"


def test_wrong_column_types_and_files(tmp_path):
    t = _table(10)
    t = t.set_column(t.schema.get_field_index("ts"), "ts", pa.array([str(TS)] * 10))
    p = _write(tmp_path, t, "parquet")
    with pytest.raises(ContractError) as ei:
        next(iter_log_chunks(p))
    assert ei.value.field == "ts"
    t = _table(10)
    t = t.set_column(t.schema.get_field_index("logged_in"), "logged_in", pa.array([1] * 10))
    p = _write(tmp_path, t, "parquet")
    with pytest.raises(ContractError) as ei:
        next(iter_log_chunks(p))
    assert ei.value.field == "logged_in"
    with pytest.raises(FileNotFoundError):
        next(iter_log_chunks(tmp_path / "nope.parquet"))
    other = tmp_path / "log.json"
    other.write_text("{}")
    with pytest.raises(ContractError):
        next(iter_log_chunks(other))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("click_id,ts,session_id,ip,device,logged_in\nc1,notanumber,s,1.2.3.4,app,true\n")
    with pytest.raises(ContractError, match="bad.csv"):
        list(iter_log_chunks(bad_csv))
