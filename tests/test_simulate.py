"""The traffic simulator: determinism, contract-valid sorted output, families and slices that
change by day, purchases almost only human. Checks never depend on how fast the machine is."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from slidr.offline.sim_world import (
    FAMILY_CODE,
    MAX_TARGET_ADS,
    TARGET_RANKS,
    TARGETED_FAMILIES,
)
from slidr.offline.simulate import (
    FAMILIES,
    NEW_FAMILIES,
    SimParams,
    simulate,
    target_campaigns,
    write_outputs,
)

from slidr.cli import main
from slidr.contract import SLICES, iter_log_chunks

SMALL = SimParams(days=3, clicks_per_day=20_000, seed=3)


@pytest.fixture(scope="module")
def sim():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def simdir(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "out"
    write_outputs(sim, out, "both")
    return out


def test_same_seed_same_log_other_seed_other_log(sim):
    again = simulate(SMALL)
    assert again.clicks.equals(sim.clicks)
    assert again.customers.equals(sim.customers)
    other = simulate(SimParams(days=3, clicks_per_day=20_000, seed=4))
    assert not other.clicks.column("ts").equals(sim.clicks.column("ts"))


def test_files_are_contract_valid_and_sorted(simdir, sim):
    for name in ("clicks.parquet", "clicks.csv"):
        n = 0
        last = None
        for tbl in iter_log_chunks(simdir / name, chunk_rows=16_384,
                                   require=("purchased", "is_robot")):
            ts = tbl.column("ts").to_numpy()
            assert last is None or ts[0] >= last
            last = int(ts[-1])
            n += tbl.num_rows
        assert n == sim.clicks.num_rows
    ids = sim.clicks.column("click_id").to_numpy(zero_copy_only=False)
    assert np.unique(ids).shape[0] == ids.shape[0]
    cust = pq.read_table(simdir / "customers.parquet")
    assert cust.column_names == ["user_id", "recency_days", "frequency", "monetary"]
    logged = sim.clicks.filter(sim.clicks.column("logged_in"))
    known = set(cust.column("user_id").to_pylist())
    assert set(logged.column("user_id").to_pylist()) <= known
    m = json.loads((simdir / "manifest.json").read_text())
    assert m["seed"] == 3 and m["counts"]["clicks"] == sim.clicks.num_rows
    assert len(m["days"]) == 3
    assert not list(simdir.parent.glob(".*partial"))  # atomic: no temp dir left behind


def test_window_and_volume(sim):
    ts = sim.clicks.column("ts").to_numpy()
    t0 = int(np.datetime64(SMALL.start, "ms").astype(np.int64))
    day = (ts - t0) // 86_400_000
    assert day.min() == 0 and day.max() == SMALL.days - 1
    per_day = np.bincount(day)
    assert np.all(np.abs(per_day / SMALL.clicks_per_day - 1) < 0.25)


def test_families_and_slices_present_and_changing(sim):
    m = sim.manifest
    fam = sim.family
    for i, f in enumerate(FAMILIES):
        assert (fam == i).sum() > 100, f
    assert 0.1 < m["robot_share"] < 0.4
    days = m["days"]
    for d in days:
        for s in SLICES:
            sl = d["slices"][s]
            assert sl["clicks"] > 0 and 0 < sl["robot_share"] < 0.9, (d["day"], s)
    # Mixes differ across slices and change from day to day.
    shares = np.array([[d["family_share"][f] for f in FAMILIES[1:]] for d in days])
    assert np.abs(shares - shares.mean(0)).max() > 0.005
    out_share = [days[0]["slices"][s]["robot_share"] for s in SLICES if s.endswith("/out")]
    in_share = [days[0]["slices"][s]["robot_share"] for s in SLICES if s.endswith("/in")]
    assert np.mean(out_share) > np.mean(in_share)
    stolen = [d["slices"]["desktop/in"]["family_share"]["stolen"] for d in days]
    assert max(stolen) > 0 and min(d["slices"]["desktop/out"]["family_share"]["stolen"]
                                   for d in days) == 0


def test_purchases_almost_only_human(sim):
    pur = sim.clicks.column("purchased").to_numpy(zero_copy_only=False)
    rob = sim.clicks.column("is_robot").to_numpy(zero_copy_only=False)
    assert 0.01 <= pur[~rob].mean() <= 0.03
    assert pur[rob].mean() < 0.002
    assert (pur & rob).sum() < 0.01 * pur.sum()


def test_human_rhythms(sim):
    """Desktop humans click in office hours, mobile humans in the evening (local time)."""
    from slidr.featurespec import local_hour_dow
    c = sim.clicks
    ts = c.column("ts").to_numpy()
    tz = c.column("tz_offset_min").to_numpy()
    hour, _ = local_hour_dow(ts, tz)
    dev = np.asarray(c.column("device").to_pylist())
    human = sim.family == 0
    office = (hour >= 9) & (hour < 17)
    evening = (hour >= 19) & (hour < 23)
    d, mo = human & (dev == "desktop"), human & (dev == "mobile")
    assert office[d].mean() > office[mo].mean() + 0.1
    assert evening[mo].mean() > evening[d].mean() + 0.1
    # Stolen-account bots are flat over the UTC day (four-hour bins, to stay robust).
    utc_h = (ts // 3_600_000) % 24
    bot = sim.family == FAMILIES.index("stolen")
    counts = np.bincount(utc_h[bot] // 4, minlength=6)
    assert counts.min() > 0.5 * counts.mean()


def test_nat_gateways_carry_many_human_users(sim):
    c = sim.clicks
    ip = np.asarray(c.column("ip").to_pylist())
    sess = np.asarray(c.column("session_id").to_pylist())
    human = sim.family == 0
    uniq_ip, inv = np.unique(ip[human], return_inverse=True)
    pairs = np.unique(np.stack([inv, np.unique(sess[human], return_inverse=True)[1]]), axis=1)
    per_ip = np.bincount(pairs[0])
    assert per_ip.max() >= 50  # a gateway with dozens of legitimate sessions


def test_shared_addresses_keep_their_region(sim):
    """The human clients behind one carrier NAT, corporate proxy or household mostly share a
    time zone (a shared address serves one region); a few stray (roaming, travelling)."""
    c = sim.clicks
    ip = np.asarray(c.column("ip").to_pylist())
    tz = np.asarray(c.column("tz_offset_min").to_pylist())
    human = sim.family == 0
    uniq_ip, inv = np.unique(ip[human], return_inverse=True)
    counts = np.zeros((uniq_ip.size, 2000), dtype=np.int64)
    np.add.at(counts, (inv, tz[human].astype(np.int64) + 1000), 1)
    total = counts.sum(axis=1)
    busy = total >= 50
    assert busy.sum() >= 5
    modal = counts.max(axis=1)
    # (a zone with no NAT or office address of its own in a small world keeps any address)
    assert modal[busy].sum() / total[busy].sum() > 0.8


def test_cli_simulate_json(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["simulate", "--out", str(out), "--days", "1", "--clicks-per-day", "3000",
               "--seed", "5", "--format", "csv", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert m["seed"] == 5 and (out / "clicks.csv").exists() and not (out / "clicks.parquet").exists()
    assert main(["simulate", "--out", str(out), "--days", "0"]) == 2


def _digest(res) -> str:
    h = hashlib.sha256()
    for name in res.clicks.column_names:
        for v in res.clicks.column(name).to_pylist():
            h.update(repr(v).encode())
            h.update(b"\0")
    h.update(res.family.tobytes())
    return h.hexdigest()[:16]


def test_outputs_pinned_for_a_seed():
    """Refactors of the simulator (its world, its families) must not change a seed's log."""
    stock = SimParams(days=2, clicks_per_day=5_000, seed=3)
    assert _digest(simulate(stock)) == "e27f0a3541194176"
    new = SimParams(days=2, clicks_per_day=5_000, seed=3,
                    robot_share={**stock.robot_share, **{f: 0.03 for f in NEW_FAMILIES}},
                    appear_day={f: 1 for f in NEW_FAMILIES}, target_ads=0)
    # target_ads 0: every new family clicks by human popularity, the log as it was before
    # campaigns existed.
    assert _digest(simulate(new)) == "0ad8535dc429c816"
    assert _digest(simulate(replace(new, target_ads=5))) == "cd61121809e8ec1d"


