"""Who sits on IPs whose clients change time zone, per day (human clicks with
ip_tz_switch_1d > 0.1 by device and logged-in, and how many purchase), and the IP features
of humans and mimic on such IPs (10th / 50th / 90th percentiles), from a dump.py file.

    python shared_ips.py W6T_ALL.npz [DAY ...]
"""
import sys

import numpy as np

from slidr.featurespec import FEATURE_NAMES

d = np.load(sys.argv[1])
fam, day, pur, x = d["fam"], d["day"], d["pur"], d["x"]
col = {n: j for j, n in enumerate(FEATURE_NAMES)}
tz = x[:, col["ip_tz_switch_1d"]]
print("day | human clicks tz-switch > 0.1 | purchasing | desktop/mobile/app | logged out/in")
for D in range(int(day.max()) + 1):
    m = (day == D) & (fam == "human") & (tz > 0.1)
    print(D, m.sum(), (m & pur).sum(), np.bincount(d["dev"][m], minlength=3).tolist(),
          np.bincount(d["li"][m].astype(int), minlength=2).tolist())
for D in [int(a) for a in sys.argv[2:]]:
    for dev, dname in ((0, "desktop"), (1, "mobile")):
        m = (day == D) & (d["li"] == 0) & (d["dev"] == dev) & (tz > 0.05)
        for f in ("human", "mimic"):
            mm = m & (fam == f)
            if mm.any():
                q = {c: np.percentile(x[mm, col[c]], [10, 50, 90]).round(2).tolist()
                     for c in ("ip_tz_switch_1d", "ip_sessions_1d", "ip_hours_1d",
                               "ip_clicks_1d")}
                print(D, dname, "logged out", f, int(mm.sum()), q)
