"""Write (or check) requirements.lock: every package a production install of slidr needs
(`slidr[daemon,offline,spark]` and everything they pull in), pinned to the version tested here.

    .venv/bin/python scripts/lock.py            # rewrite requirements.lock from this venv
    .venv/bin/python scripts/lock.py --check    # exit 1 when it is out of date

The closure is read from the installed packages' metadata (importlib.metadata), so the lock is
exactly what the test suite ran against. docs/install.md installs from it.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
EXTRAS = ("daemon", "offline", "spark")
HEADER = ("# Pinned dependencies of a production install: slidr[daemon,offline,spark] and all they\n"
          "# pull in, as tested. Regenerate with `.venv/bin/python scripts/lock.py` (make lock).\n"
          "# Install: pip install -r requirements.lock && pip install --no-deps slidr-*.whl\n")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "slidr", extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """{normalised name: installed version} of everything `root[extras]` needs."""
    env = default_environment()
    seen: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, ex = todo.pop()
        dist = metadata.distribution(name)
        key = _norm(dist.metadata["Name"])
        if key != "slidr":
            if key in seen and not ex:
                continue
            seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            ok = req.marker is None or any(req.marker.evaluate({**env, "extra": e})
                                           for e in (*ex, ""))
            if ok and (_norm(req.name) not in seen or req.extras):
                todo.append((req.name, tuple(sorted(req.extras))))
    return dict(sorted(seen.items()))


def render() -> str:
    return HEADER + "".join(f"{k}=={v}\n" for k, v in closure().items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if requirements.lock is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not LOCK.exists() or LOCK.read_text() != text:
            print("requirements.lock is out of date: run `.venv/bin/python scripts/lock.py`",
                  file=sys.stderr)
            return 1
        return 0
    LOCK.write_text(text)
    print(f"wrote {LOCK.relative_to(ROOT)} ({text.count('==')} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
