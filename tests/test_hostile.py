"""Hostile traffic through a real slidrd on loopback (compiled and pure-Python path), and the
embedded store's memory cap (compiled store and its twin): one bad client never costs another
its answer, and memory and connections stay bounded. Each test is bounded to seconds.
(Poison clicks, the depth bound and a valid click before a fatal frame: test_batching.py.)"""

from __future__ import annotations

import socket
import time

import msgpack
import numpy as np
import pytest
from daemon_helpers import Client, Daemon, click, make_registry

from slidr.errors import ErrorCode

PATHS = ["native", "pure"]


def _env(path: str) -> dict[str, str] | None:
    return {"SLIDR_PURE_PYTHON": "1", "SLIDR_REQUIRE_NATIVE": "0"} if path == "pure" else None


def _stats(d: Daemon) -> dict:
    with Client(path=d.admin, timeout=5) as a:
        return a.call("stats")


def _now_click(i: int, t0: int, **kw) -> dict:
    return click(i, ts=t0 + i * 37, **kw)


def _scores(port: int, clicks: list[dict]) -> dict[str, object]:
    out: dict[str, object] = {}
    with Client(port) as c:
        for ck in clicks:
            mid = c.send("score", ck)
            while True:
                m = c.recv()
                if m[0] == 1 and m[1] == mid:
                    break
            out[ck["click_id"]] = m[3]["score"] if m[2] is None else m[2]
    return out


@pytest.mark.parametrize("path", PATHS)
def test_far_future_click_is_refused_and_moves_no_clock(tmp_path, path):
    """The same 700 clicks through two fresh daemons, one stream with a click stamped in 2099
    at position 150: that click is refused naming 'ts', every other score is equal (the 2099
    click used to move the store's sweep clock and expire every counter)."""
    reg = make_registry(tmp_path)
    t0 = int(time.time() * 1000) - 700 * 37 - 10_000
    stream = [_now_click(i, t0, users=7, ips=5) for i in range(700)]
    bad = dict(click(9999, ts=4_070_908_800_000), click_id="from-2099")
    res = []
    for with_bad in (False, True):
        clicks = stream[:150] + [bad] + stream[150:] if with_bad else stream
        with Daemon(reg, "--deadline-ms", "5000", env=_env(path)) as d:
            res.append(_scores(d.port, clicks))
    a, b = res
    err = b.pop("from-2099")
    assert err[0] == ErrorCode.INVALID_CLICK and "field 'ts'" in err[1] and "ahead" in err[1], err
    assert all(isinstance(v, float) for v in a.values())
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"{len(differ)} clicks scored differently, e.g. {differ[:3]}"


def test_clock_check_is_an_option(tmp_path):
    """max_clock_skew_s = 0 turns the check off (a replay of a log stamped in the future);
    max_click_age_s refuses clicks stamped too far behind."""
    reg = make_registry(tmp_path)
    now = int(time.time() * 1000)
    with Daemon(reg, "--deadline-ms", "5000", "--max-clock-skew-s", "0",
                "--max-click-age-s", "3600") as d, Client(d.port) as c:
        assert c.call("score", click(1, ts=now + 86_400_000))["reason"] == "model"
        with pytest.raises(Exception) as e:
            c.call("score", click(2, ts=now - 7_200_000))
        assert "field 'ts'" in str(e.value) and "behind" in str(e.value)


