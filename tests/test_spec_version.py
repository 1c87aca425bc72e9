"""Bundles built on an older feature spec: refused by the registry check and by a running
daemon, with a message that names both spec versions, while the daemon keeps its model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_helpers import Client, Daemon, RpcError, click, make_bundle_src, make_registry

from slidr import featurespec as fs
from slidr.errors import ErrorCode
from slidr.registry import BundleError, Registry, spec_hash_of

# The spec hash of feature spec version 1 (21 features + 3 device one-hots, 32 raw columns).
V1_SPEC_HASH = "baa9849e739ca0f3"
V2_ONLY = ("subsec_ms", "log_gap_floor_s", "ip_hours")
V2_RAW = ("s_subsec", "s_lg_n", "s_lg_mean", "s_lg_m2", "i_hours")
# Version 2: 28 features, 37 raw columns (before the IP's time-zone switches).
V2_SPEC_HASH = "3fbd597194bc8a81"
V3_ONLY = ("ip_tz_switch",)
V3_RAW = ("i_tzsw",)
# Version 3: 29 features, 38 raw columns (before the entity table and the user's gap Welford).
V3_SPEC_HASH = "4a7c1d14f70a0e8a"
V4_ONLY = ("entity_taus_s", "entity_window_ms", "entity_kinds", "user_gap_welford",
           "user_lg_max_s")
V4_RAW = ("u_lg_n", "u_lg_mean", "u_lg_m2") + tuple(
    fs.RAW_COLUMNS[fs.RAW_SPANS["entity"][0]:fs.RAW_SPANS["entity"][1]])
# Version 4: 44 features, 83 raw columns (before the IP's logged-in clicks).
V4_SPEC_HASH = "fff0b4b7372f55c6"
V5_ONLY = ("ip_logged_in",)
V5_RAW = ("i_li",)
V5_FEATURES = ("ip_logged_in_1d",)
OLD_HASH = {1: V1_SPEC_HASH, 2: V2_SPEC_HASH, 3: V3_SPEC_HASH, 4: V4_SPEC_HASH}
N_OLD_FEATURES = {1: 24, 2: 28, 3: 29, 4: 44}


def old_spec(version: int = 1) -> dict:
    """An older feature spec as a bundle built then carries it (feature_spec.json)."""
    drop = (V5_ONLY + (V4_ONLY if version <= 3 else ()) + (V3_ONLY if version <= 2 else ())
            + (V2_ONLY if version == 1 else ()))
    drop_raw = (V5_RAW + (V4_RAW if version <= 3 else ()) + (V3_RAW if version <= 2 else ())
                + (V2_RAW if version == 1 else ()))
    d = {k: v for k, v in fs.spec_dict().items() if k not in drop}
    d["version"] = version
    d["features"] = [f for f in d["features"]
                     if f["name"] not in V5_FEATURES][:N_OLD_FEATURES[version]]
    d["raw_columns"] = [c for c in d["raw_columns"] if c not in drop_raw]
    if version <= 3:
        d["ttl_ms"] = {k: v for k, v in d["ttl_ms"].items() if k != "entity"}
        d["hash"] = "fnv1a64+splitmix64 of utf-8, namespaces u/s/i"
    d = json.loads(json.dumps(d))
    assert spec_hash_of(d) == OLD_HASH[version]
    return {**d, "spec_hash": OLD_HASH[version]}


def v1_spec() -> dict:
    return old_spec(1)


def v1_bundle_src(d: Path, version: int = 1) -> Path:
    src = make_bundle_src(d, seed=5)
    (src / "feature_spec.json").write_text(json.dumps(old_spec(version)))
    return src


def test_spec_version_and_hash_moved_on():
    assert fs.SPEC_VERSION == 5
    assert fs.SPEC_HASH not in (V1_SPEC_HASH, V2_SPEC_HASH, V3_SPEC_HASH, V4_SPEC_HASH)


def test_a_version_4_spec_is_this_one_without_the_ip_logged_in_share():
    """The spec-4 spec the refusal tests rebuild is the current one less exactly what spec 5
    added: one feature (ip_logged_in_1d, after ip_tz_switch_1d) and one raw column (i_li)."""
    d = old_spec(4)
    names = [f["name"] for f in fs.spec_dict()["features"]]
    assert [f["name"] for f in d["features"]] == [x for x in names if x != "ip_logged_in_1d"]
    assert len(d["features"]) == 44 and len(d["raw_columns"]) == 83
    assert names.index("ip_logged_in_1d") == names.index("ip_tz_switch_1d") + 1
    assert set(fs.RAW_COLUMNS) - set(d["raw_columns"]) == {"i_li"}


@pytest.mark.parametrize("old", [1, 2, 3, 4])
def test_registry_refuses_an_older_bundle_naming_both_versions(tmp_path, old):
    reg = Registry(tmp_path / "reg")
    reg.publish(v1_bundle_src(tmp_path / "s1", old), version="old", promote=True,
                expected_spec_hash=OLD_HASH[old])
    with pytest.raises(BundleError) as ei:
        reg.current_verified()
    msg = str(ei.value)
    assert f"spec version {old}" in msg and f"spec version {fs.SPEC_VERSION}" in msg, msg
    assert OLD_HASH[old] in msg and fs.SPEC_HASH in msg


@pytest.mark.parametrize("old", [2, 3, 4])
def test_daemon_refuses_a_newer_old_bundle_and_keeps_serving(tmp_path, old):
    reg = make_registry(tmp_path, ("cur",))
    adm = tmp_path / "admin.sock"
    with Daemon(reg, admin=adm) as d:
        Registry(reg).publish(v1_bundle_src(tmp_path / "s-old", old), version="old",
                              promote=True, expected_spec_hash=OLD_HASH[old])
        with Client(path=adm) as a:
            with pytest.raises(RpcError) as ei:
                a.call("reload")
        text = ei.value.err[1]
        assert "old" in text and f"spec version {old}" in text, text
        assert f"spec version {fs.SPEC_VERSION}" in text, text
        with Client(d.port) as c:
            assert c.call("score", click(2))["model"] == "cur"


def test_registry_refuses_a_version_1_bundle_naming_both_versions(tmp_path):
    reg = Registry(tmp_path / "reg")
    # Published while the kernel computed spec 1 (that kernel's expected hash), then served by
    # this kernel: not servable, and the reason names the versions.
    reg.publish(v1_bundle_src(tmp_path / "s1"), version="old", promote=True,
                expected_spec_hash=V1_SPEC_HASH)
    with pytest.raises(BundleError) as ei:
        reg.current_verified()
    msg = str(ei.value)
    assert "spec version 1" in msg and f"spec version {fs.SPEC_VERSION}" in msg, msg
    assert V1_SPEC_HASH in msg and fs.SPEC_HASH in msg


def test_daemon_refuses_a_version_1_bundle_and_keeps_serving(tmp_path):
    reg = make_registry(tmp_path, ("cur",))
    adm = tmp_path / "admin.sock"
    with Daemon(reg, admin=adm) as d:
        with Client(d.port) as c:
            assert c.call("score", click(1))["model"] == "cur"
        Registry(reg).publish(v1_bundle_src(tmp_path / "s-old"), version="old", promote=True,
                              expected_spec_hash=V1_SPEC_HASH)
        with Client(path=adm) as a:
            with pytest.raises(RpcError) as ei:
                a.call("reload")
        code, text = ei.value.err[0], ei.value.err[1]
        assert code == ErrorCode.ADMIN_FAILED
        assert "old" in text and "spec version 1" in text, text
        assert f"spec version {fs.SPEC_VERSION}" in text, text
        with Client(d.port) as c:
            assert c.call("info")["model"] == "cur"
            assert c.call("score", click(2))["model"] == "cur"


def test_daemon_with_only_a_version_1_bundle_does_not_start_and_says_why(tmp_path):
    import subprocess
    import sys
    Registry(tmp_path / "reg").publish(v1_bundle_src(tmp_path / "s"), version="old", promote=True,
                                      expected_spec_hash=V1_SPEC_HASH)
    r = subprocess.run([sys.executable, "-m", "slidr.slidrd.main", "serve", "--registry",
                        str(tmp_path / "reg"), "--port", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("slidrd serve: error: bundle old")
    assert "spec version 1" in last and f"spec version {fs.SPEC_VERSION}" in last, last
