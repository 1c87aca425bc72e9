"""What the counter script costs redis-server per click, from Redis's own accounting.

`INFO commandstats` gives the time redis-server spent inside each EVALSHA (the Lua script and
the commands it calls, not the network), so usec_per_call / clicks per call is the script's
CPU per click, undisturbed by the client. Batches of generated clicks go through
slidr.store_redis.RedisStore on a throwaway redis-server (each script on its own server, the
same clicks to each). On a shared machine the minimum over many short blocks of calls is the
stable figure (other jobs only ever add time); the inner commands (MGET, SET) are reported per
call too. Beside it, the whole redis-server process's CPU per call (its threads' run time
from /proc: script, command parsing, socket reads and writes) and this process's CPU per call
(request, round trip, reply).

With --instructions the servers run under valgrind (callgrind) instead, and the figure is the
user-space instructions redis-server executes per call: deterministic (the same clicks give
the same count within ~1 %), so an A/B on a busy machine needs no repetition. Each script's
server is warmed with every key of the click pool first, then each batch size runs `--calls`
calls between a zero and a dump of the counters.

With --against FILE the same clicks also run through the script in FILE (another version of
slidr/store_redis.lua), interleaved block by block, and the replies of the two are compared
(they must be identical: a change to how the script reads and writes state must not change a
counter). A script of feature spec 3 (26-byte click records, 28-double rows, no entity keys)
is driven with the spec-3 request it expects, and the replies are compared on the raw columns
the two specs share (user counts and gap, session, IP).

    python -m slidr.bench.lua_cost [--against OLD.lua] [--sizes 1,4,16,64] [--reps 12]
    python -m slidr.bench.lua_cost --instructions [--against OLD.lua] [--calls 100]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _store(url: str, source: str | None) -> Any:
    """A RedisStore on `url` whose script is `source` (a .lua text), or the current one."""
    import slidr.store_redis as sr
    if source is None:
        return sr.RedisStore(url)
    real = Path.read_text  # script_source() reads store_redis.lua with it

    def read_text(self: Path, *a: Any, **k: Any) -> str:
        return source if self.name == "store_redis.lua" else real(self, *a, **k)
    setattr(Path, "read_text", read_text)  # noqa: B010
    try:
        store = sr.RedisStore(url)
    finally:
        setattr(Path, "read_text", real)  # noqa: B010
    if "#blob / 26" in source:
        _speak_spec3(store)
    return store


# A feature-spec-3 script's click record and reply row (its ARGV: the click records, the
# user, session and IP TTLs, nu, ns; no entity keys).
_SPEC3_CLICK = np.dtype([("ts", "<f8"), ("hll", "u1", (4,)), ("idx", "<u4", (3,)),
                         ("tz", "<i2")])
_SPEC3_ROW = 28


def _speak_spec3(store: Any) -> None:
    """Make `store` (a RedisStore whose script is a spec-3 one) send spec-3 requests and read
    spec-3 rows into the current RAW layout, NaN in the columns spec 3 does not have."""
    import slidr.store_redis as sr
    from slidr import featurespec as fs
    px = b"".join(sr.resp_bulk(b"%d" % (ttl + store.ttl_slack_ms + ref))
                  for ttl, ref in zip(sr.TTL_MS[:3], sr.TTL_REFRESH_MS[:3], strict=True))
    shared = sr._D_SRC < _SPEC3_ROW  # the current row starts with the spec-3 row

    def request(ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
                hll: np.ndarray, tz: np.ndarray | None = None, eh: Any = None,
                li: Any = None) -> bytes:
        n = len(ts)
        clicks = np.zeros(n, dtype=_SPEC3_CLICK)
        clicks["ts"] = ts
        clicks["hll"] = hll
        clicks["tz"] = 0 if tz is None else tz
        idx = clicks["idx"]
        kinds = [sr._dedup(h, idx[:, j]) for j, h in enumerate((uh, sh, ih))]
        names = b"".join(b"%s%s%s\r\n" % (store._rec_head, tag, int(x).to_bytes(8, "big"))
                         for tag, keys in zip((b"u", b"s", b"i"), kinds, strict=True)
                         for x in keys.tolist())
        k = sum(x.shape[0] for x in kinds)
        return b"".join((b"*%d" % (k + 9), store._cmd_head, sr.resp_bulk(b"%d" % k), names,
                         sr.resp_bulk(clicks.tobytes()), px,
                         sr.resp_bulk(b"%d" % kinds[0].shape[0]),
                         sr.resp_bulk(b"%d" % kinds[1].shape[0])))

    def parse_reply(resp: list[bytes], n: int) -> np.ndarray:
        rec = np.frombuffer(b"".join(resp), dtype="<f8").reshape(n, _SPEC3_ROW)
        raw = np.full((n, fs.RAW_WIDTH), np.nan)
        raw[:, sr._D_DST[shared]] = rec[:, sr._D_SRC[shared]]
        fields = rec[:, sr._PACKED].astype(np.int64)
        raw[:, sr._B_DST] = (fields[:, None] >> sr._SHIFTS) & 63
        return raw

    store.request = request
    store.parse_reply = parse_reply


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Replies equal on the columns both scripts give (NaN: a column one of them lacks)."""
    if a.shape != b.shape:
        return False
    cols = ~(np.isnan(a).all(axis=0) | np.isnan(b).all(axis=0))
    return bool(np.array_equal(a[:, cols], b[:, cols]))


