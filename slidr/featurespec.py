"""The feature spec: one source of truth for the counter algorithms, the raw counter layout that
every store returns, and the model's input features (names, order, transforms, version hash).

Pipeline per batch (same code online and offline):
  ClickBatch --keys()--> 64-bit key hashes + HLL (register, rank)
             --store.update()--> raw counters, float64 (n, RAW_WIDTH), in arrival order
             --finish()--> features, float32 (n, N_FEATURES)

Counter algorithms (all per key, O(1) memory, logically expiring):
- Decayed click counts: c <- c * exp(-dt / tau) + 1 at each click, for several tau. A key
  whose last click is older than its TTL is treated as new (logical expiry, so results never
  depend on when a store physically frees a key).
- Gap: seconds since the key's previous click (-1 for a first click).
- Distinct sessions / users behind an IP: a 32-register HyperLogLog per window over tumbling
  buckets (hour, day); the estimate blends the previous bucket linearly (sliding-window
  approximation): est = hll(cur) + hll(prev) * (1 - elapsed fraction of cur bucket).
- Session gap shape (spec 2): the count of gaps under SUBSEC_MS (a click at most that long
  after the session's newest one, out-of-order clicks included as gap 0) and a Welford running
  (n, mean, M2) of x = ln(gap in s), the gap floored at 1 ms: n += 1; d = x - mean;
  mean += d / n; M2 += d * (x - mean).
- Hours an IP was active (spec 2): a 24-bit mask anchored at the IP's hour bucket (the hour of
  its newest click): bit k = a click in hour (anchor - k). A click in a later hour shifts the
  mask by the hours passed and sets bit 0; an out-of-order click sets bit (anchor - its hour)
  when under 24. The count is the popcount: distinct UTC hours with a click in the 24 hours
  ending at the IP's newest click.
- Time-zone switches behind an IP (spec 3): the IP keeps the client time zone (tz_offset_min)
  of its newest click and a decayed count of its clicks whose zone differed from it:
  sw <- sw * exp(-dt / IP_TAUS[2]) + [tz != newest zone], dt as for the click counts; the click
  becomes the newest zone when its ts >= the IP's newest ts. A new (or expired) IP starts at
  sw = 0. The feature is sw / the IP's day-decayed click count: the share of its recent clicks
  that switched zone (a gateway's clients share a region; an emulator pool's do not).
- User gap regularity (spec 4): the user keeps a Welford (n, mean, M2) of ln(gap in s), gap
  floored at LOG_GAP_FLOOR_S, exactly as the session's, over its gaps of at most USER_LG_MAX_S
  (an out-of-order click counts as the floor; its sd is u_gap_logsd).
- Entities (spec 4): one table holds three kinds of key, kept apart by their hash namespace:
  the ad ("a\0" + ad_id), the (IP, ad) pair ("x\0" + ip + "\0" + ad_id) and the user agent
  ("g\0" + user_agent); an absent (null or empty) ad_id or user_agent gives key 0, counted
  nowhere, whose raw columns are the absent values (counts 0, every HLL empty). Per key:
  decayed counts (ENTITY_TAUS, the IP's decay, out-of-order and logical-expiry rules, TTL
  ENTITY_TTL_MS) and two day-window HLLs as the IP's 1-day ones: distinct sessions (the
  session's register and rank) and distinct IPs (register and rank of the IP's hash).
- Logged-in clicks behind an IP (spec 5): the IP keeps a decayed count of its clicks whose
  logged_in flag is set, with the decay, dt, out-of-order rule and logical expiry of its day
  count i_c86400: li <- li * exp(-dt / IP_TAUS[2]) + [logged_in]. A new (or expired) IP starts
  as its counts do, the first click counted: li = [logged_in]. The feature is li / the IP's
  day-decayed click count: the share of its recent clicks that were logged in (people behind a
  shared address log in at a steady share; a bot pool without accounts never does). Stores
  take the clicks' flags as update()'s last argument `li` (uint8 0/1; None: 0 for every click).
The embedded store (ext/_kernel.pyx), its reference twin (ext/reference.py) and the Redis
Lua script (slidr/store_redis.lua) implement exactly this; parity tests hold them together.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from slidr.contract import DEVICES

SPEC_VERSION = 5

# Decay time constants in seconds.
USER_TAUS = (60.0, 600.0, 3600.0, 86400.0)
SESSION_TAUS = (60.0, 3600.0)
IP_TAUS = (60.0, 3600.0, 86400.0)
# Logical TTLs in milliseconds after a key's last click.
USER_TTL_MS = 2 * 86_400_000
SESSION_TTL_MS = 86_400_000
IP_TTL_MS = 2 * 86_400_000
# spec 4: entities (ad, (IP, ad), user agent): decay taus, logical TTL, day-window HLLs.
ENTITY_TAUS = (60.0, 3600.0, 86400.0, 604800.0)
ENTITY_TTL_MS = 2 * 86_400_000
ENTITY_WINDOW_MS = 86_400_000
# Entity kinds in key order (eh columns) and their raw-column prefixes.
ENTITY_KINDS = ("ad", "ipad", "ua")
ENTITY_PREFIXES = ("a", "x", "g")
# HyperLogLog: 2**HLL_P registers; windows in ms (order matters: sess_1h, user_1h, sess_1d, user_1d).
HLL_P = 5
HLL_M = 1 << HLL_P
HLL_RANK_CAP = 64 - HLL_P + 1
HLL_WINDOWS_MS = (3_600_000, 3_600_000, 86_400_000, 86_400_000)
HLL_KINDS = ("sess", "user", "sess", "user")
GAP_CAP_S = 7 * 86400.0
# Session gaps shorter than this count as sub-second; ln gap floors the gap at 1 ms.
SUBSEC_MS = 1000
LOG_GAP_FLOOR_S = 0.001
# The user's ln-gap Welford takes gaps up to this long only (the rhythm within visits; the days
# between visits would make it grow with the user's age in the store, which a daily replay
# that starts cold and a daemon warm for weeks see differently).
USER_LG_MAX_S = 3600.0
# Hours an IP was active: a mask of this many hourly bits.
IP_HOURS = 24

# Raw counter layout returned by every store (float64 columns).
# Each key kind's columns are contiguous (RAW_SPANS): a store's tables fill them independently.
_RAW_USER = ("u_c60", "u_c600", "u_c3600", "u_c86400", "u_gap",
             "u_lg_n", "u_lg_mean", "u_lg_m2")  # spec 4: the user's ln-gap Welford
_RAW_SESSION = ("s_c60", "s_c3600", "s_gap", "s_age",
                "s_subsec", "s_lg_n", "s_lg_mean", "s_lg_m2")
_RAW_IP = (("i_c60", "i_c3600", "i_c86400", "i_hours")
           + tuple(f"h{j}_{f}" for j in range(4) for f in ("z", "v", "pz", "pv", "frac"))
           + ("i_tzsw",)  # spec 3
           + ("i_li",))  # spec 5
# spec 4: per entity kind, 4 decayed counts, then the day HLLs of sessions and of IPs.
_RAW_ENTITY = tuple(
    c for k in ENTITY_PREFIXES
    for c in ((f"{k}_c60", f"{k}_c3600", f"{k}_c86400", f"{k}_c604800")
              + tuple(f"{k}{h}_{f}" for h in ("s", "i") for f in ("z", "v", "pz", "pv", "frac"))))
RAW_COLUMNS: tuple[str, ...] = _RAW_USER + _RAW_SESSION + _RAW_IP + _RAW_ENTITY
RAW_WIDTH = len(RAW_COLUMNS)  # 84
ENTITY_RAW_WIDTH = len(_RAW_ENTITY) // len(ENTITY_PREFIXES)  # 14 columns per entity kind
# [start, end) of the raw columns of each key kind: users 0-7, sessions 8-15, IPs 16-41,
# entities 42-83.
_E0 = len(_RAW_USER) + len(_RAW_SESSION) + len(_RAW_IP)
RAW_SPANS: dict[str, tuple[int, int]] = {
    "user": (0, len(_RAW_USER)),
    "session": (len(_RAW_USER), len(_RAW_USER) + len(_RAW_SESSION)),
    "ip": (len(_RAW_USER) + len(_RAW_SESSION), _E0),
    "entity": (_E0, RAW_WIDTH),
}
# The raw columns of an entity kind without a key (null or empty ad_id / user_agent): no
# clicks, both HLLs empty (z = v = pz = pv = HLL_M, frac 0), so every estimate is 0.
ENTITY_ABSENT: tuple[float, ...] = (0.0,) * len(ENTITY_TAUS) + (float(HLL_M),) * 4 + (0.0,) \
    + (float(HLL_M),) * 4 + (0.0,)
RAW_INDEX = {n: i for i, n in enumerate(RAW_COLUMNS)}

# Model input features: (name, transform, raw source or derivation).
FEATURES: tuple[tuple[str, str], ...] = (
    ("u_clicks_1m", "log1p"), ("u_clicks_10m", "log1p"), ("u_clicks_1h", "log1p"),
    ("u_clicks_1d", "log1p"), ("u_gap_s", "log1p_gap"),
    ("s_clicks_1m", "log1p"), ("s_clicks_1h", "log1p"), ("s_gap_s", "log1p_gap"),
    ("s_age_s", "log1p"),
    ("ip_clicks_1m", "log1p"), ("ip_clicks_1h", "log1p"), ("ip_clicks_1d", "log1p"),
    ("ip_sessions_1h", "log1p_hll"), ("ip_users_1h", "log1p_hll"),
    ("ip_sessions_1d", "log1p_hll"), ("ip_users_1d", "log1p_hll"),
    ("hour_sin", "unit_circle"), ("hour_cos", "unit_circle"),
    ("dow_sin", "unit_circle"), ("dow_cos", "unit_circle"),
    ("logged_in", "identity"),
) + tuple((f"dev_{d}", "one_hot") for d in DEVICES) + (
    # spec 2: what the evasive families leave visible (docs/features.md)
    ("s_subsec_gaps", "log1p"),
    ("s_gap_logmean", "lg_mean"),  # mean ln gap in s; ln(GAP_CAP_S) before a second click
    ("s_gap_logsd", "lg_sd"),  # sqrt(M2 / n) over >= 2 gaps, else -1
    ("ip_hours_1d", "log1p"),
    # spec 3: clients behind one IP that keep changing time zone (docs/features.md)
    ("ip_tz_switch_1d", "ratio"),  # i_tzsw / i_c86400
    # spec 5: the share of an IP's recent clicks that were logged in (docs/features.md)
    ("ip_logged_in_1d", "ratio"),  # i_li / i_c86400
    # spec 4: the user's gap regularity; ads, (IP, ad) pairs and user agents (docs/features.md)
    ("u_gap_logsd", "lg_sd"),
    ("ad_clicks_1m", "log1p"), ("ad_clicks_1h", "log1p"), ("ad_clicks_1d", "log1p"),
    ("ad_rate_ratio", "rate_ratio"),  # 0 if a_c86400 == 0 else ln(24 (a_c3600+1) / (a_c86400+1))
    ("ad_ips_1d", "log1p_hll"), ("ad_sessions_1d", "log1p_hll"),
    ("ipad_clicks_1h", "log1p"), ("ipad_clicks_1d", "log1p"), ("ipad_sessions_1d", "log1p_hll"),
    ("ua_clicks_1h", "log1p"), ("ua_rate_ratio", "rate_ratio"), ("ua_ips_1d", "log1p_hll"),
    # an entity's last day against its week: 0 if c604800 == 0 else ln(7 (c86400+1) / (c604800+1))
    ("ad_rate_ratio_7d", "rate_ratio_7d"), ("ua_rate_ratio_7d", "rate_ratio_7d"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(n for n, _ in FEATURES)
N_FEATURES = len(FEATURES)  # 45


def spec_dict() -> dict:
    """Everything that changes what a feature means; hashed into the version."""
    return {
        "version": SPEC_VERSION,
        "features": [{"name": n, "transform": t} for n, t in FEATURES],
        "raw_columns": list(RAW_COLUMNS),
        "user_taus_s": USER_TAUS, "session_taus_s": SESSION_TAUS, "ip_taus_s": IP_TAUS,
        "ttl_ms": {"user": USER_TTL_MS, "session": SESSION_TTL_MS, "ip": IP_TTL_MS,
                   "entity": ENTITY_TTL_MS},
        "entity_taus_s": ENTITY_TAUS, "entity_window_ms": ENTITY_WINDOW_MS,
        "entity_kinds": {"kinds": ENTITY_KINDS, "prefixes": ENTITY_PREFIXES,
                         "keys": ["a\\0 ad_id", "x\\0 ip \\0 ad_id", "g\\0 user_agent"],
                         "hll": ["sessions: session register", "ips: ip hash register"]},
        "user_gap_welford": "ln gap s, floored at log_gap_floor_s, as the session's, gaps <= "
                            "user_lg_max_s only", "user_lg_max_s": USER_LG_MAX_S,
        "hll": {"p": HLL_P, "windows_ms": HLL_WINDOWS_MS, "kinds": HLL_KINDS},
        "gap_cap_s": GAP_CAP_S,
        "subsec_ms": SUBSEC_MS, "log_gap_floor_s": LOG_GAP_FLOOR_S, "ip_hours": IP_HOURS,
        "ip_tz_switch": "decayed tau ip_taus_s[2], per ip_c86400",
        "ip_logged_in": "decayed tau ip_taus_s[2] of logged_in clicks, per ip_c86400",
        "hash": "fnv1a64+splitmix64 of utf-8, namespaces u/s/i/a/x/g; absent entity 0, 0 -> 1",
        "devices": list(DEVICES),
    }


def spec_hash() -> str:
    blob = json.dumps(spec_dict(), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


SPEC_HASH = spec_hash()

_ALPHA = 0.7213 / (1.0 + 1.079 / HLL_M) if HLL_M >= 128 else {16: 0.673, 32: 0.697, 64: 0.709}[HLL_M]


def hll_estimate(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HyperLogLog estimate from the harmonic sum z = sum(2^-reg) and v = empty registers."""
    raw = _ALPHA * HLL_M * HLL_M / z
    with np.errstate(divide="ignore"):
        lin = HLL_M * np.log(HLL_M / np.maximum(v, 1e-300))
    small = (raw <= 2.5 * HLL_M) & (v > 0)
    return np.where(small, lin, raw)


