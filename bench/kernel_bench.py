"""Feature-kernel micro-benchmark: hash + store.update + finish, in clicks per second.

`run()` measures the embedded store and the Redis store at batch sizes 1, 64 and 512 on
generated clicks that look like a day of traffic (many one-shot visitors, a Zipf tail of busy
IPs and users, a few robot sessions), plus the embedded store's bytes of state per tracked key.
`python -m slidr.bench.kernel_bench --json` prints the result; `slidr bench kernel` wires it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from slidr.contract import ClickBatch
from slidr.featurespec import finish

BATCH_SIZES = (1, 64, 512)
DAY_MS = 86_400_000
T0_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def make_clicks(n: int, seed: int = 0, days: float = 1.0, t0_ms: int = T0_MS) -> ClickBatch:
    """n clicks spread over `days` simulated days, sorted by ts.

    Sessions: 1/4 as many as clicks (mostly short, some one-shot); 40% logged in with a
    customer pool of n/20; IPs: n/8 addresses, Zipf-weighted so a few carry many sessions;
    1% of clicks come from 50 robot sessions on 10 IPs; ads: n/200, Zipf-weighted (5% of
    clicks without one); user agents: 40 per session, Zipf-weighted (2% without one).
    """
    rng = np.random.default_rng(seed)
    n_sess = max(1, n // 4)
    n_users = max(1, n // 20)
    n_ips = max(1, n // 8)
    ts = np.sort(rng.integers(0, int(days * DAY_MS), n)).astype(np.int64) + t0_ms
    # Session ids appear roughly in time order, so old sessions stop and new ones start.
    base = (np.arange(n) * n_sess) // max(n, 1)
    sess = np.clip(base + rng.integers(-50, 50, n), 0, n_sess - 1)
    robot = rng.random(n) < 0.01
    sess = np.where(robot, n_sess + rng.integers(0, 50, n), sess)
    sess_user = rng.integers(0, n_users, n_sess + 50)
    sess_logged = rng.random(n_sess + 50) < 0.4
    ip_of_sess = np.minimum(rng.zipf(1.3, n_sess + 50) - 1, n_ips - 1)
    ip_of_sess[n_sess:] = rng.integers(0, 10, 50) + 7  # robots share a few addresses
    sess_ids = [f"s{i:x}-{seed}" for i in range(n_sess + 50)]
    user_ids = [f"c{i}" for i in range(n_users)]
    ip_pool = [f"{10 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}.{7 + i % 200}"
               for i in range(n_ips)]
    li = sess_logged[sess]
    session_id = [sess_ids[i] for i in sess.tolist()]
    ukeys = ["u\x00" + user_ids[sess_user[s]] if sess_logged[s] else "s\x00" + sess_ids[s]
             for s in sess.tolist()]
    ip = [ip_pool[i] for i in ip_of_sess[sess].tolist()]
    device = rng.integers(0, 3, n).astype(np.uint8)
    tz = rng.choice([-300, 0, 60, 330], n).astype(np.int16)
    # feature spec 4's entity keys (drawn last: the columns above do not change)
    n_ads = max(1, n // 200)
    ad = np.minimum(rng.zipf(1.2, n) - 1, n_ads - 1)
    ad_id = [None if r < 0.05 else f"ad{a}" for a, r in zip(ad.tolist(), rng.random(n).tolist(),
                                                             strict=True)]
    ua_of_sess = np.minimum(rng.zipf(1.5, n_sess + 50) - 1, 39)
    ua_none = rng.random(n_sess + 50) < 0.02
    user_agent = [None if ua_none[s] else f"Mozilla/5.0 (agent {ua_of_sess[s]})"
                  for s in sess.tolist()]
    return ClickBatch(ts=ts, user_key=ukeys, session_id=session_id, ip=ip, device=device,
                      logged_in=li.astype(np.uint8), tz_offset_min=tz, ad_id=ad_id,
                      user_agent=user_agent)


def _finisher():
    from slidr.kernel import native
    if native is not None and hasattr(native, "finish_into"):
        return native.finish_into
    return finish


def throughput(store: Any, clicks: ClickBatch, batch: int, seconds: float,
               use_native: bool = True, cpu: dict[str, float] | None = None) -> float:
    """Clicks/s (wall clock) for hash + update + finish over consecutive batches until
    `seconds` pass; with `cpu`, also stores clicks per CPU-second of this process in
    cpu["cps"] (robust to a busy shared host for an in-process store) and the clicks done in
    cpu["n"]."""
    from slidr.kernel import hash_keys
    fin = _finisher() if use_native else finish
    n = len(clicks)
    done = 0
    pos = 0
    # Pre-slice outside the timed loop: slicing lists is the caller's cost, not the kernel's.
    chunks = [clicks.slice(i, i + batch) for i in range(0, min(n, 200_000), batch)]
    t_end = time.perf_counter() + seconds
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        b = chunks[pos]
        pos += 1
        if pos == len(chunks):
            pos = 0
        uh, sh, ih, hll, eh = hash_keys(b, use_native)
        raw = store.update(b.ts, uh, sh, ih, hll, b.tz_offset_min, eh, b.logged_in)
        fin(raw, b.ts, b.tz_offset_min, b.logged_in, b.device)
        done += len(b)
        if (done // batch) % 16 == 0 and time.perf_counter() >= t_end:
            break
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu["cps"] = done / max(time.process_time() - c0, 1e-9)
        cpu["n"] = done
    return done / wall


def bytes_per_key_over_day(n: int = 400_000, samples: int = 24, seed: int = 1) -> dict[str, Any]:
    """Feed one simulated day to a fresh embedded store; average bytes/key at `samples` points."""
    from slidr.kernel import embedded_store, hash_keys
    clicks = make_clicks(n, seed=seed)
    store = embedded_store()
    vals = []
    step = max(1, n // samples)
    for i in range(0, n, step):
        b = clicks.slice(i, i + step)
        uh, sh, ih, hll, eh = hash_keys(b)
        store.update(b.ts, uh, sh, ih, hll, b.tz_offset_min, eh, b.logged_in)
        vals.append(store.stats()["bytes_per_key"])
    st = store.stats()
    store.close()
    return {"bytes_per_key": float(np.mean(vals)), "final": st}


def _server_cpu_s(admin: Any) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(seconds_per_point: float = 1.0, redis_url: str | None = None,
        clicks_per_day: int = 400_000, batch_sizes: Sequence[int] = BATCH_SIZES,
        repeat: int = 1) -> dict[str, Any]:
    """-> {"embedded": {"1": cps, ...}, "redis": {...}, "bytes_per_key": n, ...}.

    Each point is the median of `repeat` runs. For Redis also the CPU per click of the
    redis-server process (INFO cpu deltas: the script, the key reads and writes, the socket)
    and of this process (hash + request + reply + finish), which a busy shared host distorts
    far less than wall clock."""
    import redis

    from slidr.kernel import NATIVE, embedded_store
    from slidr.store_redis import RedisStore
    clicks = make_clicks(clicks_per_day, seed=0)
    out: dict[str, Any] = {"embedded": {}, "redis": {}, "native": NATIVE,
                           "seconds_per_point": seconds_per_point, "repeat": repeat,
                           "clicks_per_simulated_day": clicks_per_day,
                           "redis_server": "throwaway" if redis_url is None else "given",
                           # Shared hosts make throughput noisy: record how busy this one was.
                           "cpus": os.cpu_count(), "loadavg_1m_start": os.getloadavg()[0]}
    out["embedded_per_cpu_second"] = {}
    for bs in batch_sizes:
        walls, cpss = [], []
        for _ in range(repeat):
            st = embedded_store()
            cpu: dict[str, float] = {}
            walls.append(throughput(st, clicks, bs, seconds_per_point, cpu=cpu))
            cpss.append(cpu["cps"])
            st.close()
        out["embedded"][str(bs)] = round(float(np.median(walls)))
        out["embedded_per_cpu_second"][str(bs)] = round(float(np.median(cpss)))
    server = None
    if redis_url is None:
        from slidr.testing.redis_server import RedisServer
        server = RedisServer().start()
        redis_url = server.url
    out["redis_server_cpu_us_per_click"] = {}
    out["redis_client_cpu_us_per_click"] = {}
    admin = redis.Redis.from_url(redis_url, socket_timeout=5.0)
    try:
        for bs in batch_sizes:
            walls, srv, cli = [], [], []
            for r in range(repeat):
                rs = RedisStore(redis_url, prefix=f"slidr-bench:{bs}:{r}:", timeout_s=5.0)
                try:
                    rcpu: dict[str, float] = {}
                    s0 = _server_cpu_s(admin)
                    walls.append(throughput(rs, clicks, bs, seconds_per_point, cpu=rcpu))
                    n_done = rcpu["n"]
                    srv.append((_server_cpu_s(admin) - s0) / n_done * 1e6)
                    cli.append(1e6 / rcpu["cps"])
                finally:
                    rs.close()
            out["redis"][str(bs)] = round(float(np.median(walls)))
            out["redis_server_cpu_us_per_click"][str(bs)] = round(float(np.median(srv)), 2)
            out["redis_client_cpu_us_per_click"][str(bs)] = round(float(np.median(cli)), 2)
    finally:
        admin.close()
        if server is not None:
            server.stop()
    mem = bytes_per_key_over_day(clicks_per_day)
    out["bytes_per_key"] = round(mem["bytes_per_key"], 1)
    out["memory_end_of_day"] = mem["final"]
    out["loadavg_1m_end"] = os.getloadavg()[0]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slidr bench kernel", description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per measured point")
    ap.add_argument("--redis", default=None, help="redis:// URL (default: start a throwaway one)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point (median reported)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    res = run(seconds_per_point=a.seconds, redis_url=a.redis, repeat=a.repeat)
    if a.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        for kind in ("embedded", "redis"):
            pts = ", ".join(f"batch {k}: {v:,.0f}/s" for k, v in res[kind].items())
            print(f"{kind:9s} {pts}")
        for k, v in res["redis_server_cpu_us_per_click"].items():
            print(f"redis batch {k}: server {v} us/click, client "
                  f"{res['redis_client_cpu_us_per_click'][k]} us/click (CPU)")
        print(f"bytes per key (embedded, averaged over a simulated day): {res['bytes_per_key']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