@pytest.fixture(scope="module", params=PATHS)
def tight(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    reg = make_registry(tmp)
    d = Daemon(reg, "--deadline-ms", "2000", "--max-connections", "6",
               "--max-errors-per-conn", "8", "--frame-timeout-s", "0.6",
               "--write-stall-s", "0.6", "--write-buffer-bytes", "8192",
               env=_env(request.param), admin=tmp / "admin.sock")
    d.wait_ready()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log(), d.log()


def _ping_ok(d: Daemon) -> bool:
    with Client(d.port, timeout=2) as c:
        return c.call("ping") == "pong"


def test_garbage_flood_is_closed_after_a_few_errors(tight):
    """64 KiB of zero bytes (each one a msgpack object earning an error) from a peer that does
    not read: the daemon answers max_errors_per_conn + 1 errors, then closes."""
    s = socket.create_connection(("127.0.0.1", tight.port))
    try:
        s.sendall(b"\x00" * 65536)
    except OSError:
        pass  # closed while we were still sending: fine
    time.sleep(0.3)
    up = msgpack.Unpacker(raw=False)
    s.settimeout(3)
    msgs = []
    try:
        while True:
            data = s.recv(1 << 16)
            if not data:
                break
            up.feed(data)
            msgs.extend(up)
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    assert 0 < len(msgs) <= 8 + 2, len(msgs)
    assert "protocol errors" in msgs[-1][2][0][1]
    assert _ping_ok(tight)
    assert _stats(tight)["defence"]["closed_errors"] >= 1


def test_trickled_message_closed_by_frame_deadline(tight):
    """A message that takes longer than frame_timeout_s from its first byte to its last:
    the connection is closed, whatever the pace of its bytes."""
    msg = msgpack.packb([0, 1, "score", [click(1)]])
    s = socket.create_connection(("127.0.0.1", tight.port))
    s.settimeout(3)
    t = time.monotonic()
    closed = False
    for b in msg:
        try:
            s.sendall(bytes([b]))
        except OSError:
            closed = True
            break
        time.sleep(0.1)  # each byte well within any idle timeout
        if time.monotonic() - t > 2.5:
            break
    got = b""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                closed = True
                break
            got += data
    except (ConnectionResetError, TimeoutError):
        closed = True
    s.close()
    assert closed
    assert b"frame_timeout_s" in got
    assert _stats(tight)["defence"]["closed_frame_timeout"] >= 1


def test_unread_answers_stop_reading_then_close(tight):
    """A peer that sends requests and never reads its answers: reading stops once its unsent
    answers pass write_buffer_bytes, and it is closed after write_stall_s."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", tight.port))
    s.settimeout(0.2)
    ping = msgpack.packb([0, 1, "info", []])
    sent = 0
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            sent += s.send(ping * 256)
        except (TimeoutError, BlockingIOError):
            time.sleep(0.05)
        except OSError:
            break
    s.close()
    assert _ping_ok(tight)
    assert _stats(tight)["defence"]["closed_write_stall"] >= 1, sent


def test_connection_limit_makes_room_for_new_clients(tight):
    """At max_connections a new client takes the place of the connection idle the longest."""
    base = _stats(tight)["defence"]["closed_for_room"]
    held = [Client(tight.port) for _ in range(5)]  # + the admin-free ping below = the limit
    try:
        for c in held:
            assert c.call("ping") == "pong"
        extra = Client(tight.port)
        assert extra.call("ping") == "pong"  # 6 of 6
        time.sleep(1.2)  # everyone idle for a second
        for _ in range(3):
            assert _ping_ok(tight)  # each new one evicts the longest idle
        assert held[0].recv_until_close()[0][2][0][0] == ErrorCode.OVERLOADED
        extra.close()
    finally:
        for c in held:
            c.close()
    assert _stats(tight)["defence"]["closed_for_room"] >= base + 1


def test_limits_that_disagree_are_refused():
    from slidr.slidrd.config import ConfigError, build
    with pytest.raises(ConfigError, match="max_score_many.*max_message_bytes"):
        build(overrides={"registry": "/", "max_score_many": 10_000,
                         "max_inflight_per_conn": 10_000})
    build(overrides={"registry": "/"})  # the defaults agree
    with pytest.raises(ConfigError, match="bundle_key"):
        build(overrides={"registry": "/", "bundle_key": "/nonexistent/key"})


# ------------------------------------------------------------------ embedded store cap
def _keys(n: int, start: int) -> tuple[np.ndarray, ...]:
    from slidr.ext import reference
    ks = [f"k{start + i}" for i in range(n)]
    return reference.hash_keys(["u\x00" + k for k in ks], ks, [f"10.0.{i % 250}.{i % 7}"
                                                               for i in range(n)])[:4]


@pytest.mark.parametrize("native", [True, False])
def test_store_cap_evicts_least_recently_seen(native):
    """At max_keys a new key evicts an old one (counted); a key seen all along keeps its
    counters; below the cap the capped store equals the uncapped one."""
    from slidr.kernel import embedded_store
    cap = 500
    st = embedded_store(native, max_keys=cap)
    free = embedded_store(native)
    t0 = 1_767_225_600_000
    hot = _keys(1, 10**9)
    hot_counts = []
    for b in range(40):
        uh, sh, ih, hll = _keys(100, b * 100)
        # the hot key first in every batch
        uh, sh, ih = (np.concatenate([h[:1], x]) for h, x in zip(hot[:3], (uh, sh, ih), strict=True))
        hll = np.concatenate([hot[3][:1], hll])
        ts = np.full(len(uh), t0 + b * 1000, dtype=np.int64)
        raw = st.update(ts, uh, sh, ih, hll)
        ref = free.update(ts, uh, sh, ih, hll)
        if b < 4:  # below the cap: equal
            np.testing.assert_array_equal(raw, ref)
        hot_counts.append(raw[0, 0])
    s = st.stats()
    assert s["users"] <= cap and s["sessions"] <= cap and s["ips"] <= cap, s
    # 4,001 distinct users and sessions (100 IPs, under the cap): the rest evicted
    assert st.evicted == 2 * (40 * 100 + 1 - cap), st.evicted
    # the hot key was never evicted: its decayed count keeps growing
    assert all(b > a for a, b in zip(hot_counts, hot_counts[1:], strict=False)), hot_counts


@pytest.mark.parametrize("native", [True, False])
def test_store_cap_bounds_the_entity_table(native):
    """Distinct ads and user agents on every click (a client inventing them): the entity
    table stays within max_keys, new keys evict old ones, and an ad seen in every batch keeps
    its counters."""
    from slidr.ext import reference

    from slidr.featurespec import RAW_INDEX
    from slidr.kernel import embedded_store
    cap = 1000  # three batches of new keys
    st = embedded_store(native, max_keys=cap)
    t0 = 1_767_225_600_000
    col = RAW_INDEX["a_c86400"]
    hot = []
    for b in range(30):
        ks = [f"k{b}-{i}" for i in range(100)]
        ads = ["ad-hot"] + [f"ad-{b}-{i}" for i in range(1, 100)]
        uas = [f"agent {b}-{i} " + "x" * 100 for i in range(100)]
        uh, sh, ih, hll, eh = reference.hash_keys(["u\x00" + k for k in ks], ks,
                                                  [f"10.1.{b}.{i}" for i in range(100)],
                                                  ads, uas)
        raw = st.update(np.full(100, t0 + b * 1000, np.int64), uh, sh, ih, hll, None, eh)
        hot.append(raw[0, col])
    s = st.stats()
    assert s["entities"] <= cap and st.evicted > 3 * 30 * 100 - 4 * cap, s
    assert all(y > x for x, y in zip(hot, hot[1:], strict=False)), hot


def test_store_cap_from_memory_budget():
    from slidr.slidrd.server import embedded_max_keys
    k = embedded_max_keys(1536)
    assert 2_000_000 < k < 6_000_000
    assert embedded_max_keys(0) == 0


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("path", PATHS)
def test_waves_of_concurrent_connections_give_memory_back(tmp_path, path):
    """Waves of 3,000 connections open at once, then closed: after the first wave the
    daemon's RSS stays put (a 1 MiB packer buffer per connection used to stay in the heap)."""
    reg = make_registry(tmp_path)
    with Daemon(reg, env=_env(path)) as d:
        def wave() -> None:
            socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(3000)]
            with Client(d.port) as c:  # every one accepted, the daemon still answers
                assert c.call("ping") == "pong"
            for s in socks:
                s.close()
            time.sleep(0.3)
        wave()
        first = _rss_mib(d.proc.pid)
        for _ in range(4):
            wave()
        grown = _rss_mib(d.proc.pid) - first
    assert grown < 4.0, f"RSS grew {grown:.1f} MiB over 4 waves after the first"


