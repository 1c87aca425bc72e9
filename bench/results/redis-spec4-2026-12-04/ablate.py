"""Where the spec-4 script's instructions go: redis-server instructions per click (callgrind)
at batch 64 for the script as built and for variants with one piece of the entity work removed
(their replies are not read). Run from the repository root:

    python bench/results/redis-spec4-2026-12-04/ablate.py [--calls 30]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from slidr.bench import lua_cost as lc
from slidr.bench.clicks import make_clicks
from slidr.testing.redis_server import free_port

SRC = Path("slidr/store_redis.lua").read_text()


def variants() -> dict[str, str]:
    v = {"as built": SRC}
    v["row without the 36 entity values"] = SRC.replace(
        """                 s[5], s[6], s[7], s[8], p[6], u[6], u[7], u[8],
                 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12,
                 x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12,
                 g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12)""",
        """                 s[5], s[6], s[7], s[8], p[6], u[6], u[7], u[8])""").replace(
        "string.rep('d', 67)", "string.rep('d', 31)")
    w0 = SRC.index("  o = nu + ns + ni\n  for k = o + 1, nk do")
    w1 = SRC.index("-- One bulk string per click")
    v["no entity writes"] = SRC[:w0] + "end\n" + SRC[w1:]
    v["no entity HLL updates"] = SRC.replace(
        """  ehll_add(p, 6, k, 1 + sreg, srank)
  ehll_add(p, 10, k, 1 + M + ireg, irank)
  return p[1]""", "  return p[1]")
    no = SRC
    for kind in ("ea", "ex", "eg"):
        no = no.replace(f"  if {kind} > 0 then", "  if false then")
    v["no entity counting nor writes (keys still read)"] = no[:no.index(
        "  o = nu + ns + ni\n  for k = o + 1, nk do")] + "end\n" + no[no.index(
            "-- One bulk string per click"):]
    for name, s in v.items():
        assert name == "as built" or s != SRC, name
    return v


def count(src: str, b: int, calls: int) -> float:
    d = tempfile.mkdtemp()
    port = free_port()
    dump = os.path.join(d, "cg.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}",
         shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = redis.Redis(port=port, socket_timeout=60)
        for _ in range(600):
            try:
                admin.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        store = lc._store(f"redis://127.0.0.1:{port}/0", src)
        store.parse_reply = lambda resp, n: resp
        store._r.connection_pool.connection_kwargs["socket_timeout"] = 120
        pool, _ = make_clicks(20_000)
        warm, k = lc._batches(pool, 0, 64, len(pool) // 64 + 1, 40)
        for x in warm:
            store.update(*x)
        batches, k = lc._batches(pool, k, b, calls, 40)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       capture_output=True)
        for x in batches:
            store.update(*x)
        subprocess.run(["callgrind_control", "-d", "x", str(proc.pid)], check=True,
                       capture_output=True)
        f = sorted(glob.glob(dump + ".*"), key=os.path.getmtime)[-1]
        with open(f) as fh:
            for line in fh:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1]) / calls / b
        raise RuntimeError("no total")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()
    for name, src in variants().items():
        print(f"{name}: {count(src, a.batch, a.calls) / 1e3:.1f} k instructions/click",
              flush=True)


if __name__ == "__main__":
    main()
