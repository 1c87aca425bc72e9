"""Table rows from measure.py's JSON, GNU time's output and the job's training_meta.json.

    python summarize.py RUN_DIR...   (each holding measure.json, stderr, work/train/)"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

for run in map(Path, sys.argv[1:]):
    m = json.loads((run / "measure.json").read_text())
    err = (run / "stderr").read_text()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", err))
    meta = json.loads((run / "work/train/training_meta.json").read_text())
    n = meta["n_clicks"]
    t = meta["timings"]
    s = meta["split"]
    sample = meta.get("train_sample") or {}
    print(f"## {run.name}: {n:,} clicks; wall {m['wall_s']} s, CPU {cpu:.0f} s, "
          f"peak RSS {rss / 1024:.0f} MiB ({rss / 2**20:.2f} GiB, GNU time), "
          f"load1 mean {m['load1_mean']}; train {s['n_train']:,} "
          f"(held {sample.get('rows', s['n_train']):,}), val {s['n_val']:,}, "
          f"test {s['n_test']:,}; validation streamed: "
          f"{meta['memory']['validation_streamed']}")
    for st in m["stages"]:
        rate = n / st["wall_s"] if st["wall_s"] else float("nan")
        print(f"| {st['stage']} | {st['wall_s']} s | {rate:,.0f} | {st['peak_rss_mib']} MiB "
              f"| {st.get('peak_rss_command_mib', '-')} MiB | {st['load1_mean']} |")
    print("train sub-steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
