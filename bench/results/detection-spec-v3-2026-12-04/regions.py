"""What the spec-3 feature marks, as the kernel computes it (replay of the whole log):
per family, the share of day-9 clicks in each region; then, on day 8 (the day the day-9 model
learns the new families from), the weak-label-1 share of logged-out clicks inside the regions.

python regions.py LOGDIR
"""
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
li = F["logged_in"] > 0
cols = {
    "tz_switch >= 0.2": F["ip_tz_switch_1d"] >= 0.2,
    "tz_switch >= 0.3": F["ip_tz_switch_1d"] >= 0.3,
    "tz_switch > 0": F["ip_tz_switch_1d"] > 0,
    "ip_hours >= 18": F["ip_hours_1d"] >= np.log1p(18) - 1e-6,
    "logsd in [0, 0.25)": (F["s_gap_logsd"] >= 0) & (F["s_gap_logsd"] < 0.25),
    "logsd in [0, 0.25), mean gap 2-4.5 s": (F["s_gap_logsd"] >= 0) & (F["s_gap_logsd"] < 0.25)
    & (F["s_gap_logmean"] >= np.log(2.0)) & (F["s_gap_logmean"] <= np.log(4.5)),
    "gap 2.5-3.5 s": (F["s_gap_s"] >= np.log1p(2.5)) & (F["s_gap_s"] <= np.log1p(3.5)),
}
d9 = day == 9
print("Day 9, all clicks: share of each family's clicks in the region\n")
print("| family | clicks | " + " | ".join(cols) + " |")
print("|---|---:|" + "---:|" * len(cols))
for f in ["human", "ad_stacker", "injector", "mimic", "proxy_rotator", "crawler", "farm",
          "low_slow", "scraper", "stolen"]:
    m = d9 & (fam == f)
    if m.any():
        print(f"| {f} | {int(m.sum())} | " + " | ".join(f"{c[m].mean():.3f}" for c in cols.values())
              + " |")
new = np.isin(fam, ["ad_stacker", "injector", "mimic", "proxy_rotator"])
print("\nDay 8, logged-out clicks: weak labels inside the regions\n")
print("| region | clicks | mimic share | proxy_rotator share | new families' share | "
      "label-1 share | label-1 share without the new families |")
print("|---|---:|---:|---:|---:|---:|---:|")
for k, m in {"all logged-out": np.ones_like(li), **cols}.items():
    m = m & (day == 8) & ~li
    print(f"| {k} | {int(m.sum())} | {(fam[m] == 'mimic').mean():.3f} | "
          f"{(fam[m] == 'proxy_rotator').mean():.3f} | {new[m].mean():.3f} | "
          f"{lab[m].mean():.4f} | {lab[m & ~new].mean():.4f} |")
