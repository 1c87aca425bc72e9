"""Replay a log with the kernel and keep the spec-2 features regions.py looks at (A_feat.npz)."""
import sys

import numpy as np
from slidr.offline.replay import replay_log

from slidr import featurespec as fs

rp = replay_log(sys.argv[1] + "/clicks.parquet", progress=False)
keep = ["s_gap_logsd", "ip_hours_1d", "logged_in", "s_subsec_gaps"]
np.savez(sys.argv[1] + "_feat.npz",
         **{k: rp.features[:, fs.FEATURE_NAMES.index(k)] for k in keep})
