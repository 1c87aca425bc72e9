"""The batcher's native per-click path (ext/_fastpath: fast_valid, batch_columns,
decide_batch, route_frames) against its Python twin, through the real Batcher: the same
clicks give byte-identical answer frames, the same score_many results, the same decision-log
records and the same metrics."""

from __future__ import annotations

import asyncio
import copy

import msgpack
import numpy as np
import pytest
import slidr.slidrd.batcher as B
from slidr.bench.clicks import make_clicks
from slidr.slidrd.metrics import Metrics

from slidr.errors import ErrorCode
from slidr.kernel import FeatureKernel, embedded_store

pytest.importorskip("slidr.ext._fastpath")


class _Conn:
    """What the batcher needs of a connection: inflight, closed, out, queue_*, flush. Like
    slidrd.rpc's connection, it counts the error answers it queues in the daemon's metrics."""

    def __init__(self, metrics=None, closed: bool = False) -> None:
        self.metrics = metrics
        self.inflight = 0
        self.closed = closed
        self.out: list[bytes] = []
        self.packer = msgpack.Packer(use_bin_type=True)
        self.sent: list[bytes] = []

    def queue_result(self, msgid, result):
        if not self.closed:
            self.out.append(self.packer.pack([1, msgid, None, result]))

    def queue_error(self, msgid, err):
        if self.metrics is not None:
            self.metrics.errors[ErrorCode(err[0]).name] += 1
        if not self.closed:
            self.out.append(self.packer.pack([1, msgid, err, None]))

    def flush(self):
        self.sent.extend(self.out)
        self.out.clear()


class _Scorer:
    name = "fixed"

    def infer(self, x):
        # deterministic, spread over (0, 1), float32 like the real scorers; some exact ties
        s = (np.abs(np.sin(x.sum(axis=1, dtype=np.float64) * 12.9898)) * 0.98).astype(np.float32)
        s[::7] = np.float32(0.5)  # equal to a threshold below: the strict > rule must hold
        return s


class _Model:
    version = "m-test-ü"
    scorer = _Scorer()
    thresholds = np.array([0.5, 0.3, 0.7, 0.5, 0.2, 0.9])


class _Log:
    def __init__(self):
        self.records = []

    def submit(self, clicks, feats, decisions, version):
        self.records.append((copy.deepcopy(decisions), version))


def _run(native: bool, with_log: bool):
    old = B._fp
    if not native:
        B._fp = None
    try:
        async def go():
            m = Metrics()
            log = _Log() if with_log else None
            b = B.Batcher(FeatureKernel(embedded_store(True)), lambda: _Model(), m, inline=True,
                          max_batch=64, max_wait_us=0, pipeline_depth=1,
                          max_inflight_total=10_000, decision_log=log, deadline_s=60.0)
            clicks, _ = make_clicks(300, seed=3)
            conns = [_Conn(m), _Conn(m), _Conn(m, closed=True)]
            t = 1_767_225_600_000
            groups = []
            for i, c in enumerate(clicks):
                c = dict(c, ts=t + 10 * i)
                if i % 50 == 3:
                    c["device"] = "toaster"  # invalid: an error answer, the rest go on
                if i % 10 == 9:  # every 10th click inside a score_many of 3
                    g = B.Group(conns[0], 100_000 + i, 1)
                    groups.append(g)
                    b.submit(c, g, 0, 1.0 + i, 1e12)
                else:
                    b.submit(c, conns[i % 3], i, 1.0 + i, 1e12)
                if i % 37 == 36:
                    b.kick()
                    await asyncio.sleep(0)
            b.kick()
            for _ in range(5):
                await asyncio.sleep(0)
            for cn in conns:
                cn.flush()
            return conns, groups, m, log
        return asyncio.run(go())
    finally:
        B._fp = old


