"""Score one held-out day with two registry bundles and compare against the simulator truth:
    python judge_day5.py RUN_DIR VERSION... (RUN_DIR: monitor_days --out)"""
import json, sys
import numpy as np, pyarrow.parquet as pq, onnxruntime as ort
from slidr.offline import replay, train
from slidr.registry import Registry
run = sys.argv[1]
rp = replay.replay_log(f"{run}/days-0-6.parquet", progress=False)
day = train.day_index(rp.ts)
m = day == 5
x = rp.features[m]; rob = rp.is_robot[m]; pur = rp.purchased[m]
from slidr.contract import DEVICES
sl = np.array([f"{DEVICES[d]}/{'in' if l else 'out'}" for d, l in zip(rp.device[m], rp.logged_in[m])])
reg = Registry(f"{run}/registry")
for v in sys.argv[2:]:
    b = reg.bundle(v).path if hasattr(reg.bundle(v), "path") else None
    import pathlib
    p = pathlib.Path(f"{run}/registry/bundles/{v}") if b is None else pathlib.Path(b)
    s = ort.InferenceSession(str(p / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"features": x})[0].reshape(-1)
    th = json.loads((p / "thresholds.json").read_text())
    thr = np.array([float(th["slices"].get(n, th["default"])) for n in sl])
    inv = s > thr
    print(v, "all: ivr %.3f fpr %.4f prec %.3f rec %.3f" % (inv.mean(), inv[pur].mean(), rob[inv].mean(), inv[rob].mean()))
    for n in sorted(set(sl)):
        k = sl == n
        print("   %-12s n=%6d robots %.3f ivr %.3f fpr %.4f prec %.3f rec %.3f" % (n, k.sum(), rob[k].mean(), inv[k].mean(), inv[k & pur].mean() if (k&pur).any() else float('nan'), rob[k & inv].mean() if (k&inv).any() else float('nan'), inv[k & rob].mean() if (k&rob).any() else float('nan')))
