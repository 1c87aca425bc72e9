"""Fuzz the daemon's request decoder: millions of mutated frames, no crash, no leak.

    python -m slidr.bench.fuzz_decode [--frames 1000000] [--seed 1] [--through-daemon 0.05]

Frames are valid `score` / `score_many` / `ping` requests and hostile ones (wrong types, deep
nesting, huge declared lengths), mutated by byte flips, insertions, deletions, truncation and
splicing, and fed to slidr.ext.decoder.scan (the compiled decoder unless SLIDR_PURE_PYTHON=1)
in reads of random sizes. A share of them (--through-daemon) also goes through a real
in-process slidrd connection (decoder, general path, batcher, embedded store, model, answers).
Checked: nothing raises out of the decoder or the connection, the answers parse, and the
resident set after the first tenth, less what the embedded store grew by (new keys from the
fuzzed clicks), stays within --max-growth-mib. Exit 0 when all holds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack


def rss_mib() -> float:
    """Resident set in MiB, after a full collection and handing freed heap pages back (glibc
    malloc_trim), so that what is counted is memory still held, not garbage waiting for the
    collector (the daemon collects the oldest generation rarely) or the allocator's free
    lists."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _seeds() -> list[bytes]:
    from slidr.bench.clicks import make_clicks
    raw, _ = make_clicks(64)
    pool = [dict(c, ts=1_767_225_600_000 + 7 * i) for i, c in enumerate(raw)]
    out = [msgpack.packb([0, i, "score", [c]]) for i, c in enumerate(pool)]
    out += [
        msgpack.packb([0, 1, "score_many", [pool[:5]]]),
        msgpack.packb([0, 2, "ping", []]),
        msgpack.packb([2, "score", [pool[0]]]),
        msgpack.packb([0, 3, "score", [dict(pool[1], device=["app"])]]),
        msgpack.packb([0, 4, "score", [dict(pool[2], ip={"v": 4})]]),
        msgpack.packb([0, 5, "score", [pool[3], {"deadline_ms": 1}]]),
        b"\x94\x00\x06\xa5score\x91\x81\xa6device" + b"\x91" * 2000 + b"\xc0",
        b"\x94\x00\x07\xa5score\x91\xdf\xff\xff\xff\xff",  # a map of 4 billion entries
        b"\xdb\xff\xff\xff\xff",  # a 4 GiB string header
    ]
    return out


def _mutate(rnd: random.Random, seeds: list[bytes]) -> bytes:
    f = bytearray(rnd.choice(seeds))
    for _ in range(rnd.randint(0, 4)):
        op = rnd.random()
        if not f:
            break
        if op < 0.5:
            f[rnd.randrange(len(f))] = rnd.randrange(256)
        elif op < 0.65:
            f.insert(rnd.randrange(len(f) + 1), rnd.randrange(256))
        elif op < 0.8:
            del f[rnd.randrange(len(f))]
        elif op < 0.9:
            other = rnd.choice(seeds)
            a = rnd.randrange(len(other))
            f[rnd.randrange(len(f)):] = other[a:]
        else:
            del f[rnd.randrange(len(f)):]
    return bytes(f)


