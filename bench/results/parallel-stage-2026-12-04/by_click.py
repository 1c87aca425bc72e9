"""A campaign family's share caught by the position of the click in its session, after one
retrain that saw a day of it (train days 0-6 and 8, validate on 7, score 9; one threshold at
1% FPR on the scored day), for stage 1 alone and for second stages on different columns.

    OMP_NUM_THREADS=1 python by_click.py LOG WORK TRAINING_SEED [FAMILY [STAGE2,...]]

LOG: a `slidr simulate --new-families all --appear-day 8 --days 10` folder (clicks.parquet,
truth.parquet); WORK: the `slidr daily` work directory of that log. STAGE2 (comma-separated):
  entities, all44 (= --training staged-all), all44_noshort, all44_noratio, entities_noshort,
  entities_noratio: one second stage on those columns (noshort: without the hour-vs-day rate
  ratios; noratio: without any rate ratio);
  avg: prints "avg" (stage 1 + the mean of the entities and all44 second stages), "sum"
  (stage 1 + both: the logit of `slidr daily --training staged`, the default) and "sum_half"
  (the entity stage at half weight);
  joint / joint_small: the all-44 and entity nets trained together as one second stage;
  entities+all44 / all44+entities: a third stage after the second.
One JSON line per variant, stage 1 alone first. One thread: as `slidr daily` trains.
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from slidr.offline import featurestore, metrics, train

from slidr.featurespec import N_FEATURES

F = featurestore.FEATURES
NEW = ("ad_stacker", "injector", "mimic", "proxy_rotator")
# stage 2 columns: the 15 entity features (the user's gap regularity, ads, (IP, ad) pairs,
# user agents) or all 44 (`slidr daily`'s second stage)
STAGE2 = {"entities": list(range(len(train.STAGE1_COLS), N_FEATURES)),
          "all44": list(range(N_FEATURES))}
RATIOS = [33, 40, 42, 43]
STAGE2["all44_noratio"] = [c for c in STAGE2["all44"] if c not in RATIOS]
STAGE2["all44_noshort"] = [c for c in STAGE2["all44"] if c not in (33, 40)]
STAGE2["entities_noshort"] = [c for c in STAGE2["entities"] if c not in (33, 40)]
STAGE2["entities_noratio"] = [c for c in STAGE2["entities"] if c not in RATIOS]

if __name__ == "__main__":
    log, work, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    family = sys.argv[4] if len(sys.argv) > 4 else "proxy_rotator"
    which = sys.argv[5].split(",") if len(sys.argv) > 5 else ["entities", "all44"]
    fs = featurestore.FeatureStore(f"{work}/features")
    a = fs.load([F, "day", "weak_label", "cell", "purchased", "is_robot"], days=None)
    days = fs.days
    split = {"tr": np.concatenate([days[:7], days[8:9]]), "va": days[7:8], "te": days[9:10]}
    P = {}
    for k, ds in split.items():
        m = np.isin(a["day"], ds)
        P[k] = {c: a[c][m] for c in (F, "weak_label", "cell", "purchased", "is_robot")}
        P[k]["rows"] = m
    w = {k: train.sample_weights(P[k]["cell"].astype(np.int64),
                                 fs.day_cells[np.isin(days, split[k])].sum(axis=0))
         for k in ("tr", "va")}
    y = {k: (1 - P[k]["weak_label"]).astype(np.int8) for k in ("tr", "va")}
    te = P["te"]
    fam = pq.read_table(f"{log}/truth.parquet", columns=["family"]).to_pandas()["family"]
    fam = np.asarray(fam.astype(str))[te["rows"]]
    sess = pq.read_table(f"{log}/clicks.parquet", columns=["session_id"]).to_pandas()
    pos = sess[te["rows"]].groupby("session_id").cumcount().to_numpy()
    ad = pq.read_table(f"{log}/clicks.parquet", columns=["ad_id"])["ad_id"].to_numpy()
    ad = ad[te["rows"]]
    b = list(train.STAGE1_COLS)
    s1 = train.fit(P["tr"][F], y["tr"], w["tr"], P["va"][F], y["va"], w["va"], seed=seed,
                   progress=False, cols=b).model
    pur, rob = te["purchased"].astype(bool), te["is_robot"].astype(bool)
    f_m = fam == family

    def row(name, net):
        row_scores(name, train.predict(net, te[F]))

    def row_scores(name, s):
        hit = s > metrics.threshold_for_fpr(s, pur, 0.01)
        out = {"log": log, "training_seed": seed, "stage2": name, "family": family,
               **{k: round(float(hit[fam == k].mean()), 3) for k in NEW},
               "stock": round(float(hit[rob & ~np.isin(fam, NEW)].mean()), 4),
               # the purchasing clicks above the threshold on the family's ads, and all of them
               "fp_on_family_ads": int((hit & pur & np.isin(ad, np.unique(ad[f_m]))).sum()),
               "fp": int((hit & pur).sum()),
               "by_position": [round(float(hit[f_m & (pos == i)].mean()), 3)
                               for i in range(int(pos[f_m].max()) + 1)],
               "clicks_by_position": [int((f_m & (pos == i)).sum())
                                      for i in range(int(pos[f_m].max()) + 1)]}
        print(json.dumps(out), flush=True)

    def stage(parts, c2):
        """One more net on columns c2 over the fixed sum of `parts`, as stage 2 trains."""
        return train.fit(P["tr"][F], y["tr"], w["tr"], P["va"][F], y["va"], w["va"],
                         hidden=train.STAGE2_HIDDEN, weight_decay=train.STAGE2_WEIGHT_DECAY,
                         seed=seed, progress=False, cols=c2, base=train.merge(parts), epochs=20,
                         early_stopping=False).model

    import torch
    orig_build = train.build_model

    def fit_two(parts_base, ent, eh):
        def build(mean, std, hidden, n_in=N_FEATURES):
            nn = torch.nn

            class Two(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
                    self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
                    self.ent = torch.as_tensor(ent)
                    da, de = (n_in, *hidden), (len(ent), *eh)
                    la = [nn.Linear(x, y) for x, y in zip(da[:-1], da[1:])]
                    le = [nn.Linear(x, y) for x, y in zip(de[:-1], de[1:])]
                    self.na = len(la)
                    self.hidden = nn.ModuleList(la + le)
                    self.out = nn.Linear(da[-1], 1)
                    self.out_e = nn.Linear(de[-1], 1)

                def forward(self, x):
                    h = (x - self.mean) / self.std
                    ha, he = h, h[:, self.ent]
                    for lin in self.hidden[:self.na]:
                        ha = torch.relu(lin(ha))
                    for lin in self.hidden[self.na:]:
                        he = torch.relu(lin(he))
                    return (self.out(ha) + self.out_e(he)).squeeze(-1)
            return Two()
        base = train.merge(parts_base)
        train.build_model = build
        try:
            return train.fit(P["tr"][F], y["tr"], w["tr"], P["va"][F], y["va"], w["va"],
                             hidden=train.STAGE2_HIDDEN, weight_decay=train.STAGE2_WEIGHT_DECAY,
                             seed=seed, progress=False, base=base, epochs=20,
                             early_stopping=False).model
        finally:
            train.build_model = orig_build

    def split_two(two, ent):
        """The two branches as plain nets (for merge)."""
        a = orig_build(two.mean.numpy(), two.std.numpy(), train.STAGE2_HIDDEN, N_FEATURES)
        eh = tuple(l.out_features for l in two.hidden[two.na:])
        e = orig_build(two.mean.numpy()[ent], two.std.numpy()[ent], eh, len(ent))
        with torch.no_grad():
            for dst, srcl in zip(a.hidden, two.hidden[:two.na]):
                dst.load_state_dict(srcl.state_dict())
            a.out.load_state_dict(two.out.state_dict())
            for dst, srcl in zip(e.hidden, two.hidden[two.na:]):
                dst.load_state_dict(srcl.state_dict())
            e.out.load_state_dict(two.out_e.state_dict())
        a.eval(); e.eval()
        return a, e

    row("none (stage 1 alone)", train.merge([(s1, b)]))
    L1 = train.logits(train.merge([(s1, b)]), te[F])
    nets = {}
    for name in which:
        if name == "entities+all44":  # a third stage on all 44 after the entity one
            parts = [(s1, b), (stage([(s1, b)], STAGE2["entities"]), STAGE2["entities"])]
            parts.append((stage(parts, STAGE2["all44"]), STAGE2["all44"]))
        elif name == "all44+entities":  # a third stage on the entity columns after all 44
            a = nets.get("all44") or stage([(s1, b)], STAGE2["all44"])
            parts = [(s1, b), (a, STAGE2["all44"])]
            parts.append((stage(parts, STAGE2["entities"]), STAGE2["entities"]))
        elif name.startswith("joint"):  # all-44 and entity branches trained together
            ent = STAGE2["entities"]
            eh = (32, 16) if name == "joint_small" else train.STAGE2_HIDDEN
            two = fit_two(parts_base=[(s1, b)], ent=ent, eh=eh)
            a_net, e_net = split_two(two, ent)
            parts = [(s1, b), (a_net, STAGE2["all44"]), (e_net, ent)]
        elif name == "avg":  # stage 1 plus the mean of the two second stages
            e = nets.get("entities") or stage([(s1, b)], STAGE2["entities"])
            a = nets.get("all44") or stage([(s1, b)], STAGE2["all44"])
            le = train.logits(train.merge([(s1, b), (e, STAGE2["entities"])]), te[F])
            la = train.logits(train.merge([(s1, b), (a, STAGE2["all44"])]), te[F])
            row_scores("avg", (le + la) / 2)
            row_scores("sum", le + la - L1)
            row_scores("sum_half", la + 0.5 * (le - L1))
            continue
        else:
            nets[name] = stage([(s1, b)], STAGE2[name])
            parts = [(s1, b), (nets[name], STAGE2[name])]
        row(name, train.merge(parts))
