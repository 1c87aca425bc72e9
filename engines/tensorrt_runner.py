"""TensorRT on one GPU: the plan (built from the bundle's ONNX model on first use and cached
per GPU, see build_plan.py) run with buffers allocated once.

Uses the tensor-name API of TensorRT 10 (`num_io_tensors`, `get_tensor_name`,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`); the removed binding-index API is
not used. tensorrt and pycuda are imported only when a runner is constructed, and the CUDA
context is the device's primary context, retained in the constructor and made current only
around each call (so a runner may be called from an executor thread), never at import time.

Per call: copy the batch into a page-locked host buffer, one async H2D copy, set the input
shape, enqueue, one async D2H copy of n floats, synchronise. No allocation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from slidr.engines import DEFAULT_MAX_BATCH, EngineError, check_batch
from slidr.engines.build_plan import build_plan, gpu_identity, plan_path, profile_shapes

from slidr.featurespec import N_FEATURES

log = logging.getLogger("slidr.engines")


@contextlib.contextmanager
def _cuda_context(device: int = 0) -> Iterator[Any]:
    """Make the device's primary context current for the block (retained, not created anew)."""
    import pycuda.driver as cuda

    cuda.init()
    ctx = cuda.Device(device).retain_primary_context()
    ctx.push()
    try:
        yield ctx
    finally:
        cuda.Context.pop()


class TensorRTRunner:
    """GPU scorer. `infer(x)` takes float32 (n, N_FEATURES) and returns a new float32 (n,) array."""

    name = "tensorrt"

    def __init__(self, model_path: str | Path, max_batch: int = DEFAULT_MAX_BATCH,
                 cache_dir: str | Path | None = None, fp16: bool = False,
                 device: int = 0) -> None:
        import pycuda.driver as cuda
        import tensorrt as trt

        self._cuda = cuda
        self.model_path = Path(model_path)
        self.max_batch = int(max_batch)
        self.fallback_reason: str | None = None
        self.gpu = gpu_identity(device)
        self.plan_path = plan_path(self.model_path, self.gpu, self.max_batch, cache_dir, fp16)
        cuda.init()
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._load_or_build(trt, fp16)
            self._bind(trt)
        except BaseException:
            cuda.Context.pop()
            self._ctx.detach()
            self._ctx = None
            raise
        cuda.Context.pop()
        log.info("scorer: tensorrt on %s (sm%d%d, TensorRT %s), plan %s", self.gpu.name,
                 *self.gpu.compute_capability, self.gpu.trt_version, self.plan_path)

    def _load_or_build(self, trt: Any, fp16: bool) -> Any:
        if not self.plan_path.exists():
            log.info("scorer: building TensorRT plan %s", self.plan_path)
            build_plan(self.model_path, self.plan_path, self.max_batch, fp16)
        engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            # A damaged cache file; the name already pins GPU and TensorRT version.
            log.warning("scorer: cached plan %s did not load; rebuilding", self.plan_path)
            build_plan(self.model_path, self.plan_path, self.max_batch, fp16)
            engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.plan_path}")
        return engine

    def _bind(self, trt: Any) -> None:
        cuda = self._cuda
        eng = self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        ins = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise EngineError(f"{self.plan_path}: expected 1 input and >= 1 output, got "
                              f"inputs {ins}, outputs {outs}")
        self.input_name = ins[0]
        self.output_name = "robot_prob" if "robot_prob" in outs else outs[0]
        for n in (self.input_name, self.output_name):
            if trt.nptype(eng.get_tensor_dtype(n)) != np.float32:
                raise EngineError(f"{self.plan_path}: tensor {n!r} is not float32")
        _mn, _opt, mx = eng.get_tensor_profile_shape(self.input_name, 0)
        if mx[0] < self.max_batch:
            raise EngineError(f"{self.plan_path}: profile max batch {mx[0]} < {self.max_batch}")
        self.context = eng.create_execution_context()
        self.stream = cuda.Stream()
        # Allocated once, sized for max_batch; every call uses a prefix of them.
        self._h_in = cuda.pagelocked_empty((self.max_batch, N_FEATURES), np.float32)
        self._h_out = cuda.pagelocked_empty(self.max_batch, np.float32)
        self._d_in = cuda.mem_alloc(self._h_in.nbytes)
        self._d_out = cuda.mem_alloc(self._h_out.nbytes)
        self.context.set_tensor_address(self.input_name, int(self._d_in))
        self.context.set_tensor_address(self.output_name, int(self._d_out))
        # Other outputs (if any) still need an address; give each its own buffer.
        self._extra = []
        for n in (o for o in outs if o != self.output_name):
            shape = eng.get_tensor_shape(n)
            per_row = int(np.prod([max(int(d), 1) for d in shape[1:]] or [1]))
            size = np.dtype(trt.nptype(eng.get_tensor_dtype(n))).itemsize
            buf = cuda.mem_alloc(max(1, self.max_batch * per_row * size))
            self._extra.append(buf)
            self.context.set_tensor_address(n, int(buf))

    def _run(self, x: np.ndarray, out: np.ndarray) -> None:
        cuda = self._cuda
        n = x.shape[0]
        self._h_in[:n] = x
        cuda.memcpy_htod_async(self._d_in, self._h_in[:n], self.stream)
        if not self.context.set_input_shape(self.input_name, (n, N_FEATURES)):
            raise EngineError(f"TensorRT rejected input shape ({n}, {N_FEATURES})")
        if not self.context.execute_async_v3(self.stream.handle):
            raise EngineError("TensorRT execute_async_v3 failed")
        cuda.memcpy_dtoh_async(self._h_out[:n], self._d_out, self.stream)
        self.stream.synchronize()
        out[:n] = self._h_out[:n]

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 (n, N_FEATURES) -> float32 (n,) robot probability; n > max_batch runs in
        chunks."""
        x = check_batch(x)
        n = x.shape[0]
        result = np.empty(n, dtype=np.float32)
        self._ctx.push()
        try:
            for start in range(0, n, self.max_batch):
                self._run(x[start:start + self.max_batch], result[start:start + self.max_batch])
        finally:
            self._cuda.Context.pop()
        return result

    def warmup(self, max_batch: int | None = None) -> None:
        """Run batch sizes 1, 2, 4, ... up to max_batch (and the profile's opt) once."""
        top = min(int(max_batch or self.max_batch), self.max_batch)
        sizes = {1, top, profile_shapes(self.max_batch)[1][0]}
        n = 1
        while n < top:
            sizes.add(n)
            n *= 2
        for s in sorted(x for x in sizes if x <= top):
            self.infer(np.zeros((s, N_FEATURES), dtype=np.float32))

    def close(self) -> None:
        """Free device buffers and release the retained primary context."""
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            bufs = [getattr(self, a, None) for a in ("_d_in", "_d_out")]
            for b in bufs + list(getattr(self, "_extra", [])):
                if b is not None:
                    b.free()
            self.context = None
            self.engine = None
        finally:
            self._cuda.Context.pop()
            self._ctx.detach()
            self._ctx = None

    def __repr__(self) -> str:
        return f"TensorRTRunner({str(self.model_path)!r}, max_batch={self.max_batch})"