def _server_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of process pid (/proc schedstat: ns resolution)."""
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                t += int(f.read().split()[0])
        except OSError:  # a thread that just ended
            pass
    return t / 1e9


def _batches(pool: list[dict[str, Any]], start: int, b: int, calls: int,
             spacing_ms: int, ads: int = 0) -> tuple[list[tuple[Any, ...]], int]:
    """`calls` batches of b clicks from the pool, clicks start, start + 1, ... spacing_ms apart
    (ads > 0: the pool's ad ids folded onto that many ads, uniformly).
    -> ([(ts, uh, sh, ih, hll, tz, eh, li)], the next click number)."""
    from slidr.contract import ClickBatch
    from slidr.kernel import hash_keys
    ts0 = 1_767_225_600_000
    out = []
    k = start
    for _ in range(calls):
        cl = []
        for _ in range(b):
            c = {**pool[k % len(pool)], "ts": ts0 + spacing_ms * k}
            if ads and c.get("ad_id"):
                c["ad_id"] = f"ad{int(c['ad_id'][2:]) % ads}"
            cl.append(c)
            k += 1
        batch = ClickBatch.from_clicks(cl)
        uh, sh, ih, hll, eh = hash_keys(batch, True)
        out.append((batch.ts, uh, sh, ih, hll, batch.tz_offset_min, eh, batch.logged_in))
    return out, k


def instructions(sizes: tuple[int, ...] = (1, 4, 16, 64), calls: int = 100,
                 against: str | None = None, spacing_ms: int = 40,
                 ads: int = 0) -> dict[str, Any]:
    """redis-server user-space instructions per call (valgrind callgrind), per script."""
    import redis
    from slidr.bench.clicks import make_clicks

    from slidr.testing.redis_server import free_port
    exe = shutil.which("redis-server")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None or not exe:
        raise RuntimeError("--instructions needs valgrind (callgrind) and redis-server")
    scripts: dict[str, str | None] = {"current": None}
    if against is not None:
        scripts["against"] = Path(against).read_text()
    pool, _src = make_clicks(20_000)
    out: dict[str, Any] = {"sizes": list(sizes), "calls": calls, "ads": ads, "scripts": {}}
    replies: dict[str, list[np.ndarray]] = {}
    for name, src in scripts.items():
        d = tempfile.mkdtemp(prefix="slidr-callgrind-")
        port = free_port()
        dump = os.path.join(d, "cg.out")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", exe, "--port",
             str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            admin = redis.Redis(port=port, socket_timeout=60)
            for _ in range(600):
                try:
                    admin.ping()
                    break
                except redis.exceptions.ConnectionError:
                    time.sleep(0.1)
            store = _store(f"redis://127.0.0.1:{port}/0", src)
            # valgrind runs redis-server ~50x slower than native: no 50 ms timeout here
            store._r.connection_pool.connection_kwargs["socket_timeout"] = 120
            warm, k = _batches(pool, 0, 64, len(pool) // 64 + 1, spacing_ms, ads)
            for x in warm:
                store.update(*x)
            per: dict[str, Any] = {}
            got = replies.setdefault(name, [])
            for b in sizes:
                batches, k = _batches(pool, k, b, calls, spacing_ms, ads)
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                               capture_output=True)
                for x in batches:
                    got.append(store.update(*x))
                subprocess.run(["callgrind_control", "-d", f"b{b}", str(proc.pid)], check=True,
                               capture_output=True)
                files = sorted(glob.glob(dump + ".*"), key=os.path.getmtime)
                ir = None
                with open(files[-1]) as f:
                    for line in f:
                        if line.startswith(("summary:", "totals:")):
                            ir = int(line.split()[1])
                            break
                if ir is None:
                    raise RuntimeError(f"no instruction total in {files[-1]}")
                per[str(b)] = {"instructions_per_call": ir / calls,
                               "instructions_per_click": ir / calls / b}
            store.close()
            admin.close()
            out["scripts"][name] = per
        finally:
            proc.terminate()
            proc.wait(30)
            shutil.rmtree(d, ignore_errors=True)
    if against is not None:
        out["replies_identical"] = _same(np.concatenate(replies["current"]),
                                         np.concatenate(replies["against"]))
    return out


def run(sizes: tuple[int, ...] = (1, 4, 16, 64), reps: int = 12, against: str | None = None,
        spacing_ms: int = 40, cpus: str | None = None) -> dict[str, Any]:
    import redis
    from slidr.bench.clicks import make_clicks

    from slidr.testing.redis_server import RedisServer

    scripts: dict[str, str | None] = {"current": None}
    if against is not None:
        scripts["against"] = Path(against).read_text()
    servers = {name: RedisServer(cpus=cpus).start() for name in scripts}
    try:
        stores = {name: _store(servers[name].url, src) for name, src in scripts.items()}
        clients = {name: redis.Redis.from_url(servers[name].url) for name in scripts}
        pool, _src = make_clicks(20_000)
        k = 0
        per_call: dict[tuple[str, int], list[float]] = {(n, b): [] for n in scripts for b in sizes}
        srv_cpu: dict[tuple[str, int], list[float]] = {(n, b): [] for n in scripts for b in sizes}
        cli_cpu: dict[tuple[str, int], list[float]] = {(n, b): [] for n in scripts for b in sizes}
        inner: dict[tuple[str, int], dict[str, Any]] = {}
        replies: dict[str, list[np.ndarray]] = {n: [] for n in scripts}
        for rep in range(reps):
            for b in sizes:
                calls = max(20, 400 // b)
                batches, k = _batches(pool, k, b, calls, spacing_ms)
                names = list(scripts) if rep % 2 == 0 else list(scripts)[::-1]
                for name in names:
                    clients[name].config_resetstat()
                    proc = servers[name].proc
                    assert proc is not None
                    pid = proc.pid
                    s0, c0 = _server_cpu_s(pid), time.process_time()
                    for x in batches:
                        replies[name].append(stores[name].update(*x))
                    cli_cpu[(name, b)].append((time.process_time() - c0) * 1e6 / calls)
                    srv_cpu[(name, b)].append((_server_cpu_s(pid) - s0) * 1e6 / calls)
                    cs = clients[name].info("commandstats")
                    per_call[(name, b)].append(float(cs["cmdstat_evalsha"]["usec_per_call"]))
                    inner[(name, b)] = {
                        key[len("cmdstat_"):]: {"calls_per_evalsha": v["calls"] / calls,
                                                "usec_per_call": v["usec_per_call"]}
                        for key, v in cs.items()
                        if key in ("cmdstat_mget", "cmdstat_set")}
        out: dict[str, Any] = {"sizes": list(sizes), "reps": reps, "scripts": {}}
        for name in scripts:
            out["scripts"][name] = {
                str(b): {"usec_per_call_min": min(per_call[(name, b)]),
                         "usec_per_call_median": statistics.median(per_call[(name, b)]),
                         "usec_per_click_min": min(per_call[(name, b)]) / b,
                         "server_cpu_usec_per_call_min": min(srv_cpu[(name, b)]),
                         "client_cpu_usec_per_call_min": min(cli_cpu[(name, b)]),
                         "inner": inner[(name, b)]} for b in sizes}
        if against is not None:
            a = np.concatenate(replies["current"])
            o = np.concatenate(replies["against"])
            out["replies_identical"] = _same(a, o)
        return out
    finally:
        for s in servers.values():
            s.stop()


def lines(res: dict[str, Any]) -> list[str]:
    out = []
    if "calls" in res:  # --instructions
        for name, per in res["scripts"].items():
            out.append(f"{name}: " + "; ".join(
                f"batch {b}: {v['instructions_per_call'] / 1e3:.1f} k instructions/call = "
                f"{v['instructions_per_click'] / 1e3:.1f} k/click" for b, v in per.items()))
        if "against" in res["scripts"]:
            cur, old = res["scripts"]["current"], res["scripts"]["against"]
            out.append("current / against: " + ", ".join(
                f"batch {b} {cur[b]['instructions_per_call'] / old[b]['instructions_per_call']:.2f}"
                for b in cur))
            out.append(f"replies identical: {res['replies_identical']}")
        return out
    for name, per in res["scripts"].items():
        out.append(f"{name} (whole redis-server CPU, this client's CPU): " + "; ".join(
            f"batch {b}: {v['server_cpu_usec_per_call_min']:.1f} us/call server, "
            f"{v['client_cpu_usec_per_call_min']:.1f} us/call client" for b, v in per.items()))
    for name, per in res["scripts"].items():
        out.append(f"{name}: " + "; ".join(
            f"batch {b}: {v['usec_per_call_min']:.1f} us/call = {v['usec_per_click_min']:.2f} "
            f"us/click" for b, v in per.items()))
    if "against" in res["scripts"]:
        cur, old = res["scripts"]["current"], res["scripts"]["against"]
        out.append("current / against: " + ", ".join(
            f"batch {b} {cur[b]['usec_per_call_min'] / old[b]['usec_per_call_min']:.2f}"
            for b in cur))
        out.append(f"replies identical: {res['replies_identical']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slidr.bench.lua_cost")
    p.add_argument("--sizes", default="1,4,16,64")
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--against", help="another version of store_redis.lua to compare with")
    p.add_argument("--cpus", help="pin the redis-servers to these CPUs")
    p.add_argument("--instructions", action="store_true",
                   help="count redis-server instructions per call under valgrind instead")
    p.add_argument("--calls", type=int, default=100, help="calls per batch size (--instructions)")
    p.add_argument("--ads", type=int, default=0,
                   help="fold the clicks' ad ids onto this many ads (--instructions; 0: as "
                        "generated, 500 ads)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    sizes = tuple(int(x) for x in a.sizes.split(","))
    if a.instructions:
        res = instructions(sizes, a.calls, a.against, ads=a.ads)
    else:
        res = run(sizes, a.reps, a.against, cpus=a.cpus)
    print(json.dumps(res, indent=1) if a.json else "\n".join(lines(res)))
    return 0 if res.get("replies_identical", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
