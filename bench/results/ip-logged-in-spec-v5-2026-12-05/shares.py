"""The share of an IP's recent clicks that are logged in (feature `ip_logged_in_1d`, spec 5),
as the kernel computes it, by family, on a simulated log's last day.

    python shares.py LOG_DIR     # LOG_DIR from `slidr simulate` (clicks.parquet, truth.parquet)
"""

import sys

import numpy as np
import pyarrow.parquet as pq

from slidr import featurespec as fs
from slidr.offline import replay

d = sys.argv[1]
r = replay.replay_log(d + "/clicks.parquet", progress=False)
c = pq.read_table(d + "/clicks.parquet", columns=["click_id", "ts"]).to_pandas()
c = c.merge(pq.read_table(d + "/truth.parquet").to_pandas(), on="click_id", how="left")
c["share"] = r.features[:, fs.FEATURE_NAMES.index("ip_logged_in_1d")]
c["ip_1d"] = np.expm1(r.features[:, fs.FEATURE_NAMES.index("ip_clicks_1d")])
last = c[c.ts // 86_400_000 == c.ts.max() // 86_400_000]
q = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
for name, part in (("all clicks", last), ("IP day count >= 20", last[last.ip_1d >= 20])):
    print(f"\n{name}: clicks, share == 0, quantiles {q}")
    for fam, g in part.groupby("family"):
        s = g.share
        print(f"  {fam:14s} {len(s):7d}  {float((s == 0).mean()):.3f}  "
              + " ".join(f"{v:.2f}" for v in s.quantile(q)))