@pytest.mark.parametrize("with_log", [False, True])
def test_native_decide_equals_python(with_log):
    nat = _run(True, with_log)
    py = _run(False, with_log)
    (cn, gn, mn, ln), (cp, gp, mp, lp) = nat, py
    for a, b in zip(cn, cp, strict=True):
        # the same frames; a score_many answer may leave before or after the single answers
        # of its batch (responses carry their msgid and may come in any order)
        assert sorted(a.sent) == sorted(b.sent)
        assert a.inflight == b.inflight
    assert len(cn[0].sent) > 50 and cn[2].sent == []  # a closed connection gets nothing
    assert [g.results for g in gn] == [g.results for g in gp]
    assert any(r["invalid"] for g in gn for r in g.results if r and "invalid" in r)
    for name in ("queue", "total", "store", "model"):
        assert mn.latency[name].n == mp.latency[name].n > 200
    # arrival times 1.0 + i s: ages far beyond every bucket but the last, in both paths
    for name in ("queue", "total"):
        assert mn.latency[name].counts.tolist() == mp.latency[name].counts.tolist()
    assert dict(mn.decisions) == dict(mp.decisions) and sum(mn.decisions.values()) > 200
    assert dict(mn.invalid) == dict(mp.invalid)
    assert dict(mn.errors) == dict(mp.errors) and mn.errors
    if with_log:
        assert ln.records == lp.records and ln.records


def test_strict_threshold_rule_in_frames():
    conns, _groups, _m, _log = _run(True, False)
    seen_tie = False
    for raw in conns[0].sent + conns[1].sent:
        msg = msgpack.unpackb(raw)
        for d in msg[3] if isinstance(msg[3], list) else [msg[3]]:
            if d is None or "invalid" not in d:
                continue
            assert d["invalid"] == (d["score"] > d["threshold"])
            seen_tie |= d["score"] == d["threshold"]
    assert seen_tie  # the test data has clicks exactly at a threshold


def test_decide_batch_histograms_match_metrics_histogram():
    from slidr.ext import _fastpath as fp
    from slidr.slidrd.metrics import LATENCY_BUCKETS, Histogram
    rng = np.random.default_rng(0)
    n = 200
    t0, t_end = 10.0, 10.004
    # ages spread over every bucket, some exactly on a bucket bound
    ages = np.concatenate([rng.exponential(2e-3, n - len(LATENCY_BUCKETS)),
                           np.array(LATENCY_BUCKETS)])
    arrivals = (t0 - ages).tolist()
    items = [({"click_id": f"c{i}"}, None, i, arrivals[i], 1e9) for i in range(n)]
    clicks = [it[0] for it in items]
    dev = rng.integers(0, 3, n).astype(np.uint8)
    li = rng.integers(0, 2, n).astype(np.uint8)
    scores = rng.random(n).astype(np.float32)
    table = np.array([0.5, 0.3, 0.7, 0.5, 0.2, 0.9])
    q, tot = Histogram(LATENCY_BUCKETS), Histogram(LATENCY_BUCKETS)
    frames, codes, thr, inv, qs, ts, per, bad = fp.decide_batch(
        items, clicks, dev, li, scores, table, [msgpack.packb(s) for s in B._SLICE_BY_CODE],
        msgpack.packb("v"), msgpack.packb("model"), t0, t_end, q.bounds, q.counts, tot.counts)
    rq, rt = Histogram(LATENCY_BUCKETS), Histogram(LATENCY_BUCKETS)
    arr = np.asarray(arrivals)
    rq.observe_many(t0 - arr)
    rt.observe_many(t_end - arr)
    assert q.counts.tolist() == rq.counts.tolist()
    assert tot.counts.tolist() == rt.counts.tolist()
    assert qs == pytest.approx(rq.total) and ts == pytest.approx(rt.total)
    want_codes = dev.astype(np.intp) * 2 + li
    assert codes.tolist() == want_codes.tolist()
    assert inv.tolist() == (scores > table[want_codes]).tolist()
    assert per == np.bincount(want_codes, minlength=6).tolist()
    assert bad == np.bincount(want_codes, weights=inv, minlength=6).astype(int).tolist()
    for i in (0, 17, n - 1):
        d = msgpack.unpackb(frames[i])[3]
        assert d["slice"] == B._SLICE_BY_CODE[want_codes[i]]
        assert d["invalid"] == bool(inv[i]) and d["click_id"] == f"c{i}"
    with pytest.raises(ValueError):
        fp.decide_batch(items[:-1], clicks, dev, li, scores, table, [], b"", b"", t0, t_end,
                        q.bounds, q.counts, tot.counts)


