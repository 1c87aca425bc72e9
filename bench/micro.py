"""Micro-benchmarks of the pieces a request passes through, each timed alone:

- protocol: msgpack decode of one `score` request and encode of one decision (per request),
  and streaming decode of 512 pipelined requests (per request);
- store: one counter-store round trip per micro-batch (hash keys + update), embedded and Redis
  (a throwaway redis-server unless a URL is given), batch 1, 64, 512;
- model: one ONNX Runtime call per batch size 1..1024 on the production-shaped MLP
  (N_FEATURES -> 192 -> 96 -> 1, offline/train.published_widths), through slidr.engines when
  present (as the daemon calls it).

Each figure is the median (and p99) over repeated calls for a fixed time; times in
microseconds. On a shared 2-core machine expect +-20% between runs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidr.featurespec import N_FEATURES

STORE_BATCHES = (1, 64, 512)
MODEL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _time(fn: Callable[[], Any], seconds: float, min_calls: int = 20) -> dict[str, float]:
    """Per-call wall time (us): median, p99, mean, over at least min_calls calls."""
    fn()  # warm
    ts: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ts) < min_calls:
        t = time.perf_counter_ns()
        fn()
        ts.append((time.perf_counter_ns() - t) / 1000.0)
        if len(ts) >= 2_000_000:
            break
    a = np.asarray(ts)
    return {"median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "calls": int(a.size)}


def protocol(seconds: float) -> dict[str, Any]:
    import msgpack
    from slidr.bench.clicks import frame, make_clicks, pack_prefixes
    clicks, _ = make_clicks(512, seed=3, source="builtin")
    prefixes = pack_prefixes(clicks)
    req = frame(7, prefixes[0], 1_700_000_000_000)
    decision = {"click_id": "p0-123456", "invalid": False, "score": 0.0123, "threshold": 0.5,
                "slice": "mobile/out", "model": "20261123-abcdef", "reason": "model"}
    packer = msgpack.Packer()
    many = b"".join(frame(i, prefixes[i], 1_700_000_000_000 + i) for i in range(512))

    def stream() -> None:
        u = msgpack.Unpacker(raw=False)
        u.feed(many)
        for _ in u:
            pass

    s = _time(stream, seconds)
    return {
        "decode_request": _time(lambda: msgpack.unpackb(req, raw=False), seconds),
        "encode_decision": _time(lambda: packer.pack([1, 7, None, decision]), seconds),
        "stream_decode_512_per_request_us": s["median_us"] / 512,
        "request_bytes": len(req),
        "decision_bytes": len(packer.pack([1, 7, None, decision])),
    }


def _store_batches(batches: Sequence[int]) -> dict[int, Any]:
    from slidr.bench.clicks import make_clicks

    from slidr.contract import ClickBatch
    clicks, _ = make_clicks(max(batches) * 4, seed=5, source="builtin")
    t0 = int(time.time() * 1000)
    for i, c in enumerate(clicks):
        c["ts"] = t0 + i
    return {b: ClickBatch.from_clicks(clicks[:b], validate=False) for b in batches}


def store(seconds: float, redis_url: str | None, batches: Sequence[int] = STORE_BATCHES) -> dict[str, Any]:
    try:
        from slidr.kernel import NATIVE, embedded_store, hash_keys
    except ImportError as e:
        return {"skipped": f"slidr.kernel not importable: {e}"}
    data = _store_batches(batches)
    out: dict[str, Any] = {"native": NATIVE, "embedded": {}, "redis": {}}

    def bench(st: Any, label: str) -> None:
        for b, cb in data.items():
            hk = hash_keys(cb)
            ts = cb.ts.copy()

            def call(st: Any = st, cb: Any = cb, hk: Any = hk, ts: Any = ts) -> None:
                ts += 1  # time moves on, as in production
                st.update(ts, *hk[:4], cb.tz_offset_min, hk[4], cb.logged_in)
            r = _time(call, seconds)
            # Also the hashing the daemon does per batch, for the whole store step.
            h = _time(lambda cb=cb: hash_keys(cb), seconds / 4)
            r["per_click_us"] = r["median_us"] / b
            r["hash_keys_median_us"] = h["median_us"]
            out[label][str(b)] = r

    st = embedded_store()
    bench(st, "embedded")
    st.close()
    server = None
    try:
        from slidr.store_redis import RedisStore
    except ImportError as e:
        out["redis"] = {"skipped": f"slidr.store_redis not importable: {e}"}
        return out
    try:
        if redis_url is None:
            from slidr.testing.redis_server import RedisServer
            server = RedisServer().start()
            redis_url = server.url
        rs = RedisStore(redis_url, prefix="slidr-micro:", timeout_s=5.0)
        try:
            bench(rs, "redis")
        finally:
            rs.close()
    except (RuntimeError, OSError) as e:
        out["redis"] = {"skipped": f"no Redis: {e}"}
    finally:
        if server is not None:
            server.stop()
    return out


def model(seconds: float, batches: Sequence[int] = MODEL_BATCHES) -> dict[str, Any]:
    from slidr.bench.daemon import make_mlp
    with tempfile.TemporaryDirectory(prefix="slidr-micro-") as d:
        path = make_mlp(Path(d) / "model.onnx")
        from slidr.engines import select_scorer
        scorer = select_scorer(path, backend="onnxruntime", max_batch=max(batches))
        infer = scorer.infer
        via = f"slidr.engines ({getattr(scorer, 'name', '?')})"
        rng = np.random.default_rng(0)
        out: dict[str, Any] = {"via": via, "batches": {}}
        for b in batches:
            x = rng.random((b, N_FEATURES), dtype=np.float32)
            r = _time(lambda x=x: infer(x), seconds)
            r["per_click_us"] = r["median_us"] / b
            out["batches"][str(b)] = r
    return out


def run(seconds: float = 0.5, redis_url: str | None = None,
        parts: Sequence[str] = ("protocol", "store", "model")) -> dict[str, Any]:
    from slidr.bench.report import machine
    out: dict[str, Any] = {"seconds_per_point": seconds, "machine": machine()}
    if "protocol" in parts:
        out["protocol"] = protocol(seconds)
    if "store" in parts:
        out["store"] = store(seconds, redis_url)
    if "model" in parts:
        out["model"] = model(seconds)
    return out


def lines(res: dict[str, Any]) -> list[str]:
    L = []
    p = res.get("protocol")
    if p:
        L.append(f"protocol: decode request {p['decode_request']['median_us']:.2f} us, encode "
                 f"decision {p['encode_decision']['median_us']:.2f} us, streaming decode "
                 f"{p['stream_decode_512_per_request_us']:.2f} us/request "
                 f"({p['request_bytes']} B request, {p['decision_bytes']} B decision)")
    s = res.get("store")
    if s:
        for kind in ("embedded", "redis"):
            d = s.get(kind, {})
            if "skipped" in d:
                L.append(f"store {kind}: skipped ({d['skipped']})")
                continue
            pts = ", ".join(f"batch {b}: {v['median_us']:.1f} us ({v['per_click_us']:.2f} us/click)"
                            for b, v in d.items())
            L.append(f"store {kind}: {pts}")
    m = res.get("model")
    if m:
        pts = ", ".join(f"{b}: {v['median_us']:.0f} us" for b, v in m["batches"].items())
        L.append(f"model ({m['via']}) per call by batch: {pts}")
    return L
