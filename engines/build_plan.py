"""ONNX -> TensorRT plan, with one dynamic-batch optimization profile, cached per GPU.

A plan is only valid for the GPU model, compute capability and TensorRT version that built
it, so all three (and a hash of the ONNX bytes and the batch range) are in the file name:

    <cache>/<model-stem>.<onnx sha256[:12]>.<gpu-slug>.sm<major><minor>.trt<version>.b<max>[.fp16].plan

The cache is the given cache dir, else $SLIDR_PLAN_CACHE, else beside the model when that
directory is writable, else ~/.cache/slidr/plans (registry bundles are read-only).

    python -m slidr.engines.build_plan MODEL.onnx [--max-batch 1024] [--cache-dir DIR] [--fp16]

The pure-Python parts (naming, profile shapes) need neither TensorRT nor a GPU; `build_plan`
and `gpu_identity` import tensorrt / pycuda when called.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from slidr.featurespec import N_FEATURES

OPT_BATCH = 256


@dataclass(frozen=True)
class GpuIdentity:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int]  # e.g. (9, 0)
    trt_version: str  # tensorrt.__version__, e.g. "10.3.0"


def profile_shapes(max_batch: int, n_features: int = N_FEATURES,
                   opt_batch: int = OPT_BATCH) -> tuple[tuple[int, int], tuple[int, int],
                                                        tuple[int, int]]:
    """(min, opt, max) input shapes for the one optimization profile: batch 1 .. max_batch,
    tuned for `opt_batch` (clamped into the range)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    opt = max(1, min(opt_batch, max_batch))
    return (1, n_features), (opt, n_features), (max_batch, n_features)


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (safe in a file name)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "gpu"


def onnx_digest(model_path: str | Path) -> str:
    from slidr.registry import sha256_file  # the bundle's checksum: stdlib-only import
    return sha256_file(model_path)


def plan_path(model_path: str | Path, gpu: GpuIdentity, max_batch: int,
              cache_dir: str | Path | None = None, fp16: bool = False,
              digest: str | None = None) -> Path:
    """Where the plan for this model on this GPU lives (see the module docstring)."""
    model_path = Path(model_path)
    digest = digest or onnx_digest(model_path)
    major, minor = gpu.compute_capability
    trt = re.sub(r"[^0-9A-Za-z.]+", "_", gpu.trt_version)
    name = (f"{model_path.stem}.{digest[:12]}.{gpu_slug(gpu.name)}.sm{major}{minor}"
            f".trt{trt}.b{int(max_batch)}{'.fp16' if fp16 else ''}.plan")
    return default_cache_dir(model_path) / name if cache_dir is None else Path(cache_dir) / name


def default_cache_dir(model_path: str | Path) -> Path:
    """$SLIDR_PLAN_CACHE if set; else beside the model when that directory is writable;
    else ~/.cache/slidr/plans (registry bundles are read-only)."""
    env = os.environ.get("SLIDR_PLAN_CACHE")
    if env:
        return Path(env)
    here = Path(model_path).parent
    if os.access(here, os.W_OK):
        return here
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slidr" / "plans"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name and compute capability of a GPU (driver queries only: no context is created)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    dev = cuda.Device(device)
    return GpuIdentity(dev.name(), tuple(dev.compute_capability()), trt.__version__)


def build_plan(model_path: str | Path, out_path: str | Path, max_batch: int,
               fp16: bool = False, workspace_mb: int = 512) -> Path:
    """Parse the ONNX model, build a serialized plan with a dynamic batch profile, and write
    it atomically. Needs tensorrt and a GPU (TensorRT builds for the device it runs on)."""
    import tensorrt as trt
    from slidr.engines import EngineError

    from slidr.util import atomic_open

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: networks are always explicit-batch; the creation flag is gone.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    data = Path(model_path).read_bytes()
    if not parser.parse(data):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {model_path}: {errs}")
    if network.num_inputs != 1:
        raise EngineError(f"{model_path}: expected one input, found {network.num_inputs}")
    inp = network.get_input(0)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    mn, opt, mx = profile_shapes(max_batch)
    profile.set_shape(inp.name, mn, opt, mx)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build a plan for {model_path} "
                          f"(see the TensorRT log above)")
    out_path = Path(out_path)
    with atomic_open(out_path, "wb") as f:
        f.write(memoryview(serialized))
    return out_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slidr.engines.build_plan",
                                 description="build (or find) the TensorRT plan for a model")
    ap.add_argument("model", help="ONNX model (e.g. a bundle's model.onnx)")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--cache-dir", default=None, help="default: beside the model")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--force", action="store_true", help="rebuild even if the plan exists")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from slidr.engines import tensorrt_unavailable_reason
    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"build_plan: cannot build here: {reason}", file=sys.stderr)
        return 2
    gpu = gpu_identity()
    path = plan_path(a.model, gpu, a.max_batch, a.cache_dir, a.fp16)
    built = False
    if a.force or not path.exists():
        from slidr.engines.tensorrt_runner import _cuda_context
        with _cuda_context():
            build_plan(a.model, path, a.max_batch, a.fp16)
        built = True
    info = {"plan": str(path), "built": built, "gpu": gpu.name,
            "compute_capability": list(gpu.compute_capability), "tensorrt": gpu.trt_version,
            "profile": [list(s) for s in profile_shapes(a.max_batch)]}
    print(json.dumps(info) if a.json else f"{'built' if built else 'cached'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