TARGETED = SimParams(days=2, clicks_per_day=20_000, seed=5,
                     robot_share={**SimParams().robot_share, **{f: 0.03 for f in NEW_FAMILIES}},
                     appear_day={f: 0 for f in NEW_FAMILIES})


def test_campaign_families_click_only_their_campaign():
    res = simulate(TARGETED)
    ads = np.asarray([int(a[2:]) for a in res.clicks.column("ad_id").to_pylist()])
    sess = np.asarray(res.clicks.column("session_id").to_pylist())
    fam = res.family
    camp = target_campaigns(TARGETED)
    assert set(camp) == set(TARGETED_FAMILIES) == {"proxy_rotator", "injector"}
    seen = set()
    for f, want in camp.items():
        assert want.size == TARGETED.target_ads
        assert ((want >= TARGET_RANKS[0]) & (want < TARGET_RANKS[1])).all()
        assert not seen & set(want.tolist())  # one campaign per family, no shared ad
        seen |= set(want.tolist())
        m = fam == FAMILY_CODE[f]
        assert m.sum() > 500
        assert set(ads[m].tolist()) == set(want.tolist())
        assert res.manifest["target_ads"][f] == [f"ad{a}" for a in want.tolist()]
    # injector: one install per session, so one ad per session
    m = fam == FAMILY_CODE["injector"]
    per = {}
    for s_, a in zip(sess[m], ads[m], strict=True):
        per.setdefault(s_, set()).add(a)
    assert max(len(v) for v in per.values()) == 1
    # proxy_rotator: any of the advertiser's ads per click
    m = fam == FAMILY_CODE["proxy_rotator"]
    assert np.bincount(ads[m], minlength=3000)[camp["proxy_rotator"]].min() > 50
    # publisher-side families and humans keep the served (popularity) mix
    for f in ("human", "mimic", "ad_stacker"):
        m = fam == FAMILY_CODE[f]
        assert np.unique(ads[m]).size > 300, f
        assert 0.25 < (ads[m] < 100).mean() < 0.5, f
    # the campaign is drawn per seed; one family's campaign does not depend on the others
    other = target_campaigns(replace(TARGETED, seed=6))
    assert not np.array_equal(other["injector"], camp["injector"])
    only = replace(TARGETED, robot_share={**SimParams().robot_share, "injector": 0.03})
    assert set(target_campaigns(only)) == {"injector"}
    np.testing.assert_array_equal(target_campaigns(only)["injector"], camp["injector"])
    # stock logs and target_ads 0 have none
    assert target_campaigns(SimParams(seed=5)) == {}
    assert target_campaigns(replace(TARGETED, target_ads=0)) == {}
    assert "target_ads" not in simulate(SimParams(days=1, clicks_per_day=2000)).manifest
    with pytest.raises(ValueError, match="target_ads"):
        target_campaigns(replace(TARGETED, target_ads=MAX_TARGET_ADS + 1))


def test_cli_target_ads(tmp_path):
    from slidr.offline import cli_simulate
    assert cli_simulate.TARGET_ADS == SimParams().target_ads
    out = tmp_path / "t"
    assert main(["simulate", "--out", str(out), "--days", "1", "--clicks-per-day", "3000",
                 "--seed", "2", "--new-families", "injector", "--target-ads", "2",
                 "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["target_ads"] == 2 and len(m["target_ads"]["injector"]) == 2
    assert main(["simulate", "--out", str(out), "--days", "1", "--new-families", "injector",
                 "--target-ads", "-1", "--quiet"]) == 2
