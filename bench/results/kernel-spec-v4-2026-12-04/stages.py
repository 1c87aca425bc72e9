"""CPU per click of hash_keys, store.update and finish_into at batch 512 (embedded store),
over make_clicks(200_000, seed=1) of bench/kernel_bench.py. Runs on a spec-3 tree (hash_keys
returns 4 arrays) and a spec-4 tree (5: the entity keys go to update)."""

import json
import time

from slidr.bench.kernel_bench import make_clicks

from slidr.kernel import embedded_store, hash_keys, native

clicks = make_clicks(200_000, seed=1)
chunks = [clicks.slice(i, i + 512) for i in range(0, len(clicks), 512)]
store = embedded_store()
th = tu = tf = 0.0
for b in chunks:
    c0 = time.process_time()
    h = hash_keys(b)
    c1 = time.process_time()
    if len(h) == 5:
        raw = store.update(b.ts, *h[:4], b.tz_offset_min, h[4])
    else:
        raw = store.update(b.ts, *h, b.tz_offset_min)
    c2 = time.process_time()
    native.finish_into(raw, b.ts, b.tz_offset_min, b.logged_in, b.device)
    c3 = time.process_time()
    th += c1 - c0
    tu += c2 - c1
    tf += c3 - c2
n = len(clicks)
print(json.dumps({"hash_us": round(th * 1e6 / n, 3), "update_us": round(tu * 1e6 / n, 3),
                  "finish_us": round(tf * 1e6 / n, 3)}))
