"""Importers on the real files in ../shared/data/real plus small synthetic bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from slidr.offline.importers import import_apache, import_talkingdata, write_import

from slidr.cli import main
from slidr.contract import iter_log_chunks

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
TD = REAL / "talkingdata_train_sample" / "train_sample.csv"
AP = REAL / "elastic_apache_logs" / "apache_logs"

TD_HEADER = "ip,app,device,os,channel,click_time,attributed_time,is_attributed\n"


def _valid(path: Path, n: int) -> None:
    assert sum(t.num_rows for t in iter_log_chunks(path, require=("purchased",))) == n


@pytest.mark.skipif(not TD.exists(), reason="real TalkingData sample not present")
def test_talkingdata_real(tmp_path):
    res = import_talkingdata(TD)
    m = res.manifest
    assert m["rows_read"] == 100_000 and m["rows_written"] == 100_000
    assert m["bad_rows"]["count"] == 0
    c = res.clicks
    assert int(np.asarray(c.column("purchased")).sum()) == 227
    ts = c.column("ts").to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert str(np.datetime64(int(ts[0]), "ms")) == "2017-11-06T16:00:00.000"
    assert set(c.column("device").to_pylist()) == {"app", "mobile"}
    assert not any(c.column("logged_in").to_pylist())
    assert set(c.column("tz_offset_min").to_pylist()) == {480}
    # Same integer ip -> same synthetic address.
    assert c.column("ip").to_pylist()[:1][0].startswith("10.")
    write_import(res, tmp_path / "td")
    _valid(tmp_path / "td" / "clicks.parquet", 100_000)
    assert pq.read_table(tmp_path / "td" / "customers.parquet").num_rows == 0
    assert json.loads((tmp_path / "td" / "source.json").read_text())["source"] == "talkingdata"


@pytest.mark.skipif(not AP.exists(), reason="real Apache log not present")
def test_apache_real(tmp_path, capsys):
    rc = main(["import", "apache", str(AP), "--out", str(tmp_path / "ap"), "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert m["rows_read"] == 10_000 and m["rows_written"] == 9_999
    assert m["bad_rows"] == {"count": 1, "first": [{"line": 8899,
                                                    "reason": "not an Apache combined log line"}]}
    t = pq.read_table(tmp_path / "ap" / "clicks.parquet")
    _valid(tmp_path / "ap" / "clicks.parquet", 9_999)
    assert not any(t.column("purchased").to_pylist())
    share = np.mean(t.column("ua_robot").to_pylist())
    assert 0.15 < share < 0.3  # README: ~21% self-declared robots
    assert set(t.column("device").to_pylist()) == {"desktop", "mobile"}
    # Sessions: same ip+UA, never a gap over 30 minutes inside one session.
    ts = t.column("ts").to_numpy()
    sess = np.asarray(t.column("session_id").to_pylist())
    o = np.lexsort((ts, sess))
    same = sess[o][1:] == sess[o][:-1]
    assert (np.diff(ts[o])[same] <= 30 * 60_000).all()


def test_talkingdata_bad_rows_counted_never_guessed(tmp_path):
    src = tmp_path / "td.csv"
    src.write_text(TD_HEADER
                   + "1,2,1,3,4,2017-11-06 16:00:00,,0\n"            # line 2 ok
                   + "x,2,1,3,4,2017-11-06 16:00:01,,0\n"            # 3 bad ip
                   + "5,2,1,3,4\n"                                   # 4 too few fields
                   + "6,2,1,3,4,2017-11-06 16:00:02,,0\n"            # 5 ok
                   + "7,2,1,3,4,2017-13-06 16:00:02,,0\n"            # 6 bad month
                   + "8,2,3032,3,4,2017-11-06 15:00:00,2017-11-06 15:10:00,1\n"  # 7 ok, earlier
                   + "9,2,1,3,4,2017-11-06 16:00:03,,2\n")           # 8 bad label
    res = import_talkingdata(src)
    m = res.manifest
    assert m["rows_read"] == 7 and m["rows_written"] == 3
    assert m["bad_rows"]["count"] == 4
    assert [b["line"] for b in m["bad_rows"]["first"]] == [3, 4, 6, 8]
    c = res.clicks
    assert c.column("click_id").to_pylist() == ["td-7", "td-2", "td-5"]  # sorted by ts
    assert c.column("device").to_pylist() == ["mobile", "app", "app"]
    assert c.column("purchased").to_pylist() == [True, False, False]
    assert c.column("ip").to_pylist()[0] == "10.0.0.8"


def test_talkingdata_wrong_file(tmp_path):
    src = tmp_path / "x.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a TalkingData"):
        import_talkingdata(src)
    with pytest.raises(FileNotFoundError):
        import_talkingdata(tmp_path / "missing.csv")


def test_apache_bad_lines_and_refusal(tmp_path, capsys):
    ok = ('1.2.3.4 - - [17/May/2015:10:05:03 +0200] "GET / HTTP/1.1" 200 5 "-" '
          '"Mozilla/5.0 (iPhone; CPU iPhone OS 8_0 like Mac OS X)"\n')
    src = tmp_path / "access.log"
    src.write_text(ok
                   + "garbage\n"
                   + ok.replace("1.2.3.4", "999.1.1.1")
                   + ok.replace("17/May", "17/Foo")
                   + ok.replace("Mozilla/5.0 (iPhone; CPU iPhone OS 8_0 like Mac OS X)",
                                "curl/7.1")
                   .replace("10:05:03", "11:05:03"))
    res = import_apache(src)
    m = res.manifest
    assert m["rows_written"] == 2 and m["bad_rows"]["count"] == 3
    assert [b["line"] for b in m["bad_rows"]["first"]] == [2, 3, 4]
    c = res.clicks
    assert c.column("ts").to_pylist()[0] == 1431849903000  # 10:05:03 +0200 = 08:05:03 UTC
    assert c.column("tz_offset_min").to_pylist() == [120, 120]
    assert c.column("device").to_pylist() == ["mobile", "desktop"]
    assert c.column("ua_robot").to_pylist() == [False, True]
    # Too many bad rows: refused, nothing written.
    rc = main(["import", "apache", str(src), "--out", str(tmp_path / "o")])
    assert rc == 2 and not (tmp_path / "o").exists()
    assert "failed to parse" in capsys.readouterr().err
