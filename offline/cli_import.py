"""`slidr import talkingdata|apache SRC --out DIR`: real logs into the click contract."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slidr.defaults import COMMON
from slidr.options import add


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="real logs (TalkingData, Apache combined) into the click contract",
        description="Convert a TalkingData AdTracking CSV or an Apache combined access log into "
                    "DIR/clicks.parquet (sorted by ts), an empty but valid DIR/customers.parquet, "
                    "DIR/manifest.json (mappings, counts, rows that failed to parse) and "
                    "DIR/source.json. Rows that do not parse are counted and reported, never "
                    "guessed. See docs/data.md for every mapping and its limits.")
    p.add_argument("kind", choices=("talkingdata", "apache"), help="source format")
    p.add_argument("src", type=Path, help="source file")
    add(p, COMMON["out"], help="output directory (replaced if present)")
    p.add_argument("--max-bad-share", type=float, default=0.01,
                   help="refuse (exit 2) when more than this share of rows fails to parse")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from slidr import progress

    from .importers import IMPORTERS, write_import

    with progress.job(getattr(args, "_prog", "slidr import"), ("read and convert", "write")) as job:
        job.stage("read and convert")
        res = IMPORTERS[args.kind](args.src)
        m = res.manifest
        bad = m["bad_rows"]
        share = bad["count"] / max(m["rows_read"], 1)
        if m["rows_written"] == 0:
            raise ValueError(f"{args.src}: no row could be parsed as {args.kind} "
                             f"({bad['count']} bad rows; first: {bad['first'][:3]})")
        if share > args.max_bad_share:
            raise ValueError(f"{args.src}: {bad['count']} of {m['rows_read']} rows "
                             f"({share:.1%}) failed to parse, more than --max-bad-share "
                             f"{args.max_bad_share:.1%}; first: {bad['first'][:3]}")
        job.stage("write")
        write_import(res, args.out)
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    s = m["summary"]
    print(f"{m['rows_written']:,} of {m['rows_read']:,} rows imported from {args.src} "
          f"({s.get('first_utc', '-')} .. {s.get('last_utc', '-')}), "
          f"{s.get('purchases', 0):,} purchases, {s.get('sessions', 0):,} sessions")
    if bad["count"] and not args.quiet:
        shown = ", ".join(f"line {b['line']}: {b['reason']}" for b in bad["first"][:5])
        print(f"{bad['count']} row(s) failed to parse and were skipped: {shown}",
              file=sys.stderr)
    for name in m["files"].values():
        print(f"-> {Path(args.out) / name}")
    return 0
