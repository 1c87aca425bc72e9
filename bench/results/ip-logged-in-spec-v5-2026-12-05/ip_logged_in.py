"""The share of an IP's last day of clicks that are logged in, computed from a log in plain
Python before the kernel had it: a day-decayed count of logged-in clicks over the IP's
day-decayed count, with the IP's decay, logical expiry (2 days) and out-of-order rule
(slidr/featurespec.py, spec 5: i_li / i_c86400).

    python ip_logged_in.py LOG OUT.npz
"""
import math
import sys

import numpy as np
import pyarrow.parquet as pq

TAU, TTL = 86400.0, 2 * 86_400_000
t = pq.read_table(sys.argv[1] + "/clicks.parquet", columns=["ip", "ts", "logged_in"])
ip = t.column("ip").to_pylist()
ts = t.column("ts").to_numpy().astype(np.int64)
li = np.asarray(t.column("logged_in").to_numpy(zero_copy_only=False)).astype(np.int64)
state: dict[str, list[float]] = {}
out = np.empty(len(ip))
for k in range(len(ip)):
    a = state.get(ip[k])
    tk, lk = int(ts[k]), int(li[k])
    if a is None or tk - a[0] > TTL:
        a = state[ip[k]] = [tk, 1.0, float(lk)]
    else:
        f = math.exp(-((tk - a[0]) if tk > a[0] else 0) / 1000.0 / TAU)
        a[1], a[2] = a[1] * f + 1.0, a[2] * f + lk
        a[0] = max(a[0], tk)
    out[k] = a[2] / a[1]
np.savez(sys.argv[2], share=out)
