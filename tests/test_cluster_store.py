"""The counter store on a real local Redis Cluster (3 masters + 3 replicas) against a single
Redis and the embedded store: the same raw counters, exactly (the script is the same Lua on
the same doubles; only where each key lives differs)."""

from __future__ import annotations

import numpy as np
import pytest
from slidr.ext import reference

from slidr import featurespec as fs
from slidr import redis_topology as rt
from slidr.redis_split import KIND_COLS, SLOT_KIND
from slidr.store_cluster import RedisClusterStore, open_redis_store
from slidr.store_redis import RedisStore

native = pytest.importorskip("slidr.ext._kernel")
pytestmark = pytest.mark.redis

T0 = 1_767_225_600_000


def _stream(n: int, seed: int, users: int = 40, ips: int = 15):
    """-> ts, (uh, sh, ih, hll, tz, eh, li): update()'s arguments after ts, in its order."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.choice([0, 1, 700, 30_000, 3_600_000], size=n)).astype(np.float64)
    # a late click now and then (counts, sketches and windows take it as the store does)
    ts = ts - np.where(rng.random(n) < 0.05, 40_000, 0)
    u = rng.integers(0, users, n)
    s = u * 3 + rng.integers(0, 3, n)
    i = rng.integers(0, ips, n)
    # ads and user agents: few (repeated within batches), some missing or empty
    ads = [(None, "", "ad-a", "ad-b", "ad-c", "ad-d")[x] for x in rng.integers(0, 6, n)]
    uas = [(None, "", "Mozilla/5.0", "curl/8")[x] for x in rng.integers(0, 4, n)]
    uh, sh, ih, hll, eh = native.hash_keys([f"user{x}" for x in u], [f"sess{x}" for x in s],
                                           [f"10.0.0.{x}" for x in i], ads, uas)
    tz = rng.choice(np.array([0, 60, -300, 330], np.int16), n)
    # logged-in flags, mixed, mostly per user (spec 5's IP logged-in count)
    li = ((u % 3 != 0) ^ (rng.random(n) < 0.1)).astype(np.uint8)
    return ts, (uh, sh, ih, hll, tz, eh, li)


def _feed(store, ts, h, batch: int):
    out = [store.update(ts[a:a + batch], *(x[a:a + batch] for x in h))
           for a in range(0, len(ts), batch)]
    return np.concatenate(out)


def test_kind_columns_cover_raw_once():
    cols = np.sort(np.concatenate(KIND_COLS))
    assert cols.tolist() == list(range(fs.RAW_WIDTH))


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cluster_equals_single_redis_and_embedded(redis_cluster, shared_redis, batch):
    ts, h = _stream(600, seed=batch)
    cs = RedisClusterStore(redis_cluster.url, prefix=f"par{batch}:", timeout_s=2.0)
    rs = RedisStore(shared_redis.url, prefix=f"par{batch}:", timeout_s=2.0)
    try:
        assert len(cs.router.topo.nodes) == 3
        got = _feed(cs, ts[:300], tuple(x[:300] for x in h), batch)
        import redis
        for port in redis_cluster.master_ports():  # NOSCRIPT: loaded again, nothing lost
            r = redis.Redis(port=port)
            r.script_flush()
            r.close()
        got = np.concatenate([got, _feed(cs, ts[300:], tuple(x[300:] for x in h), batch)])
        single = _feed(rs, ts, h, batch)
    finally:
        cs.close()
        rs.close()
    emb = _feed(native.EmbeddedStore(), ts, h, batch)
    np.testing.assert_array_equal(got, single)
    np.testing.assert_array_equal(got, emb)
    np.testing.assert_array_equal(got, reference.ReferenceStore().update(ts, *h))


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
        for k, tag in enumerate((b"u", b"s", b"i", b"e")):
            assert plan.keys[k].shape[0] > 0
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


def _slot_owner(cluster, slot):
    import redis
    r = redis.Redis(port=cluster.ports[0])
    try:
        for sh in r.execute_command("CLUSTER", "SHARDS"):
            sl = sh[b"slots"]
            if any(a <= slot <= b for a, b in zip(sl[0::2], sl[1::2], strict=True)):
                m = [n for n in sh[b"nodes"] if n[b"role"] == b"master"][0]
                return int(m[b"port"]), m[b"id"].decode()
    finally:
        r.close()
    raise AssertionError(slot)


class _Migration:
    """One slot moved by hand, key by key, the way `redis-cli --cluster reshard` does it."""

    def __init__(self, cluster, key: bytes):
        import redis
        self.slot = rt.key_slot(key)
        self.key = key
        self.src_port, self.src_id = _slot_owner(cluster, self.slot)
        dst = [p for p in cluster.master_ports() if p != self.src_port][0]
        self.dst_port, self.dst_id = dst, cluster.node_id(dst)
        self.src = redis.Redis(port=self.src_port)
        self.dst = redis.Redis(port=self.dst_port)
        self.cluster = cluster

    def start(self):
        self.dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.src_id)
        self.src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.dst_id)

    def move_key(self):
        assert self.src.execute_command("MIGRATE", "127.0.0.1", self.dst_port, "", 0, 5000,
                                        "KEYS", self.key) == b"OK"

    def finish(self):
        while True:
            keys = self.src.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100)
            if not keys:
                break
            self.src.execute_command("MIGRATE", "127.0.0.1", self.dst_port, "", 0, 5000,
                                     "KEYS", *keys)
        for p in self.cluster.master_ports():
            import redis
            r = redis.Redis(port=p)
            r.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.dst_id)
            r.close()
        self.src.close()
        self.dst.close()


@pytest.mark.parametrize("kind", [0, 3])
def test_slot_migration_ask_and_moved_sync_store(redis_cluster, kind):
    """A slot under migration (some keys moved, -ASK) and after it (-MOVED / a stale map):
    every click counted once, counters equal the embedded store's. The slot moved holds a
    user key, or an ad key (an entity)."""
    ts, h = _stream(300, seed=11, users=6, ips=3)
    prefix = f"mig{kind}:"
    cs = RedisClusterStore(redis_cluster.url, prefix=prefix, timeout_s=2.0)
    got = []
    try:
        got.append(_feed(cs, ts[:100], tuple(x[:100] for x in h), 10))
        # the first click's user key, or the first ad key
        hk = int(h[0][0]) if kind == 0 else int(h[5][:, 0][h[5][:, 0] != 0][0])
        key = cs.router.key_name(kind, hk)
        mig = _Migration(redis_cluster, key)
        mig.start()
        got.append(_feed(cs, ts[100:150], tuple(x[100:150] for x in h), 10))
        mig.move_key()  # this key now answers -ASK on its old master
        got.append(_feed(cs, ts[150:200], tuple(x[150:200] for x in h), 10))
        assert cs.retries > 0
        r0 = cs.retries
        mig.finish()  # the slot belongs to the other master: the store's map is stale
        got.append(_feed(cs, ts[200:], tuple(x[200:] for x in h), 10))
        assert cs.retries > r0 and cs.refreshes > 0
    finally:
        cs.close()
    emb = _feed(native.EmbeddedStore(), ts, h, 10)
    np.testing.assert_array_equal(np.concatenate(got), emb)


def test_slot_migration_ask_and_moved_daemon_link(redis_cluster):
    """The same through the daemon's asynchronous ClusterLink with all of a phase's batches in
    flight at once: a node answers for the keys it holds and reports the others, which are
    retried in order, so even pipelined the counters equal the embedded store's."""
    import asyncio

    from slidr.slidrd.cluster_link import ClusterLink

    ts, h = _stream(300, seed=12, users=6, ips=3)
    cs = RedisClusterStore(redis_cluster.url, prefix="amig:", timeout_s=2.0)

    async def feed(link, a, z, b=10):
        loop = asyncio.get_running_loop()
        futs = []
        for s in range(a, z, b):
            e = min(s + b, z)
            plan = cs.request(ts[s:e], *(x[s:e] for x in h))
            f = loop.create_future()
            link.send(plan, lambda r, err, f=f: f.set_result((r, err)))
            futs.append((f, e - s))
        out = []
        for f, n in futs:
            r, err = await f
            assert err is None, err
            assert r.lost is None
            out.append(cs.parse_reply(r, n))
        return np.concatenate(out)

    async def main():
        link = ClusterLink(cs, timeout_s=2.0)
        await link.connect()
        got = [await feed(link, 0, 100)]
        mig = _Migration(redis_cluster, cs.router.key_name(0, int(h[0][0])))
        mig.start()
        got.append(await feed(link, 100, 150))
        mig.move_key()
        got.append(await feed(link, 150, 200))
        assert link.retries > 0 and link.failed == 0 and link.partial == 0
        r0 = link.retries
        mig.finish()
        got.append(await feed(link, 200, 300))
        assert link.retries > r0 and link.refreshes > 0
        link.close()
        return np.concatenate(got)

    try:
        got = asyncio.run(main())
    finally:
        cs.close()
    np.testing.assert_array_equal(got, _feed(native.EmbeddedStore(), ts, h, 10))


