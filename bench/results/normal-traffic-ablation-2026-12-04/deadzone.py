"""Rate ratios with a dead zone: max(r - d, 0), on the raw and on the age-corrected ratios."""
import json
import sys

import numpy as np
from ablate_features import recall_at, split
from age_corrected import IX, fit_score, load

R1 = [IX["ad_rate_ratio"], IX["ua_rate_ratio"]]
R7 = [IX["ad_rate_ratio_7d"], IX["ua_rate_ratio_7d"]]


def dz(x, d1, d7):
    y = x.copy()
    y[:, R1] = np.maximum(y[:, R1] - d1, 0)
    y[:, R7] = np.maximum(y[:, R7] - d7, 0)
    return y


# name: (ratios, dead zone of the hour/day ratios, of the day/week ratios, weight decay[,
# training seed (7)])
VARIANTS = {
    "raw_dz": ("raw", 1.0, 0.5, 1e-4),
    "age_dz": ("age", 1.0, 0.3, 1e-4),
    "age_dz_wide": ("age", 1.5, 0.5, 1e-4),
    "age_dz_wd": ("age", 1.0, 0.3, 1e-3),
    "age_dz_wide_wd": ("age", 1.5, 0.5, 1e-3),
    "age_dz_wide_wd_seed8": ("age", 1.5, 0.5, 1e-3, 8),
    "age_dz_wider_wd": ("age", 2.0, 0.7, 1e-3),
    "age_dz_wide_wd2": ("age", 1.5, 0.5, 2e-3),
}

if __name__ == "__main__":
    s = sys.argv[1]
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(VARIANTS)
    fs, raw, age, day, lab = load(f"sim{s}", f"work{s}")
    d_tr, d_va, d_te = split(fs)
    out = {"seed": s}
    for n in names:
        base, d1, d7, wd, *seed = VARIANTS[n]
        M = dz(raw if base == "raw" else age, d1, d7)
        sc, m_te = fit_score(fs, M, day, lab, d_tr, d_va, d_te, seed=(seed or [7])[0], wd=wd)
        out[n] = recall_at(sc, lab["purchased"][m_te].astype(bool), lab["is_robot"][m_te].astype(bool))
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out), flush=True)
