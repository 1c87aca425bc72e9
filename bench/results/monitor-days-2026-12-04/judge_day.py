"""Score one day of a monitor_days run with registry bundles and compare with the simulator's
truth (the day's features from a replay of the log up to it, each bundle's thresholds).

    python judge_day.py RUN_DIR DAY VERSION [VERSION ...]     (RUN_DIR: monitor_days --out)
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from slidr.contract import DEVICES
from slidr.offline import replay, train


def main(run: Path, day: int, versions: list[str]) -> None:
    rp = replay.replay_log(run / f"days-0-{day}.parquet", progress=False)
    m = train.day_index(rp.ts) == day
    x, rob, pur = rp.features[m], rp.is_robot[m], rp.purchased[m]
    sl = np.array([f"{DEVICES[d]}/{'in' if li else 'out'}"
                   for d, li in zip(rp.device[m], rp.logged_in[m])])
    for v in versions:
        b = run / "registry" / "bundles" / v
        sess = ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"])
        s = sess.run(None, {"features": x})[0].reshape(-1)
        th = json.loads((b / "thresholds.json").read_text())
        inv = s > np.array([float(th["slices"].get(n, th["default"])) for n in sl])

        def row(k: np.ndarray) -> str:
            def share(a: np.ndarray) -> float:
                return float(a.mean()) if a.size else float("nan")
            return (f"n={k.sum():7d} robots {share(rob[k]):.3f} ivr {share(inv[k]):.3f} "
                    f"fpr {share(inv[k & pur]):.4f} precision {share(rob[k & inv]):.3f} "
                    f"recall {share(inv[k & rob]):.3f}")

        print(v, "all", row(np.ones_like(inv)))
        for n in sorted(set(sl)):
            print(f"   {n:12s}", row(sl == n))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
