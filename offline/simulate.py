"""Seeded traffic simulator: a click log with ground truth, and a customers table with RFM.

Everything is drawn per *session* with numpy (no per-click Python loop), expanded to clicks,
clipped to the simulated UTC window and sorted by ts. Who is in the log:

Humans
- logged-in customers with an engagement level that drives both their RFM history and how
  often they click and buy; they live in households (a few customers per home IP) and some
  work behind corporate proxies (desktop, weekday office hours, hundreds of users per IP);
- logged-out visitors on residential IPs, and mobile users behind carrier-grade NAT gateways
  (many legitimate users per IP: high IP counters that are human);
- rhythms by device: desktop = weekday office hours, mobile = evenings and weekends, app =
  evenings; several time zones; sessions of a few clicks with human gaps (seconds to minutes),
  and a minority of quick comparison-clickers (fast, but human).

Robots (FAMILIES), each with its own slice mix, varied day to day:
- scraper: bursts of tens of clicks per minute from datacenter IPs, flat over the day;
- low_slow: one or two clicks per session, a fresh residential IP each session, human gaps
  and per-key rates; only its hours give it away (flat over the day and the week, so many at
  local night and desktop-style hours on mobile);
- stolen: logged-in bots on real customer accounts (biased to valuable accounts, so some carry
  a high RFM score and get the weak label "human"), many short sessions per account per day
  across proxy IPs, flat hours; per-session counters look human, per-user counters do not;
- farm: click farms, many sessions on a few IPs with human-ish shift hours in the farm's time
  zone, every day of the week; logged-in sessions reuse a few fake accounts;
- crawler: a new session every few clicks from the same IP, fast and flat over the day.

New families (NEW_FAMILIES: absent from stock logs; a scenario gives them a share and the day
they appear, `SimParams.appear_day`, from which they persist), each built to slip past the
features a different way:
- proxy_rotator: residential-proxy IP rotation with cookie clearing: every session comes from a
  fresh residential IP and carries 3-8 clicks, so IP counters and the clicks-per-session-hour
  rule see a one-off visitor; its machine-regular ~3 s gaps and flat hours remain;
- mimic: human gap timing and human session lengths, desktop and mobile web, from a pool of a
  few dozen "residential" IPs that each carry dozens of sessions a day, flat over the day and
  the week: velocity features and rules see a human;
- injector: click injection on app installs: malware on real phones fires 2-3 clicks within a
  second from the phone's own carrier (CGNAT) IP, which humans share, and a fresh session each
  time: IP counters look like a mobile carrier, session counters like a new visitor;
- ad_stacker: stacked ads in an app/mobile web view: each view yields 3-6 clicks within
  milliseconds on different ads, a few views a session, from home-like residential IPs.

Robots essentially never buy; weak labels come from offline/labels.py, not from here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidr.contract import DEVICES, SLICES, slice_name
from slidr.defaults import COMMON
from slidr.options import field_from

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DEFAULT_START = "2026-11-02"  # a Monday, so local day d has weekday d % 7

FAMILIES: tuple[str, ...] = ("human", "scraper", "low_slow", "stolen", "farm", "crawler")
# Families absent from stock logs (robot_share 0): scenarios switch them on from a given day.
NEW_FAMILIES: tuple[str, ...] = ("proxy_rotator", "mimic", "injector", "ad_stacker")
ALL_FAMILIES: tuple[str, ...] = FAMILIES + NEW_FAMILIES
FAMILY_CODE = {f: i for i, f in enumerate(ALL_FAMILIES)}
D_DESKTOP, D_MOBILE, D_APP = 0, 1, 2

# Slice order used for mixes: (device code, logged_in).
SLICE_KEYS: tuple[tuple[int, int], ...] = tuple((d, li) for d in range(3) for li in (1, 0))


@dataclass(frozen=True)
class SimParams:
    days: int = field_from(COMMON["days"])  # defaults shared with the flags: slidr/defaults.py
    clicks_per_day: int = field_from(COMMON["clicks_per_day"])
    seed: int = field_from(COMMON["seed"])
    start: str = DEFAULT_START
    # Share of all clicks per robot family on an average day (the rest is human).
    robot_share: dict[str, float] = field(default_factory=lambda: {
        "scraper": 0.055, "low_slow": 0.05, "stolen": 0.035, "farm": 0.055, "crawler": 0.035})
    # Day-to-day variation: log-normal sigma of each family's volume, and the Dirichlet
    # concentration of its slice mix around the base mix (lower = more change).
    daily_volume_sigma: float = 0.4
    daily_mix_concentration: float = 25.0
    human_purchase_out: float = 0.012  # purchase probability per logged-out human click
    robot_purchase: float = 2e-4  # "essentially never"
    customers_per_click_day: float = 0.2  # customers = this * clicks_per_day
    # First simulated UTC day (0-based) on which a family appears; absent before, then every
    # day (families not named here appear from the start).
    appear_day: dict[str, int] = field(default_factory=dict)


# Base slice mixes (desktop/in, desktop/out, mobile/in, mobile/out, app/in, app/out).
ROBOT_MIX: dict[str, tuple[float, ...]] = {
    "scraper": (0.04, 0.66, 0.02, 0.16, 0.02, 0.10),
    "low_slow": (0.03, 0.35, 0.07, 0.40, 0.03, 0.12),
    "stolen": (0.45, 0.0, 0.32, 0.0, 0.23, 0.0),
    "farm": (0.03, 0.10, 0.17, 0.30, 0.17, 0.23),
    "crawler": (0.0, 0.72, 0.0, 0.20, 0.0, 0.08),
    "proxy_rotator": (0.0, 0.55, 0.0, 0.35, 0.0, 0.10),
    "mimic": (0.0, 0.50, 0.0, 0.40, 0.0, 0.10),
    "injector": (0.0, 0.0, 0.0, 0.15, 0.0, 0.85),
    "ad_stacker": (0.0, 0.0, 0.0, 0.45, 0.0, 0.55),
}
# Humans: device share and logged-in probability by device.
HUMAN_DEVICE_SHARE = (0.36, 0.44, 0.20)
HUMAN_LOGGED_IN = (0.55, 0.40, 0.75)

# Time zones (minutes east of UTC) of humans and their weights.
HUMAN_TZ = np.array([-480, -360, -300, 0, 60, 330, 480, 540], dtype=np.int16)
HUMAN_TZ_W = np.array([0.15, 0.10, 0.25, 0.15, 0.15, 0.08, 0.05, 0.07])
FARM_TZ = np.array([330, 360, 420, 480], dtype=np.int16)


def _hours(*spans: tuple[int, int, float], base: float = 0.05) -> np.ndarray:
    w = np.full(24, base)
    for a, b, v in spans:
        w[a:b] = v
    return w / w.sum()


# Local-hour profiles of human session starts: [device][weekday, weekend].
HOUR_PROFILE = {
    D_DESKTOP: (_hours((7, 9, 0.5), (9, 12, 1.0), (12, 13, 0.7), (13, 18, 1.0), (18, 19, 0.5),
                       (19, 23, 0.35), base=0.03),
                _hours((9, 12, 0.6), (12, 18, 0.8), (18, 23, 0.7), base=0.05)),
    D_MOBILE: (_hours((6, 9, 0.45), (9, 12, 0.25), (12, 14, 0.5), (14, 17, 0.3), (17, 19, 0.7),
                      (19, 23, 1.0), (23, 24, 0.45), base=0.04),
               _hours((8, 11, 0.6), (11, 17, 0.75), (17, 19, 0.85), (19, 24, 1.0), (0, 1, 0.4),
                      base=0.05)),
    D_APP: (_hours((7, 9, 0.4), (12, 14, 0.4), (18, 20, 0.8), (20, 23, 1.0), (23, 24, 0.5),
                   base=0.08),
            _hours((9, 18, 0.6), (18, 23, 1.0), (23, 24, 0.5), base=0.08)),
}
# Weekly volume factor (Mon..Sun) by device.
WEEK_FACTOR = {
    D_DESKTOP: np.array([1.15, 1.15, 1.12, 1.12, 1.0, 0.55, 0.5]),
    D_MOBILE: np.array([0.9, 0.9, 0.9, 0.95, 1.05, 1.3, 1.3]),
    D_APP: np.array([0.92, 0.92, 0.92, 0.95, 1.05, 1.2, 1.25]),
}
FARM_SHIFT = _hours((8, 23, 1.0), base=0.02)
FLAT = np.full(24, 1.0 / 24)
LOW_SLOW_UTC = _hours((2, 12, 1.0), base=0.15)

USER_AGENTS: tuple[str, ...] = (
    # 0-3 desktop browsers
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0 Safari/537.36",
    # 4-6 mobile browsers
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0 Mobile Safari/537.36",
    # 7-8 app
    "ShopApp/5.12.0 (iOS 18.1; iPhone15,2)",
    "ShopApp/5.12.0 (Android 14; Pixel 8)",
    # 9-11 robots that do not hide (most do: they reuse the strings above)
    "python-requests/2.32.3",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/130.0 Safari/537.36",
    "Mozilla/5.0 (compatible; AdsBot-Crawler/1.0)",
)
UA_BY_DEVICE = ((0, 1, 2, 3), (4, 5, 6), (7, 8))


# ------------------------------------------------------------------ sessions (columnar)

_SESSION_COLS = ("family", "start", "n", "gap_mu", "gap_sigma", "device", "logged_in", "user",
                 "ip", "tz", "ua", "p_buy", "reset", "gap_min", "burst")


class _Sessions:
    """Columnar sessions, accumulated per family and local day, then concatenated."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in _SESSION_COLS}

    def add(self, **cols: Any) -> None:
        cols.setdefault("gap_min", 0.2)  # seconds
        cols.setdefault("burst", 0)  # > 0: every burst-th gap is a long one (stacked ads)
        n = len(cols["start"])
        for k in _SESSION_COLS:
            v = cols[k]
            self.parts[k].append(np.broadcast_to(np.asarray(v), (n,)).copy()
                                 if np.ndim(v) == 0 else np.asarray(v))

    def cat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def _random_ips(rng: np.random.Generator, n: int, lo: str, hi: str) -> np.ndarray:
    """n distinct-ish IPv4 addresses (uint32) in [lo, hi], never .0 or .255 in the last octet."""
    def v(s: str) -> int:
        a, b, c, d = (int(x) for x in s.split("."))
        return (a << 24) | (b << 16) | (c << 8) | d
    ips = rng.integers(v(lo), v(hi), size=n, dtype=np.int64).astype(np.uint32)
    last = ips & 0xFF
    return np.where((last == 0) | (last == 255), ips ^ np.uint32(7), ips).astype(np.uint32)


