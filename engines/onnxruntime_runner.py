"""ONNX Runtime on CPU: the default scorer, and the reference the TensorRT runner is checked
against (engines/parity.py).

The daemon scores micro-batches of 1..max_batch rows from one thread, so the session is set
up for latency rather than throughput: one intra-op thread by default (the daemon's other
cores serve the event loop and the feature kernel), sequential execution, full graph
optimisation, and no memory-pattern guessing across the varying batch sizes.

IO binding (output pre-bound to one buffer allocated once) is available with
io_binding=True but is off by default: on the CPU EP it measured slower, not faster (a
24-64-1 MLP, 1 thread: batch 1 15.9 us bound vs 8.5 us plain `run`; batch 1024 76 vs 73 us),
because re-binding per call costs more than ORT's own output allocation saves.

Small batches (1..BOUND_MAX rows: every batch at low rates) are the exception: each size gets
its own binding, bound once to an input and an output buffer of that size, so a call is a copy
into the input buffer, the run, and a copy of the output; no binding, no dict of feeds, no
output allocation by ORT (a 28-64-32-1 MLP, batch 1: 3.2 us against 4.6 us for the plain
call). The buffers are used by one call at a time: a call from another thread that finds
them busy takes the plain call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np
from slidr.engines import DEFAULT_MAX_BATCH, EngineError, check_batch

from slidr.featurespec import N_FEATURES

log = logging.getLogger("slidr.engines")
PROB_OUTPUT = "robot_prob"
BOUND_MAX = 8  # batches of up to this many rows run on a binding made once per size
_F32 = np.dtype(np.float32)


def ort_session(model_path: str | Path, intra_op_threads: int = 1) -> Any:
    """The one place slidr builds an ONNX Runtime session (daemon, offline scoring, benches):
    CPU provider, `intra_op_threads` threads for one operator and one for the graph, sequential
    execution, full graph optimisation, no per-shape memory patterns (batch sizes vary), and
    warnings only. Raises what ONNX Runtime raises when the model does not load."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(intra_op_threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns are planned per input shape; batch sizes vary on every call.
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    return ort.InferenceSession(str(model_path), sess_options=so,
                                providers=["CPUExecutionProvider"])


