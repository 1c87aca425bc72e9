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

What they click on: humans, the stock families but scraper and crawler (which walk the
inventory), mimic and ad_stacker (publisher-side fraud: paid for any click on the ads a site or
placement serves) draw ads by human popularity; proxy_rotator (competitor click fraud draining
one advertiser's budget) and injector (claiming installs for the app campaigns its publisher is
signed up to) click only a campaign of `target_ads` ads each, drawn per scenario from the
mid-popularity inventory (`target_ads` 0: by popularity too).

Robots essentially never buy; weak labels come from offline/labels.py, not from here.

Layout: offline/sim_world.py holds the parameters, rhythms, IP ranges, the population and the
columnar session table; offline/sim_families.py draws the sessions of humans and of each robot
family; this module runs the days, expands sessions to clicks and writes the outputs.
"""


from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidr.contract import DEVICES, SLICES, slice_name

from .sim_families import _humans, _robots
from .sim_world import (
    ALL_FAMILIES,
    DAY_MS,
    DEFAULT_START,
    FAMILIES,
    FAMILY_CODE,
    MAX_TARGET_ADS,
    N_ADS,
    NEW_FAMILIES,
    SLICE_KEYS,
    TARGET_RANKS,
    TARGETED_FAMILIES,
    USER_AGENTS,
    SimParams,
    _population,
    _Sessions,
)

# ------------------------------------------------------------------ clicks

TABLE_ROWS = 4_000_000  # clicks per Arrow chunk of the clicks table

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

# The simulator's public names (its world and families live in sim_world / sim_families).
__all__ = ["ALL_FAMILIES", "DEFAULT_START", "FAMILIES", "NEW_FAMILIES", "SimParams", "SimResult",
           "simulate", "write_outputs"]


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
    ad_w = 1.0 / (np.arange(N_ADS) + 20.0)
    ad = rng.choice(N_ADS, size=n, p=ad_w / ad_w.sum())
    # Scrapers and crawlers walk the ad inventory instead of following popularity.
    walk = (fam == FAMILY_CODE["scraper"]) | (fam == FAMILY_CODE["crawler"])
    ad[walk] = rng.integers(0, N_ADS, int(walk.sum()))
    campaigns = target_campaigns(p)
    if campaigns:
        _click_campaigns(p, campaigns, fam, rep, ad)

    # Built TABLE_ROWS clicks at a time (the same values; a string column of tens of millions
    # of clicks would overflow one Arrow array's 2 GiB of characters).
    ip_all = s["ip"][rep].astype(np.uint32)
    tz_all = s["tz"][rep].astype(np.int16)
    ua_all = s["ua"][rep].astype(np.int16)
    pieces = []
    for a in range(0, max(n, 1), TABLE_ROWS):
        b = min(a + TABLE_ROWS, n)
        pieces.append(pa.table({
            "click_id": _prefixed(pa, pc, f"c{p.seed}-", np.arange(a, b)),
            "ts": pa.array(ts[a:b], pa.int64()),
            "session_id": _prefixed(pa, pc, f"s{p.seed}-", sid[a:b]),
            "user_id": _prefixed(pa, pc, "u", user[a:b], null_mask=~li[a:b]),
            "ip": _ip_strings(pa, pc, ip_all[a:b]),
            "device": pa.DictionaryArray.from_arrays(pa.array(dev[a:b].astype(np.int8)),
                                                     pa.array(DEVICES)).cast(pa.string()),
            "logged_in": pa.array(li[a:b]),
            "tz_offset_min": pa.array(tz_all[a:b], pa.int16()),
            "user_agent": pa.DictionaryArray.from_arrays(
                pa.array(ua_all[a:b]), pa.array(USER_AGENTS)).cast(pa.string()),
            "ad_id": _prefixed(pa, pc, "ad", ad[a:b]),
            "purchased": pa.array(buy[a:b]),
            "is_robot": pa.array(fam[a:b] != 0),
        }))
    clicks = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
    del pieces, ip_all, tz_all, ua_all
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
    if campaigns:  # ground truth of what each campaign family clicks on
        manifest["target_ads"] = {f: [f"ad{a}" for a in ads.tolist()]
                                  for f, ads in campaigns.items()}
    return SimResult(clicks, customers, manifest, fam, seconds)


def target_campaigns(p: SimParams) -> dict[str, np.ndarray]:
    """Ad indices of each targeting family's campaign in this scenario ({} with target_ads 0 or
    no targeting family in it). Drawn from a stream of their own (the other draws stay as they
    were), for every family of TARGETED_FAMILIES in order and without overlap, so a family's
    campaign does not depend on which other families the scenario has."""
    if not 0 <= p.target_ads <= MAX_TARGET_ADS:
        raise ValueError(f"target_ads must be in [0, {MAX_TARGET_ADS}], got {p.target_ads}")
    if p.target_ads == 0:
        return {}
    rng = np.random.default_rng([p.seed, 5_150])
    k = p.target_ads
    picks = rng.choice(np.arange(*TARGET_RANKS), size=k * len(TARGETED_FAMILIES), replace=False)
    return {f: np.sort(picks[i * k:(i + 1) * k]) for i, f in enumerate(TARGETED_FAMILIES)
            if p.robot_share.get(f, 0) > 0}


def _click_campaigns(p: SimParams, campaigns: dict[str, np.ndarray], fam: np.ndarray,
                     rep: np.ndarray, ad: np.ndarray) -> None:
    """Point the clicks of the targeting families at their campaigns' ads (in place): an
    injector session is one install, so all its clicks go to one app's ad; proxy_rotator picks
    any of the advertiser's ads per click."""
    rng = np.random.default_rng([p.seed, 5_151])
    for f, ads in campaigns.items():
        m = fam == FAMILY_CODE[f]
        if f == "injector":
            sess, inv = np.unique(rep[m], return_inverse=True)
            ad[m] = ads[rng.integers(0, ads.size, sess.size)][inv]
        else:
            ad[m] = ads[rng.integers(0, ads.size, int(m.sum()))]


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