def test_offline_replay_through_the_cluster(redis_cluster, tmp_path):
    """`slidr train --redis URL --redis-mode cluster` replays through this store: the
    features equal the embedded replay's."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from slidr.offline import replay

    rng = np.random.default_rng(8)
    n = 2000
    li = rng.random(n) < 0.5
    tbl = pa.table({
        "click_id": [f"c{i}" for i in range(n)],
        "ts": np.sort(T0 + rng.integers(0, 2 * 86_400_000, n)).astype(np.int64),
        "session_id": [f"s{v}" for v in rng.integers(0, 200, n)],
        "user_id": pa.array([f"u{v}" if li[i] else None
                             for i, v in enumerate(rng.integers(0, 80, n))], pa.string()),
        "ip": [f"10.2.{a}.{b}" for a, b in rng.integers(0, 12, (n, 2))],
        "device": [("desktop", "mobile", "app")[v] for v in rng.integers(0, 3, n)],
        "logged_in": pa.array(li),
        "tz_offset_min": pa.array(rng.integers(-300, 300, n), pa.int32()),
        "purchased": pa.array(rng.random(n) < 0.05)})
    pq.write_table(tbl, tmp_path / "clicks.parquet")
    store = open_redis_store(redis_cluster.url, "cluster", prefix="replay:", timeout_s=5.0)
    try:
        a = replay.replay_log(tmp_path / "clicks.parquet", store=store, progress=False,
                              batch_size=300)
    finally:
        store.close()
    b = replay.replay_log(tmp_path / "clicks.parquet", progress=False)
    np.testing.assert_array_equal(a.features, b.features)


def test_ping_stats_and_len(redis_cluster):
    cs = RedisClusterStore(redis_cluster.url, prefix="adm:", timeout_s=2.0)
    try:
        assert cs.ping()
        ts, h = _stream(50, seed=21, users=5, ips=2)
        cs.update(ts, *h)
        st = cs.stats()
        assert st["nodes"] == 3 and st["users"] == 5 and st["ips"] == 2
        ekeys = set(h[5].reshape(-1).tolist()) - {0}
        assert st["entities"] == len(ekeys) > 0
        assert st["keys"] == len(cs) == st["users"] + st["sessions"] + st["ips"] + len(ekeys)
    finally:
        cs.close()


@pytest.mark.parametrize("batch", [3, 40])
def test_entity_keys_spread_over_shards(redis_cluster, batch):
    """A click's six keys live on up to three masters: a batch whose ad, (IP, ad) and
    user-agent keys sit on other masters than its user, session and IP keys still gives the
    reference twin's counters (each part answers for its own keys; entity columns of a click
    without that key are the absent values), and a part that holds only entity keys of a click
    carries it too."""
    ts, h = _stream(240, seed=31, users=4, ips=3)
    cs = RedisClusterStore(redis_cluster.url, prefix=f"ent{batch}:", timeout_s=2.0)
    try:
        plan = cs.request(ts[:batch], *(x[:batch] for x in h))
        # some click is in a part only for an entity key
        assert any(p.on[c].any() for p in plan.parts for c in range(3, 6))
        assert any((np.logical_or.reduce([p.on[c] for c in range(3, 6)])
                    & ~np.logical_or.reduce([p.on[c] for c in range(3)])).any()
                   for p in cs.request(ts, *h).parts)
        assert SLOT_KIND[3:] == (3, 3, 3)
        got = _feed(cs, ts, h, batch)
    finally:
        cs.close()
    np.testing.assert_array_equal(got, reference.ReferenceStore().update(ts, *h))


def test_daemon_link_answers_batches_in_send_order(redis_cluster):
    """The daemon's ClusterLink answers batches in the order they were sent, as one Redis
    connection does, although a batch whose parts sit on fewer masters can be back first: the
    batcher logs decisions in answer order, and the clicks of a popular ad or user agent were
    counted in send order, so the log replays to the same counters."""
    import asyncio

    from slidr.slidrd.cluster_link import ClusterLink

    ts, h = _stream(400, seed=41, users=200, ips=150)
    cs = RedisClusterStore(redis_cluster.url, prefix="order:", timeout_s=2.0)
    rng = np.random.default_rng(5)
    cuts = np.cumsum(rng.integers(1, 6, 200))
    cuts = [0, *cuts[cuts < 400].tolist(), 400]

    async def main():
        link = ClusterLink(cs, timeout_s=2.0)
        await link.connect()
        loop = asyncio.get_running_loop()
        order, futs = [], []
        for j, (a, z) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            plan = cs.request(ts[a:z], *(x[a:z] for x in h))
            f = loop.create_future()
            link.send(plan, lambda r, err, f=f, j=j: (order.append(j), f.set_result((r, err))))
            futs.append((f, z - a))
        out = []
        for f, n in futs:
            r, err = await f
            assert err is None, err
            out.append(cs.parse_reply(r, n))
        link.close()
        return order, np.concatenate(out)

    try:
        order, got = asyncio.run(main())
    finally:
        cs.close()
    assert order == sorted(order)
    np.testing.assert_array_equal(got, reference.ReferenceStore().update(ts, *h))