class OrtRunner:
    """CPU scorer. `infer(x)` takes float32 (n, N_FEATURES) and returns a new float32 (n,) array."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, max_batch: int = DEFAULT_MAX_BATCH,
                 intra_op_threads: int = 1, io_binding: bool = False) -> None:
        self.model_path = Path(model_path)
        self.max_batch = int(max_batch)
        self.intra_op_threads = int(intra_op_threads)
        self.fallback_reason: str | None = None
        try:
            self.session = ort_session(self.model_path, self.intra_op_threads)
        except Exception as e:  # noqa: BLE001 - ORT raises several unrelated types
            raise EngineError(f"onnxruntime could not load {self.model_path}: {e}") from e
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            raise EngineError(f"{self.model_path}: expected one input, found "
                              f"{[i.name for i in inputs]}")
        if not outputs:
            raise EngineError(f"{self.model_path}: model has no outputs")
        inp = inputs[0]
        # The trainer names its output robot_prob; any extra outputs (logits) are ignored.
        out = next((o for o in outputs if o.name == PROB_OUTPUT), outputs[0])
        if inp.type != "tensor(float)":
            raise EngineError(f"{self.model_path}: input {inp.name!r} is {inp.type}, "
                              "expected tensor(float)")
        if len(inp.shape) != 2 or (isinstance(inp.shape[1], int) and inp.shape[1] != N_FEATURES):
            raise EngineError(f"{self.model_path}: input {inp.name!r} has shape {inp.shape}, "
                              f"expected [batch, {N_FEATURES}]")
        if isinstance(inp.shape[0], int):
            raise EngineError(f"{self.model_path}: input batch dimension is fixed at "
                              f"{inp.shape[0]}; export the model with a dynamic batch axis")
        if out.type != "tensor(float)" or len(out.shape) not in (1, 2) or (
                len(out.shape) == 2 and isinstance(out.shape[1], int) and out.shape[1] != 1):
            raise EngineError(f"{self.model_path}: output {out.name!r} is {out.type} "
                              f"{out.shape}; expected float [batch] or [batch, 1] probabilities")
        self.input_name = inp.name
        self.output_name = out.name
        self._out_rank = len(out.shape)
        self._out = np.empty(self.max_batch, dtype=np.float32)  # allocated once
        self._binding = self.session.io_binding() if io_binding else None
        # The C binding's run skips the Python wrapper's per-call checks (~3 us of a ~15 us
        # call on a small batch); inputs are validated by check_batch already.
        inner = getattr(self.session, "_sess", None)
        self._crun = getattr(inner, "run", None) if inner is not None else None
        self._outs = [self.output_name]
        self._bound: dict[int, tuple[np.ndarray, np.ndarray, Any]] = {}
        self._bound_run = getattr(inner, "run_with_iobinding", None) if inner is not None \
            else None
        self._bound_lock = Lock()  # a call that finds the buffers busy takes the plain path
        self._run_options: Any = None

    def _bind(self, n: int) -> tuple[np.ndarray, np.ndarray, Any] | None:
        """The binding for batches of n rows (made on first use) or None where the C binding
        has no run_with_iobinding."""
        if self._bound_run is None:
            return None
        import onnxruntime as ort
        inb = np.zeros((n, N_FEATURES), dtype=np.float32)
        outb = np.zeros(n, dtype=np.float32)
        b = self.session.io_binding()
        b.bind_input(self.input_name, "cpu", 0, np.float32, inb.shape, inb.ctypes.data)
        b.bind_output(self.output_name, "cpu", 0, np.float32,
                      (n,) if self._out_rank == 1 else (n, 1), outb.ctypes.data)
        if self._run_options is None:
            self._run_options = ort.RunOptions()
        out = self._bound[n] = (inb, outb, b._iobinding)
        return out

    def _run(self, x: np.ndarray, out: np.ndarray) -> None:
        """Score x (1 <= n <= max_batch rows, validated) into out[:n]."""
        n = x.shape[0]
        if self._binding is not None:
            b = self._binding
            b.bind_cpu_input(self.input_name, x)
            shape = (n,) if self._out_rank == 1 else (n, 1)
            b.bind_output(self.output_name, "cpu", 0, np.float32, shape,
                          self._out.ctypes.data)
            self.session.run_with_iobinding(b)
            out[:n] = self._out[:n]
        else:
            out[:n] = self._score(x).reshape(n)

    def _score(self, x: np.ndarray) -> np.ndarray:
        if self._crun is not None:
            return self._crun(self._outs, {self.input_name: x}, None)[0]  # type: ignore[no-any-return]
        return self.session.run(self._outs, {self.input_name: x})[0]  # type: ignore[no-any-return]

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 (n, N_FEATURES) -> float32 (n,) robot probability. n may exceed max_batch: the
        batch is then scored in max_batch chunks."""
        if not (type(x) is np.ndarray and x.dtype is _F32 and x.ndim == 2
                and x.shape[1] == N_FEATURES and x.flags.c_contiguous):
            x = check_batch(x)  # the usual batch passes the identity tests above, cheaper
        n = x.shape[0]
        if 0 < n <= BOUND_MAX and self._binding is None and self._bound_lock.acquire(False):
            try:
                bb = self._bound.get(n) or self._bind(n)
                if bb is not None:
                    inb, outb, cb = bb
                    inb[...] = x
                    self._bound_run(cb, self._run_options)
                    return outb.copy()  # the buffer is reused by the next call
            finally:
                self._bound_lock.release()
        if 0 < n <= self.max_batch and self._binding is None:
            return self._score(x).reshape(n)  # ORT's output is a fresh array: no copy needed
        result = np.empty(n, dtype=np.float32)
        for start in range(0, n, self.max_batch):
            self._run(x[start:start + self.max_batch], result[start:start + self.max_batch])
        return result

    def warmup(self, max_batch: int | None = None) -> None:
        """Touch the batch sizes the daemon uses (powers of two up to max_batch, and 1)."""
        top = min(int(max_batch or self.max_batch), self.max_batch)
        n = 1
        while True:
            self.infer(np.zeros((min(n, top), N_FEATURES), dtype=np.float32))
            if n >= top:
                break
            n *= 2

    def __repr__(self) -> str:
        return (f"OrtRunner({str(self.model_path)!r}, max_batch={self.max_batch}, "
                f"intra_op_threads={self.intra_op_threads})")
