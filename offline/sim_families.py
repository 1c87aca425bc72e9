"""Who clicks in the simulated log (offline/simulate.py): humans and each robot family,
drawn per session into the columnar session table (sim_world._Sessions)."""


from __future__ import annotations

import numpy as np

from .sim_world import (
    D_APP,
    D_DESKTOP,
    D_MOBILE,
    DAY_MS,
    FAMILY_CODE,
    FARM_SHIFT,
    FLAT,
    HOUR_MS,
    HOUR_PROFILE,
    HUMAN_DEVICE_SHARE,
    HUMAN_LOGGED_IN,
    HUMAN_TZ,
    HUMAN_TZ_W,
    LOW_SLOW_UTC,
    ROBOT_MIX,
    SLICE_KEYS,
    UA_BY_DEVICE,
    WEEK_FACTOR,
    Population,
    SimParams,
    _click_counts,
    _local_starts,
    _mix_for_day,
    _random_ips,
    _Sessions,
    regional_ips,
)


def _tz_rng(p: SimParams, day: int, part: int) -> np.random.Generator:
    """A stream of its own for the regional address picks, so the other draws stay as they were."""
    return np.random.default_rng([p.seed, day + 1_000_000, part, 4_243])

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
            draw = rng.integers(0, len(pop.cgnat_ips), int(via.sum()))
            ip[via] = regional_ips(_tz_rng(p, day, dev), pop.cgnat_ips, pop.cgnat_tz, tz[via],
                                   draw)
        elif dow < 5:
            office_h = (local_h >= 8) & (local_h < 18)
            has = li & office_h
            has[li] &= pop.office_ip[cust[li]] != 0
            ip[has] = pop.office_ip[cust[has]]
            anon = (~li) & office_h & (rng.random(ns) < 0.3)
            draw = rng.integers(0, len(pop.corp_ips), int(anon.sum()))
            ip[anon] = regional_ips(_tz_rng(p, day, dev), pop.corp_ips, pop.corp_tz, tz[anon],
                                    draw)
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
        n = 2 + rng.integers(0, 2, ns)
        # The victim's phone: its clock is in the zone of the carrier NAT it reaches us through.
        ip = regional_ips(_tz_rng(p, day, 9), pop.cgnat_ips, pop.cgnat_tz, tz,
                          rng.integers(0, len(pop.cgnat_ips), ns))
        out.add(family=FAMILY_CODE[fam], start=start, n=n,
                gap_mu=np.log(0.4), gap_sigma=0.5, gap_min=0.02, device=dev, logged_in=False,
                user=-1, ip=ip, tz=tz,
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
