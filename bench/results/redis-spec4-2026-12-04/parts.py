"""How many masters a batch reaches on a local Redis Cluster, with and without the entity keys:
script calls (parts) per batch and click copies per click (a click is in every part that holds
one of its keys), for the first 4000 generated clicks of slidr.bench.clicks, 40 ms apart, on
3 and 6 masters. Run from the repository root:

    python bench/results/redis-spec4-2026-12-04/parts.py
"""

from __future__ import annotations

import numpy as np
from slidr.bench.clicks import make_clicks
from slidr.contract import ClickBatch
from slidr.kernel import hash_keys
from slidr.store_cluster import RedisClusterStore
from slidr.testing.redis_cluster import RedisCluster


def main() -> None:
    pool, _ = make_clicks(20_000)
    b = ClickBatch.from_clicks([{**c, "ts": 1_767_225_600_000 + 40 * i}
                                for i, c in enumerate(pool[:4000])])
    uh, sh, ih, hll, eh = hash_keys(b, True)
    for masters in (3, 6):
        cl = RedisCluster(masters=masters, replicas=0).start()
        try:
            cs = RedisClusterStore(cl.url, prefix="slidr:", timeout_s=5)
            for bs in (1, 8, 64):
                row = []
                for name, e in (("user/session/IP keys only", None), ("with entity keys", eh)):
                    parts, copies, only_e = [], [], 0
                    for a in range(0, 4000, bs):
                        z = a + bs
                        plan = cs.request(b.ts[a:z], uh[a:z], sh[a:z], ih[a:z], hll[a:z],
                                          b.tz_offset_min[a:z], None if e is None else e[a:z])
                        parts.append(len(plan.parts))
                        copies.append(sum(p.n for p in plan.parts) / (z - a))
                        only_e += sum(int(not np.logical_or.reduce(
                            [p.on[c] for c in range(3)]).any()) for p in plan.parts)
                    row.append(f"{name}: {np.mean(parts):.2f} calls/batch, "
                               f"{np.mean(copies):.2f} click copies/click, "
                               f"{only_e / len(parts):.2f} calls/batch for entity keys only")
                print(f"{masters} masters, batch {bs}: " + "; ".join(row), flush=True)
            cs.close()
        finally:
            cl.stop()


if __name__ == "__main__":
    main()
