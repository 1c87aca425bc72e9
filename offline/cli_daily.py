"""`slidr daily --clicks F --customers F --registry DIR`: the whole daily retrain.

Exit codes: 0 published, 3 refused by a data guardrail, 4 refused by a model guardrail,
1 failed (error). A refusal keeps the current model and prints which check failed and why."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "daily", help="guardrails -> train -> calibrate -> guardrails -> publish or refuse",
        description="The daily retrain. Exit 0 published (and promoted), 3 refused by a data "
                    "guardrail, 4 refused by a model guardrail, 1 failed. The registry is "
                    "changed only by an atomic publish and pointer swap.")
    p.add_argument("--clicks", required=True, help="click log (Parquet or CSV)")
    p.add_argument("--customers", default=None, help="customers table (RFM)")
    p.add_argument("--registry", required=True, help="model registry DIR")
    p.add_argument("--work", default=None,
                   help="work directory (kept; default: a temp dir, removed after a publish)")
    p.add_argument("--fpr-budget", type=float, default=0.01)
    p.add_argument("--min-coverage", type=float, default=0.2,
                   help="minimum robotic coverage per slice (default 0.2: a 0.5 floor was "
                        "infeasible at a 1%% budget on most simulated days, see "
                        "docs/calibration.md)")
    p.add_argument("--slice-min-coverage", action="append", metavar="SLICE=VALUE",
                   help="per-slice minimum coverage (fnmatch patterns allowed); default "
                        "'*/in=0': the k-clicks heuristic flags heavy-clicking customers in "
                        "logged-in traffic. Repeatable; giving any replaces the default")
    p.add_argument("--min-purchasing", type=int, default=200,
                   help="slices with fewer purchasing clicks on the validation days use the "
                        "global threshold (default 200)")
    p.add_argument("--k", type=int, default=20, help="robotic-coverage heuristic k")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--val-days", type=int, default=None,
                   help="validation days the thresholds are calibrated on (default: 3 on logs "
                        "of 9+ days, 2 on 8 days, 1 on shorter logs)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--method", choices=("auto", "slice", "global"), default="slice",
                   help="published thresholds: slice (default) slice-level; global "
                        "global@budget; auto slice-level unless the validation days' "
                        "leave-one-day-out evidence says global@budget is better")
    p.add_argument("--max-psi", type=float, default=0.25, help="feature drift limit (PSI)")
    p.add_argument("--ivr-band", type=float, default=0.5,
                   help="allowed relative IVR change vs the current model (default 0.5)")
    p.add_argument("--min-slice-clicks", type=int, default=500,
                   help="data guardrail: minimum clicks per slice in the log (default 500)")
    p.add_argument("--min-slice-purchases", type=int, default=20,
                   help="data guardrail: minimum purchases per slice in the log (default 20)")
    p.add_argument("--fpr-tolerance", type=float, default=0.5,
                   help="held-out FPR may exceed the budget by this fraction (+3 s.e.)")
    p.add_argument("--guardrail-config", default=None, metavar="FILE.json",
                   help="JSON object overriding any guardrail limit by name (see "
                        "slidr.offline.guardrails.GuardrailConfig); applied after the flags")
    p.add_argument("--json", action="store_true", help="print the run result as JSON")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import daily
    from . import guardrails as gr
    g = gr.GuardrailConfig(max_psi=args.max_psi, ivr_band=args.ivr_band,
                          fpr_tolerance=args.fpr_tolerance,
                          min_slice_clicks=args.min_slice_clicks,
                          min_slice_purchases=args.min_slice_purchases)
    if args.guardrail_config:
        import dataclasses
        with open(args.guardrail_config) as f:
            over = json.load(f)
        known = {f.name for f in dataclasses.fields(g)}
        bad = sorted(set(over) - known) if isinstance(over, dict) else ["<not an object>"]
        if bad:
            raise ValueError(f"{args.guardrail_config}: unknown guardrail setting(s) "
                             f"{', '.join(bad)}; known: {', '.join(sorted(known))}")
        for k, v in over.items():
            setattr(g, k, v)
    from .calibrate import parse_slice_coverage
    extra = {}
    if args.slice_min_coverage:
        extra["slice_min_coverage"] = parse_slice_coverage(args.slice_min_coverage)
    cfg = daily.DailyConfig(**extra, fpr_budget=args.fpr_budget, min_coverage=args.min_coverage,
                            min_purchasing=args.min_purchasing, k=args.k, epochs=args.epochs, seed=args.seed,
                            val_days=args.val_days, progress=args.progress, guard=g,
                            method=args.method)
    res = daily.run_daily(args.clicks, args.customers, args.registry, args.work, cfg,
                          log=lambda m: print(m, file=sys.stderr))
    if args.json:
        out = daily._clean(res)
        out.pop("traceback", None)
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(f"{res['status']}: {res['reason']}")
        sel = (res.get("calibration") or {}).get("selection") or {}
        if sel:
            print(f"calibration method: {sel.get('chosen')} ({sel.get('mode')}): "
                  f"{sel.get('reason')}")
        for c in res["checks"]:
            mark = "ok  " if c["passed"] else "FAIL"
            print(f"  [{mark}] {c['kind']:<5} {c['name']:<26} {c['message'][:160]}")
        print(f"current model: {res.get('current')}")
        if res["exit_code"] != daily.EXIT_PUBLISHED and res["work"]:
            print(f"work directory kept for inspection: {res['work']}")
    if res["exit_code"] == daily.EXIT_FAILED and res.get("traceback"):
        print(res["traceback"], file=sys.stderr)
    return int(res["exit_code"])
