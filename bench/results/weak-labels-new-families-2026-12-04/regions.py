"""Weak-label-1 share inside the regions the spec-2 features mark (logged-out, day 8), with and
without the new families, per label rule. Needs A_rules.npz (rules.py) and A_feat.npz
(replay_save.py)."""
import sys

import numpy as np

A = sys.argv[1]
R = np.load(f'{A}_rules.npz')
F = np.load(f'{A}_feat.npz')
fam, day, li = R['fam'], R['day'], R['li'].astype(bool)
new = np.isin(fam, ['ad_stacker', 'injector', 'mimic', 'proxy_rotator'])
lo = ~li & (day == 8)
regions = {'all logged-out': lo,
           'logsd<0.25': lo & (F['s_gap_logsd'] >= 0) & (F['s_gap_logsd'] < 0.25),
           'ip_hours>=18': lo & (F['ip_hours_1d'] >= np.log1p(18) - 1e-6)}
print('| rule | region | clicks | label-1 share | without new families | ratio | label-1 clicks |')
print('|---|---|---:|---:|---:|---:|---:|')
for r in ['click (today)', 'session buys', 'ip-day buys']:
    lab = R[r].astype(bool)
    for k, m in regions.items():
        a, b = lab[m].mean(), lab[m & ~new].mean()
        print(f'| {r} | {k} | {m.sum()} | {a:.4f} | {b:.4f} | {a/b:.2f} | {lab[m].sum()} |')
