"""Product files speak of the product: no build rounds or sessions, no notes between the people
who built it, no path of one machine. Tests are exempt (they may name what they guard against)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HISTORY = re.compile(
    r"session ?[0-9]|\bround [0-9]|(^|[^A-Za-z0-9_.-])/(work|farm)/|TEAM-NOTES|"
    r"\bthis session\b|\bthe integrator\b", re.I | re.M)
TEXT = (".py", ".pyx", ".pyi", ".md", ".toml", ".json", ".lua", ".sh", ".service", ".timer",
        ".env", ".cfg", ".txt", ".yml", ".yaml", ".html", ".err", ".port", "Makefile")


def _product_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    return [REPO / p for p in out
            if not p.startswith("tests/") and p.endswith(TEXT) and (REPO / p).is_file()]


def test_no_history_in_product_files():
    bad = []
    for f in _product_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                bad.append(f"{f.relative_to(REPO)}:{n}: {line.strip()[:120]}")
    assert not bad, "\n".join(bad)


def test_result_folders_say_what_they_measured():
    """bench/results/<name>/: a measurement and a date (YYYY-MM-DD), not a round's number."""
    root = REPO / "bench" / "results"
    bad = [d.name for d in root.iterdir() if d.is_dir()
           and not re.fullmatch(r"[a-z0-9-]+-\d{4}-\d{2}-\d{2}", d.name)]
    assert not bad, bad


def test_the_check_catches_history(tmp_path):
    for line in ("measured in session 3", "Repo: /work/main", "see TEAM-NOTES", "round 2 of the build"):
        assert HISTORY.search(line), line
    for line in ("a session key", "one store round trip", "docs/work/x", "3 rounds x 12 s"):
        assert not HISTORY.search(line), line


def test_architecture_names_modules_that_exist():
    """Every module or file ARCHITECTURE.md and CONTRIBUTING.md name (slidrd/batcher.py, ext/,
    tests/test_x.py, ...) is in the repository, so the diagrams follow the code."""
    path = re.compile(r"(?<![\w/.-])((?:slidr|slidrd|ext|offline|engines|bench|systemd|tests|"
                      r"scripts)/[\w./-]*[\w/])")
    bad = []
    for name in ("ARCHITECTURE.md", "CONTRIBUTING.md"):
        text = (REPO / name).read_text()
        for p in sorted(set(path.findall(text))):
            if "<" in p or p.endswith("/test_x.py") or p.startswith("bench/results/"):
                continue
            if not (REPO / p).exists():
                bad.append(f"{name}: {p}")
    assert not bad, "\n".join(bad)