def test_malformed_store_reply_fails_open_as_store_down():
    """A Redis reply of the wrong shape: every click of the batch is answered valid with
    fail_open:store_down, the error is counted, and the batcher keeps going."""
    from slidr.store_redis import RedisStore

    class _BadLink:
        def __init__(self):
            self.sent = 0

        def send(self, req, cb):
            self.sent += 1
            asyncio.get_running_loop().call_soon(cb, [b"short"], None)

    async def go():
        m = Metrics()
        store = RedisStore("redis://127.0.0.1:1/0")  # never connects: only builds/parses
        link = _BadLink()
        b = B.Batcher(FeatureKernel(store, use_native=True), lambda: _Model(), m, inline=False,
                      max_batch=64, max_wait_us=0, pipeline_depth=2, max_inflight_total=1000,
                      deadline_s=60.0, link=link)
        clicks, _ = make_clicks(10, seed=1)
        conn = _Conn()
        for i, c in enumerate(clicks):
            b.submit(dict(c, ts=1_767_225_600_000 + i), conn, i, 1.0, 1e12)
        b.kick()
        for _ in range(10):
            await asyncio.sleep(0)
        conn.flush()
        return conn, m, link, b
    conn, m, link, b = asyncio.run(go())
    assert link.sent >= 1
    answers = [msgpack.unpackb(x)[3] for x in conn.sent]
    assert len(answers) == 10
    assert {a["reason"] for a in answers} == {"fail_open:store_down"}
    assert m.fail_open["store_down"] == 10 and m.redis_errors >= 1
    assert b.inflight_batches == 0 and b.inflight_clicks == 0


def test_decide_batch_float32_scores_encode_as_their_doubles():
    """The model's float32 scores are widened in C: every frame equals the one built from the
    same scores as float64 (what .tolist() gives), contiguous or not."""
    from slidr.ext import _fastpath as fp
    from slidr.slidrd.metrics import LATENCY_BUCKETS, Histogram
    rng = np.random.default_rng(1)
    n = 37
    items = [({"click_id": f"c{i}"}, None, i, 9.999, 1e9) for i in range(n)]
    clicks = [it[0] for it in items]
    dev = rng.integers(0, 3, n).astype(np.uint8)
    li = rng.integers(0, 2, n).astype(np.uint8)
    s32 = np.concatenate([rng.random(n - 3), [0.0, 1.0, np.float32(0.1)]]).astype(np.float32)
    table = np.array([0.5, 0.3, 0.7, 0.5, 0.2, 0.9])
    keys = [msgpack.packb(s) for s in B._SLICE_BY_CODE]

    def frames(scores):
        q, tot = Histogram(LATENCY_BUCKETS), Histogram(LATENCY_BUCKETS)
        return fp.decide_batch(items, clicks, dev, li, scores, table, keys, msgpack.packb("v"),
                               msgpack.packb("model"), 10.0, 10.001, q.bounds, q.counts,
                               tot.counts)

    want = frames(s32.astype(np.float64))
    got = frames(s32)
    assert got[0] == want[0]
    assert [msgpack.unpackb(f)[3]["score"] for f in got[0]] == s32.tolist()
    assert got[3].tolist() == want[3].tolist()  # invalid: the same comparisons
    strided = np.repeat(s32, 2)[::2]
    assert frames(strided)[0] == want[0]
