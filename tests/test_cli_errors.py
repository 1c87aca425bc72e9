"""Mistakes a new user makes, each answered with the documented exit code (docs/cli.md,
slidr/exits.py) and one line on stderr naming the file, field or value; no traceback unless
--debug. In-process (slidr.cli.main) except where the streams of a real process matter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import REPO

from slidr import exits
from slidr.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "ArrowInvalid" not in err
    return lines[0]


@pytest.fixture
def empty_parquet(tmp_path: Path) -> Path:
    p = tmp_path / "empty.parquet"
    p.write_bytes(b"")
    return p


def test_missing_input_is_exit_2_on_stderr_only(tmp_path, capsys):
    missing = tmp_path / "nope.parquet"
    for cmd in (["train", "--clicks", str(missing), "--out", str(tmp_path / "o")],
                ["daily", "--clicks", str(missing), "--registry", str(tmp_path / "reg")]):
        rc, out, err = run(capsys, *cmd)
        assert rc == exits.USAGE, (cmd, err)
        assert out == "", out  # nothing on stdout: not "failed: ..." there too
        line = one_line(err)
        assert line.startswith(f"slidr {cmd[0]}: error: ") and str(missing) in line, line
    assert not (tmp_path / "reg").exists()  # nothing was created for a run that could not start


def test_empty_or_corrupt_parquet_names_the_file(tmp_path, empty_parquet, capsys):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not parquet at all" * 10)
    for path, needle in ((empty_parquet, "empty file (0 bytes)"),
                         (junk, "not a readable Parquet file")):
        for cmd in (["train", "--clicks", str(path), "--out", str(tmp_path / "o")],
                    ["daily", "--clicks", str(path), "--registry", str(tmp_path / "reg")],
                    ["calibrate", "--scores", str(path), "--out", str(tmp_path / "t.json")]):
            rc, out, err = run(capsys, *cmd)
            line = one_line(err)
            assert rc == exits.USAGE, (cmd, line)
            assert str(path) in line and needle in line, line


def test_debug_adds_the_traceback(tmp_path, empty_parquet, capsys):
    rc, _out, err = run(capsys, "calibrate", "--scores", str(empty_parquet), "--out",
                        str(tmp_path / "t.json"), "--debug")
    assert rc == exits.USAGE and "Traceback" in err and "empty file" in err


def test_models_promote_unknown_version(tmp_path, capsys):
    (tmp_path / "reg").mkdir()
    rc, out, err = run(capsys, "models", "promote", "nosuch", "--registry",
                       str(tmp_path / "reg"))
    assert rc == exits.USAGE and out == ""
    line = one_line(err)
    assert line.startswith("slidr models promote: error: ") and "nosuch" in line
    rc, out, err = run(capsys, "models", "list", "--registry", str(tmp_path / "nope"))
    assert rc == exits.USAGE and "does not exist" in one_line(err)


def test_values_out_of_range_and_unknown_flags(tmp_path, capsys):
    for argv, needle in ((["calibrate", "--train-dir", str(tmp_path), "--out", "x.json",
                           "--fpr-budget", "2"], "--fpr-budget: 2 is out of range (0, 1)"),
                         (["simulate", "--out", str(tmp_path / "s"), "--days", "0"],
                          "--days: 0 is out of range [1, 366]"),
                         (["daily", "--clicks", "c.parquet", "--registry", "r",
                           "--max-psi", "high"], "--max-psi: must be a number, not 'high'"),
                         (["train", "--clicks", "c", "--out", "o", "--fpr-target", "0.01"],
                          "unrecognized arguments: --fpr-target")):
        rc, out, err = run(capsys, *argv)
        line = one_line(err)
        assert rc == exits.USAGE and needle in line and "--help" in line, line


def _guard(tmp_path: Path, text: str, name: str = "guard.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_guardrail_config_checked_in_full_when_loaded(tmp_path, capsys):
    base = ["daily", "--clicks", "c.parquet", "--registry", str(tmp_path), "--check-config"]
    cases = [('[guardrails]\nmax_psi = "high"\n', "'max_psi' must be a number, not 'high'"),
             ("[guardrails]\nmax_ps = 0.3\n", "unknown key 'max_ps' (did you mean max_psi"),
             ("[guardrails]\nmax_ivr = 1.5\n", "'max_ivr' = 1.5 is out of range [0, 1]"),
             ("[guardrails]\nmin_coverage = 0.3\n", "give it to `slidr daily --min-coverage`"),
             ("[guardrails\n", "not valid TOML")]
    for text, needle in cases:
        f = _guard(tmp_path, text)
        rc, out, err = run(capsys, *base, "--guardrail-config", str(f))
        line = one_line(err)
        assert rc == exits.USAGE and needle in line and str(f) in line, line
        rc, _o, err = run(capsys, "check-config", str(f), "--kind", "guardrails")
        assert rc == exits.USAGE and needle in one_line(err)
    # A JSON guardrail config is read, checked in full like a TOML one, with a note naming the
    # format to move to (one line, on stderr; --quiet drops it).
    f = _guard(tmp_path, json.dumps({"max_psi": 0.3}), "guard.json")
    rc, out, err = run(capsys, *base, "--guardrail-config", str(f))
    assert rc == 0 and json.loads(out)["guard"]["max_psi"] == 0.3
    assert "note:" in one_line(err) and "TOML" in err and str(f) in err
    rc, out, err = run(capsys, *base, "--guardrail-config", str(f), "--quiet")
    assert rc == 0 and err == ""
    for text, needle in ((json.dumps({"max_psi": "high"}), "'max_psi' must be a number"),
                         (json.dumps({"guardrails": {"max_ps": 1}}), "unknown key 'max_ps'"),
                         ("[1", "not valid JSON"), ("[1]", "must be an object")):
        f.write_text(text)
        for argv in ([*base, "--guardrail-config", str(f)], ["check-config", str(f)]):
            rc, _o, err = run(capsys, *argv)
            line = one_line(err)
            assert rc == exits.USAGE and needle in line and str(f) in line, line
    f.write_text(json.dumps({"max_psi": 0.25}))
    rc, out, err = run(capsys, "check-config", str(f), "--json")
    assert rc == 0 and json.loads(out)[str(f)]["settings"]["max_psi"] == 0.25
    # A valid file, then a flag over it: the flag wins.
    f = _guard(tmp_path, "[guardrails]\nmax_psi = 0.3\nmin_days = 4\n")
    rc, out, err = run(capsys, *base, "--guardrail-config", str(f), "--max-psi", "0.4")
    doc = json.loads(out)
    assert rc == 0 and doc["guard"]["max_psi"] == 0.4 and doc["guard"]["min_days"] == 4
    assert doc["min_coverage"] == doc["guard"]["min_coverage"] == 0.2


def test_check_config_every_kind(tmp_path, capsys):
    d = _guard(tmp_path, '[slidrd]\nregistry = "/var/lib/slidr/registry"\nmax_bach = 64\n',
               "d.toml")
    rc, _o, err = run(capsys, "check-config", str(d))
    assert rc == exits.USAGE and "unknown key 'max_bach' (did you mean max_batch" in one_line(err)
    d.write_text('[slidrd]\nregistry = "/var/lib/slidr/registry"\nmax_batch = 64\n')
    s = REPO / "bench" / "scenarios" / "sweep-redis.toml"
    rc, out, _e = run(capsys, "check-config", str(d), str(s), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc[str(d)]["settings"]["max_batch"] == 64
    assert doc[str(s)]["kind"] == "scenario"
    bad = _guard(tmp_path, s.read_text().replace("connections = 16", "connections = 0"),
                 "s.toml")
    rc, _o, err = run(capsys, "check-config", str(bad))
    assert rc == exits.USAGE and "[load]: 'connections' = 0 is out of range" in one_line(err)


def test_unreachable_daemon_is_a_failure_not_bad_input(tmp_path, capsys):
    rc, out, err = run(capsys, "admin", "stats", "--admin-socket", str(tmp_path / "no.sock"))
    assert rc == exits.FAILED and out == ""
    assert "cannot reach slidrd admin socket" in one_line(err)


def test_slidrd_bad_flag_and_config(tmp_path):
    """The daemon, as systemd would start it: one line on stderr, exit 2."""
    f = tmp_path / "d.toml"
    f.write_text(f'registry = "{tmp_path}"\nport = "80"\n')
    for argv, needle in ((["serve", "--config", str(f)], "'port' must be an integer"),
                         (["serve", "--registry", str(tmp_path), "--port", "70000"],
                          "--port: 70000 is out of range [0, 65535]")):
        r = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", *argv], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == exits.USAGE and r.stdout == ""
        assert needle in one_line(r.stderr), r.stderr


def test_a_log_that_is_not_a_click_log_names_the_file(tmp_path, capsys):
    """A CSV of other columns, a CSV with a bad value, a path without .parquet/.csv: one line
    naming the file (and the column or the value), no "(got None)" for a file-level problem."""
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("click_id,ts,session_id,ip,device,logged_in,purchased\n"
                   "x,notanumber,s,1.2.3.4,app,1,0\n")
    for path, needles in ((other, ["'click_id' column is missing", "has: a, b"]),
                          (bad, ["could not be read as CSV", "notanumber"]),
                          (tmp_path, ["must end in .parquet or .csv"])):
        rc, out, err = run(capsys, "train", "--clicks", str(path), "--out", str(tmp_path / "o"))
        line = one_line(err)
        assert rc == exits.USAGE and out == "" and str(path) in line, line
        assert all(n in line for n in needles) and "(got None)" not in line, line
