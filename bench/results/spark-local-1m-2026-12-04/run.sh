#!/usr/bin/env bash
# slidr daily on ~1M simulated clicks: --engine local, then --engine spark on local[1] and local[2];
# per-stage wall time and peak RSS (measure.py: the whole process tree, JVM and Python workers
# included, and the daily job's own process).
# Usage (repository root): bench/results/spark-local-1m-2026-12-04/run.sh WORKDIR
set -euo pipefail
w=$1
M=bench/results/daily-scale-8m-32m-2026-12-04/measure.py
.venv/bin/slidr simulate --out "$w/log" --days 8 --clicks-per-day 125000 --seed 3 --quiet
for eng in local "local[1]" "local[2]"; do
  d="$w/$(echo "$eng" | tr -d '[]')"; mkdir -p "$d"
  if [ "$eng" = local ]; then extra=(--engine local); else extra=(--engine spark --spark-master "$eng"); fi
  nice -n 10 /usr/bin/time -v .venv/bin/python "$M" "$d/measure.json" -- .venv/bin/slidr daily \
    --clicks "$w/log/clicks.parquet" --customers "$w/log/customers.parquet" \
    --registry "$d/reg" --work "$d/work" --progress --json "${extra[@]}" > "$d/stdout" 2> "$d/stderr"
done