def _local_starts(rng: np.random.Generator, n: int, day: int, tz: np.ndarray, hours: np.ndarray,
                  t0: int) -> np.ndarray:
    """Session starts (UTC epoch ms) at local day `day` with local hour drawn from `hours`."""
    h = rng.choice(24, size=n, p=hours)
    local = day * DAY_MS + h * HOUR_MS + rng.integers(0, HOUR_MS, size=n)
    return t0 + local - tz.astype(np.int64) * 60_000


def _click_counts(rng, n, p_long, p_short, p_lng, min_long) -> np.ndarray:
    long_ = rng.random(n) < p_long
    return np.where(long_, min_long - 1 + rng.geometric(p_lng, n), rng.geometric(p_short, n))


def _mix_for_day(rng, base: tuple[float, ...], conc: float) -> np.ndarray:
    b = np.asarray(base, dtype=np.float64)
    out = np.zeros(6)
    nz = b > 0
    out[nz] = rng.dirichlet(conc * b[nz] / b[nz].sum() + 0.05)
    return out


@dataclass
class Population:
    n_customers: int
    engagement: np.ndarray  # latent z
    activity: np.ndarray  # relative click activity (sampling weight)
    p_buy: np.ndarray  # purchase probability per click
    tz: np.ndarray
    home_ip: np.ndarray
    office_ip: np.ndarray  # uint32, 0 = no corporate proxy
    recency_days: np.ndarray
    frequency: np.ndarray
    monetary: np.ndarray
    cgnat_ips: np.ndarray
    corp_ips: np.ndarray
    dc_ips: np.ndarray
    farm_ips: list[np.ndarray]
    farm_tz: np.ndarray
    farm_accounts: list[np.ndarray]  # user indices (appended after the customers)
    n_fake: int


