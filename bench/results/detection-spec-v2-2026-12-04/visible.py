"""Per family: share of clicks on which each spec-2 feature marks it (day 9 of scenario A)."""
import sys

import numpy as np
import pyarrow.parquet as pq
from slidr.offline.replay import replay_log

from slidr import featurespec as fs

A = sys.argv[1]
rp = replay_log(f"{A}/clicks.parquet", progress=False)
truth = pq.read_table(f"{A}/truth.parquet")
fam = np.asarray(truth.column("family").to_pylist())
ids = pq.read_table(f"{A}/clicks.parquet", columns=["click_id"]).column("click_id")
assert truth.column("click_id").equals(ids)
x = rp.features
ts = rp.ts
# days counted from the log's first UTC day
day = ts // 86_400_000 - ts.min() // 86_400_000
sel = day == int(sys.argv[2]) if len(sys.argv) > 2 else day == day.max()
F = {n: x[:, i] for i, n in enumerate(fs.FEATURE_NAMES)}
cols = {
    "subsec>0": F["s_subsec_gaps"] > 0,
    "logsd<0.25 (>=2 gaps)": (F["s_gap_logsd"] >= 0) & (F["s_gap_logsd"] < 0.25),
    "ip_hours>=18": F["ip_hours_1d"] >= np.log1p(18) - 1e-6,
    "s_clicks_1h>10": F["s_clicks_1h"] > np.log1p(10),
}
print("| family | clicks | " + " | ".join(cols) + " |")
print("|---|---:|" + "---:|" * len(cols))
for f in ["human", "ad_stacker", "injector", "mimic", "proxy_rotator", "crawler", "farm",
          "low_slow", "scraper", "stolen"]:
    m = sel & (fam == f)
    if not m.any():
        continue
    print(f"| {f} | {int(m.sum())} | " + " | ".join(f"{c[m].mean():.3f}" for c in cols.values())
          + " |")