@pytest.mark.redis
def test_far_future_click_refused_with_the_redis_store(tmp_path, redis_server):
    """The clock check comes before the store: with Redis the 2099 click is refused the same
    way and the other clicks score as in the stream without it."""
    reg = make_registry(tmp_path)
    t0 = int(time.time() * 1000) - 300 * 37 - 10_000
    stream = [_now_click(i, t0, users=7, ips=5) for i in range(300)]
    bad = dict(click(9999, ts=4_070_908_800_000), click_id="from-2099")
    res = []
    for k, with_bad in enumerate((False, True)):
        clicks = stream[:100] + [bad] + stream[100:] if with_bad else stream
        with Daemon(reg, "--redis", redis_server.url, "--redis-prefix", f"t-clock{k}:",
                    "--deadline-ms", "5000", "--redis-timeout-ms", "2000") as d:
            res.append(_scores(d.port, clicks))
    a, b = res
    err = b.pop("from-2099")
    assert err[0] == ErrorCode.INVALID_CLICK and "field 'ts'" in err[1], err
    assert a == b


# ------------------------------------------------------------------ signed bundles
def test_bundle_signature_refuses_unsigned_and_altered(tmp_path):
    import os

    from daemon_helpers import make_bundle_src

    from slidr.registry import BundleError, Registry, load_key
    key = b"k" * 32
    reg = Registry(tmp_path / "reg")
    v1 = reg.publish(make_bundle_src(tmp_path / "s1"), version="v1", sign_key=key)
    v2 = reg.publish(make_bundle_src(tmp_path / "s2", seed=1), version="v2")
    reg.bundle(v1).verify()
    reg.bundle(v1).verify_signature(key)
    with pytest.raises(BundleError, match="another key"):
        reg.bundle(v1).verify_signature(b"x" * 32)
    with pytest.raises(BundleError, match="not signed"):
        reg.bundle(v2).verify_signature(key)
    # a manifest swapped together with its model (checksums consistent) is still refused
    b = reg.bundle(v1)
    os.chmod(b.path, 0o755)
    m = b.path / "manifest.json"
    os.chmod(m, 0o644)
    m.write_text(m.read_text().replace('"version": "v1"', '"version": "v1" '))
    with pytest.raises(BundleError, match="does not match"):
        reg.bundle(v1).verify_signature(key)
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(Exception, match="at least 32"):
        load_key(tmp_path / "short")


