"""Weak-label-1 (human) share per family under each candidate label rule, and the share of
clicks each candidate "cannot be human" rule marks. Writes A_rules.npz for regions.py."""
import sys

import numpy as np
import pyarrow.parquet as pq
from slidr.offline.labels import weak_labels

A = sys.argv[1]
t = pq.read_table(f'{A}/clicks.parquet',
                  columns=['session_id', 'ip', 'purchased', 'logged_in', 'user_id', 'ts'])
fam = np.asarray(pq.read_table(f'{A}/truth.parquet').column('family').to_pylist())
pur = t.column('purchased').to_numpy()
li = t.column('logged_in').to_numpy()
day = t.column('ts').to_numpy() // 86400000
day = day - day.min()
base = weak_labels(pur, t.column('user_id').to_pylist(), li,
                   pq.read_table(f'{A}/customers.parquet')).astype(bool)
high = base & ~pur


def code(col):
    return np.unique(np.asarray(t.column(col).to_pylist(), dtype=object), return_inverse=True)[1]


def any_by(key):
    k = np.unique(key, return_inverse=True)[1]
    return np.bincount(k, weights=pur, minlength=k.max() + 1)[k] > 0, k


sess = code('session_id')
ip = code('ip')
s_buy, _ = any_by(sess)
ipd_buy, ipdk = any_by(ip.astype(np.int64) * 64 + day)
ip_buy, _ = any_by(ip)
sk = np.unique(sess, return_inverse=True)[1]
s_clicks = np.bincount(sk)[sk]
pairs = np.unique(np.stack([ipdk, sess]), axis=1)
ipd_sessions = np.bincount(pairs[0], minlength=ipdk.max() + 1)[ipdk]
rules = {
    'click (today)': base,
    'session buys': s_buy | high,
    'ip-day buys': ipd_buy | high,
    'ip (log) buys': ip_buy | high,
}
neg = {
    'ip-day >=10 sessions, no buy': (ipd_sessions >= 10) & ~ipd_buy & ~li,
    'ip-day >=20 sessions, no buy': (ipd_sessions >= 20) & ~ipd_buy & ~li,
    'session >=3 clicks, no buy': (s_clicks >= 3) & ~s_buy & ~li,
}
fams = ['human'] + [f for f in np.unique(fam) if f != 'human']
print('| family | clicks | ' + ' | '.join(f'label-1: {k}' for k in rules) + ' | '
      + ' | '.join(neg) + ' |')
print('|---|---:|' + '---:|' * (len(rules) + len(neg)))
for f in fams:
    m = fam == f
    print(f'| {f} | {m.sum()} | ' + ' | '.join(f'{r[m].mean():.4f}' for r in rules.values())
          + ' | ' + ' | '.join(f'{r[m].mean():.4f}' for r in neg.values()) + ' |')
m = (fam == 'human') & ~li
print(f'| human logged-out | {m.sum()} | ' + ' | '.join(f'{r[m].mean():.4f}' for r in rules.values())
      + ' | ' + ' | '.join(f'{r[m].mean():.4f}' for r in neg.values()) + ' |')
np.savez(A + '_rules.npz', fam=fam, day=day, li=li, **{**rules, **neg})
