"""ONNX Runtime call time of two published net shapes, interleaved, through slidr.engines as
the daemon calls it; median over rounds of the per-call median (microseconds). By default one
64-32 net (joint training) against the staged net's 128-64 (two 64-32 nets side by side).

    python model_cost.py [ROUNDS [A-B C-D]]     e.g. python model_cost.py 5 128-64 192-96
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from slidr.bench.daemon import make_mlp
from slidr.bench.micro import _time
from slidr.engines import select_scorer
from slidr.featurespec import N_FEATURES

BATCHES = (1, 16, 64, 256)
SHAPES = {"joint 64-32": (64, 32), "staged 128-64": (128, 64)}
if len(sys.argv) > 3:  # two shapes named on the command line
    SHAPES = {a: tuple(int(w) for w in a.split("-")) for a in sys.argv[2:4]}

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        scorers = {k: select_scorer(make_mlp(Path(d) / f"{i}.onnx", hidden=h),
                                    backend="onnxruntime", max_batch=max(BATCHES)).infer
                   for i, (k, h) in enumerate(SHAPES.items())}
        res = {k: {b: [] for b in BATCHES} for k in SHAPES}
        for _ in range(rounds):
            for b in BATCHES:
                x = rng.random((b, N_FEATURES), dtype=np.float32)
                for k, f in scorers.items():
                    res[k][b].append(_time(lambda f=f, x=x: f(x), 0.3)["median_us"])
    out = {k: {str(b): round(float(np.median(v)), 2) for b, v in r.items()} for k, r in res.items()}
    print(json.dumps(out))
    for b in BATCHES:
        (na, j), (nb, s) = ((k, out[k][str(b)]) for k in SHAPES)
        print(f"batch {b}: {na} {j:.1f} us, {nb} {s:.1f} us ({s / j:.2f}x), "
              f"+{(s - j) / b:.2f} us per click")
