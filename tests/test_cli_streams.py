"""Streams of every command (docs/cli.md, "The rules"): with --json, stdout is one JSON document
and nothing else; --quiet leaves stderr empty on success; a reader that closes stdout early
(`| head`) ends the command with the table's code and no message. Also the registry's pointer
names (current, previous) wherever a command takes a version."""

from __future__ import annotations

import json
import subprocess
import sys

from daemon_helpers import REPO

from slidr import exits
from slidr.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_json_is_the_only_thing_on_stdout(tmp_path, capsys):
    rc, out, err = run(capsys, "simulate", "--out", str(tmp_path / "s"), "--days", "1",
                       "--clicks-per-day", "500", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc and "simulate" in err  # the progress line stays on stderr
    reg = tmp_path / "reg"
    reg.mkdir()
    for argv in (["models", "list", "--registry", str(reg)],
                 ["models", "verify", "--registry", str(reg)],
                 ["check-config", str(REPO / "systemd" / "slidrd.toml")]):
        rc, out, err = run(capsys, *argv, "--json")
        assert rc == 0, (argv, err)
        json.loads(out)


def test_quiet_leaves_stderr_empty(tmp_path, capsys):
    rc, out, err = run(capsys, "simulate", "--out", str(tmp_path / "s"), "--days", "1",
                       "--clicks-per-day", "500", "--quiet")
    assert rc == 0 and err == "" and "clicks" in out
    rc, out, err = run(capsys, "simulate", "--out", str(tmp_path / "s"), "--days", "1",
                       "--clicks-per-day", "500")
    assert rc == 0 and err.strip()  # without --quiet there was something to silence


def test_pointer_names_are_versions(tmp_path, capsys):
    reg = tmp_path / "reg"
    reg.mkdir()
    for action in ("show", "verify"):
        for name in ("current", "previous"):
            rc, out, err = run(capsys, "models", action, name, "--registry", str(reg))
            assert rc == exits.USAGE and out == ""
            assert f"has no {name} model" in err and err.count("\n") == 1, err


def test_closed_stdout_is_its_own_code_without_a_message(tmp_path):
    """The reader closes the pipe before the command writes its result."""
    p = subprocess.Popen([sys.executable, "-m", "slidr.cli", "simulate", "--out",
                          str(tmp_path / "s"), "--days", "1", "--clicks-per-day", "500",
                          "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == exits.PIPE_CLOSED, err
    assert err == "", err


def test_simulate_progress_moves_in_even_steps(tmp_path, capsys):
    """--progress (stderr not a terminal): a line every ~10 %, never a jump of a sixth."""
    import re
    rc, _out, err = run(capsys, "simulate", "--out", str(tmp_path / "s"), "--days", "6",
                        "--clicks-per-day", "500", "--progress")
    pcts = [int(m) for m in re.findall(r"^simulate: (\d+)% ", err, re.M)]
    assert rc == 0 and len(pcts) >= 8 and pcts[-1] == 100, err
    gaps = [b - a for a, b in zip([0, *pcts[:-1]], pcts, strict=True)]
    assert max(gaps) <= 12 and min(gaps) > 0, pcts