class _Sink:
    """An in-memory transport: counts the answers; close() ends the connection as asyncio
    does (connection_lost on the next loop pass)."""

    def __init__(self) -> None:
        self.up = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgs = 0
        self.closed = False
        self.conn: Any = None

    def write(self, b: bytes) -> None:
        self.up.feed(b)
        for _ in self.up:
            self.msgs += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            conn, self.conn = self.conn, None
            asyncio.get_running_loop().call_soon(conn.connection_lost, None)

    def set_write_buffer_limits(self, high: int | None = None,
                                low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _fuzz(frames: int, seed: int, share: float, max_growth: float) -> dict[str, Any]:
    from slidr.bench.daemon import tiny_registry
    from slidr.ext import NATIVE, decoder
    from slidr.slidrd.config import Config
    from slidr.slidrd.server import Daemon, PublicConnection

    from slidr.protocol import MAX_DEPTH

    rnd = random.Random(seed)
    seeds = _seeds()
    cache: dict[str, bool] = {}

    def check(s: str) -> bool:
        try:
            ipaddress.ip_address(s)
            ok = True
        except ValueError:
            ok = False
        if len(cache) > 100_000:
            cache.clear()
        cache[s] = ok
        return ok

    root = Path(tempfile.mkdtemp(prefix="slidr-fuzz-"))
    d = Daemon(Config(registry=str(tiny_registry(root)), port=0, metrics_port=-1,
                      deadline_ms=1000.0, max_message_bytes=1 << 16,
                      embedded_capacity=1 << 12))  # a small table: its pages do not hide a leak
    await d.start()
    statuses = [0] * 6
    hot = 0
    via_daemon = answers = conns = 0
    t0 = time.perf_counter()
    rss0 = rss_mib()
    rss_warm = None
    store_warm = 0.0
    conn = None
    sink = None
    try:
        for i in range(frames):
            if i == frames // 10:
                rss_warm = rss_mib()
                store_warm = d.store.stats().get("bytes", 0) / 2**20
            data = b"".join(_mutate(rnd, seeds) for _ in range(rnd.randint(1, 3)))
            pos = 0
            while True:
                items: list[Any] = []
                st, pos, end = decoder.scan(data, pos, 1 << 16, MAX_DEPTH, cache, check, None,
                                            0.0, 1.0, items, rnd.randint(0, 8))
                statuses[st] += 1
                hot += len(items)
                if st in (decoder.GENERAL, decoder.TOO_DEEP, decoder.ROOM) and end > pos:
                    pos = end
                    continue
                break
            if rnd.random() < share:
                if conn is None or conn.closed or conn.closing:
                    sink = _Sink()
                    conn = PublicConnection(d)
                    sink.conn = conn
                    conn.connection_made(sink)  # type: ignore[arg-type]
                    conns += 1
                cut = rnd.randrange(len(data) + 1)
                conn.data_received(data[:cut])
                conn.data_received(data[cut:])
                via_daemon += 1
                if via_daemon % 64 == 0:
                    await asyncio.sleep(0)
                    answers += sink.msgs if sink is not None else 0
        for _ in range(50):
            await asyncio.sleep(0.01)
            if d.batcher.inflight_clicks == 0:
                break
        rss1 = rss_mib()
        growth = rss1 - (rss_warm if rss_warm is not None else rss0)
        # The embedded store keeps every new key the fuzzed clicks bring (bounding it is the
        # store's own business): its bytes are not the decoder's or the connection's.
        store_growth = d.store.stats().get("bytes", 0) / 2**20 - store_warm
        return {"frames": frames, "seed": seed, "native": NATIVE,
                "decoder": decoder.__name__, "seconds": time.perf_counter() - t0,
                "statuses": dict(zip(("need_more", "general", "too_deep", "invalid",
                                      "too_large", "room"), statuses, strict=True)),
                "hot_clicks_decoded": hot, "through_daemon": via_daemon, "daemon_connections": conns,
                "connections_left_open": len(d.conns), "store": d.store.stats(),
                "inflight_after": d.batcher.inflight_clicks,
                "rss_start_mib": rss0, "rss_after_warmup_mib": rss_warm, "rss_end_mib": rss1,
                "rss_growth_after_warmup_mib": growth,
                "store_growth_after_warmup_mib": store_growth,
                "ok": growth - store_growth <= max_growth and d.batcher.inflight_clicks == 0}
    finally:
        await d.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slidr.bench.fuzz_decode",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1_000_000, help="mutated inputs (default 1M)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--through-daemon", type=float, default=0.05,
                   help="share also fed to a real in-process connection (default 0.05)")
    p.add_argument("--max-growth-mib", type=float, default=64.0,
                   help="RSS growth allowed after the first tenth (default 64)")
    a = p.parse_args(argv)
    import uvloop
    res = uvloop.run(_fuzz(a.frames, a.seed, a.through_daemon, a.max_growth_mib))
    print(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
