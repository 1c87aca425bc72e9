#!/usr/bin/env bash
# Feature replay clicks/s and peak RSS: the local replay vs Spark local[1] and local[2].
# Usage: bench/results/spark-local-2026-12-04/run.sh DAYS CLICKS_PER_DAY WORKDIR
set -euo pipefail
days=$1; cpd=$2; w=$3
.venv/bin/slidr simulate --out "$w/log" --days "$days" --clicks-per-day "$cpd" --quiet
for eng in local "local[1]" "local[2]"; do
  /usr/bin/time -f "$eng maxrss_kb=%M wall_s=%e" .venv/bin/python - "$w/log/clicks.parquet" "$eng" "$w" <<'PY'
import sys, time
from slidr.offline import replay
p, eng, w = sys.argv[1:]
t = time.perf_counter()
if eng == "local":
    rp = replay.replay_log(p)
else:
    from slidr.offline.spark_engine import replay_spark
    rp = replay_spark(p, master=eng, work=w + "/spark")
dt = time.perf_counter() - t
n = len(rp.features)
print(f"{eng} clicks={n} replay_s={dt:.1f} clicks_per_s={n/dt:.0f}", flush=True)
PY
done
