"""Keep the days 0..LAST of a `slidr simulate` log (clicks, truth; customers copied), so a
`slidr evaluate --from-day N` walk scores only the days around a family's first day.

    python truncate.py LOG OUT LAST
"""
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

from slidr.offline import train

if __name__ == "__main__":
    log, out, last = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    clicks = pq.read_table(log / "clicks.parquet")
    truth = pq.read_table(log / "truth.parquet")
    keep = train.day_index(clicks.column("ts").to_numpy()) <= last
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(clicks.filter(keep), out / "clicks.parquet")
    pq.write_table(truth.filter(keep), out / "truth.parquet")
    shutil.copy(log / "customers.parquet", out / "customers.parquet")
