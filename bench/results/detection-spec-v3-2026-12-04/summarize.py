"""Tables from evaluate.json files: share caught per family, day 8 / day 9, recall, precision,
FPR (a family absent from the log: -); then the calibration-free view: ROC-AUC and recall at
an oracle global threshold spending exactly the FPR budget on the scored day.

python summarize.py *.json
"""
import json
import sys

FAM = ["ad_stacker", "injector", "mimic", "proxy_rotator", "crawler", "farm", "low_slow",
       "scraper", "stolen"]
STOCK = FAM[4:]


def stock(r, key):
    """Share of the stock families' clicks caught (per-family shares weighted by clicks)."""
    n = sum(r["family_clicks"][f] for f in STOCK)
    return sum(r[key][f] * r["family_clicks"][f] for f in STOCK) / n


def load(p):
    with open(p) as fh:
        return {r["scored_day"]: r for r in json.load(fh)["days"]}


def name(p):
    parts = p.split("/")
    return parts[-2] if len(parts) > 1 and parts[-1] == "evaluate.json" else parts[-1]


print("| run | " + " | ".join(FAM) + " | recall | recall, stock families | precision | FPR |")
print("|---|" + "---|" * (len(FAM) + 4))
for p in sys.argv[1:]:
    d = load(p)
    a, b = d[8], d[9]
    cells = [f"{a['caught'][f]:.3f} / {b['caught'][f]:.3f}" if f in a["caught"] else "-"
             for f in FAM]
    cells += [f"{a['recall']:.3f} / {b['recall']:.3f}",
              f"{stock(a, 'caught'):.3f} / {stock(b, 'caught'):.3f}",
              f"{a['precision']:.3f} / {b['precision']:.3f}", f"{a['fpr']:.4f} / {b['fpr']:.4f}"]
    print(f"| {name(p)} | " + " | ".join(cells) + " |")
print()
print("| run | ROC-AUC | oracle recall | oracle recall, stock families | oracle mimic | "
      "oracle proxy_rotator |")
print("|---|---|---|---|---|---|")
for p in sys.argv[1:]:
    d = load(p)
    a, b = d[8], d[9]
    if "auc" not in a:
        continue

    def fam(f, a=a, b=b):
        oc = "oracle_caught"
        return f"{a[oc][f]:.3f} / {b[oc][f]:.3f}" if f in a[oc] else "-"
    print(f"| {name(p)} | {a['auc']:.4f} / {b['auc']:.4f} | "
          f"{a['oracle_recall']:.3f} / {b['oracle_recall']:.3f} | "
          f"{stock(a, 'oracle_caught'):.3f} / {stock(b, 'oracle_caught'):.3f} | "
          f"{fam('mimic')} | {fam('proxy_rotator')} |")

# Means over the runs of each spec (the run name's prefix before the first "-"), per family
# present, first sight (day 8) / day after (day 9).
groups: dict[str, list[dict]] = {}
for p in sys.argv[1:]:
    groups.setdefault(name(p).split("-")[0], []).append(load(p))
print()
print("| spec | runs | " + " | ".join(FAM[:4]) + " | recall | precision | FPR |")
print("|---|---|" + "---|" * 7)
for g, runs in groups.items():
    runs = [d for d in runs if "mimic" in d[8]["caught"]]
    if not runs:
        continue

    def mean(f, runs=runs, nd=3):
        a = sum(f(d[8]) for d in runs) / len(runs)
        b = sum(f(d[9]) for d in runs) / len(runs)
        return f"{a:.{nd}f} / {b:.{nd}f}"
    cells = [mean(lambda r, f=f: r["caught"][f]) for f in FAM[:4]]
    cells += [mean(lambda r, k=k: r[k]) for k in ("recall", "precision")]
    cells += [mean(lambda r: r["fpr"], nd=4)]
    print(f"| {g} | {len(runs)} | " + " | ".join(cells) + " |")
