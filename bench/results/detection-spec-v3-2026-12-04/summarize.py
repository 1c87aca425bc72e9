"""One table row per evaluate.json: share caught per family, day 8 / day 9, recall, precision,
FPR (a family absent from the log: -).

python summarize.py *.json
"""
import json
import sys

FAM = ["ad_stacker", "injector", "mimic", "proxy_rotator", "crawler", "farm", "low_slow",
       "scraper", "stolen"]
STOCK = FAM[4:]


def stock_recall(r):
    """Recall over the stock families' clicks only (caught share weighted by clicks)."""
    n = sum(r["family_clicks"][f] for f in STOCK)
    return sum(r["caught"][f] * r["family_clicks"][f] for f in STOCK) / n


print("| run | " + " | ".join(FAM) + " | recall | recall, stock families | precision | FPR |")
print("|---|" + "---|" * (len(FAM) + 4))
for p in sys.argv[1:]:
    with open(p) as fh:
        d = {r["scored_day"]: r for r in json.load(fh)["days"]}
    a, b = d[8], d[9]
    cells = [f"{a['caught'][f]:.3f} / {b['caught'][f]:.3f}" if f in a["caught"] else "-"
             for f in FAM]
    cells += [f"{a['recall']:.3f} / {b['recall']:.3f}",
              f"{stock_recall(a):.3f} / {stock_recall(b):.3f}",
              f"{a['precision']:.3f} / {b['precision']:.3f}"]
    cells += [f"{a['fpr']:.4f} / {b['fpr']:.4f}"]
    print(f"| {p.rsplit('/', 1)[-1]} | " + " | ".join(cells) + " |")
