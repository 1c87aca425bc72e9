"""What the features show for the campaign-targeting families against humans on the same ads,
and what the weak labels say there (kernel replay of a simulated log with the current feature
spec).

python campaigns.py LOG_DIR [DAY ...]     (default days 8 9)

Per day: for each campaign family (manifest.json `target_ads`), the median of each per-ad /
per-(IP, ad) / per-agent feature for the family, for humans on the family's campaign ads, and
for all humans; then regions (thresholds on one feature), each with the share of the family's
clicks in it, the share of human clicks in it, the family's share of the region's logged-out
clicks and the weak-label-1 share of the region's logged-out clicks.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from slidr.offline import replay, train
from slidr.offline.pipeline import load_customers, weak_labels

from slidr.featurespec import FEATURE_NAMES

d = Path(sys.argv[1])
days = [int(x) for x in sys.argv[2:]] or [8, 9]
rp = replay.replay_log(d / "clicks.parquet")
wl, _ = weak_labels(rp, load_customers(d / "customers.parquet"))
fam = np.asarray(pq.read_table(d / "truth.parquet").column("family").to_pylist())
ad = np.asarray(pq.read_table(d / "clicks.parquet", columns=["ad_id"]).column("ad_id")
                .to_pylist())
camp = json.loads((d / "manifest.json").read_text()).get("target_ads", {})
day = train.day_index(rp.ts)
x = rp.features
col = {n: x[:, i] for i, n in enumerate(FEATURE_NAMES)}
SHOW = [n for n in ("ad_clicks_1h", "ad_clicks_1d", "ad_rate_ratio", "ad_ips_1d",
                    "ad_sessions_1d", "ipad_clicks_1h", "ipad_clicks_1d", "ipad_sessions_1d",
                    "ua_clicks_1h", "ua_ips_1d", "u_gap_logsd", "s_gap_logsd", "s_gap_s")
        if n in col]
human = fam == "human"
out = ~rp.logged_in
for dd in days:
    md = day == dd
    print(f"\n## day {dd}\n")
    print("| group | clicks | " + " | ".join(SHOW) + " |")
    print("|---|---:|" + "---:|" * len(SHOW))
    groups = [("human, all", md & human)]
    for f, ads in camp.items():
        on = np.isin(ad, ads)
        groups += [(f, md & (fam == f)), (f"human on {f}'s ads", md & human & on)]
    for g, m in groups:
        print(f"| {g} | {int(m.sum())} | " + " | ".join(
            f"{np.median(col[n][m]):.2f}" if m.any() else "-" for n in SHOW) + " |")
    for f, ads in camp.items():
        on = np.isin(ad, ads)
        mf = md & (fam == f)
        print(f"\n{f}, day {dd}: logged-out clicks on its ads {int((md & on & out).sum())}, "
              f"weak-label-1 share there {wl[md & on & out].mean():.4f} (all logged-out "
              f"{wl[md & out].mean():.4f}; logged-out humans on those ads "
              f"{wl[md & on & out & human].mean():.4f})\n")
        print("| region | clicks | share of family | share of humans | family share of "
              "logged-out | label-1 share of logged-out |")
        print("|---|---:|---:|---:|---:|---:|")
        for n in SHOW[:8]:
            v = col[n]
            for q in (0.5, 0.25):
                t = float(np.quantile(v[mf], q))
                r = md & (v >= t)
                ro = r & out
                print(f"| {n} >= {t:.2f} | {int(r.sum())} | {(v[mf] >= t).mean():.3f} | "
                      f"{(v[md & human] >= t).mean():.4f} | "
                      f"{(fam[ro] == f).mean() if ro.any() else 0:.3f} | "
                      f"{wl[ro].mean() if ro.any() else 0:.4f} |")