def test_daemon_with_a_bundle_key_keeps_serving_a_signed_bundle(tmp_path):
    from daemon_helpers import make_bundle_src

    from slidr.registry import Registry
    keyf = tmp_path / "bundle.key"
    keyf.write_bytes(b"s" * 40 + b"\n")
    reg = Registry(tmp_path / "reg")
    reg.publish(make_bundle_src(tmp_path / "s1"), version="v1", promote=True,
                sign_key=b"s" * 40)
    admin = tmp_path / "admin.sock"
    with Daemon(reg.path, "--bundle-key", str(keyf), admin=admin) as d:
        with Client(d.port) as c:
            assert c.call("info")["model"] == "v1"
        reg.publish(make_bundle_src(tmp_path / "s2", seed=1), version="v2", promote=True)
        with Client(path=admin, timeout=30) as a, pytest.raises(Exception) as e:
            a.call("reload")
        assert "not signed" in str(e.value)
        with Client(d.port) as c:
            assert c.call("info")["model"] == "v1"
    # unsigned current bundle: the daemon does not start
    bad = Daemon(reg.path, "--bundle-key", str(keyf))
    with pytest.raises(RuntimeError, match="not signed"):
        bad.wait_ready(timeout=30)
    bad.stop()


OOM_SCRIPT = """
import resource, numpy as np
from slidr.ext import kernel_native as K
st = K.EmbeddedStore(capacity_hint=1024)  # no cap: only memory bounds it
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), vm + (32 << 20)))
rng = np.random.default_rng(0)
n, t0, errs = 4096, 1_767_225_600_000, 0
for b in range(50):
    uh, sh, ih = (rng.integers(0, 2**63, n, dtype=np.uint64) for _ in range(3))
    hll = rng.integers(0, 32, (n, 4), dtype=np.uint8)
    try:
        st.update(np.arange(t0 + b * n, t0 + b * n + n, dtype=np.int64), uh, sh, ih, hll)
    except MemoryError:
        errs += 1
print(len(st), st.evicted, errs)
"""


