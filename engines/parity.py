"""Parity: feed identical batches to two scorers and report how far they disagree.

    python -m slidr.engines.parity MODEL.onnx [--a onnxruntime] [--b auto|tensorrt|reference|torch:FILE]
                                   [--sizes 1,7,256,1024] [--seed 0] [--atol 1e-4] [--json]

Backends: "onnxruntime", "tensorrt", "auto" (whatever select_scorer picks here),
"reference" (onnx.reference, a plain-Python ONNX evaluator: a CPU-only second opinion on the
graph) and "torch:FILE" (a TorchScript module, e.g. the trainer's export; only if torch is
installed). Exit status 0 when max |a - b| <= atol on every batch, 1 otherwise.

Batches are random features in the ranges the kernel produces (log1p counts >= 0, unit-circle
terms in [-1, 1], 0/1 flags), so the comparison runs where the model is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from slidr.featurespec import FEATURES, N_FEATURES

DEFAULT_SIZES = (1, 7, 64, 256, 1000, 1024)


def random_features(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of plausible feature vectors, float32 (n, N_FEATURES)."""
    x = np.empty((n, N_FEATURES), dtype=np.float32)
    dev = rng.integers(0, 3, size=n)
    for j, (name, transform) in enumerate(FEATURES):
        if transform in ("log1p", "log1p_hll"):
            x[:, j] = np.log1p(rng.gamma(0.6, 4.0, size=n))
        elif transform == "log1p_gap":
            gap = rng.exponential(600.0, size=n)
            x[:, j] = np.where(rng.random(n) < 0.2, 0.0, np.log1p(gap))
        elif transform == "unit_circle":
            x[:, j] = np.sin(rng.uniform(0, 2 * np.pi, size=n))
        elif transform == "identity":
            x[:, j] = rng.integers(0, 2, size=n)
        elif transform == "one_hot":
            x[:, j] = dev == int(name == "dev_mobile") + 2 * int(name == "dev_app")
        else:  # a transform this tool does not know yet: stay in a sane range
            x[:, j] = rng.standard_normal(n)
    return x


class _Fn:
    """Adapter so plain callables (reference evaluator, torch) look like a runner."""

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name = name
        self._fn = fn

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(x), dtype=np.float32).reshape(x.shape[0])


def _reference(model_path: Path) -> _Fn:
    from onnx.reference import ReferenceEvaluator
    ev = ReferenceEvaluator(str(model_path))
    in_name = list(ev.input_names)[0]
    return _Fn("reference", lambda x: cast(list, ev.run(None, {in_name: x}))[0])


def _torch(path: str) -> _Fn:
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"backend torch:{path} needs torch, which is not installed") from e
    mod = torch.jit.load(path, map_location="cpu").eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return mod(torch.from_numpy(x)).numpy()
    return _Fn(f"torch:{Path(path).name}", fn)


def make_backend(spec: str, model_path: str | Path, max_batch: int = 1024) -> Any:
    """'onnxruntime' | 'tensorrt' | 'auto' | 'reference' | 'torch:FILE' -> object with infer()."""
    if spec == "reference":
        return _reference(Path(model_path))
    if spec.startswith("torch:"):
        return _torch(spec[len("torch:"):])
    from slidr.engines import select_scorer
    return select_scorer(model_path, backend=spec, max_batch=max_batch)


def compare(a: Any, b: Any, sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0,
            atol: float = 1e-4) -> dict[str, Any]:
    """Score the same random batches with a and b; worst absolute and relative disagreement,
    overall and per batch size."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        x = random_features(int(n), rng)
        pa, pb = a.infer(x), b.infer(x)
        if pa.shape != (n,) or pb.shape != (n,):
            raise RuntimeError(f"batch {n}: shapes differ: {a.name} {pa.shape}, "
                               f"{b.name} {pb.shape}")
        d = np.abs(pa.astype(np.float64) - pb.astype(np.float64))
        rel = d / np.maximum(np.abs(pb.astype(np.float64)), 1e-6)
        rows.append({"batch": int(n), "max_abs": float(d.max()), "max_rel": float(rel.max()),
                     "mean_abs": float(d.mean()),
                     "nonfinite": int((~np.isfinite(pa)).sum() + (~np.isfinite(pb)).sum())})
    max_abs = max(r["max_abs"] for r in rows)
    ok = max_abs <= atol and all(r["nonfinite"] == 0 for r in rows)
    return {"a": a.name, "b": b.name, "sizes": [int(s) for s in sizes], "seed": seed,
            "atol": atol, "max_abs": max_abs, "max_rel": max(r["max_rel"] for r in rows),
            "ok": bool(ok), "batches": rows,
            "b_fallback_reason": getattr(b, "fallback_reason", None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slidr.engines.parity",
                                 description="compare two scorers on identical batches")
    ap.add_argument("model", help="ONNX model")
    ap.add_argument("--a", default="onnxruntime")
    ap.add_argument("--b", default="auto",
                    help="onnxruntime | tensorrt | auto | reference | torch:FILE")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    try:
        ra = make_backend(a.a, a.model, a.max_batch)
        rb = make_backend(a.b, a.model, a.max_batch)
        res = compare(ra, rb, sizes, a.seed, a.atol)
    except (RuntimeError, ValueError, FileNotFoundError, TypeError) as e:
        print(f"parity: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        if res["b_fallback_reason"]:
            print(f"note: {a.b} resolved to {rb.name}: {res['b_fallback_reason']}")
        print(f"{res['a']} vs {res['b']}  (atol {a.atol:g})")
        for r in res["batches"]:
            print(f"  batch {r['batch']:>5}: max_abs {r['max_abs']:.3e}  "
                  f"max_rel {r['max_rel']:.3e}  mean_abs {r['mean_abs']:.3e}")
        print(f"{'OK' if res['ok'] else 'DISAGREE'}: max_abs {res['max_abs']:.3e}, "
              f"max_rel {res['max_rel']:.3e}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
