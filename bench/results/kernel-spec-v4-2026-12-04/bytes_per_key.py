"""bench/kernel_bench.py bytes_per_key_over_day (400 k clicks of one day) with the store's
final stats."""

import json

from slidr.bench.kernel_bench import bytes_per_key_over_day

r = bytes_per_key_over_day()
f = r["final"]
print(json.dumps({"bytes_per_key_avg": round(r["bytes_per_key"], 1),
                  "final_bytes_per_key": round(f["bytes_per_key"], 1), "keys": f["keys"],
                  "bytes": f["bytes"],
                  "tables": {k: f.get(k) for k in ("users", "sessions", "ips", "entities")},
                  "table_bytes": f.get("table_bytes"), "entry_bytes": f["entry_bytes"]}))
