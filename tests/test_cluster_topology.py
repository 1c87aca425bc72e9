"""Key slots and slot maps without a server (the cluster tests check them against one)."""

from __future__ import annotations

import numpy as np
import pytest

from slidr import redis_topology as rt


def test_crc16_reference_vector():
    # The check value of CRC16/XMODEM, which the Redis Cluster spec gives for "123456789".
    assert rt.crc16(b"123456789") == 0x31C3
    assert rt.key_slot(b"123456789") == 0x31C3 % 16384


@pytest.mark.parametrize("key,same_as", [
    (b"{user1000}.following", b"user1000"),
    (b"foo{}{bar}", b"foo{}{bar}"),       # empty first tag: the whole key
    (b"foo{{bar}}zap", b"{bar"),          # from the first "{" to the first "}"
    (b"foo{bar}{zap}", b"bar"),
    (b"no-close{here", b"no-close{here"),
])
def test_hash_tags_as_the_spec_says(key, same_as):
    assert rt.key_slot(key) == rt.crc16(same_as) % 16384


def test_vectorised_slots_equal_scalar_including_braces_in_hash_bytes():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 5000, dtype=np.int64).astype(np.uint64)
    # Hashes whose raw bytes hold "{" ... "}" (a tag inside the hash bytes) and empty tags.
    special = [0x7B41427D00000000, 0x007B7D4100000000, 0x41007B00007D0000, 0x7B7B7D7D7B7D7B7D,
               0x000000000000007B, 0x7D7B00000000417D]
    h = np.concatenate([h, np.array(special, dtype=np.uint64)])
    for head in (b"slidr:u", b"p:s", b"x{y:i", b"a}b{", b""):
        want = [rt.key_slot(head + int(x).to_bytes(8, "big")) for x in h.tolist()]
        assert rt.key_slots(head, h).tolist() == want  # native when built
        assert rt.key_slots_py(head, h).tolist() == want
        for n in (1, 5, 24, 25):  # the plain-Python path of small batches, and past it
            part = h[-n:]
            assert rt.key_slots_py(head, part).tolist() == want[-n:]
            assert rt.key_slots(head, part).tolist() == want[-n:]


def test_native_slots_built():
    import os
    if os.environ.get("SLIDR_REQUIRE_NATIVE") == "1":
        assert rt._native_slots is not None, "ext/_slots.pyx not built (make bootstrap)"


def test_parse_slots_and_coverage():
    reply = [[0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
             [5461, 10922, [b"", 7001, b"id2"]],
             [10923, 16000, [b"10.0.0.3", 7002, b"id3"]]]
    t = rt.parse_slots(reply, "seed.host")
    assert t.addrs() == ["10.0.0.1:7000", "seed.host:7001", "10.0.0.3:7002"]
    assert t.owner[0] == 0 and t.owner[5461] == 1 and t.owner[16000] == 2
    assert t.uncovered() == [(16001, 16383)]
    assert t.replicas["10.0.0.1:7000"] == ["10.0.0.4:7003"]


def test_parse_shards_skips_failed_master():
    reply = [[b"slots", [0, 16383], b"nodes", [
        [b"id", b"a", b"port", 7000, b"ip", b"127.0.0.1", b"role", b"master",
         b"health", b"failed"],
        [b"id", b"b", b"port", 7001, b"ip", b"127.0.0.1", b"role", b"master",
         b"health", b"online"]]]]
    t = rt.parse_shards(reply, "h")
    assert t.addrs() == ["127.0.0.1:7001"] and not t.uncovered()


def test_seeds_and_node_urls():
    assert rt.split_seeds("redis://:pw@a:1/0,b:2, redis://c:3") == [
        "redis://:pw@a:1/0", "redis://:pw@b:2/0", "redis://c:3"]
    assert rt.node_url("rediss://u:pw@a:1/0", "10.1.1.1:7000") == "rediss://u:pw@10.1.1.1:7000/0"
    assert rt.safe("redis://u:secret@h:1/0") == "redis://h:1"


def test_discover_down_seed_is_one_line():
    from slidr.testing.redis_server import free_port
    with pytest.raises(rt.TopologyError, match="no redis cluster seed answered") as e:
        rt.discover(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    assert "\n" not in str(e.value)
