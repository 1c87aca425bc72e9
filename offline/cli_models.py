"""`slidr models list|show|promote|rollback|verify --registry DIR [--json]`: the model registry.

Exit codes (slidr/exits.py): 0 ok, 2 bad input (unknown version, no previous model, a registry
that does not exist), 5 a bundle failed verification (the reason is printed)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from slidr.defaults import COMMON
from slidr.exits import CHECK_FAILED, BadInput, CheckFailed
from slidr.options import add

EXIT_VERIFY_FAILED = CHECK_FAILED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, show, promote, roll back and verify model bundles",
                       description="Operate the model registry (current / previous pointers "
                                   "and immutable bundles). Promotion and rollback are one "
                                   "atomic pointer swap that a running slidrd picks up.")
    ms = p.add_subparsers(dest="action", metavar="ACTION")
    ms.required = True

    def common(q: argparse.ArgumentParser) -> None:
        add(q, COMMON["registry"])

    common(ms.add_parser("list", help="all bundles, marking current, previous and rejected "
                                      "(with the reason)"))
    q = ms.add_parser("show", help="one bundle: manifest summary, thresholds, metrics")
    q.add_argument("version", nargs="?", help="a version, or current or previous (as "
                                              "`slidr replay --model-version`) (default: "
                                              "current)")
    common(q)
    q = ms.add_parser("promote", help="make VERSION current (after verifying it)")
    q.add_argument("version", help="the version to promote (`slidr models list`)")
    q.add_argument("--force", action="store_true",
                   help="promote a version that was rejected (rolled back by slidrd's "
                        "deviation monitor or with --reason); clears the mark")
    common(q)
    q = ms.add_parser("rollback", help="the previous stable bundle becomes current")
    q.add_argument("--reason", default=None, metavar="TEXT",
                   help="mark the bundle rolled back as rejected, with this reason (default: "
                        "not marked)")
    common(q)
    q = ms.add_parser("verify", help="checksums, manifest, feature-spec hash (all bundles if "
                                     "no VERSION)")
    q.add_argument("version", nargs="?", help="the version to verify, or current or previous "
                                              "(default: all of them)")
    common(q)
    p.set_defaults(func=run)


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    if args.json:
        json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slidr.registry import BundleError, Registry, RegistryError
    if not Path(args.registry).is_dir():
        # A mistyped path must not read as "an empty registry" (nor be created by promote).
        raise BadInput(f"registry {args.registry} does not exist (or is not a directory)")
    reg = Registry(args.registry)
    try:
        return _dispatch(args, reg)
    except RegistryError as e:
        raise BadInput(str(e)) from None  # unknown version, nothing to roll back to: exit 2
    except BundleError as e:
        if args.json:
            _out(args, {"ok": False, "version": e.version, "reason": e.reason}, "")
        raise CheckFailed(f"{e}; the pointers are unchanged") from None


def _dispatch(args: argparse.Namespace, reg: Any) -> int:
    from slidr.registry import BundleError
    ptr = reg.pointers()
    if args.action in ("show", "verify") and args.version in ("current", "previous"):
        name = args.version
        args.version = ptr[name]
        if not args.version:
            raise BadInput(f"registry {reg.path} has no {name} model")
    if args.action == "list":
        rows = []
        for v in reg.list():
            try:
                s = reg.show(v)
            except BundleError as e:
                s = {"version": v, "error": e.reason}
            rej = (ptr.get("rejected") or {}).get(v)
            rows.append({"version": v, "current": v == ptr["current"],
                         "previous": v == ptr["previous"], "created": s.get("created"),
                         "method": s.get("threshold_method"),
                         "guardrails_passed": s.get("guardrails_passed"),
                         "error": s.get("error"), "rejected": rej})
        lines = [f"{'':2}{'version':<34} {'created':<21} {'method':<7} guardrails"]
        for r in rows:
            mark = "* " if r["current"] else ("p " if r["previous"] else
                                              ("x " if r["rejected"] else "  "))
            lines.append(f"{mark}{r['version']:<34} {r['created'] or '-':<21} "
                         f"{r['method'] or '-':<7} {r['guardrails_passed']}"
                         + (f"  ERROR {r['error']}" if r["error"] else ""))
            if r["rejected"]:
                lines.append(f"    rejected {r['rejected'].get('at', '?')}: "
                             f"{r['rejected'].get('reason', '?')}")
        lines.append("(* current, p previous, x rejected)" if rows
                     else f"no bundles in {reg.path}")
        _out(args, {"pointers": ptr, "bundles": rows}, "\n".join(lines))
        return 0
    if args.action == "show":
        v = args.version or ptr["current"]
        if not v:
            raise ValueError(f"registry {reg.path} has no current model; name a version")
        s = reg.show(v)
        text = [f"version   {s['version']}{'  (current)' if s['is_current'] else ''}"
                f"{'  (previous)' if s['is_previous'] else ''}",
                f"created   {s['created']}", f"spec hash {s['feature_spec_hash']}",
                f"method    {s['threshold_method']}  default {s['default_threshold']}"]
        text += [f"  {k:<12} {val:.4f}" for k, val in sorted(s["slices"].items())]
        test = (s.get("metrics") or {}).get("test") or {}
        if test:
            text.append("held-out  " + "  ".join(f"{k}={test[k]:.4f}" for k in
                                                 ("ivr", "fpr", "coverage") if k in test))
        text.append(f"guardrails passed: {s['guardrails_passed']}")
        if s.get("rejected"):
            text.append(f"REJECTED  {s['rejected'].get('at', '?')}: "
                        f"{s['rejected'].get('reason', '?')}")
        text.append(f"path      {s['path']}")
        _out(args, s, "\n".join(text))
        return 0
    if args.action == "promote":
        reg.bundle(args.version)  # an unknown version is bad input (2), not a failed check (5)
        reg.promote(args.version, force=args.force)
        p = reg.pointers()
        _out(args, {"ok": True, **p}, f"current: {p['current']}  previous: {p['previous']}")
        return 0
    if args.action == "rollback":
        old = ptr["current"]
        new = reg.rollback(reason=args.reason, by="slidr models rollback")
        p = reg.pointers()
        _out(args, {"ok": True, "rolled_back": old, **p},
             f"rolled back {old} -> current: {new}  previous: {p['previous']}")
        return 0
    if args.action == "verify":
        versions = [args.version] if args.version else reg.list()
        res: dict[str, str | None] = {}
        for v in versions:
            try:
                reg.verify(v)
                res[v] = None
            except BundleError as e:
                res[v] = e.reason
        bad = {v: r for v, r in res.items() if r}
        lines = [f"{'ok  ' if r is None else 'FAIL'} {v}" + (f": {r}" if r else "")
                 for v, r in res.items()] or [f"no bundles in {reg.path}"]
        _out(args, {"ok": not bad, "results": res}, "\n".join(lines))
        if bad:
            raise CheckFailed(f"{len(bad)} of {len(res)} bundle(s) failed verification: "
                              + ", ".join(sorted(bad)))
        return 0
    raise ValueError(f"unknown action {args.action!r}")
