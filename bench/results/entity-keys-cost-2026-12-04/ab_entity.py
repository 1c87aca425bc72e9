"""Interleaved A/B of feature spec 4's per-click cost in the daemon, one build, one process:
`python -m slidr.bench.batch_cost`'s embedded measurement (a real slidrd in process) with the
batcher's column step in three modes, round-robin:

  on    entity keys hashed by the fast path (batch_columns(rows, True)) and counted
  hash  the keys hashed, then dropped (every click counted as having no ad / user agent)
  off   no keys hashed, none counted

on - hash is the entity table's update in the store; hash - off the hashing in the daemon.
Usage: python ab_entity.py ROUNDS > out.txt
"""

import sys

import numpy as np
import slidr.slidrd.batcher as B
from slidr.bench import batch_cost

from slidr.contract import ClickBatch

on = B.Batcher._columns


def hashed_then_dropped(rows):
    c = B._fp.batch_columns(rows, True)
    return ClickBatch(*c[:7]), np.zeros((len(rows), 3), np.uint64)


def off(rows):
    c = B._fp.batch_columns(rows)
    return ClickBatch(*c[:7]), np.zeros((len(rows), 3), np.uint64)


MODES = {"on": on, "hash": hashed_then_dropped, "off": off}
for _ in range(int(sys.argv[1])):
    for mode, fn in MODES.items():
        B.Batcher._columns = staticmethod(fn)
        e = batch_cost.run(("embedded",), seconds=1.0)["stores"]["embedded"]
        print(f"{mode:5s} fixed {e['fixed_cpu_us_per_batch']:6.2f} us/batch, marginal "
              f"{e['marginal_cpu_us_per_click']:5.3f} us/click, CPU per batch "
              + ", ".join(f"b{b} {p['cpu_us']:.1f}" for b, p in e["points"].items()),
              flush=True)
