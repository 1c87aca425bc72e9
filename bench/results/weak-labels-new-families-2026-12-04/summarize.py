"""One table row per evaluate.json: share caught per family, day 8 / day 9, recall, precision,
FPR."""
import json
import sys

FAM = ["ad_stacker", "injector", "mimic", "proxy_rotator", "crawler", "farm", "low_slow",
       "scraper", "stolen"]
print("| run | " + " | ".join(FAM) + " | recall | precision | FPR |")
print("|---|" + "---|" * (len(FAM) + 3))
for p in sys.argv[1:]:
    d = {r["scored_day"]: r for r in json.load(open(p))["days"]}
    a, b = d[8], d[9]
    cells = [f"{a['caught'][f]:.3f} / {b['caught'][f]:.3f}" for f in FAM]
    cells += [f"{a[k]:.3f} / {b[k]:.3f}" for k in ("recall", "precision")]
    cells += [f"{a['fpr']:.4f} / {b['fpr']:.4f}"]
    print(f"| {p.rsplit('/', 1)[-1]} | " + " | ".join(cells) + " |")
