"""slidr.util: atomic writes."""

from __future__ import annotations

import os
import stat

import pytest

from slidr.util import atomic_open, write_json


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_write_gets_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert _mode(tmp_path / "a.json") == 0o644  # not mkstemp's 0600
        os.umask(0o027)
        with atomic_open(tmp_path / "b.txt") as f:
            f.write("hi")
        assert _mode(tmp_path / "b.txt") == 0o640
    finally:
        os.umask(old)


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{}")
    os.chmod(p, 0o600)
    write_json(p, {"y": 2})
    assert _mode(p) == 0o600 and p.read_text().startswith("{")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["d.txt"]
