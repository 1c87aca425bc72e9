"""Replay a log through the kernel once and keep what the diagnostics below need, in one .npz:
features, weak labels (y = 1 non-human), UTC day, family (truth.parquet), purchased, device,
logged_in, session hash, ts.

    python dump.py LOG OUT        # writes OUT_all.npz
"""
import sys
from pathlib import Path

import numpy as np

from slidr.offline import evaluate, replay, train
from slidr.offline.pipeline import load_customers, weak_labels

log, out = Path(sys.argv[1]), sys.argv[2]
fam = evaluate.load_truth(log / "clicks.parquet")
rp = replay.replay_log(log / "clicks.parquet", progress=False)
wl, _ = weak_labels(rp, load_customers(log / "customers.parquet"))
np.savez_compressed(out + "_all.npz", x=rp.features, y=(1 - wl).astype(np.int8),
                    day=train.day_index(rp.ts), fam=fam.astype(str), pur=rp.purchased,
                    dev=rp.device, li=rp.logged_in, sess=rp.session_hash, ts=rp.ts)
