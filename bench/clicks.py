"""Contract-valid clicks for load tests, pre-encoded as msgpack-RPC `score` frames.

Source: `slidr.offline.simulate` when it is installed and exposes a click sampler; otherwise a
built-in generator with realistic id cardinalities (a heavy-tailed mix: most sessions click
once or twice, a few robotic sessions click hundreds of times from a handful of IPs), so the
daemon's counter store sees realistic key reuse, table growth and hot keys.

Each frame is built from a pre-packed click prefix plus the request header and the click time,
so the generator spends microseconds, not tens of microseconds, per request:

    [0, msgid, "score", [{...click fields..., "ts": <now>}]]
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from slidr.contract import validate_click

_HDR = struct.Struct(">BBBI")  # fixarray(4), 0 (request), uint32 marker, msgid
_SCORE = b"\xa5score\x91"  # fixstr "score", params = fixarray(1)
_TS = struct.Struct(">Q")


def builtin_clicks(n: int, seed: int = 0, tag: str = "b") -> list[dict[str, Any]]:
    """n contract-valid clicks (without ts) with realistic cardinalities.

    ~20% robotic traffic concentrated on 0.5% of sessions and few IPs; humans spread over many
    sessions, ~40% logged in, users with 1-3 sessions."""
    rng = np.random.default_rng(seed)
    n_sessions = max(8, n // 3)
    n_users = max(4, n_sessions // 2)
    n_ips = max(4, n_sessions // 2)
    robot_sessions = max(1, n_sessions // 200)
    robot_ips = max(1, robot_sessions // 4)
    robot = rng.random(n) < 0.2
    # Humans: Zipf-ish session popularity; robots: uniform over a small set of sessions.
    hs = (rng.zipf(1.6, n) - 1) % (n_sessions - robot_sessions) + robot_sessions
    rs = rng.integers(0, robot_sessions, n)
    sess = np.where(robot, rs, hs)
    dev_p = np.array([0.45, 0.35, 0.20])
    devices = ("desktop", "mobile", "app")
    uas = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
           "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
           "ShopApp/8.4 (Android 14; Pixel 8)",
           "python-requests/2.31")
    tzs = (-480, -300, 0, 60, 330, 540)
    out: list[dict[str, Any]] = []
    # Per-session attributes are fixed, so a session always comes from one device/IP/user.
    s_dev = rng.choice(3, n_sessions, p=dev_p)
    s_in = rng.random(n_sessions) < 0.4
    s_user = rng.integers(0, n_users, n_sessions)
    s_ip = rng.integers(0, n_ips, n_sessions)
    s_tz = rng.choice(len(tzs), n_sessions)
    for i in range(n):
        s = int(sess[i])
        r = bool(robot[i])
        ip_i = int(rng.integers(0, robot_ips)) if r else int(s_ip[s])
        ip = (f"198.51.{ip_i % 250}.{ip_i // 250 % 250 + 1}" if r
              else f"10.{ip_i // 65025 % 250}.{ip_i // 255 % 255}.{ip_i % 255 + 1}")
        logged_in = bool(s_in[s]) and not r
        c: dict[str, Any] = {
            "click_id": f"{tag}{i}",
            "session_id": f"s{s}",
            "user_id": f"u{int(s_user[s])}" if logged_in else None,
            "ip": ip,
            "device": devices[int(s_dev[s])],
            "logged_in": logged_in,
            "tz_offset_min": tzs[int(s_tz[s])],
            "user_agent": uas[3] if r else uas[int(s_dev[s])],
            "ad_id": f"ad{int(rng.integers(0, 500))}",
        }
        out.append(c)
    return out


def simulated_clicks(n: int, seed: int = 0) -> list[dict[str, Any]] | None:
    """Clicks from the offline simulator (one simulated day, in time order), when installed."""
    try:
        from slidr.offline.simulate import SimParams, simulate
    except ImportError:
        return None
    try:
        res = simulate(SimParams(days=1, clicks_per_day=max(n, 1000), seed=seed))
        tbl = res.clicks.slice(0, n)
    except Exception:  # noqa: BLE001 - simulator still in progress: use the built-in clicks
        return None
    keep = [k for k in ("click_id", "session_id", "user_id", "ip", "device", "logged_in",
                        "tz_offset_min", "user_agent", "ad_id") if k in tbl.column_names]
    cols = {k: tbl.column(k).to_pylist() for k in keep}
    out = []
    for i in range(tbl.num_rows):
        c = {k: cols[k][i] for k in keep}
        if c.get("user_agent") is None:
            c.pop("user_agent", None)
        if c.get("tz_offset_min") is None:
            c.pop("tz_offset_min", None)
        out.append(c)
    return out


def make_clicks(n: int, seed: int = 0, tag: str = "b",
                source: str = "auto") -> tuple[list[dict[str, Any]], str]:
    """(clicks, source name). source: auto | builtin | simulate."""
    if source in ("auto", "simulate"):
        sim = simulated_clicks(n, seed)
        if sim:
            for i, c in enumerate(sim):
                c["click_id"] = f"{tag}{i}"
            return sim, "slidr.offline.simulate"
        if source == "simulate":
            raise RuntimeError("slidr.offline.simulate is not available")
    return builtin_clicks(n, seed, tag), "builtin"


def pack_prefixes(clicks: Sequence[Mapping[str, Any]], ts_probe: int = 1_700_000_000_000) -> list[bytes]:
    """Each click as a msgpack map prefix that ends right before the 8 bytes of `ts`.

    Every prefix is checked once: prefix + ts must decode to a contract-valid click."""
    out = []
    for c in clicks:
        d = {k: v for k, v in c.items() if k != "ts"}
        body = msgpack.packb(d)
        if len(d) + 1 > 15:
            raise ValueError("a click has too many fields for a fixmap")
        prefix = bytes([0x80 | (len(d) + 1)]) + body[1:] + b"\xa2ts\xcf"
        full = msgpack.unpackb(prefix + _TS.pack(ts_probe))
        validate_click(full)
        out.append(prefix)
    return out


def frame(msgid: int, prefix: bytes, ts_ms: int) -> bytes:
    return _HDR.pack(0x94, 0x00, 0xCE, msgid) + _SCORE + prefix + _TS.pack(ts_ms)
