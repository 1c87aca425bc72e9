"""slidrd on a real local Redis Cluster (3 masters + 3 replicas): the same decisions and
features as on the embedded store and on a single Redis, wherever each click lands (two daemons
sharing the cluster, `--workers 2`), and clear one-line refusals of a URL that does not fit."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from daemon_helpers import PY, REPO, Client, Daemon, check_decision, click, make_registry
from test_daemon_lifecycle import check_log_parity

pytestmark = pytest.mark.redis

N = 900
KW = {"users": 25, "ips": 6}


def _clicks():
    return [click(i, **KW) for i in range(N)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("reg"), ("v1",))


@pytest.fixture(scope="module")
def embedded_decisions(registry):
    """Decisions of one daemon on the embedded store, clicks one at a time in order."""
    d = Daemon(registry, "--deadline-ms", "5000").wait_ready()
    try:
        with Client(d.port) as c:
            out = {f"c{i}": c.call("score", x) for i, x in enumerate(_clicks())}
    finally:
        assert d.stop() == 0, d.log()
    assert all(v["reason"] == "model" for v in out.values())
    return out


def _cluster_args(cluster, prefix):
    return ("--redis", cluster.url, "--redis-mode", "cluster", "--redis-prefix", prefix,
            "--redis-timeout-ms", "2000", "--deadline-ms", "5000")


def test_daemon_on_cluster_equals_embedded_and_single_redis(tmp_path, registry, redis_cluster,
                                                            shared_redis, embedded_decisions):
    from slidr.store_redis import RedisStore

    logdir = tmp_path / "dlog"
    d = Daemon(registry, *_cluster_args(redis_cluster, "cd-one:"), "--decision-log",
               str(logdir)).wait_ready()
    answered = {}
    clicks = _clicks()
    with Client(d.port) as c:
        for i in range(300):  # one click per batch
            answered[f"c{i}"] = c.call("score", clicks[i])
        res = c.pipeline("score", [(x,) for x in clicks[300:]])  # many clicks per batch
        for k, (_mid, (err, dec)) in enumerate(res.items()):
            assert err is None
            answered[f"c{300 + k}"] = dec
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.log()
    assert "Traceback" not in d.log()
    assert answered == embedded_decisions
    for cid, dec in list(answered.items())[:50]:
        check_decision(dec, cid)
    # The keys are spread over the three masters.
    import redis
    for port in redis_cluster.master_ports():
        r = redis.Redis(port=port)
        assert sum(1 for _ in r.scan_iter(match="cd-one:*", count=1000)) > 10
        r.close()
    # Features through the cluster == the offline kernel's on the embedded store and through a
    # single Redis (exact: the same doubles in the same order).
    assert check_log_parity(logdir, answered) == N
    rs = RedisStore(shared_redis.url, prefix="cd-single:", timeout_s=5.0)
    try:
        assert check_log_parity(logdir, answered, store=rs) == N
    finally:
        rs.close()


def _flush_scripts(cluster):
    import redis
    for port in cluster.master_ports():
        r = redis.Redis(port=port)
        r.script_flush()
        r.close()


def test_two_daemons_share_the_cluster(registry, redis_cluster, embedded_decisions):
    """Clicks split between two daemons, the cluster's scripts flushed half way: the same
    decisions as one daemon on the embedded store."""
    a = Daemon(registry, *_cluster_args(redis_cluster, "cd-two:"))
    b = Daemon(registry, *_cluster_args(redis_cluster, "cd-two:"))
    answered = {}
    try:
        a.wait_ready()
        b.wait_ready()
        with Client(a.port) as ca, Client(b.port) as cb:
            for i, x in enumerate(_clicks()):
                if i == N // 2:
                    _flush_scripts(redis_cluster)  # NOSCRIPT: each link loads it again
                # Clicks split between the daemons (by a hash-like rule, not alternation).
                answered[f"c{i}"] = (ca if (i * 7919) % 5 < 2 else cb).call("score", x)
    finally:
        assert a.stop() == 0, a.log()
        assert b.stop() == 0, b.log()
    assert answered == embedded_decisions


def test_workers_on_the_cluster(registry, redis_cluster, embedded_decisions):
    from daemon_helpers import free_port

    port = free_port()
    d = Daemon(registry, *_cluster_args(redis_cluster, "cd-workers:"), "--workers", "2",
               port=port).wait_ready()
    answered = {}
    pids = set()
    try:
        for i, x in enumerate(_clicks()):
            if i % 10 == 0:  # a new connection lands on either worker
                c = Client(port)
                pids.add(c.call("info")["pid"])
            answered[f"c{i}"] = c.call("score", x)
            if i % 10 == 9:
                c.close()
    finally:
        assert d.stop() == 0, d.log()
    assert len(pids) == 2, pids
    assert answered == embedded_decisions
    assert "Traceback" not in d.log()


def _serve_fails(registry, *args, timeout=20.0):
    t = time.monotonic()
    r = subprocess.run([PY, "-m", "slidr.slidrd.main", "serve", "--registry", str(registry),
                        "--port", "0", *args], cwd=REPO, capture_output=True, timeout=timeout)
    return r, time.monotonic() - t


def test_refuses_down_node_and_plain_redis(registry, redis_server):
    from daemon_helpers import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"
    r, took = _serve_fails(registry, "--redis", down, "--redis-mode", "cluster")
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert err and err[-1].startswith("slidrd serve: error: no redis cluster seed answered")
    assert took < 15
    r, _ = _serve_fails(registry, "--redis", redis_server.url, "--redis-mode", "cluster")
    assert r.returncode == 2
    assert "is not a cluster node" in r.stderr.decode().strip().splitlines()[-1]


def test_refuses_cluster_without_full_coverage(registry, redis_cluster):
    import redis

    # A node that has forgotten who serves slots 0-99 reports a hole when asked for the map.
    port = redis_cluster.ports[0]
    r = redis.Redis(port=port)
    owned = {s for sh in r.execute_command("CLUSTER", "SHARDS") for a, b in
             zip(sh[b"slots"][0::2], sh[b"slots"][1::2], strict=True) for s in range(a, b + 1)}
    assert set(range(100)) <= owned
    me = [sh for sh in r.execute_command("CLUSTER", "SHARDS")
          if any(n[b"port"] == port for n in sh[b"nodes"])]
    assert me
    lo = me[0][b"slots"][0]
    r.execute_command("CLUSTER", "DELSLOTSRANGE", lo, lo + 99)
    try:
        res, took = _serve_fails(registry, "--redis", f"redis://127.0.0.1:{port}/0",
                                 "--redis-mode", "cluster")
        assert res.returncode == 2, res.stderr
        line = res.stderr.decode().strip().splitlines()[-1]
        assert "does not cover all slots: 100 of 16384 unserved" in line, line
        assert took < 15
    finally:
        r.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, lo + 99)
        r.close()
        redis_cluster.wait_ok()
