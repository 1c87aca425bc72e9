"""Importers: real logs into the click contract (docs/data.md has every mapping and what each
source cannot provide).

- TalkingData AdTracking (`train_sample.csv` / `train.csv`): mobile ad clicks with app-download
  attribution, which stands in for "purchased".
- Apache combined access log: each request is a click; there are no purchases, and a
  self-declared-robot user-agent regex gives `ua_robot`, a weak label for evaluation only.

A row that does not parse is counted and reported (line number and reason, the first few
kept), never guessed or repaired. Output: DIR/clicks.parquet sorted by ts, an empty but valid
DIR/customers.parquet, DIR/manifest.json and DIR/source.json, written atomically.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from slidr.registry import sha256_file

MAX_BAD_SHOWN = 10

# ------------------------------------------------------------------ shared


@dataclass
class BadRows:
    """Rows that failed to parse: a count and the first few (line number, reason)."""

    count: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.first) < MAX_BAD_SHOWN:
            self.first.append({"line": int(line), "reason": reason})

    def add_many(self, lines: Iterable[int], reason: str) -> None:
        for ln in lines:
            self.add(ln, reason)

    def as_dict(self) -> dict[str, Any]:
        first = sorted(self.first, key=lambda d: d["line"])
        return {"count": self.count, "first": first}


@dataclass
class ImportResult:
    clicks: Any  # pyarrow.Table, contract columns (+ purchased, + ua_robot for apache)
    manifest: dict[str, Any]


def empty_customers():
    import pyarrow as pa
    return pa.table({"user_id": pa.array([], pa.string()),
                     "recency_days": pa.array([], pa.int32()),
                     "frequency": pa.array([], pa.int32()),
                     "monetary": pa.array([], pa.float64())})


def _order_by_ts(tbl):
    import pyarrow as pa
    ts = tbl.column("ts").to_numpy()
    order = np.argsort(ts, kind="stable")  # ties keep source order
    return tbl.take(pa.array(order))


def write_import(res: ImportResult, out: str | Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    from slidr.util import atomic_dir, write_json

    files = {"clicks": "clicks.parquet", "customers": "customers.parquet",
             "manifest": "manifest.json", "source": "source.json"}
    with atomic_dir(out) as tmp:
        pq.write_table(res.clicks, tmp / files["clicks"], compression="zstd")
        pq.write_table(empty_customers(), tmp / files["customers"])
        res.manifest["files"] = files
        write_json(tmp / files["manifest"], res.manifest)
        # Read by the training report to explain what the metrics mean for this source.
        write_json(tmp / files["source"], {"source": res.manifest["source"],
                                           "cannot_provide": res.manifest["cannot_provide"]})
    return files


def _result(source: str, src: str | Path, n_read: int, clicks: Any, bad: Any,
            summary_extra: dict[str, Any], *, mapping: dict[str, str],
            cannot_provide: list[str]) -> ImportResult:
    """The imported log, sorted by time, and its manifest: where it came from (path, sha256),
    rows read and written, bad rows, a summary, how each column was mapped and what the
    source cannot provide."""
    clicks = _order_by_ts(clicks)
    return ImportResult(clicks, {
        "source": source,
        "source_path": str(src),
        "source_sha256": sha256_file(src),
        "rows_read": int(n_read),
        "rows_written": int(clicks.num_rows),
        "bad_rows": bad.as_dict(),
        "summary": {**_summary(clicks), **summary_extra},
        "mapping": mapping,
        "cannot_provide": cannot_provide,
    })


def _summary(tbl) -> dict[str, Any]:
    import pyarrow.compute as pc
    n = tbl.num_rows
    out: dict[str, Any] = {"clicks": n}
    if n:
        ts = tbl.column("ts")
        out["ts_min"] = int(pc.min(ts).as_py())
        out["ts_max"] = int(pc.max(ts).as_py())
        out["first_utc"] = str(np.datetime64(out["ts_min"], "ms"))
        out["last_utc"] = str(np.datetime64(out["ts_max"], "ms"))
        out["distinct_ips"] = int(pc.count_distinct(tbl.column("ip")).as_py())
        out["sessions"] = int(pc.count_distinct(tbl.column("session_id")).as_py())
        out["purchases"] = int(pc.sum(tbl.column("purchased")).as_py() or 0)
        dev = pc.value_counts(tbl.column("device")).to_pylist()
        out["device"] = {d["values"]: int(d["counts"]) for d in dev}
    return out


# ------------------------------------------------------------------ TalkingData

TALKINGDATA_COLUMNS = ("ip", "app", "device", "os", "channel", "click_time", "attributed_time",
                       "is_attributed")
TALKINGDATA_TZ_MIN = 480  # China Standard Time (UTC+8): the clicks come from Chinese phones
# Device codes mapped to the "app" slice; every other code goes to "mobile". Codes 1 and 2 are
# the two mass-market phone types (~98% of clicks); the long tail of rare codes (0, 3032, 3543,
# ...) is kept apart so slice-level calibration can treat it on its own. A slice convention,
# not a claim about what the codes are (TalkingData does not publish them).
TALKINGDATA_APP_DEVICES = (1, 2)
_IP_BASE = 10 << 24  # synthetic addresses in 10.0.0.0/8
_IP_SPAN = 1 << 24


def import_talkingdata(src: str | Path,
                       app_device_codes: tuple[int, ...] = TALKINGDATA_APP_DEVICES) -> ImportResult:
    """TalkingData CSV -> click contract (+ purchased), sorted by ts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"TalkingData file not found: {src}")
    bad = BadRows()
    skipped: list[int] = []

    def on_invalid(row) -> str:
        # row.number is the 1-based physical line (known because use_threads=False).
        line = int(row.number) if row.number is not None else -1
        skipped.append(line)
        bad.add(line, f"expected {row.expected_columns} fields, found {row.actual_columns}")
        return "skip"

    try:
        tbl = pcsv.read_csv(
            src,
            read_options=pcsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid,
                                            ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in TALKINGDATA_COLUMNS},
                strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        raise ValueError(f"{src}: cannot be read as CSV: {e}") from None
    missing = [c for c in TALKINGDATA_COLUMNS if c not in tbl.column_names
               and c != "attributed_time"]
    if missing:
        raise ValueError(f"{src}: not a TalkingData train file: missing column(s) "
                         f"{', '.join(missing)} (has: {', '.join(tbl.column_names)})")
    n_read = tbl.num_rows + len(skipped)
    # Physical line of each parsed data row: header is line 1; skipped lines are not rows.
    sk = np.sort(np.asarray(skipped, dtype=np.int64)) if skipped else np.zeros(0, np.int64)
    idx = np.arange(tbl.num_rows, dtype=np.int64)
    lines = idx + 2 + np.searchsorted(sk - np.arange(sk.shape[0]) - 2, idx, side="right")

    ok = np.ones(tbl.num_rows, dtype=bool)

    def check(mask: np.ndarray, reason: str) -> None:
        nonlocal ok
        newbad = ok & ~mask
        bad.add_many(lines[newbad][: MAX_BAD_SHOWN], reason)
        bad.count += max(int(newbad.sum()) - min(int(newbad.sum()), MAX_BAD_SHOWN), 0)
        ok &= mask

    ints = {}
    for c in ("ip", "app", "device", "os", "channel"):
        col = tbl.column(c)
        good = pc.fill_null(pc.match_substring_regex(col, r"^[0-9]{1,9}$"), False).to_numpy(
            zero_copy_only=False)
        check(good, f"field '{c}' is not a non-negative integer")
        vals = np.zeros(tbl.num_rows, dtype=np.int64)
        if good.any():
            vals[good] = pc.cast(pc.filter(col, pa.array(good)), pa.int64()).to_numpy()
        ints[c] = vals
    check(ints["ip"] < _IP_SPAN, "field 'ip' is too large for the synthetic 10.0.0.0/8 mapping")
    ct = tbl.column("click_time")
    ct_ok = pc.fill_null(pc.match_substring_regex(
        ct, r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"), False).to_numpy(
        zero_copy_only=False)
    ts = np.zeros(tbl.num_rows, dtype=np.int64)
    if ct_ok.any():
        parsed = pc.strptime(pc.filter(ct, pa.array(ct_ok)), format="%Y-%m-%d %H:%M:%S",
                             unit="ms", error_is_null=True)
        pv = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
        sub = np.flatnonzero(ct_ok)
        ct_ok[sub[~pv]] = False
        ts[sub[pv]] = pc.cast(pc.drop_null(parsed), pa.int64()).to_numpy()
    check(ct_ok, "field 'click_time' is not 'YYYY-MM-DD HH:MM:SS'")
    from slidr.contract import TS_MAX, TS_MIN
    check((ts >= TS_MIN) & (ts < TS_MAX), "field 'click_time' is outside 2000..2100")
    attr = tbl.column("is_attributed").to_numpy(zero_copy_only=False).astype(str)
    check(np.isin(attr, ["0", "1"]), "field 'is_attributed' is not 0 or 1")

    keep = np.flatnonzero(ok)
    ip_i = ints["ip"][keep]
    ipn = (_IP_BASE + ip_i).astype(np.uint32)
    parts = [pc.cast(pa.array(((ipn >> s) & 0xFF).astype(np.int64)), pa.string())
             for s in (24, 16, 8, 0)]
    ip_str = pc.binary_join_element_wise(*parts, ".")

    def s(a: np.ndarray):
        return pc.cast(pa.array(a), pa.string())

    def join(*xs):
        return pc.binary_join_element_wise(*xs, "")

    app, dev, os_, ch = (ints[c][keep] for c in ("app", "device", "os", "channel"))
    is_app = np.isin(dev, np.asarray(app_device_codes, dtype=np.int64))
    clicks = pa.table({
        "click_id": join(pa.scalar("td-"), s(lines[keep])),
        "ts": pa.array(ts[keep], pa.int64()),
        # One apparent phone (ip, device, os) on one ad (app) through one publisher (channel).
        "session_id": join(pa.scalar("td-i"), s(ip_i), pa.scalar("-d"), s(dev), pa.scalar("-o"),
                           s(os_), pa.scalar("-a"), s(app), pa.scalar("-c"), s(ch)),
        "user_id": pa.nulls(keep.shape[0], pa.string()),
        "ip": ip_str,
        "device": pa.array(np.where(is_app, "app", "mobile")),
        "logged_in": pa.array(np.zeros(keep.shape[0], dtype=bool)),
        "tz_offset_min": pa.array(np.full(keep.shape[0], TALKINGDATA_TZ_MIN, np.int16)),
        "user_agent": pa.nulls(keep.shape[0], pa.string()),
        "ad_id": join(pa.scalar("td-a"), s(app), pa.scalar("-c"), s(ch)),
        "purchased": pa.array(attr[keep] == "1"),
    })
    return _result("talkingdata", src, n_read, clicks, bad, {}, mapping={
        "click_id": "td-<line number in the source file>",
        "ts": "click_time, read as UTC",
        "ip": "synthetic IPv4 10.0.0.0 + the integer ip id (equal ids -> equal addresses)",
        "session_id": "ip + device + os + app + channel: one apparent phone on one ad "
                      "through one publisher, over the whole log (no inactivity split)",
        "user_id": "null (no user ids)", "logged_in": "false everywhere",
        "device": f"'app' for device codes {list(app_device_codes)}, else 'mobile'",
        "tz_offset_min": f"{TALKINGDATA_TZ_MIN} (China)",
        "ad_id": "td-a<app>-c<channel>", "user_agent": "null",
        "purchased": "is_attributed == 1 (app downloaded after the click)",
    },
    cannot_provide=["customers / RFM (empty customers table: labels are purchase-only)",
                    "logged-in users", "user agents", "ground truth robot labels",
                    "complete counters when the file is a sample of the full log"])


# ------------------------------------------------------------------ Apache combined log

APACHE_RE = re.compile(
    r'^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<req>[^"]*)" (?P<status>\d{3}) (?P<bytes>\S+)'
    r' "(?P<ref>[^"]*)" "(?P<ua>[^"]*)"\s*$')
APACHE_TIME = "%d/%b/%Y:%H:%M:%S %z"
# Self-declared automation in the user agent (a weak label, for evaluation only).
UA_ROBOT_RE = re.compile(
    r"bot|crawl|spider|slurp|feed|fetch|curl|wget|python|java/|libwww|perl|go-http|httpclient"
    r"|okhttp|headless|phantomjs|scrapy|ruby|pingdom|monitor|nutch|archiver", re.IGNORECASE)
UA_MOBILE_RE = re.compile(
    r"mobile|android|iphone|ipad|ipod|windows phone|opera mini|blackberry|iemobile|kindle",
    re.IGNORECASE)
SESSION_GAP_MS = 30 * 60_000


def import_apache(src: str | Path, session_gap_ms: int = SESSION_GAP_MS) -> ImportResult:
    """Apache combined access log -> click contract (+ purchased=false, + ua_robot)."""
    import pyarrow as pa

    from slidr.contract import MAX_UA_LEN, TS_MAX, TS_MIN

    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"Apache log not found: {src}")
    bad = BadRows()
    ln_l: list[int] = []
    ts_l: list[int] = []
    tz_l: list[int] = []
    ip_l: list[str] = []
    ua_l: list[str | None] = []
    n_read = 0
    with open(src, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, start=1):
            n_read += 1
            m = APACHE_RE.match(line)
            if m is None:
                bad.add(ln, "not an Apache combined log line")
                continue
            try:
                dt = datetime.strptime(m["time"], APACHE_TIME)
            except ValueError:
                bad.add(ln, f"bad timestamp {m['time']!r}")
                continue
            try:
                ip = str(ipaddress.ip_address(m["ip"]))
            except ValueError:
                bad.add(ln, f"bad client address {m['ip']!r}")
                continue
            ts = int(dt.timestamp() * 1000)
            if not TS_MIN <= ts < TS_MAX:
                bad.add(ln, "timestamp outside 2000..2100")
                continue
            ua = m["ua"]
            if len(ua) > MAX_UA_LEN:
                bad.add(ln, f"user agent longer than {MAX_UA_LEN} characters")
                continue
            off = dt.utcoffset()
            ln_l.append(ln)
            ts_l.append(ts)
            tz_l.append(int(off.total_seconds() // 60) if off is not None else 0)
            ip_l.append(ip)
            ua_l.append(None if ua in ("", "-") else ua)

    n = len(ts_l)
    ts = np.asarray(ts_l, dtype=np.int64)
    lines = np.asarray(ln_l, dtype=np.int64)
    # Sessions: one (ip, user agent) pair, split after 30 minutes without a request.
    key = np.asarray([f"{ip}\x00{ua or ''}" for ip, ua in zip(ip_l, ua_l, strict=True)],
                     dtype=object)
    _, kid = np.unique(key, return_inverse=True) if n else (None, np.zeros(0, np.int64))
    order = np.lexsort((lines, ts, kid))
    k_o, t_o = kid[order], ts[order]
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = (k_o[1:] != k_o[:-1]) | (t_o[1:] - t_o[:-1] > session_gap_ms)
    sess_o = np.cumsum(new) - 1
    sess = np.empty(n, dtype=np.int64)
    sess[order] = sess_o
    ua_str = [u or "" for u in ua_l]
    mobile = np.fromiter((bool(UA_MOBILE_RE.search(u)) for u in ua_str), dtype=bool, count=n)
    robot = np.fromiter((bool(UA_ROBOT_RE.search(u)) for u in ua_str), dtype=bool, count=n)
    clicks = pa.table({
        "click_id": pa.array([f"ap-{x}" for x in ln_l], pa.string()),
        "ts": pa.array(ts, pa.int64()),
        "session_id": pa.array([f"ap-s{x}" for x in sess.tolist()], pa.string()),
        "user_id": pa.nulls(n, pa.string()),
        "ip": pa.array(ip_l, pa.string()),
        "device": pa.array(np.where(mobile, "mobile", "desktop").tolist(), pa.string()),
        "logged_in": pa.array(np.zeros(n, dtype=bool)),
        "tz_offset_min": pa.array(np.asarray(tz_l, dtype=np.int16), pa.int16()),
        "user_agent": pa.array(ua_l, pa.string()),
        "ad_id": pa.nulls(n, pa.string()),
        "purchased": pa.array(np.zeros(n, dtype=bool)),
        "ua_robot": pa.array(robot),
    })
    return _result("apache", src, n_read, clicks, bad, {"ua_robot": int(robot.sum())}, mapping={
        "click_id": "ap-<line number in the source file>",
        "ts": "request time with its UTC offset, converted to UTC",
        "tz_offset_min": "the offset written in the log line (the server's clock; the "
                         "client's time zone is unknown)",
        "ip": "client address", "user_agent": "the User-Agent field ('-' -> null)",
        "session_id": "ip + user agent, split after 30 minutes without a request",
        "device": "'mobile' if the user agent matches a mobile regex, else 'desktop'",
        "user_id": "null", "logged_in": "false everywhere", "ad_id": "null",
        "purchased": "false everywhere: a web server log has no purchases",
        "ua_robot": "user agent matches a self-declared-robot regex (evaluation only; "
                    "never a feature or a training label)",
    },
    cannot_provide=["purchases (purchased is false everywhere: FPR and the weak human "
                    "label are undefined, so `slidr train` refuses this log alone)",
                    "customers / RFM", "logged-in users", "ad ids (requests are page "
                    "and asset fetches, not ad clicks)", "client time zones",
                    "ground truth robot labels (ua_robot is self-declared only)"])


IMPORTERS = {"talkingdata": import_talkingdata, "apache": import_apache}
