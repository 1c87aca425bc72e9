"""CPU per click of the spec-4 store's update at batch 512: without entity keys, with them,
and the entity table alone (update_tables bit 8)."""

import time

from slidr.bench.kernel_bench import make_clicks

from slidr.kernel import embedded_store, hash_keys

clicks = make_clicks(200_000, seed=1)
chunks = [clicks.slice(i, i + 512) for i in range(0, len(clicks), 512)]
keys = [hash_keys(b) for b in chunks]
for mode in ("no entity keys", "entity keys", "entity table alone"):
    store = embedded_store()
    t = 0.0
    for b, h in zip(chunks, keys, strict=True):
        c0 = time.process_time()
        if mode == "no entity keys":
            store.update(b.ts, *h[:4], b.tz_offset_min)
        elif mode == "entity keys":
            store.update(b.ts, *h[:4], b.tz_offset_min, h[4])
        else:
            store.update_tables(b.ts, *h[:4], None, 8, b.tz_offset_min, h[4])
        t += time.process_time() - c0
    print(f"{mode}: {t * 1e6 / len(clicks):.3f} us/click")
