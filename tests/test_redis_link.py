"""slidrd's pipelined asyncio Redis link against real redis-servers started here.

Parity: batches sent through the link (many in flight at once) give exactly the raw counters
the blocking RedisStore.update and the embedded store give for the same clicks.
Faults: SCRIPT FLUSH mid-stream, a killed server (in-flight callbacks fail, sends refuse,
reconnect after restart), a server that stops answering (timeout), a wrong password.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
import uvloop
from slidr.slidrd.redis_link import RedisLink

from slidr.store_redis import RedisStore, StoreUnavailable
from slidr.testing.redis_server import RedisServer

native = pytest.importorskip("slidr.ext._kernel")
pytestmark = pytest.mark.redis

T0 = 1_767_225_600_000


def _batches(n_batches: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    t = T0
    for _ in range(n_batches):
        ts = t + np.cumsum(rng.integers(0, 5_000, size)).astype(np.int64)
        t = int(ts[-1])
        # few distinct keys so that batches in flight together touch the same counters
        users = [f"u{x}" for x in rng.integers(0, 40, size)]
        sess = [f"s{x}" for x in rng.integers(0, 60, size)]
        ips = [f"10.0.0.{x}" for x in rng.integers(0, 20, size)]
        ads = [(None, "ad-1", "ad-2")[x] for x in rng.integers(0, 3, size)]
        uas = [("", "Mozilla/5.0")[x] for x in rng.integers(0, 2, size)]
        uh, sh, ih, hll, eh = native.hash_keys(users, sess, ips, ads, uas)
        li = rng.integers(0, 2, size).astype(np.uint8)  # logged-in flags, mixed
        out.append((ts, uh, sh, ih, hll, None, eh, li))
    return out


def _run(coro):
    return uvloop.run(coro)


def _send_now(link: RedisLink, req: bytes) -> asyncio.Future:
    """Write the request now; the future resolves with the reply."""
    f = asyncio.get_running_loop().create_future()

    def cb(reply, err):
        if err is not None:
            f.set_exception(err)
        else:
            f.set_result(reply)
    link.send(req, cb)
    return f


async def _send(link: RedisLink, req: bytes) -> object:
    return await _send_now(link, req)


def test_pipelined_parity_with_blocking_store_and_embedded(redis_server):
    batches = _batches(40, 17) + _batches(3, 1, seed=5)
    sync = RedisStore(redis_server.url, prefix="sync:")
    emb = native.EmbeddedStore()
    want_sync = [sync.update(*b) for b in batches]
    want_emb = [emb.update(*b) for b in batches]
    store = RedisStore(redis_server.url, prefix="link:")

    async def go():
        link = RedisLink(redis_server.url, store.script, timeout_s=2.0)
        await link.connect()
        # everything in flight at once: Redis must apply them in send order
        futs = [_send_now(link, store.request(*b)) for b in batches]
        assert link.inflight() == len(batches)
        replies = await asyncio.gather(*futs)
        link.close()
        return [store.parse_reply(r, len(b[0])) for r, b in zip(replies, batches, strict=True)]

    got = _run(go())
    for g, ws, we in zip(got, want_sync, want_emb, strict=True):
        np.testing.assert_array_equal(g, ws)
        np.testing.assert_array_equal(g, we)
    sync.close()
    store.close()


def test_script_flush_is_survived(redis_server):
    import redis
    store = RedisStore(redis_server.url, prefix="fl:")
    b1, b2 = _batches(2, 5)

    async def go():
        link = RedisLink(redis_server.url, store.script, timeout_s=2.0)
        await link.connect()
        r1 = await _send(link, store.request(*b1))
        redis.Redis.from_url(redis_server.url).script_flush()
        r2 = await _send(link, store.request(*b2))
        link.close()
        return r1, r2

    r1, r2 = _run(go())
    emb = native.EmbeddedStore()
    np.testing.assert_array_equal(store.parse_reply(r1, 5), emb.update(*b1))
    np.testing.assert_array_equal(store.parse_reply(r2, 5), emb.update(*b2))
    store.close()


def test_killed_server_fails_in_flight_then_reconnects():
    srv = RedisServer().start()
    port = srv.port
    store = RedisStore(srv.url, prefix="k:")
    (b,) = _batches(1, 8)

    async def go():
        link = RedisLink(srv.url, store.script, timeout_s=0.5)
        await link.connect()
        await _send(link, store.request(*b))
        # SIGSTOP so a request is surely in flight, then kill: its callback must fail
        os.kill(srv.proc.pid, signal.SIGSTOP)
        f = _send_now(link, store.request(*b))
        await asyncio.sleep(0.05)
        srv.kill()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(f, 2.0)
        # down: send refuses at once (and starts reconnect attempts in the background)
        t = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            link.send(store.request(*b), lambda r, e: None)
        assert time.perf_counter() - t < 0.01
        assert not link.connected
        # back on the same port: the link reconnects by itself
        srv2 = RedisServer(port=port).start()
        try:
            end = time.monotonic() + 5
            ok = None
            while time.monotonic() < end:
                try:
                    ok = await _send(link, store.request(*b))
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.05)
            assert ok is not None, "link did not reconnect"
            assert link.connects == 2
            link.close()
        finally:
            srv2.stop()

    try:
        _run(go())
    finally:
        srv.stop()
        store.close()


def test_hung_server_times_out(redis_server):
    store = RedisStore(redis_server.url, prefix="h:")
    (b,) = _batches(1, 4)

    async def go():
        link = RedisLink(redis_server.url, store.script, timeout_s=0.1)
        await link.connect()
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            t = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="no reply within 100 ms"):
                await asyncio.wait_for(_send(link, store.request(*b)), 2.0)
            waited = time.perf_counter() - t
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        link.close()
        return waited

    waited = _run(go())
    assert 0.1 <= waited < 0.5
    store.close()


def test_password_and_db():
    with RedisServer(password="s3cret") as srv:
        url_ok = f"redis://:s3cret@127.0.0.1:{srv.port}/3"
        url_bad = f"redis://:wrong@127.0.0.1:{srv.port}/0"
        store = RedisStore(url_ok, prefix="p:")
        (b,) = _batches(1, 3)

        async def go():
            bad = RedisLink(url_bad, store.script, timeout_s=0.5)
            with pytest.raises(StoreUnavailable, match="WRONGPASS|invalid"):
                await bad.connect()
            bad.close()
            link = RedisLink(url_ok, store.script, timeout_s=0.5)
            await link.connect()
            r = await _send(link, store.request(*b))
            link.close()
            return r

        r = _run(go())
        np.testing.assert_array_equal(store.parse_reply(r, 3), native.EmbeddedStore().update(*b))
        import redis
        keys = redis.Redis.from_url(url_ok).keys("p:*")
        assert len(keys) > 0  # written into db 3, where the URL pointed
        assert redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{srv.port}/0").keys("p:*") == []
        store.close()


@pytest.mark.parametrize("size", [1, 2, 7, 64, 700])
def test_native_request_is_byte_identical_to_numpy(size):
    """The C request builder against the numpy reference, with repeated keys and ties."""
    store = RedisStore("redis://127.0.0.1:1/0", prefix="pfx:")  # never connects
    rng = np.random.default_rng(size)
    for _ in range(20):
        users = [f"u{x}" for x in rng.integers(0, max(1, size // 3), size)]
        sess = [f"s{x}" for x in rng.integers(0, 3, size)]
        ips = [f"i{x}" for x in rng.integers(0, size + 5, size)]
        # entity keys: repeated, absent (null, empty), one click's three columns together
        ads = [(None, "", "a1", "a2", "a3")[x] for x in rng.integers(0, 5, size)]
        uas = [(None, "g1", "g2")[x] for x in rng.integers(0, 3, size)]
        uh, sh, ih, hll, eh = native.hash_keys(users, sess, ips, ads, uas)
        ts = np.sort(rng.integers(T0, T0 + 86_400_000, size)).astype(np.int64)
        assert store.request(ts, uh, sh, ih, hll) == store.request_numpy(ts, uh, sh, ih, hll)
        tz = rng.choice(np.array([0, 60, -300, 330, -720, 840], np.int16), size)
        assert (store.request(ts, uh, sh, ih, hll, tz)
                == store.request_numpy(ts, uh, sh, ih, hll, tz))
        for e in (eh, np.zeros_like(eh), eh[:, ::-1].copy()):
            assert (store.request(ts, uh, sh, ih, hll, tz, e)
                    == store.request_numpy(ts, uh, sh, ih, hll, tz, e))
        # no entity key at all is the same request as eh None
        assert store.request(ts, uh, sh, ih, hll, tz, np.zeros_like(eh)) == \
            store.request(ts, uh, sh, ih, hll, tz)
        # logged-in flags: uint8, bool, other integers (nonzero = 1 in the record); all 0 is
        # the same request as li None
        li = (rng.random(size) < 0.5).astype(np.uint8)
        for f in (li, li.astype(bool), li.astype(np.int64) * 3):
            assert (store.request(ts, uh, sh, ih, hll, tz, eh, f)
                    == store.request_numpy(ts, uh, sh, ih, hll, tz, eh, li))
        assert store.request(ts, uh, sh, ih, hll, tz, eh, np.zeros(size, np.uint8)) == \
            store.request(ts, uh, sh, ih, hll, tz, eh)
        if li.any():
            assert store.request(ts, uh, sh, ih, hll, tz, eh, li) != \
                store.request(ts, uh, sh, ih, hll, tz, eh)
    with pytest.raises(ValueError, match="same length"):
        native.redis_request(ts[:-1] if size > 1 else ts[:0], uh, sh, ih, hll, b"", b"", b"")
    with pytest.raises(ValueError, match="same length"):
        native.redis_request(ts, uh, sh, ih, hll, b"", b"", b"", None, eh[:, :2])
    with pytest.raises(ValueError, match="same length"):
        native.redis_request(ts, uh, sh, ih, hll, b"", b"", b"", None, None, li[:-1])
    # inputs the builder converts first (float or strided ts, lists, flat or strided HLL bytes)
    # give the same bytes as the usual arrays
    want = store.request(ts, uh, sh, ih, hll)
    assert store.request(ts, uh, sh, ih, hll, None, eh.astype(np.int64)) == \
        store.request(ts, uh, sh, ih, hll, None, eh)  # converted first
    ehw = np.zeros((size, 6), dtype=np.uint64)
    ehw[:, ::2] = eh
    assert store.request(ts, uh, sh, ih, hll, None, ehw[:, ::2]) == \
        store.request(ts, uh, sh, ih, hll, None, eh)  # strided
    wide = np.empty((size, 2), dtype=np.int64)
    wide[:, 0] = ts
    hll2 = np.zeros((size, 8), dtype=np.uint8)
    hll2[:, :4] = hll
    for args in ((ts.astype(np.float64), uh, sh, ih, hll),
                 (wide[:, 0], uh, sh, ih, hll),
                 (ts.tolist(), uh.tolist(), sh, ih, hll.tolist()),
                 (ts, uh, sh, ih, hll.reshape(-1)),
                 (ts, uh, sh, ih, hll2[:, :4])):
        assert store.request(*args) == want
    with pytest.raises(ValueError, match="same length"):
        native.redis_request(ts, uh, sh, ih, hll2, b"", b"", b"")
