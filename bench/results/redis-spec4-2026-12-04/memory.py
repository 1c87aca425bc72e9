"""Redis memory of the counter keys with and without the entity keys: the 20 000 generated clicks
of slidr.bench.clicks in batches of 64 through RedisStore on a fresh redis-server; keys per
kind, used_memory growth per key, MEMORY USAGE of one key of each kind. Run from the
repository root:

    python bench/results/redis-spec4-2026-12-04/memory.py
"""
import redis
from slidr.bench import lua_cost as lc
from slidr.bench.clicks import make_clicks
from slidr.store_redis import RedisStore
from slidr.testing.redis_server import RedisServer
pool, _ = make_clicks(20_000)
with RedisServer() as srv:
    for with_e in (False, True):
        r = redis.Redis.from_url(srv.url); r.flushall()
        m0 = r.info("memory")["used_memory"]
        st = RedisStore(srv.url, prefix="slidr:", timeout_s=5)
        bs, _ = lc._batches(pool, 0, 64, len(pool) // 64, 40)
        for x in bs:
            st.update(*x[:6], x[6] if with_e else None)
        s = st.stats()
        m1 = s["used_memory"]
        print("entities" if with_e else "no entity keys", s, "bytes/key", (m1 - m0) / s["keys"])
        for tag in (b"u", b"s", b"i", b"e"):
            k = next(r.scan_iter(match=b"slidr:" + tag + b"*", count=1000), None)
            if k: print(tag, r.memory_usage(k))
        st.close()