def _population(rng: np.random.Generator, p: SimParams) -> Population:
    n = max(int(p.clicks_per_day * p.customers_per_click_day), 200)
    z = rng.standard_normal(n)
    freq = rng.poisson(np.exp(0.9 + 0.9 * z))
    rec = np.ceil(rng.exponential(120.0 * np.exp(-0.8 * z))).astype(np.int64)
    rec = np.where(freq == 0, 365 + rng.integers(0, 730, n), np.minimum(rec, 730))
    mon = np.round(freq * rng.lognormal(np.log(40.0), 0.6, n), 2)
    # How often a customer clicks is nearly independent of how much they buy: purchasing and
    # high-RFM clicks must stay a representative sample of human clicks (the article's premise).
    activity = np.exp(0.1 * z + 0.8 * rng.standard_normal(n))
    p_buy = 0.002 + 0.06 / (1.0 + np.exp(-(1.6 * z - 1.2)))
    tz = rng.choice(HUMAN_TZ, size=n, p=HUMAN_TZ_W)
    # Households: ~1.6 customers per home IP.
    n_home = max(n * 10 // 16, 1)
    homes = _random_ips(rng, n_home, "24.0.0.1", "99.255.255.254")
    home_ip = homes[rng.integers(0, n_home, n)]
    n_corp = max(n // 1000, 8)
    corp = _random_ips(rng, n_corp, "198.51.0.1", "198.51.255.254")
    # Big employers: Zipf-like sizes, so a few proxies have hundreds of users.
    cw = 1.0 / np.arange(1, n_corp + 1) ** 0.7
    employed = rng.random(n) < 0.3
    office = np.where(employed, corp[rng.choice(n_corp, size=n, p=cw / cw.sum())], 0).astype(np.uint32)
    cgnat = _random_ips(rng, max(n // 120, 20), "172.56.0.1", "172.59.255.254")
    dc = _random_ips(rng, 400, "34.64.0.1", "35.255.255.254")
    n_farms = 12
    farm_ips = [_random_ips(rng, int(rng.integers(1, 4)), "103.0.0.1", "103.255.255.254")
                for _ in range(n_farms)]
    farm_tz = rng.choice(FARM_TZ, size=n_farms)
    farm_accounts, nxt = [], n
    for _ in range(n_farms):
        k = int(rng.integers(15, 40))
        farm_accounts.append(np.arange(nxt, nxt + k))
        nxt += k
    return Population(n, z, activity, p_buy, tz, home_ip, office, rec, freq, mon, cgnat, corp, dc,
                      farm_ips, farm_tz, farm_accounts, nxt - n)


# ------------------------------------------------------------------ families

def _humans(rng, pop: Population, p: SimParams, day: int, budget: float, t0: int,
            out: _Sessions) -> None:
    dow = day % 7
    mean_clicks = 0.85 * 2.0 + 0.15 * (2 + 1 / 0.15 - 1)
    for dev in (D_DESKTOP, D_MOBILE, D_APP):
        # Weekly factor normalised over the week, so the average day keeps the budget.
        wf = WEEK_FACTOR[dev][dow] / WEEK_FACTOR[dev].mean()
        ns = rng.poisson(budget * HUMAN_DEVICE_SHARE[dev] * wf / mean_clicks)
        li = rng.random(ns) < HUMAN_LOGGED_IN[dev]
        nin = int(li.sum())
        aw = pop.activity / pop.activity.sum()
        cust = np.full(ns, -1, dtype=np.int64)
        cust[li] = rng.choice(pop.n_customers, size=nin, p=aw)
        tz = rng.choice(HUMAN_TZ, size=ns, p=HUMAN_TZ_W)
        tz[li] = pop.tz[cust[li]]
        hours = HOUR_PROFILE[dev][1 if dow >= 5 else 0]
        start = _local_starts(rng, ns, day, tz, hours, t0)
        local_h = ((start + tz.astype(np.int64) * 60_000) % DAY_MS) // HOUR_MS
        # IPs: home for customers, random residential for visitors; mobile often via CGNAT;
        # desktop weekday office hours via the employer's proxy (or a random corporate one).
        ip = _random_ips(rng, ns, "24.0.0.1", "99.255.255.254")
        ip[li] = pop.home_ip[cust[li]]
        if dev in (D_MOBILE, D_APP):
            share = 0.55 if dev == D_MOBILE else 0.3
            via = rng.random(ns) < share
            ip[via] = pop.cgnat_ips[rng.integers(0, len(pop.cgnat_ips), int(via.sum()))]
        elif dow < 5:
            office_h = (local_h >= 8) & (local_h < 18)
            has = li & office_h
            has[li] &= pop.office_ip[cust[li]] != 0
            ip[has] = pop.office_ip[cust[has]]
            anon = (~li) & office_h & (rng.random(ns) < 0.3)
            ip[anon] = pop.corp_ips[rng.integers(0, len(pop.corp_ips), int(anon.sum()))]
        quick = rng.random(ns) < 0.12
        uas = UA_BY_DEVICE[dev]
        p_buy = np.where(li, pop.p_buy[np.maximum(cust, 0)], p.human_purchase_out)
        out.add(family=0, start=start, n=_click_counts(rng, ns, 0.15, 0.5, 0.15, 2),
                gap_mu=np.where(quick, np.log(6.0), np.log(40.0)),
                gap_sigma=np.where(quick, 0.5, 1.0), device=dev, logged_in=li, user=cust, ip=ip,
                tz=tz, ua=np.asarray(uas)[rng.integers(0, len(uas), ns)], p_buy=p_buy, reset=0)


def _robot_slices(rng, fam: str, ns: int, p: SimParams) -> tuple[np.ndarray, np.ndarray]:
    mix = _mix_for_day(rng, ROBOT_MIX[fam], p.daily_mix_concentration)
    k = rng.choice(6, size=ns, p=mix)
    keys = np.asarray(SLICE_KEYS)
    return keys[k, 0], keys[k, 1].astype(bool)


def _robot_ua(rng, dev: np.ndarray, p_declared: float) -> np.ndarray:
    ua = np.empty(dev.shape[0], dtype=np.int64)
    for d, choices in enumerate(UA_BY_DEVICE):
        m = dev == d
        ua[m] = np.asarray(choices)[rng.integers(0, len(choices), int(m.sum()))]
    declared = rng.random(dev.shape[0]) < p_declared
    ua[declared] = rng.integers(9, 12, int(declared.sum()))
    return ua


def _robots(rng, pop: Population, p: SimParams, fam: str, day: int, budget: float, t0: int,
            out: _Sessions) -> None:
    if fam == "scraper":
        # Long bursts, datacenter IPs, flat hours, UTC-ish clocks.
        mean = 0.7 * 40 + 0.3 * 150
        ns = max(rng.poisson(budget / mean), 1)
        n = np.where(rng.random(ns) < 0.7, 10 + rng.geometric(1 / 30, ns),
                     40 + rng.geometric(1 / 110, ns))
        dev, li = _robot_slices(rng, fam, ns, p)
        tz = np.where(rng.random(ns) < 0.6, 0, rng.choice(HUMAN_TZ, size=ns)).astype(np.int16)
        # A third are throttled: one click every ~10-20 s, for hours.
        slow = rng.random(ns) < 0.3
        out.add(family=FAMILY_CODE[fam], start=_local_starts(rng, ns, day, np.zeros(ns, np.int16),
                                                             FLAT, t0),
                n=n, gap_mu=np.where(slow, np.log(14.0), np.log(1.5)),
                gap_sigma=np.where(slow, 0.4, 0.7), device=dev, logged_in=li,
                user=_fake_accounts(rng, pop, li), ip=pop.dc_ips[rng.integers(0, 120, ns)],
                tz=tz, ua=_robot_ua(rng, dev, 0.3), p_buy=p.robot_purchase, reset=0)
    elif fam == "low_slow":
        # Operators work UTC 02-12 and spoof American time zones: local nights and early
        # mornings, which look human on a phone late in the evening but not on a desktop.
        ns = max(rng.poisson(budget / 1.6), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        tz = np.where(rng.random(ns) < 0.8, rng.choice(HUMAN_TZ[:3], size=ns),
                      rng.choice(HUMAN_TZ, size=ns, p=HUMAN_TZ_W)).astype(np.int16)
        start = _local_starts(rng, ns, day, np.zeros(ns, np.int16), LOW_SLOW_UTC, t0)
        out.add(family=FAMILY_CODE[fam], start=start, n=rng.geometric(0.6, ns),
                gap_mu=np.log(30.0), gap_sigma=0.35, device=dev, logged_in=li,
                user=_fake_accounts(rng, pop, li),
                ip=_random_ips(rng, ns, "24.0.0.1", "99.255.255.254"), tz=tz,
                ua=_robot_ua(rng, dev, 0.0), p_buy=p.robot_purchase, reset=0)
    elif fam == "stolen":
        ns = max(rng.poisson(budget / 3.5), 1)
        dev, _ = _robot_slices(rng, fam, ns, p)
        # Accounts of the day: mostly dormant ones (owners do not notice), so only a few carry
        # a high RFM score; a Zipf spread of sessions per account gives both aggressive
        # accounts and careful, human-rate ones.
        na = max(ns // 6, 1)
        w = pop.recency_days + 15.0
        accts = rng.choice(pop.n_customers, size=na, p=w / w.sum())
        zw = 1.0 / np.arange(1, na + 1) ** 0.9
        user = accts[rng.choice(na, size=ns, p=zw / zw.sum())]
        ip = np.where(rng.random(ns) < 0.5, pop.dc_ips[rng.integers(120, 400, ns)],
                      _random_ips(rng, ns, "24.0.0.1", "99.255.255.254")).astype(np.uint32)
        tz = np.where(rng.random(ns) < 0.5, pop.tz[user],
                      rng.choice(HUMAN_TZ, size=ns)).astype(np.int16)
        out.add(family=FAMILY_CODE[fam],
                start=_local_starts(rng, ns, day, np.zeros(ns, np.int16), FLAT, t0),
                n=1 + rng.geometric(0.4, ns), gap_mu=np.log(12.0), gap_sigma=0.5, device=dev,
                logged_in=True, user=user, ip=ip, tz=tz, ua=_robot_ua(rng, dev, 0.0),
                p_buy=p.robot_purchase, reset=0)
    elif fam == "farm":
        ns = max(rng.poisson(budget / 3.4), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        nf = len(pop.farm_ips)
        fw = rng.dirichlet(np.full(nf, 2.0))  # which farms are busy today
        farm = rng.choice(nf, size=ns, p=fw)
        tz = pop.farm_tz[farm]
        start = _local_starts(rng, ns, day, tz, FARM_SHIFT, t0)
        ip = np.array([pop.farm_ips[f][rng.integers(0, len(pop.farm_ips[f]))] for f in
                       range(nf)], dtype=np.uint32)  # today's IP per farm
        ip_all = np.concatenate(pop.farm_ips)
        ip_s = np.where(rng.random(ns) < 0.8, ip[farm], ip_all[rng.integers(0, len(ip_all), ns)])
        acc_first = np.array([a[0] for a in pop.farm_accounts])
        acc_n = np.array([len(a) for a in pop.farm_accounts])
        user = np.where(li, acc_first[farm] + rng.integers(0, acc_n[farm]), -1)
        out.add(family=FAMILY_CODE[fam], start=start, n=1 + rng.geometric(0.42, ns),
                gap_mu=np.log(20.0), gap_sigma=0.4, device=dev, logged_in=li, user=user,
                ip=ip_s.astype(np.uint32), tz=tz, ua=_robot_ua(rng, dev, 0.0),
                p_buy=p.robot_purchase, reset=0)
    elif fam == "crawler":
        ns = max(rng.poisson(budget / 60.0), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        out.add(family=FAMILY_CODE[fam],
                start=_local_starts(rng, ns, day, np.zeros(ns, np.int16), FLAT, t0),
                n=10 + rng.geometric(1 / 50, ns), gap_mu=np.log(4.0), gap_sigma=0.6,
                device=dev, logged_in=False, user=-1,
                ip=_random_ips(rng, ns, "45.0.0.1", "45.255.255.254"),
                tz=np.where(rng.random(ns) < 0.7, 0, rng.choice(HUMAN_TZ, size=ns)),
                ua=_robot_ua(rng, dev, 0.4), p_buy=p.robot_purchase,
                reset=rng.integers(1, 5, ns))
    elif fam == "proxy_rotator":
        ns = max(rng.poisson(budget / 5.5), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        out.add(family=FAMILY_CODE[fam],
                start=_local_starts(rng, ns, day, np.zeros(ns, np.int16), FLAT, t0),
                n=3 + rng.integers(0, 6, ns), gap_mu=np.log(3.0), gap_sigma=0.12, device=dev,
                logged_in=False, user=-1, ip=_random_ips(rng, ns, "24.0.0.1", "99.255.255.254"),
                tz=rng.choice(HUMAN_TZ, size=ns, p=HUMAN_TZ_W), ua=_robot_ua(rng, dev, 0.0),
                p_buy=p.robot_purchase, reset=0)
    elif fam == "mimic":
        ns = max(rng.poisson(budget / 2.85), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        pool = _random_ips(np.random.default_rng(p.seed + 7_777), 40, "67.160.0.1",
                           "67.191.255.254")
        out.add(family=FAMILY_CODE[fam],
                start=_local_starts(rng, ns, day, np.zeros(ns, np.int16), FLAT, t0),
                n=_click_counts(rng, ns, 0.15, 0.5, 0.15, 2), gap_mu=np.log(40.0),
                gap_sigma=1.0, device=dev, logged_in=False, user=-1,
                ip=pool[rng.integers(0, pool.size, ns)],
                tz=rng.choice(HUMAN_TZ, size=ns, p=HUMAN_TZ_W), ua=_robot_ua(rng, dev, 0.0),
                p_buy=p.robot_purchase, reset=0)
    elif fam == "injector":
        ns = max(rng.poisson(budget / 2.5), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        tz = rng.choice(HUMAN_TZ, size=ns, p=HUMAN_TZ_W)
        # Installs follow human app hours (the victim installs the app; the malware fires).
        start = _local_starts(rng, ns, day, tz, HOUR_PROFILE[D_APP][0], t0)
        out.add(family=FAMILY_CODE[fam], start=start, n=2 + rng.integers(0, 2, ns),
                gap_mu=np.log(0.4), gap_sigma=0.5, gap_min=0.02, device=dev, logged_in=False,
                user=-1, ip=pop.cgnat_ips[rng.integers(0, len(pop.cgnat_ips), ns)], tz=tz,
                ua=_robot_ua(rng, dev, 0.0), p_buy=p.robot_purchase, reset=0)
    elif fam == "ad_stacker":
        ns = max(rng.poisson(budget / 11.25), 1)
        dev, li = _robot_slices(rng, fam, ns, p)
        tz = rng.choice(HUMAN_TZ, size=ns, p=HUMAN_TZ_W)
        k = 3 + rng.integers(0, 4, ns)  # stacked ads per view
        out.add(family=FAMILY_CODE[fam],
                start=_local_starts(rng, ns, day, tz, HOUR_PROFILE[D_MOBILE][0], t0),
                n=k * (1 + rng.integers(1, 3, ns)), gap_mu=np.log(0.02), gap_sigma=0.6,
                gap_min=0.002, burst=k, device=dev, logged_in=False, user=-1,
                ip=_random_ips(rng, ns, "24.0.0.1", "99.255.255.254"), tz=tz,
                ua=_robot_ua(rng, dev, 0.0), p_buy=p.robot_purchase, reset=0)
    else:  # pragma: no cover
        raise ValueError(f"unknown robot family {fam!r}")


def _fake_accounts(rng, pop: Population, li: np.ndarray) -> np.ndarray:
    """Logged-in sessions of non-stolen robot families use fake (farm-made) accounts."""
    allf = np.concatenate(pop.farm_accounts)
    return np.where(li, allf[rng.integers(0, len(allf), li.shape[0])], -1)


# ------------------------------------------------------------------ clicks

def _expand(rng, s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions -> per-click (session index, ts, new-session flag), in session order."""
    n = s["n"].astype(np.int64)
    rep = np.repeat(np.arange(n.shape[0]), n)
    first = np.cumsum(n) - n
    pos = np.arange(rep.shape[0]) - first[rep]
    gap = np.exp(s["gap_mu"][rep] + s["gap_sigma"][rep] * rng.standard_normal(rep.shape[0]))
    burst = s["burst"][rep]
    if (burst > 0).any():  # stacked ads: a human-scale pause between views
        views = (burst > 0) & (pos % np.maximum(burst, 1) == 0)
        gap[views] = np.exp(np.log(90.0) + 0.8 * rng.standard_normal(int(views.sum())))
    gap = np.clip(gap, s["gap_min"][rep], 3600.0) * 1000.0
    gap[pos == 0] = 0.0
    cs = np.cumsum(gap)
    offs = cs - cs[first][rep]
    ts = s["start"][rep] + offs.astype(np.int64)
    reset = s["reset"][rep]
    new = (pos == 0) | ((reset > 0) & (pos % np.maximum(reset, 1) == 0))
    return rep, ts, new


def _ip_strings(pa, pc, ips: np.ndarray):
    parts = [pc.cast(pa.array(((ips >> s) & 0xFF).astype(np.int64)), pa.string())
             for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*parts, ".")


def _prefixed(pa, pc, prefix: str, ints: np.ndarray, null_mask: np.ndarray | None = None):
    s = pc.binary_join_element_wise(pa.scalar(prefix),
                                    pc.cast(pa.array(ints.astype(np.int64)), pa.string()), "")
    if null_mask is not None:
        s = pc.if_else(pa.array(null_mask), pa.scalar(None, pa.string()), s)
    return s


@dataclass
class SimResult:
    clicks: Any  # pyarrow.Table
    customers: Any  # pyarrow.Table
    manifest: dict[str, Any]
    family: np.ndarray  # int8 family code per click (ground truth detail; not written)
    seconds: float


def simulate(params: SimParams | None = None, progress: bool = False) -> SimResult:
    """Simulate `params.days` UTC days of clicks. Deterministic for a given SimParams."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from slidr.util import Progress

    p = params or SimParams()
    if p.days < 1 or p.clicks_per_day < 100:
        raise ValueError("need --days >= 1 and --clicks-per-day >= 100")
    t_start = time.perf_counter()
    rng = np.random.default_rng(p.seed)
    t0 = int(np.datetime64(p.start, "ms").astype(np.int64))
    t_end = t0 + p.days * DAY_MS
    pop = _population(rng, p)
    robots = [f for f in ALL_FAMILIES[1:] if p.robot_share.get(f, 0) > 0]
    human_share = 1.0 - sum(p.robot_share.get(f, 0.0) for f in robots)
    sess = _Sessions()
    # Local days -1..days so every UTC hour of the window is covered in every time zone.
    local_days = list(range(-1, p.days + 1))
    # One step per (day, traffic family): even steps, not a jump of a whole day at a time.
    bar = Progress(len(local_days) * (1 + len(robots)), "simulate", unit="steps",
                   enabled=progress)
    daily_mult: dict[str, list[float]] = {f: [] for f in robots}
    for day in local_days:
        _humans(rng, pop, p, day, p.clicks_per_day * human_share, t0, sess)
        bar.update(1)
        for fam in robots:
            m = float(np.exp(p.daily_volume_sigma * rng.standard_normal()
                             - p.daily_volume_sigma ** 2 / 2))
            daily_mult[fam].append(m)
            if day < p.appear_day.get(fam, -1):  # not yet: the family appears later
                bar.update(1)
                continue
            _robots(rng, pop, p, fam, day, p.clicks_per_day * p.robot_share[fam] * m, t0, sess)
            bar.update(1)
    bar.close()
    s = sess.cat()
    rep, ts, new = _expand(rng, s)
    keep = (ts >= t0) & (ts < t_end)
    # Session ids are numbered in session order (a crawler's resets get fresh ids).
    sid = np.cumsum(new) - 1
    rep, ts, sid = rep[keep], ts[keep], sid[keep]
    order = np.argsort(ts, kind="stable")
    rep, ts, sid = rep[order], ts[order], sid[order]
    n = ts.shape[0]
    fam = s["family"][rep].astype(np.int8)
    dev = s["device"][rep].astype(np.int64)
    li = s["logged_in"][rep].astype(bool)
    user = s["user"][rep].astype(np.int64)
    buy = rng.random(n) < s["p_buy"][rep]
    ad_w = 1.0 / (np.arange(3000) + 20.0)
    ad = rng.choice(3000, size=n, p=ad_w / ad_w.sum())
    # Scrapers and crawlers walk the ad inventory instead of following popularity.
    walk = (fam == FAMILY_CODE["scraper"]) | (fam == FAMILY_CODE["crawler"])
    ad[walk] = rng.integers(0, 3000, int(walk.sum()))

    clicks = pa.table({
        "click_id": _prefixed(pa, pc, f"c{p.seed}-", np.arange(n)),
        "ts": pa.array(ts, pa.int64()),
        "session_id": _prefixed(pa, pc, f"s{p.seed}-", sid),
        "user_id": _prefixed(pa, pc, "u", user, null_mask=~li),
        "ip": _ip_strings(pa, pc, s["ip"][rep].astype(np.uint32)),
        "device": pa.DictionaryArray.from_arrays(pa.array(dev.astype(np.int8)),
                                                 pa.array(DEVICES)).cast(pa.string()),
        "logged_in": pa.array(li),
        "tz_offset_min": pa.array(s["tz"][rep].astype(np.int16), pa.int16()),
        "user_agent": pa.DictionaryArray.from_arrays(
            pa.array(s["ua"][rep].astype(np.int16)), pa.array(USER_AGENTS)).cast(pa.string()),
        "ad_id": _prefixed(pa, pc, "ad", ad),
        "purchased": pa.array(buy),
        "is_robot": pa.array(fam != 0),
    })
    n_all = pop.n_customers + pop.n_fake
    fake = np.arange(pop.n_customers, n_all)
    customers = pa.table({
        "user_id": _prefixed(pa, pc, "u", np.arange(n_all)),
        "recency_days": pa.array(np.concatenate([pop.recency_days,
                                                 rng.integers(200, 1000, fake.shape[0])]),
                                 pa.int32()),
        "frequency": pa.array(np.concatenate([pop.frequency,
                                              rng.integers(0, 2, fake.shape[0])]), pa.int32()),
        "monetary": pa.array(np.concatenate([pop.monetary,
                                             np.round(rng.random(fake.shape[0]) * 30, 2)]),
                             pa.float64()),
    })
    seconds = time.perf_counter() - t_start
    manifest = _manifest(p, ts, t0, fam, dev, li, buy, sid, user, daily_mult, pop, seconds)
    return SimResult(clicks, customers, manifest, fam, seconds)


def _manifest(p, ts, t0, fam, dev, li, buy, sid, user, daily_mult, pop, seconds) -> dict:
    day = (ts - t0) // DAY_MS
    # Stock families always; new ones only when the scenario has them.
    FAMS = FAMILIES + tuple(f for f in NEW_FAMILIES if p.robot_share.get(f, 0) > 0)
    slice_idx = dev * 2 + (~li)  # index into SLICES order (device-major, in before out)
    robot = fam != 0
    days = []
    for d in range(p.days):
        m = day == d
        nd = int(m.sum())
        fam_d = np.bincount(fam[m], minlength=len(ALL_FAMILIES))
        by_slice = {}
        for k, name in enumerate(SLICES):
            ms = m & (slice_idx == k)
            ns = int(ms.sum())
            fs = np.bincount(fam[ms], minlength=len(ALL_FAMILIES))
            by_slice[name] = {
                "clicks": ns,
                "robot_share": round(float(robot[ms].mean()), 4) if ns else 0.0,
                "family_share": {f: round(float(fs[FAMILY_CODE[f]] / ns), 4) if ns else 0.0
                                 for f in FAMS[1:]},
            }
        days.append({
            "day": d,
            "date": str(np.datetime64(t0 + d * DAY_MS, "ms").astype("datetime64[D]")),
            "clicks": nd,
            "robot_share": round(float(robot[m].mean()), 4) if nd else 0.0,
            "family_share": {f: round(float(fam_d[FAMILY_CODE[f]] / max(nd, 1)), 4)
                             for f in FAMS[1:]},
            "slices": by_slice,
        })
    human = ~robot
    assert [slice_name(d, li) for d, li in SLICE_KEYS] == list(SLICES)
    return {
        "generator": "slidr simulate",
        "seed": p.seed,
        "params": asdict(p),
        "counts": {
            "clicks": int(ts.shape[0]),
            "sessions": int(np.unique(sid).shape[0]),
            "customers": pop.n_customers,
            "fake_accounts": pop.n_fake,
            "logged_in_users_seen": int(np.unique(user[li]).shape[0]),
            "robot_clicks": int(robot.sum()),
            "purchases": int(buy.sum()),
            "purchases_by_robots": int((buy & robot).sum()),
        },
        "robot_share": round(float(robot.mean()), 4),
        "purchase_rate_human": round(float(buy[human].mean()), 4) if human.any() else 0.0,
        "purchase_rate_robot": round(float(buy[robot].mean()), 6) if robot.any() else 0.0,
        "family_share": {f: round(float((fam == FAMILY_CODE[f]).mean()), 4) for f in FAMS},
        "robot_volume_multiplier_by_local_day": {f: [round(x, 3) for x in v]
                                                  for f, v in daily_mult.items()},
        "days": days,
        "seconds": round(seconds, 3),
    }


def write_outputs(res: SimResult, out: str | Path, fmt: str = "parquet") -> dict[str, str]:
    """Write clicks, customers and manifest into `out` atomically (temp dir, then rename)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from slidr.util import atomic_dir, write_json

    if fmt not in ("parquet", "csv", "both"):
        raise ValueError(f"--format must be parquet, csv or both, not {fmt!r}")
    files: dict[str, str] = {}
    with atomic_dir(out) as tmp:
        if fmt in ("parquet", "both"):
            pq.write_table(res.clicks, tmp / "clicks.parquet", compression="zstd")
            files["clicks"] = "clicks.parquet"
        if fmt in ("csv", "both"):
            pcsv.write_csv(res.clicks, tmp / "clicks.csv")
            files["clicks_csv"] = "clicks.csv"
        pq.write_table(res.customers, tmp / "customers.parquet")
        files["customers"] = "customers.parquet"
        # Ground truth per family, one row per click in the clicks file's order (never a
        # feature or a label; evaluation only).
        import pyarrow as pa
        names = pa.array(list(ALL_FAMILIES))
        pq.write_table(pa.table({"click_id": res.clicks.column("click_id"),
                                 "family": pa.DictionaryArray.from_arrays(
                                     pa.array(res.family.astype(np.int8)), names)}),
                       tmp / "truth.parquet")
        files["truth"] = "truth.parquet"
        res.manifest["files"] = files
        write_json(tmp / "manifest.json", res.manifest)
    return files
