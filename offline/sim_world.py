"""The simulated world behind offline/simulate.py: its parameters (SimParams), slice mixes,
daily and weekly rhythms, user agents, IP ranges, the customer population, and the
columnar session table every family adds to."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

# The ad inventory: ad k (0-based popularity rank) draws human clicks with weight 1 / (k + 20).
N_ADS = 3000
# Families paid per click on particular campaigns, so they click only a campaign's few ads:
# proxy_rotator drains one advertiser's budget (competitor click fraud); injector claims the
# installs of the few app campaigns its publisher is signed up to. The other new families are
# publisher-side (mimic inflates a site's clicks, ad_stacker stacks whatever the placement
# serves) and click the served mix, i.e. by human popularity.
TARGETED_FAMILIES: tuple[str, ...] = ("proxy_rotator", "injector")
# Popularity ranks [lo, hi) the campaigns are drawn from: neither the head nor the long tail.
TARGET_RANKS = (100, 1000)
MAX_TARGET_ADS = 100

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
    # Ads in the campaign each targeting family (TARGETED_FAMILIES) clicks on, drawn per
    # scenario from the mid-popularity inventory (TARGET_RANKS); 0: they click ads by human
    # popularity like every other family.
    target_ads: int = 5


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
    # Where a shared address is: a carrier NAT's public address and a corporate proxy serve
    # one region, so the clients behind one mostly share its time zone.
    cgnat_tz: np.ndarray
    corp_tz: np.ndarray


# Share of sessions behind a carrier NAT or a corporate proxy whose client clock is in another
# time zone than the address's region (roaming phones, travellers, remote staff, wrong clocks).
TZ_STRAY = 0.05


def regional_ips(rng: np.random.Generator, ips: np.ndarray, ip_tz: np.ndarray, tz: np.ndarray,
                 draw: np.ndarray) -> np.ndarray:
    """Pick for each session an address in its time zone's region: draw (uniform integers in
    [0, len(ips))) picks among the addresses of the session's zone; a TZ_STRAY share (and any zone
    without an address) keeps the address draw picks from the whole pool."""
    out = ips[draw]
    regional = rng.random(tz.shape[0]) >= TZ_STRAY
    for z in np.unique(tz):
        pool = ips[ip_tz == z]
        m = regional & (tz == z)
        if pool.size and m.any():
            out[m] = pool[draw[m] % pool.size]
    return out


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
    # Time zones of the shared addresses and households from their own stream (the draws above
    # stay as they were): a household shares a zone, and staff work at an office of their
    # home's zone (a TZ_STRAY share remotely, at any office).
    rz = np.random.default_rng([p.seed, 4_242])
    cgnat_tz = rz.choice(HUMAN_TZ, size=cgnat.size, p=HUMAN_TZ_W)
    corp_tz = rz.choice(HUMAN_TZ, size=corp.size, p=HUMAN_TZ_W)
    _, home_idx = np.unique(home_ip, return_inverse=True)
    first = np.zeros(home_idx.max() + 1, dtype=np.int64)
    first[home_idx[::-1]] = np.arange(n)[::-1]
    tz = tz[first[home_idx]]  # every member of a household takes its first member's zone
    staff = office != 0
    order = np.argsort(corp)
    drawn = order[np.searchsorted(corp[order], office[staff])]  # the Zipf draw's index
    office[staff] = regional_ips(rz, corp, corp_tz, tz[staff], drawn)
    return Population(n, z, activity, p_buy, tz, home_ip, office, rec, freq, mon, cgnat, corp, dc,
                      farm_ips, farm_tz, farm_accounts, nxt - n, cgnat_tz, corp_tz)
