"""Weak-label-1 (human) share inside the regions the spec-2 features mark, day 8 of a scenario."""
import sys

import numpy as np
import pyarrow.parquet as pq
from slidr.offline.labels import weak_labels
from slidr.offline.replay import replay_log

from slidr import featurespec as fs

A = sys.argv[1]
rp = replay_log(f"{A}/clicks.parquet", progress=False)
clicks = pq.read_table(f"{A}/clicks.parquet", columns=["purchased", "user_id", "logged_in"])
fam = np.asarray(pq.read_table(f"{A}/truth.parquet").column("family").to_pylist())
lab = weak_labels(clicks.column("purchased").to_numpy(), clicks.column("user_id").to_pylist(),
                  clicks.column("logged_in").to_numpy(), pq.read_table(f"{A}/customers.parquet"))
x = rp.features
F = {n: x[:, i] for i, n in enumerate(fs.FEATURE_NAMES)}
day = rp.ts // 86_400_000 - rp.ts.min() // 86_400_000
d8 = day == 8
li = F["logged_in"] > 0
regions = {
    "all logged-out": ~li,
    "subsec>0, logged-out": (F["s_subsec_gaps"] > 0) & ~li,
    "logsd<0.25, logged-out": (F["s_gap_logsd"] >= 0) & (F["s_gap_logsd"] < 0.25) & ~li,
    "ip_hours>=18, logged-out": (F["ip_hours_1d"] >= np.log1p(18) - 1e-6) & ~li,
}
print("| region (day 8) | clicks | label-1 share | label-1 share without the new families | new families' share |")
print("|---|---:|---:|---:|---:|")
new = np.isin(fam, ["ad_stacker", "injector", "mimic", "proxy_rotator"])
for k, m in regions.items():
    m = m & d8
    print(f"| {k} | {int(m.sum())} | {lab[m].mean():.4f} | {lab[m & ~new].mean():.4f} | "
          f"{new[m].mean():.3f} |")