def test_store_out_of_memory_evicts_instead_of_failing():
    """Out of memory before any cap (an address-space limit): inserts evict older keys, no
    MemoryError, so no click is answered store_down for it."""
    import subprocess
    import sys
    pytest.importorskip("slidr.ext._kernel")
    out = subprocess.run([sys.executable, "-c", OOM_SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    keys, evicted, errs = map(int, out.stdout.split())
    assert errs == 0 and evicted > 0 and keys > 20_000, out.stdout


@pytest.mark.parametrize("path", PATHS)
def test_each_invalid_click_is_counted_once(tmp_path, path):
    """slidr_errors_total{code="INVALID_CLICK"} rises by exactly one per refused click, sent
    alone (score) or among valid clicks (score_many)."""
    reg = make_registry(tmp_path)
    t0 = int(time.time() * 1000) - 60_000
    with Daemon(reg, "--deadline-ms", "5000", env=_env(path),
                admin=tmp_path / "admin.sock") as d, Client(d.port) as c:
        before = _stats(d)["errors"].get("INVALID_CLICK", 0)
        for i in range(3):
            with pytest.raises(Exception, match="device"):
                c.call("score", dict(click(i, ts=t0 + i), device="toaster"))
        rows = [click(10 + i, ts=t0 + 10 + i) for i in range(6)]
        rows[1] = dict(rows[1], device="toaster")
        rows[4] = dict(rows[4], device="toaster")
        answers = c.call("score_many", rows)
        assert sum("error" in a for a in answers) == 2, answers
        after = _stats(d)["errors"].get("INVALID_CLICK", 0)
    assert after - before == 5


def test_entity_field_flood_scores_as_the_pure_path(tmp_path):
    """Clicks whose ad_id and user_agent are all distinct and maximal (non-ASCII, 4-byte
    characters, a NUL inside), mixed with repeated ones and absent ones: the compiled daemon
    (whose user-agent key cache then only misses and evicts) answers every click exactly as
    the pure-Python daemon does, one request at a time."""
    from slidr.contract import MAX_ID_LEN, MAX_UA_LEN
    reg = make_registry(tmp_path)
    t0 = int(time.time() * 1000) - 600 * 37 - 10_000
    clicks = []
    for i in range(600):
        if i % 4 == 0:
            ad, ua = "ad-common", "Mozilla/5.0 common"
        elif i % 4 == 1:
            ad, ua = None, ""
        else:
            ad = (f"{i:06d}" + "é" * MAX_ID_LEN)[:MAX_ID_LEN]
            ua = (f"{i:06d}\x00" + "🙂" * MAX_UA_LEN)[:MAX_UA_LEN]
        clicks.append(_now_click(i, t0, users=9, ips=4, ad_id=ad, user_agent=ua))
    res = []
    for path in PATHS:
        with Daemon(reg, "--deadline-ms", "5000", env=_env(path)) as d:
            res.append(_scores(d.port, clicks))
    assert len(res[0]) == len(clicks) and all(isinstance(v, float) for v in res[0].values())
    assert res[0] == res[1]
