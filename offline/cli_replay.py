"""`slidr replay`: delayed decisions through another bundle (docs/daemon.md, "Decision log")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slidr.slidrd.config import OPTIONS as DAEMON

from slidr.defaults import COMMON
from slidr.options import add


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay", help="delayed decisions: replay traffic through a chosen bundle",
        description="Re-decide past traffic with a bundle (e.g. the previous stable one, or a "
                    "model published after the daemon failed open) and write delayed "
                    "decisions: the decision contract plus replayed_with, changed and "
                    "original. Prints how many decisions changed and the IVR before/after.")
    src = p.add_mutually_exclusive_group(required=True)
    add(src, COMMON["clicks"], required=False,
        help="a click log in the click contract (Parquet or CSV); features recomputed")
    src.add_argument("--decisions", type=Path, metavar="PATH",
                     help="the daemon's decision log: a directory of decisions-*.msgpack / "
                          "*.jsonl files, or one such file")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--bundle", type=Path, metavar="DIR",
                       help="a bundle directory (default: none; one of --bundle or --registry)")
    add(model, COMMON["registry"], required=False,
        help="a model registry directory (see --model-version)",
        shown="none; one of --bundle or --registry")
    p.add_argument("--model-version", default=None, metavar="VERSION",
                   help="with --registry: a version, current or previous (default: current)")
    add(p, COMMON["out"], required=False,
        help="delayed decisions (.jsonl, or .msgpack for msgpack lines)",
        shown="none; required unless --list-runs")
    p.add_argument("--recompute-features", action="store_true",
                   help="replay every click through a fresh feature kernel instead of "
                        "re-scoring the logged features (needed for records logged without "
                        "features)")
    p.add_argument("--only-fail-open", action="store_true",
                   help="write only clicks the daemon answered with a fail-open decision")
    p.add_argument("--include-partial", action="store_true",
                   help="also read decisions-*.msgpack.part files (left by a killed daemon)")
    p.add_argument("--run", metavar="RUN",
                   help="with --decisions DIR: only this daemon run's files (see --list-runs; "
                        "default: every run in the directory)")
    p.add_argument("--list-runs", action="store_true",
                   help="with --decisions DIR: list the daemon runs in the directory and exit")
    p.add_argument("--bad-window", metavar="VERSION", default=None,
                   help="with --decisions: only the decisions VERSION made (its fail-open "
                        "answers included), e.g. a bundle slidrd's monitor rolled back; "
                        "re-scored through the registry's current bundle unless "
                        "--model-version or --bundle names another (default: none, every "
                        "decision of the log; docs/runbook.md)")
    p.add_argument("--resume", action="store_true",
                   help="go on from where an interrupted replay to the same --out stopped "
                        "(OUT.resume.json); default: start over")
    add(p, DAEMON["backend"], help="scorer backend, as the daemon's `backend`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import replay_decisions as rd
    if args.list_runs or args.run is not None:
        if args.decisions is None:
            raise ValueError("--list-runs and --run need --decisions DIR")
    if args.list_runs:
        print(rd.format_runs(args.decisions))
        return 0
    if args.bundle is None and args.registry is None:
        raise ValueError("one of --bundle or --registry is required")
    if args.out is None:
        raise ValueError("--out is required")
    if args.model_version is not None and args.registry is None:
        raise ValueError("--model-version needs --registry")
    if args.bad_window is not None and args.decisions is None:
        raise ValueError("--bad-window needs --decisions (the decision log of that window)")
    model = rd.load_model(bundle=args.bundle, registry=args.registry,
                          version=args.model_version, backend=args.backend)
    if args.bad_window is not None and model.version == args.bad_window:
        raise ValueError(f"--bad-window {args.bad_window} would be re-scored through itself: "
                         "roll it back first, or name the bundle to replay with "
                         "(--model-version / --bundle)")
    if args.clicks is not None:
        if args.only_fail_open:
            raise ValueError("--only-fail-open needs --decisions (a click log has no decisions)")
        summary = rd.replay_click_log(args.clicks, model, args.out)
    else:
        summary = rd.replay_decisions(args.decisions, model, args.out,
                                      recompute_features=args.recompute_features,
                                      only_fail_open=args.only_fail_open,
                                      include_partial=args.include_partial, run=args.run,
                                      bad_window=args.bad_window, resume=args.resume)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
    else:
        print(rd.format_summary(summary))
    return 0
