"""The fast path's column step alone (ext/_fastpath.pyx batch_columns), 64 clicks a batch, on
4,096 clicks of slidr.bench.clicks decoded by the native decoder (fresh str objects, as in
the daemon): without and with the entity keys, user agents as generated (a few distinct
ones, repeated) and with every user agent distinct (the cache only misses). Best of 40."""

import time

import msgpack
from slidr.bench.clicks import make_clicks
from slidr.ext import _decode, _fastpath


def decoded(clicks):
    frames = b"".join(msgpack.packb([0, i, "score", [c]]) for i, c in enumerate(clicks))
    items = []
    _decode.scan(frames, 0, 1 << 30, 32, {}, lambda s: True, None, 0.0, 1.0, items, 1 << 30)
    return [it[0] for it in items]


cl = make_clicks(4096)[0]
for i, c in enumerate(cl):
    c["ts"] = 1_700_000_000_000 + i
cases = {"repeated user agents": decoded(cl),
         "every user agent distinct": decoded([dict(c, user_agent=(c.get("user_agent") or "")
                                                    + f" {i}") for i, c in enumerate(cl)])}
for name, clicks in cases.items():
    for entity in (False, True):
        best = 1e9
        for _ in range(40):
            t = time.perf_counter()
            for a in range(0, len(clicks), 64):
                _fastpath.batch_columns(clicks[a:a + 64], entity)
            best = min(best, time.perf_counter() - t)
        print(f"{name:26s} entity={entity!s:5s} {best / len(clicks) * 1e9:6.1f} ns/click")
