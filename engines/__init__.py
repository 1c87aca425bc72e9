"""Scorers: the model bundle's ONNX model run by ONNX Runtime (CPU) or TensorRT (GPU).

Every backend is one small runner class with the same interface (see `Scorer`):

    scorer = select_scorer(bundle.model_path, backend="auto", max_batch=1024)
    scorer.warmup(1024)
    p = scorer.infer(x)       # x: float32 (n, N_FEATURES) features -> float32 (n,) robot probability

"auto" picks TensorRT when `tensorrt` and `pycuda` import, a GPU is present and a plan for
this GPU builds or loads; otherwise ONNX Runtime on CPU, and it logs (and records on the
runner as `fallback_reason`) why. Nothing here imports tensorrt, pycuda or torch at import
time, and no CUDA context exists until a TensorRT runner is constructed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from slidr.featurespec import N_FEATURES

log = logging.getLogger("slidr.engines")

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DEFAULT_MAX_BATCH = 1024


class EngineError(RuntimeError):
    """A model could not be loaded or built by the requested backend."""


@runtime_checkable
class Scorer(Protocol):
    """What the daemon, the replay tool and the parity tool call."""

    name: str
    max_batch: int

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 (n, N_FEATURES) features -> float32 (n,) robot probability (a new array)."""
        ...

    def warmup(self, max_batch: int | None = None) -> None:
        """Run every batch size the hot path will see once, so the first click pays nothing."""
        ...


def check_batch(x: object, max_batch: int | None = None) -> np.ndarray:
    """Validate one input batch; return it C-contiguous. Raises ValueError/TypeError with a
    message that says what was expected, never a backend's internal error."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"scorer input must be a numpy.ndarray of float32, not {type(x).__name__}")
    if x.dtype != np.float32:
        # No silent cast: a float64 batch on the hot path means a caller bug (and a copy).
        raise TypeError(f"scorer input must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"scorer input must have shape (n, {N_FEATURES}), got {x.shape}")
    if max_batch is not None and x.shape[0] > max_batch:
        raise ValueError(f"batch of {x.shape[0]} rows exceeds max_batch={max_batch}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def select_scorer(model_path: str | Path, backend: str = "auto",
                  max_batch: int = DEFAULT_MAX_BATCH, *, intra_op_threads: int = 1,
                  cache_dir: str | Path | None = None) -> Scorer:
    """Return a runner for `model_path` (an ONNX file).

    backend: "onnxruntime" (CPU), "tensorrt" (GPU; raises EngineError if it cannot run) or
    "auto" (TensorRT if it can run here, else ONNX Runtime; the reason is logged at INFO and
    kept as `runner.fallback_reason`). `cache_dir` is where TensorRT plans are cached
    (default: beside the model).
    """
    model_path = Path(model_path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown scorer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not model_path.is_file():
        raise FileNotFoundError(f"model not found: {model_path}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if backend == "onnxruntime":
        return _ort(model_path, max_batch, intra_op_threads)
    if backend == "tensorrt":
        from slidr.engines.tensorrt_runner import TensorRTRunner
        return TensorRTRunner(model_path, max_batch=max_batch, cache_dir=cache_dir)
    reason = tensorrt_unavailable_reason()
    if reason is None:
        try:
            from slidr.engines.tensorrt_runner import TensorRTRunner
            return TensorRTRunner(model_path, max_batch=max_batch, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - any TRT failure means "use the CPU path"
            reason = f"TensorRT plan could not be built or loaded: {type(e).__name__}: {e}"
    log.info("scorer: using onnxruntime (CPU) because %s", reason)
    runner = _ort(model_path, max_batch, intra_op_threads)
    runner.fallback_reason = reason
    return runner


def _ort(model_path: Path, max_batch: int, intra_op_threads: int):  # -> OrtRunner
    from slidr.engines.onnxruntime_runner import OrtRunner
    return OrtRunner(model_path, max_batch=max_batch, intra_op_threads=intra_op_threads)


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can be tried here; else a one-line reason (module missing, no GPU).
    Creates no CUDA context (cuInit and a device count only)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install's OSError
        return f"tensorrt is not importable ({type(e).__name__}: {e})"
    try:
        import pycuda.driver as cuda
    except Exception as e:  # noqa: BLE001
        return f"pycuda is not importable ({type(e).__name__}: {e})"
    try:
        cuda.init()
        n = cuda.Device.count()
    except Exception as e:  # noqa: BLE001 - no driver, no device node
        return f"CUDA driver could not be initialised ({type(e).__name__}: {e})"
    if n < 1:
        return "no CUDA GPU is present"
    return None


__all__ = ["BACKENDS", "DEFAULT_MAX_BATCH", "EngineError", "Scorer", "check_batch",
           "select_scorer", "tensorrt_unavailable_reason"]
