"""`slidr replay`: delayed decisions through another bundle (DESIGN.md, "replay tool")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="delayed decisions: replay traffic through a chosen bundle",
        description="Re-decide past traffic with a bundle (e.g. the previous stable one, or a "
                    "model published after the daemon failed open) and write delayed "
                    "decisions: the decision contract plus replayed_with, changed and "
                    "original. Prints how many decisions changed and the IVR before/after.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", type=Path, help="click log (Parquet/CSV); features recomputed")
    src.add_argument("--decisions", type=Path,
                     help="the daemon's decision log: a directory of decisions-*.msgpack / "
                          "*.jsonl files, or one such file")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--bundle", type=Path, help="a bundle directory")
    model.add_argument("--registry", type=Path, help="a registry directory (see --version)")
    p.add_argument("--version", default=None,
                   help="with --registry: a version, 'current' (default) or 'previous'")
    p.add_argument("--out", type=Path, required=True,
                   help="delayed decisions (.jsonl, or .msgpack for msgpack lines)")
    p.add_argument("--recompute-features", action="store_true",
                   help="replay every click through a fresh feature kernel instead of "
                        "re-scoring the logged features (needed for records logged without "
                        "features)")
    p.add_argument("--only-fail-open", action="store_true",
                   help="write only clicks the daemon answered with a fail-open decision")
    p.add_argument("--include-partial", action="store_true",
                   help="also read decisions-*.msgpack.part files (left by a killed daemon)")
    p.add_argument("--backend", default="onnxruntime",
                   choices=("onnxruntime", "tensorrt", "auto"), help="scorer (default onnxruntime)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import replay_decisions as rd
    if args.version is not None and args.registry is None:
        raise ValueError("--version needs --registry")
    model = rd.load_model(bundle=args.bundle, registry=args.registry, version=args.version,
                          backend=args.backend)
    if args.log is not None:
        if args.only_fail_open:
            raise ValueError("--only-fail-open needs --decisions (a click log has no decisions)")
        summary = rd.replay_click_log(args.log, model, args.out)
    else:
        summary = rd.replay_decisions(args.decisions, model, args.out,
                                      recompute_features=args.recompute_features,
                                      only_fail_open=args.only_fail_open,
                                      include_partial=args.include_partial)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
    else:
        print(rd.format_summary(summary))
    return 0