def distinct_estimates(raw: np.ndarray) -> np.ndarray:
    """(n, 4) sliding-window distinct estimates from the HLL raw columns."""
    out = np.empty((raw.shape[0], 4), dtype=np.float64)
    base = RAW_INDEX["h0_z"]
    for j in range(4):
        out[:, j] = _blend(raw, base + 5 * j)
    return out


def _blend(raw: np.ndarray, base: int) -> np.ndarray:
    """Sliding-window estimate of the HLL whose (z, v, pz, pv, frac) start at column base."""
    z, v, pz, pv, frac = (raw[:, base + k] for k in range(5))
    return hll_estimate(z, v) + hll_estimate(pz, pv) * (1.0 - frac)


def _rate_ratio(c1h: np.ndarray, c1d: np.ndarray, ratio: float = 24.0) -> np.ndarray:
    """ln(ratio (c1h + 1) / (c1d + 1)): an entity's shorter count against its longer one (last
    hour against day: 24; last day against week: 7); 0 while the longer count is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c1d == 0, 0.0, np.log(ratio * (c1h + 1.0) / (c1d + 1.0)))


_TWO_PI = 2.0 * math.pi
LOG_GAP_CAP = math.log(GAP_CAP_S)


def finish(raw: np.ndarray, ts: np.ndarray, tz_offset_min: np.ndarray, logged_in: np.ndarray,
           device: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Raw counters + click columns -> float32 feature matrix (n, N_FEATURES)."""
    n = raw.shape[0]
    if out is None:
        out = np.empty((n, N_FEATURES), dtype=np.float32)
    r = RAW_INDEX
    for k, name in enumerate(("u_c60", "u_c600", "u_c3600", "u_c86400")):
        out[:, k] = np.log1p(raw[:, r[name]])
    out[:, 4] = np.log1p(np.where(raw[:, r["u_gap"]] < 0, GAP_CAP_S,
                                  np.minimum(raw[:, r["u_gap"]], GAP_CAP_S)))
    out[:, 5] = np.log1p(raw[:, r["s_c60"]])
    out[:, 6] = np.log1p(raw[:, r["s_c3600"]])
    out[:, 7] = np.log1p(np.where(raw[:, r["s_gap"]] < 0, GAP_CAP_S,
                                  np.minimum(raw[:, r["s_gap"]], GAP_CAP_S)))
    out[:, 8] = np.log1p(raw[:, r["s_age"]])
    out[:, 9] = np.log1p(raw[:, r["i_c60"]])
    out[:, 10] = np.log1p(raw[:, r["i_c3600"]])
    out[:, 11] = np.log1p(raw[:, r["i_c86400"]])
    out[:, 12:16] = np.log1p(distinct_estimates(raw))
    local_ms = ts.astype(np.int64) + tz_offset_min.astype(np.int64) * 60_000
    day_ms = np.mod(local_ms, 86_400_000)
    hour_angle = _TWO_PI * day_ms / 86_400_000.0
    # 1970-01-01 was a Thursday; day 0 = Monday.
    days = np.floor_divide(local_ms, 86_400_000)
    dow = np.mod(days + 3, 7) + day_ms / 86_400_000.0
    dow_angle = _TWO_PI * dow / 7.0
    out[:, 16] = np.sin(hour_angle)
    out[:, 17] = np.cos(hour_angle)
    out[:, 18] = np.sin(dow_angle)
    out[:, 19] = np.cos(dow_angle)
    out[:, 20] = logged_in
    out[:, 21:24] = 0.0
    out[np.arange(n), 21 + device.astype(np.int64)] = 1.0
    out[:, 24] = np.log1p(raw[:, r["s_subsec"]])
    lg_n = raw[:, r["s_lg_n"]]
    out[:, 25] = np.where(lg_n > 0, raw[:, r["s_lg_mean"]], LOG_GAP_CAP)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(raw[:, r["s_lg_m2"]] / lg_n)
    out[:, 26] = np.where(lg_n >= 2, sd, -1.0)
    out[:, 27] = np.log1p(raw[:, r["i_hours"]])
    c1d = raw[:, r["i_c86400"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 28] = np.where(c1d > 0, raw[:, r["i_tzsw"]] / c1d, 0.0)
        out[:, 29] = np.where(c1d > 0, raw[:, r["i_li"]] / c1d, 0.0)  # spec 5
    # spec 4
    lg_n = raw[:, r["u_lg_n"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(raw[:, r["u_lg_m2"]] / lg_n)
    out[:, 30] = np.where(lg_n >= 2, sd, -1.0)
    out[:, 31] = np.log1p(raw[:, r["a_c60"]])
    out[:, 32] = np.log1p(raw[:, r["a_c3600"]])
    out[:, 33] = np.log1p(raw[:, r["a_c86400"]])
    out[:, 34] = _rate_ratio(raw[:, r["a_c3600"]], raw[:, r["a_c86400"]])
    out[:, 35] = np.log1p(_blend(raw, r["ai_z"]))
    out[:, 36] = np.log1p(_blend(raw, r["as_z"]))
    out[:, 37] = np.log1p(raw[:, r["x_c3600"]])
    out[:, 38] = np.log1p(raw[:, r["x_c86400"]])
    out[:, 39] = np.log1p(_blend(raw, r["xs_z"]))
    out[:, 40] = np.log1p(raw[:, r["g_c3600"]])
    out[:, 41] = _rate_ratio(raw[:, r["g_c3600"]], raw[:, r["g_c86400"]])
    out[:, 42] = np.log1p(_blend(raw, r["gi_z"]))
    out[:, 43] = _rate_ratio(raw[:, r["a_c86400"]], raw[:, r["a_c604800"]], 7.0)
    out[:, 44] = _rate_ratio(raw[:, r["g_c86400"]], raw[:, r["g_c604800"]], 7.0)
    return out


def local_hour_dow(ts: np.ndarray, tz_offset_min: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer local hour (0-23) and day of week (0=Monday) — for sample weights and reports."""
    local_ms = ts.astype(np.int64) + tz_offset_min.astype(np.int64) * 60_000
    hour = np.mod(local_ms, 86_400_000) // 3_600_000
    dow = np.mod(np.floor_divide(local_ms, 86_400_000) + 3, 7)
    return hour.astype(np.int8), dow.astype(np.int8)
