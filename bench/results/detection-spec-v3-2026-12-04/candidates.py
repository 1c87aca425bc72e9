"""Candidate per-IP time-zone features computed in plain Python from a simulated log (before any
kernel work), and the proxy_rotator ceiling per click position.

python candidates.py LOGDIR
"""
import math
import sys

import numpy as np
import pyarrow.parquet as pq

A = sys.argv[1]
c = pq.read_table(f"{A}/clicks.parquet", columns=["ts", "session_id", "ip", "tz_offset_min",
                                                   "logged_in"]).to_pandas()
c["family"] = pq.read_table(f"{A}/truth.parquet").column("family").to_pandas().astype(str).values
c = c.sort_values("ts", kind="stable").reset_index(drop=True)
c["day"] = c.ts // 86_400_000 - c.ts.min() // 86_400_000
KIND = {"172": "cgnat", "198": "corp", "34": "dc", "35": "dc", "103": "farm", "45": "crawl"}
c["iptype"] = c.ip.map(lambda ip: KIND.get(ip.split(".")[0], "residential"))


def distinct_tz(win_ms):
    """Distinct zones per IP over its current and previous tumbling bucket (click included)."""
    out, st = np.zeros(len(c), np.int32), {}
    for i, (ip, b, tz) in enumerate(zip(c.ip.values, c.ts.values // win_ms, c.tz_offset_min.values, strict=True)):
        s = st.get(ip)
        if s is None or b - s[0] >= 2:
            s = [b, set(), set()]
        elif b - s[0] == 1:
            s = [b, set(), s[1]]
        s[1].add(int(tz))
        st[ip] = s
        out[i] = len(s[1] | s[2])
    return out


def switch_share(tau_s):
    """Decayed count of clicks whose zone differs from the IP's previous click / decayed clicks."""
    sw, cn, st = np.zeros(len(c)), np.zeros(len(c)), {}
    for i, (ip, t, tz) in enumerate(zip(c.ip.values, c.ts.values, c.tz_offset_min.values, strict=True)):
        s = st.get(ip) or [t, int(tz), 0.0, 0.0]
        f = math.exp(-max(t - s[0], 0) / 1000 / tau_s)
        s[2] = s[2] * f + (1.0 if int(tz) != s[1] else 0.0)
        s[3] = s[3] * f + 1
        s[0], s[1] = max(t, s[0]), int(tz)
        st[ip] = s
        sw[i], cn[i] = s[2], s[3]
    return sw / cn


c["tz_1h"], c["tz_1d"] = distinct_tz(3_600_000), distinct_tz(86_400_000)
c["sw_1h"], c["sw_1d"] = switch_share(3600.0), switch_share(86400.0)
marks = {"distinct tz 1-2 h >= 2": c.tz_1h >= 2, "distinct tz 1-2 h >= 3": c.tz_1h >= 3,
         "distinct tz 1-2 d >= 5": c.tz_1d >= 5, "switch share 1 h >= 0.3": c.sw_1h >= 0.3,
         "switch share 1 d >= 0.2": c.sw_1d >= 0.2, "switch share 1 d >= 0.3": c.sw_1d >= 0.3}
for day in (8, 9):
    d = c[(c.day == day) & ~c.logged_in]
    print(f"\nDay {day}, logged-out clicks\n")
    print("| region | clicks | mimic share | human share | share of mimic caught | "
          "share of humans in it |")
    print("|---|---:|---:|---:|---:|---:|")
    nm, nh = (d.family == "mimic").sum(), (d.family == "human").sum()
    for k, m in marks.items():
        g = d[m.loc[d.index]]
        vc = g.family.value_counts()
        print(f"| {k} | {len(g)} | {vc.get('mimic', 0) / max(len(g), 1):.2f} | "
              f"{vc.get('human', 0) / max(len(g), 1):.2f} | {vc.get('mimic', 0) / nm:.2f} | "
              f"{vc.get('human', 0) / nh:.3f} |")
d = c[c.day == 9]
print("\nDay 9, humans by kind of IP: share of clicks marked\n")
print("| IP kind | clicks | " + " | ".join(marks) + " |")
print("|---|---:|" + "---:|" * len(marks))
for t, g in d[d.family == "human"].groupby("iptype"):
    print(f"| {t} | {len(g)} | " + " | ".join(f"{m.loc[g.index].mean():.3f}" for m in marks.values())
          + " |")
# proxy_rotator: which click of its session, and the second click's single gap
c["k"] = c.groupby("session_id").cumcount()
c["gap"] = c.groupby("session_id").ts.diff() / 1000
p = c[(c.day == 9) & (c.family == "proxy_rotator")]
h2 = c[(c.day == 9) & (c.family == "human") & (c.k == 1)]
p2 = p[p.k == 1]
print(f"\nproxy_rotator day 9: first click {(p.k == 0).mean():.3f}, second {(p.k == 1).mean():.3f}, "
      f"third or later {(p.k >= 2).mean():.3f}")
for lo, hi in ((2.5, 3.5), (2.6, 3.4)):
    print(f"second click with a gap in [{lo}, {hi}] s: {p2.gap.between(lo, hi).sum()} of "
          f"{len(p2)} proxy_rotator second clicks, {h2.gap.between(lo, hi).sum()} of {len(h2)} "
          f"human second clicks")
