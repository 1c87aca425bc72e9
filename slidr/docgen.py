"""The tables in the docs that are generated from the code: options, exit codes, commands.

`python -m slidr.docgen` rewrites every block between `<!-- generated: NAME -->` and
`<!-- end: NAME -->`; `python -m slidr.docgen --check` (and tests/test_cli_convention.py) fails
when a block differs from what the declarations say, so a default changed in one place cannot
leave the docs behind.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _exit_codes() -> str:
    from . import exits
    return exits.markdown()


def _shared_options() -> str:
    from . import defaults
    return defaults.markdown()


def _daemon_options() -> str:
    from .options import markdown_table
    from .slidrd.config import OPTIONS
    return markdown_table(OPTIONS.values(), key_title="flag (TOML key: without --, _ for -)")


def _commands() -> str:
    from .cli import build_parser as slidr_parser
    from .command import leaves
    from .slidrd.main import build_parser as slidrd_parser
    rows = ["| command | does |", "|---|---|"]
    for root in (slidr_parser(), slidrd_parser()):
        helps = _help_of(root)
        for leaf in leaves(root):
            rows.append(f"| `{leaf.prog}` | {helps.get(leaf.prog, '').replace('|', '/')} |")
    return "\n".join(rows)


def _help_of(root: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(p: argparse.ArgumentParser) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in a._choices_actions}
                for name, sp in a.choices.items():
                    out.setdefault(sp.prog, helps.get(name) or "")
                    walk(sp)
    walk(root)
    return out


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "exit-codes": ("docs/cli.md", _exit_codes),
    "commands": ("docs/cli.md", _commands),
    "shared-options": ("docs/cli.md", _shared_options),
    "daemon-options": ("docs/daemon.md", _daemon_options),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {re.escape(name)} [^>]*-->\n)(.*?)(<!-- end: "
                      rf"{re.escape(name)} -->)", re.S)


def render(root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """{file: (current text, text with every block regenerated)}."""
    out: dict[Path, tuple[str, str]] = {}
    for name, (rel, make) in BLOCKS.items():
        path = root / rel
        cur, new = out.get(path, (path.read_text(), path.read_text()))
        pat = _pattern(name)
        if not pat.search(new):
            raise SystemExit(f"{rel}: no block '<!-- generated: {name} ... -->'")
        new = pat.sub(lambda m, make=make: m.group(1) + make().rstrip() + "\n" + m.group(3), new)
        out[path] = (cur, new)
    return out


def stale(root: Path = ROOT) -> list[str]:
    return [str(p.relative_to(root)) for p, (cur, new) in render(root).items() if cur != new]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slidr.docgen", description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if a block is out of date")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for f in bad:
            print(f"{f}: generated tables are out of date; run `python -m slidr.docgen`",
                  file=sys.stderr)
        return 1 if bad else 0
    for path, (cur, new) in render().items():
        if cur != new:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
