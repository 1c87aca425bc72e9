"""The counter store on a real local Redis Cluster (3 masters + 3 replicas) against a single
Redis and the embedded store: the same raw counters, exactly (the script is the same Lua on
the same doubles; only where each key lives differs)."""

from __future__ import annotations

import numpy as np
import pytest

from slidr import redis_topology as rt
from slidr.redis_split import KIND_COLS
from slidr.store_cluster import RedisClusterStore, open_redis_store
from slidr.store_redis import RedisStore

native = pytest.importorskip("slidr.ext._kernel")
pytestmark = pytest.mark.redis

T0 = 1_767_225_600_000


def _stream(n: int, seed: int, users: int = 40, ips: int = 15):
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.choice([0, 1, 700, 30_000, 3_600_000], size=n)).astype(np.float64)
    u = rng.integers(0, users, n)
    s = u * 3 + rng.integers(0, 3, n)
    i = rng.integers(0, ips, n)
    h = native.hash_keys([f"user{x}" for x in u], [f"sess{x}" for x in s],
                         [f"10.0.0.{x}" for x in i])
    return ts, h


def _feed(store, ts, h, batch: int):
    out = [store.update(ts[a:a + batch], *(x[a:a + batch] for x in h))
           for a in range(0, len(ts), batch)]
    return np.concatenate(out)


def test_kind_columns_cover_raw_once():
    cols = np.sort(np.concatenate(KIND_COLS))
    assert cols.tolist() == list(range(32))


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cluster_equals_single_redis_and_embedded(redis_cluster, shared_redis, batch):
    ts, h = _stream(600, seed=batch)
    cs = RedisClusterStore(redis_cluster.url, prefix=f"par{batch}:", timeout_s=2.0)
    rs = RedisStore(shared_redis.url, prefix=f"par{batch}:", timeout_s=2.0)
    try:
        assert len(cs.router.topo.nodes) == 3
        got = _feed(cs, ts, h, batch)
        single = _feed(rs, ts, h, batch)
    finally:
        cs.close()
        rs.close()
    emb = _feed(native.EmbeddedStore(), ts, h, batch)
    np.testing.assert_array_equal(got, single)
    np.testing.assert_array_equal(got, emb)


def test_batches_touch_every_master(redis_cluster):
    ts, h = _stream(64, seed=3)
    cs = RedisClusterStore(redis_cluster.url, prefix="spread:", timeout_s=2.0)
    try:
        plan = cs.request(ts, *h)
        assert len(plan.parts) == 3
        assert sum(p.n for p in plan.parts) >= 64  # a click is in every part it has a key on
        # Each key went to the master serving its slot (CLUSTER KEYSLOT agrees).
        import redis
        r = redis.Redis(port=redis_cluster.ports[0])
        for k, tag in enumerate((b"u", b"s", b"i")):
            for x in plan.keys[k][:5].tolist():
                key = b"spread:" + tag + int(x).to_bytes(8, "big")
                assert r.execute_command("CLUSTER", "KEYSLOT", key) == rt.key_slot(key)
        r.close()
    finally:
        cs.close()


def test_open_redis_store_modes(redis_cluster, shared_redis):
    s = open_redis_store(redis_cluster.url, "auto")
    assert isinstance(s, RedisClusterStore)
    s.close()
    s = open_redis_store(shared_redis.url, "auto")
    assert type(s) is RedisStore
    s.close()
    with pytest.raises(rt.TopologyError, match="not a cluster node"):
        open_redis_store(shared_redis.url, "cluster")
