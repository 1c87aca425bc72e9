"""`slidr admin reload|rollback|stats [--admin-socket PATH] [--json]`: talk to slidrd's admin socket."""

from __future__ import annotations

import argparse
import json
import os
import socket
from typing import Any

import msgpack

from slidr.exits import BadInput, CommandError

DEFAULT_SOCKET = os.environ.get("SLIDRD_ADMIN_SOCKET", "/run/slidrd/admin.sock")


class AdminRefused(BadInput):
    """The daemon answered the admin request with an error: exit 2, its message on stderr."""


class AdminUnreachable(CommandError, RuntimeError):
    """The daemon cannot be reached (not running, wrong socket) or did not answer: exit 1."""


def call(path: str, method: str, timeout: float = 60.0) -> Any:
    """One msgpack-RPC call on the admin Unix socket. AdminUnreachable (exit 1) when the daemon
    cannot be reached or answers nothing; AdminRefused (exit 2) when it refuses the request
    (nothing to roll back to, a bundle that does not verify): the old model keeps serving."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        raise AdminUnreachable(f"cannot reach slidrd admin socket {path}: {e}") from None
    try:
        s.sendall(msgpack.packb([0, 1, method, []]))
        up = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            data = s.recv(1 << 16)
            if not data:
                raise AdminUnreachable("slidrd closed the admin connection without an answer")
            up.feed(data)
            for msg in up:
                if msg[0] == 1 and msg[1] == 1:
                    if msg[2] is not None:
                        code, text = msg[2]
                        raise AdminRefused(f"{method} refused (code {code}): {text}")
                    return msg[3]
    finally:
        s.close()


def _counts(d: Any) -> str:
    """{"deadline": 3, "store_down": 0} -> "3 (deadline 3)": the total, then the non-zero ones."""
    if not isinstance(d, dict):
        return str(d)
    nz = ", ".join(f"{k} {v}" for k, v in d.items() if v)
    return f"{sum(d.values())}" + (f" ({nz})" if nz else "")


def _print(method: str, res: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, indent=2, sort_keys=True, default=str))
        return
    if method in ("reload", "rollback"):
        print(f"serving {res['version']} (was {res['previous']}); warm-up {res['warmup_ms']:.1f} ms")
        return
    lat = res.get("latency", {}).get("total", {})
    print(f"model {res.get('model_version')}  uptime {res.get('uptime_s', 0):.0f}s  "
          f"requests {res.get('requests')}  connections {res.get('connections')}")
    print(f"decisions {sum(res.get('decisions', {}).values())}  invalid "
          f"{sum(res.get('invalid', {}).values())}  fail-open {_counts(res.get('fail_open'))}  "
          f"redis errors {res.get('redis_errors')}")
    print(f"latency total: mean {lat.get('mean_ms', 0):.3f} ms, p99 <= {lat.get('p99_ms_le', 0)} ms,"
          f" p99.9 <= {lat.get('p999_ms_le', 0)} ms; mean batch {res.get('mean_batch', 0):.1f}")
    mon = res.get("monitor")
    if mon:
        ref = mon.get("reference") or {}
        lw = mon.get("last_window") or {}
        ratio = (mon.get("ratios") or {}).get("all")
        print(f"monitor {mon['mode']}: {mon['windows']} windows, {mon['deviating_windows']} "
              f"deviating in a row; last window IVR "
              + (f"{lw['ivr']:.2%} over {lw['clicks']:,} clicks" if lw else "-")
              + (f" vs {ref['ivr']:.2%} ({ref['source']})" if ref else " (no reference yet)")
              + (f", ratio {ratio:.2f}" if ratio is not None else ""))
        c = mon.get("counts") or {}
        print(f"monitor events: {c.get('rollback', 0)} rollbacks, {c.get('alert', 0)} alerts, "
              f"{c.get('fail_open', 0)} fail-open alerts, {c.get('rollback_failed', 0)} "
              "refused rollbacks")
        ev = mon.get("last_event")
        if ev:
            import time as _t
            print(f"last event: {ev['kind']} of {ev['version']} at "
                  f"{_t.strftime('%Y-%m-%d %H:%M:%S', _t.gmtime(ev['at']))} UTC after "
                  f"{ev['clicks']:,} clicks, {ev['seconds']:.1f} s: {ev['reason']}")
    rc = res.get("redis_cluster")
    if rc:
        print(f"redis cluster: {len(rc['nodes'])} masters; retried batches {rc['retries']} "
              f"({rc['retried_ok']} then whole, {rc['partial']} partly failed open, "
              f"{rc['failed']} failed open); slot map read {rc['refreshes']} times")


def cmd_admin(args: argparse.Namespace) -> int:
    res = call(args.admin_socket, args.action)
    _print(args.action, res, args.json)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("admin", help="reload, roll back or inspect a running slidrd",
                       description="Exit 0 done, 1 when the daemon cannot be reached, 2 when "
                                   "it refuses the request (the old model keeps serving).")
    p.add_argument("action", choices=("reload", "rollback", "stats"),
                   help="reload: load the registry's current bundle; rollback: the previous "
                        "stable bundle becomes current; stats: counters and latency")
    from slidr.options import add

    from .config import OPTIONS
    add(p, OPTIONS["admin_socket"], default=DEFAULT_SOCKET,
        help="the daemon's admin socket (its admin_socket setting)")
    p.set_defaults(func=cmd_admin)
