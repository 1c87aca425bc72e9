"""Scorers (engines/): the ONNX Runtime runner for real, TensorRT's pure-Python parts, the
"auto" fallback, and the parity tool. No GPU here: see docs/engines.md for what that leaves
unchecked."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slidr.engines import EngineError, Scorer, check_batch, select_scorer
from slidr.engines.build_plan import GpuIdentity, gpu_slug, plan_path, profile_shapes

from slidr.featurespec import N_FEATURES

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def make_mlp(path: Path, seed: int = 0, hidden: int = 8, out_rank: int = 2,
             batch_dim: int | str = "batch", n_in: int = N_FEATURES) -> tuple[Path, dict]:
    """An N_FEATURES -> hidden -> 1 MLP with a sigmoid, built with onnx.helper; returns its weights."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = {"W1": rng.standard_normal((n_in, hidden)).astype(np.float32) * 0.5,
         "B1": rng.standard_normal(hidden).astype(np.float32) * 0.1,
         "W2": rng.standard_normal((hidden, 1)).astype(np.float32) * 0.5,
         "B2": np.array([0.1], dtype=np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["p2" if out_rank == 1 else "p"])]
    if out_rank == 1:
        shape_c = numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape1")
        nodes.append(helper.make_node("Reshape", ["p2", "shape1"], ["p"]))
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    if out_rank == 1:
        inits.append(shape_c)
    out_shape = [batch_dim] if out_rank == 1 else [batch_dim, 1]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [batch_dim, n_in])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path, w


def ref_predict(w: dict, x: np.ndarray) -> np.ndarray:
    h = np.maximum(x.astype(np.float64) @ w["W1"] + w["B1"], 0.0)
    z = h @ w["W2"] + w["B2"]
    return (1.0 / (1.0 + np.exp(-z))).reshape(-1)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, dict]:
    return make_mlp(tmp_path_factory.mktemp("m") / "model.onnx")


@pytest.fixture(scope="module")
def ort_runner(model):
    return select_scorer(model[0], backend="onnxruntime", max_batch=1024)


def test_ort_runner_interface(ort_runner):
    assert ort_runner.name == "onnxruntime"
    assert isinstance(ort_runner, Scorer)
    ort_runner.warmup(1024)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 31, 64, 255, 256, 257, 1000, 1023, 1024])
def test_ort_matches_numpy_reference(model, ort_runner, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, N_FEATURES)).astype(np.float32)
    p = ort_runner.infer(x)
    assert p.dtype == np.float32 and p.shape == (n,)
    np.testing.assert_allclose(p, ref_predict(model[1], x), rtol=1e-5, atol=1e-6)


def test_ort_every_batch_size_1_to_1024(model, ort_runner):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1024, N_FEATURES)).astype(np.float32)
    full = ref_predict(model[1], x)
    for n in range(1, 1025):
        np.testing.assert_allclose(ort_runner.infer(x[:n]), full[:n], rtol=1e-5, atol=1e-6)


def test_ort_results_are_not_views_of_the_reused_buffer(ort_runner):
    a = ort_runner.infer(np.zeros((4, N_FEATURES), np.float32))
    keep = a.copy()
    ort_runner.infer(np.ones((4, N_FEATURES), np.float32))
    np.testing.assert_array_equal(a, keep)


def test_ort_larger_than_max_batch_is_chunked(model):
    r = select_scorer(model[0], backend="onnxruntime", max_batch=16)
    x = np.random.default_rng(1).standard_normal((50, N_FEATURES)).astype(np.float32)
    np.testing.assert_allclose(r.infer(x), ref_predict(model[1], x), rtol=1e-5, atol=1e-6)


def test_ort_empty_batch(ort_runner):
    assert ort_runner.infer(np.zeros((0, N_FEATURES), np.float32)).shape == (0,)


def test_ort_non_contiguous_input(model, ort_runner):
    big = np.random.default_rng(2).standard_normal((10, 2 * N_FEATURES)).astype(np.float32)
    x = big[:, ::2]
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(ort_runner.infer(x), ref_predict(model[1], x), rtol=1e-5, atol=1e-6)


def test_rank1_output_and_no_io_binding(tmp_path):
    path, w = make_mlp(tmp_path / "r1.onnx", out_rank=1)
    from slidr.engines.onnxruntime_runner import OrtRunner
    x = np.random.default_rng(3).standard_normal((33, N_FEATURES)).astype(np.float32)
    for binding in (True, False):
        r = OrtRunner(path, io_binding=binding)
        np.testing.assert_allclose(r.infer(x), ref_predict(w, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, exc, words", [
    (np.zeros((3, N_FEATURES), np.float64), TypeError, "float32"),
    (np.zeros((3, N_FEATURES - 1), np.float32), ValueError, f"(n, {N_FEATURES})"),
    (np.zeros(N_FEATURES, np.float32), ValueError, f"(n, {N_FEATURES})"),
    (np.zeros((2, 3, N_FEATURES), np.float32), ValueError, f"(n, {N_FEATURES})"),
    ([[0.0] * N_FEATURES], TypeError, "numpy.ndarray"),
])
def test_bad_input_errors(ort_runner, bad, exc, words):
    with pytest.raises(exc) as ei:
        ort_runner.infer(bad)
    assert words in str(ei.value)


def test_check_batch_max_batch():
    with pytest.raises(ValueError, match="max_batch=4"):
        check_batch(np.zeros((5, N_FEATURES), np.float32), max_batch=4)


def test_bad_models_are_refused_clearly(tmp_path):
    wrong, _ = make_mlp(tmp_path / "wrong.onnx", n_in=10)
    with pytest.raises(EngineError, match=rf"expected \[batch, {N_FEATURES}\]"):
        select_scorer(wrong, backend="onnxruntime")
    fixed, _ = make_mlp(tmp_path / "fixed.onnx", batch_dim=1)
    with pytest.raises(EngineError, match="dynamic batch"):
        select_scorer(fixed, backend="onnxruntime")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="could not load"):
        select_scorer(junk, backend="onnxruntime")
    with pytest.raises(FileNotFoundError):
        select_scorer(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown scorer backend"):
        select_scorer(wrong, backend="cuda")


def test_intra_op_threads_configurable(model):
    r = select_scorer(model[0], backend="onnxruntime", intra_op_threads=2)
    assert r.intra_op_threads == 2
    assert r.session.get_session_options().intra_op_num_threads == 2


def test_auto_falls_back_to_ort_and_says_why(model, caplog, monkeypatch):
    # Force "tensorrt not importable" even on a machine that has it: this checks the path.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with caplog.at_level(logging.INFO, logger="slidr.engines"):
        r = select_scorer(model[0], backend="auto")
    assert r.name == "onnxruntime"
    assert "tensorrt is not importable" in r.fallback_reason
    assert any("using onnxruntime" in m and "tensorrt" in m for m in caplog.messages)


def test_auto_here(model):
    """What "auto" does on this very machine (no GPU in CI: ONNX Runtime, with a reason)."""
    from slidr.engines import tensorrt_unavailable_reason
    reason = tensorrt_unavailable_reason()
    r = select_scorer(model[0])
    if reason is not None:
        assert r.name == "onnxruntime" and r.fallback_reason == reason


def test_auto_falls_back_when_plan_build_fails(model, monkeypatch):
    import slidr.engines as eng
    monkeypatch.setattr(eng, "tensorrt_unavailable_reason", lambda: None)

    class Boom:
        def __init__(self, *a, **k):
            raise EngineError("simulated build failure")
    import types
    fake = types.ModuleType("slidr.engines.tensorrt_runner")
    fake.TensorRTRunner = Boom
    monkeypatch.setitem(sys.modules, "slidr.engines.tensorrt_runner", fake)
    r = select_scorer(model[0], backend="auto")
    assert r.name == "onnxruntime"
    assert "simulated build failure" in r.fallback_reason


def test_explicit_tensorrt_raises_without_it(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError):
        select_scorer(model[0], backend="tensorrt")


def test_import_does_not_pull_heavy_modules():
    code = ("import sys, slidr.engines, slidr.engines.build_plan, slidr.engines.parity\n"
            "bad = [m for m in ('tensorrt', 'pycuda', 'pycuda.driver', 'pycuda.autoinit', "
            "'torch', 'onnxruntime', 'cuda') if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# ------------------------------------------------------------ TensorRT: pure-Python parts

def test_profile_shapes():
    f = N_FEATURES
    assert profile_shapes(1024) == ((1, f), (256, f), (1024, f))
    assert profile_shapes(100) == ((1, f), (100, f), (100, f))
    assert profile_shapes(1) == ((1, f), (1, f), (1, f))
    with pytest.raises(ValueError):
        profile_shapes(0)


def test_plan_cache_naming(model, tmp_path):
    h100 = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0")
    a100 = GpuIdentity("NVIDIA A100-SXM4-40GB", (8, 0), "10.3.0")
    p = plan_path(model[0], h100, 1024)
    assert p.parent == model[0].parent  # beside the bundle by default
    assert p.name.startswith("model.") and p.name.endswith(".plan")
    assert ".nvidia-h100-80gb-hbm3.sm90.trt10.3.0.b1024.plan" in p.name
    assert plan_path(model[0], h100, 1024, cache_dir=tmp_path).parent == tmp_path
    names = {plan_path(model[0], g, b, fp16=f).name
             for g in (h100, a100, GpuIdentity(h100.name, (9, 0), "10.4.0"))
             for b in (512, 1024) for f in (False, True)}
    assert len(names) == 12  # GPU, TRT version, batch and precision all change the name
    other, _ = make_mlp(tmp_path / "model.onnx", seed=1)
    assert plan_path(other, h100, 1024).name != p.name  # different weights, different plan
    assert gpu_slug("  Tesla T4 ") == "tesla-t4" and gpu_slug("???") == "gpu"


# ------------------------------------------------------------ parity tool

def test_parity_ort_vs_reference(model):
    from slidr.engines.parity import compare, make_backend
    res = compare(make_backend("onnxruntime", model[0]), make_backend("reference", model[0]),
                  sizes=(1, 5, 300), atol=1e-5)
    assert res["ok"] and res["max_abs"] < 1e-5 and [b["batch"] for b in res["batches"]] == [1, 5, 300]


def test_parity_detects_disagreement(model, tmp_path):
    from slidr.engines.parity import compare, make_backend
    other, _ = make_mlp(tmp_path / "other.onnx", seed=5)
    res = compare(make_backend("onnxruntime", model[0]), make_backend("onnxruntime", other),
                  sizes=(64,), atol=1e-4)
    assert not res["ok"] and res["max_abs"] > 1e-3


def test_parity_cli(model):
    out = subprocess.run([sys.executable, "-m", "slidr.engines.parity", str(model[0]),
                          "--b", "auto", "--sizes", "1,33,1024", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["ok"] and res["a"] == "onnxruntime"


def test_parity_against_torch(model, tmp_path):
    torch = pytest.importorskip("torch")
    w = model[1]

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = torch.nn.Linear(N_FEATURES, w["W1"].shape[1])
            self.l2 = torch.nn.Linear(w["W1"].shape[1], 1)
            with torch.no_grad():
                self.l1.weight.copy_(torch.from_numpy(w["W1"].T.copy()))
                self.l1.bias.copy_(torch.from_numpy(w["B1"]))
                self.l2.weight.copy_(torch.from_numpy(w["W2"].T.copy()))
                self.l2.bias.copy_(torch.from_numpy(w["B2"]))

        def forward(self, x):
            return torch.sigmoid(self.l2(torch.relu(self.l1(x))))
    f = tmp_path / "m.pt"
    torch.jit.script(M()).save(str(f))
    from slidr.engines.parity import main
    assert main([str(model[0]), "--b", f"torch:{f}", "--sizes", "1,100", "--atol", "1e-5"]) == 0


def test_prefers_robot_prob_output_among_several(tmp_path):
    """The trainer names its output robot_prob; a model that also exports logits still works."""
    from onnx import TensorProto, helper, numpy_helper
    w = np.full((N_FEATURES, 1), 0.1, np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["robot_prob"])], "two",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("robot_prob", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "two.onnx"))
    x = np.ones((3, N_FEATURES), np.float32)
    want = 1.0 / (1.0 + np.exp(-0.1 * N_FEATURES))
    for binding in (False, True):
        from slidr.engines.onnxruntime_runner import OrtRunner
        r = OrtRunner(tmp_path / "two.onnx", io_binding=binding)
        assert r.output_name == "robot_prob"
        np.testing.assert_allclose(r.infer(x), [want] * 3, rtol=1e-5)


def test_plan_cache_dir_defaults(model, tmp_path, monkeypatch):
    import slidr.engines.build_plan as bp
    h100 = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0")
    monkeypatch.delenv("SLIDR_PLAN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert plan_path(model[0], h100, 8).parent == model[0].parent  # writable: beside it
    monkeypatch.setattr(bp.os, "access", lambda p, mode: False)  # a read-only bundle
    assert plan_path(model[0], h100, 8).parent == tmp_path / "xdg" / "slidr" / "plans"
    monkeypatch.setenv("SLIDR_PLAN_CACHE", str(tmp_path / "env"))
    assert plan_path(model[0], h100, 8).parent == tmp_path / "env"


# ------------------------------------------------------------ TensorRT runner on a fake GPU
# No GPU here, so the runner's plumbing (plan cache, build, buffers, shapes, chunking,
# context push/pop) runs against stand-ins for `tensorrt` and `pycuda.driver` that implement
# just the TensorRT 10 / pycuda calls the runner makes. This checks our code, not TensorRT.

class _FakeGpu:
    def __init__(self):
        import types
        self.mem: dict[int, bytearray] = {}
        self.ctx_depth = 0
        self.builds = 0
        self.calls: list[str] = []
        gpu = self

        # ---- pycuda.driver
        cuda = types.ModuleType("pycuda.driver")

        class Alloc:
            def __init__(self, nbytes):
                self.addr = 0x1000 + len(gpu.mem) * 0x100000
                gpu.mem[self.addr] = bytearray(nbytes)

            def __int__(self):
                return self.addr

            def free(self):
                gpu.mem.pop(self.addr)

        class Ctx:
            def push(self):
                gpu.ctx_depth += 1

            def detach(self):
                gpu.calls.append("detach")

            @staticmethod
            def pop():
                assert gpu.ctx_depth > 0, "pop without push"
                gpu.ctx_depth -= 1

        class Device:
            def __init__(self, i):
                assert i == 0

            @staticmethod
            def count():
                return 1

            def name(self):
                return "NVIDIA Fake GPU"

            def compute_capability(self):
                return (9, 0)

            def retain_primary_context(self):
                return Ctx()

        class Stream:
            handle = 42

            def synchronize(self):
                pass

        def htod(dev, host, stream):
            assert gpu.ctx_depth > 0
            b = np.ascontiguousarray(host).tobytes()
            gpu.mem[int(dev)][:len(b)] = b

        def dtoh(host, dev, stream):
            assert gpu.ctx_depth > 0
            n = host.nbytes
            host[...] = np.frombuffer(bytes(gpu.mem[int(dev)][:n]), host.dtype).reshape(host.shape)

        cuda.init = lambda: None
        cuda.Device, cuda.Context, cuda.Stream = Device, Ctx, Stream
        cuda.mem_alloc = Alloc
        cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
        cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = htod, dtoh
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = cuda

        # ---- tensorrt
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "10.9.0"

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class TensorIOMode:
            INPUT, OUTPUT = "in", "out"

        class DataType:
            FLOAT = "float"

        class MemoryPoolType:
            WORKSPACE = "ws"

        class BuilderFlag:
            FP16 = "fp16"

        class Tensor:
            def __init__(self, name):
                self.name = name

        class Network:
            num_inputs = 1

            def __init__(self):
                self.onnx = None

            def get_input(self, i):
                return Tensor("x")

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse(self, data):
                self.network.onnx = data
                return data.startswith(b"\x08")  # an ONNX ModelProto starts with ir_version

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                self.shapes = (name, mn, opt, mx)

        class Config:
            def set_memory_pool_limit(self, pool, size):
                pass

            def set_flag(self, f):
                pass

            def add_optimization_profile(self, p):
                self.profile = p

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                assert flags == 0
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                gpu.builds += 1
                name, mn, opt, mx = config.profile.shapes
                head = json.dumps({"in": name, "min": mn, "opt": opt, "max": mx}).encode()
                return b"FAKEPLAN" + len(head).to_bytes(4, "little") + head + network.onnx

        class Context:
            def __init__(self, engine):
                self.engine = engine
                self.addr: dict[str, int] = {}
                self.shape = None

            def set_tensor_address(self, name, addr):
                self.addr[name] = addr

            def set_input_shape(self, name, shape):
                assert name == "x"
                ok = self.engine.meta["min"][0] <= shape[0] <= self.engine.meta["max"][0]
                self.shape = tuple(shape)
                return ok

            def execute_async_v3(self, stream_handle):
                assert gpu.ctx_depth > 0 and stream_handle == 42
                n = self.shape[0]
                x = np.frombuffer(bytes(gpu.mem[self.addr["x"]][:n * 4 * N_FEATURES]),
                                  np.float32).reshape(n, N_FEATURES)
                p = self.engine.sess.run(None, {"x": x})[0].reshape(-1).astype(np.float32)
                gpu.mem[self.addr["p"]][:p.nbytes] = p.tobytes()
                gpu.calls.append(f"exec{n}")
                return True

        class Engine:
            num_io_tensors = 2

            def __init__(self, meta, onnx_bytes):
                import onnxruntime as ort
                self.meta = meta
                self.sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

            def get_tensor_name(self, i):
                return ["x", "p"][i]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name == "x" else TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return DataType.FLOAT

            def get_tensor_profile_shape(self, name, profile):
                return [self.meta["min"], self.meta["opt"], self.meta["max"]]

            def create_execution_context(self):
                return Context(self)

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                if not data.startswith(b"FAKEPLAN"):
                    return None
                k = int.from_bytes(data[8:12], "little")
                return Engine(json.loads(data[12:12 + k]), data[12 + k:])

        for name, obj in dict(Logger=Logger, TensorIOMode=TensorIOMode, DataType=DataType,
                              MemoryPoolType=MemoryPoolType, BuilderFlag=BuilderFlag,
                              Builder=Builder, OnnxParser=Parser, Runtime=Runtime).items():
            setattr(trt, name, obj)
        trt.nptype = lambda dt: np.float32
        self.modules = {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


@pytest.fixture
def fake_gpu(monkeypatch):
    g = _FakeGpu()
    for k, v in g.modules.items():
        monkeypatch.setitem(sys.modules, k, v)
    return g


def test_tensorrt_runner_on_fake_gpu(model, tmp_path, fake_gpu):
    from slidr.engines import tensorrt_unavailable_reason
    assert tensorrt_unavailable_reason() is None
    r = select_scorer(model[0], backend="auto", max_batch=64, cache_dir=tmp_path / "plans")
    assert r.name == "tensorrt" and fake_gpu.builds == 1
    assert r.plan_path.parent == tmp_path / "plans"
    assert ".nvidia-fake-gpu.sm90.trt10.9.0.b64.plan" in r.plan_path.name
    r.warmup()
    x = np.random.default_rng(0).standard_normal((150, N_FEATURES)).astype(np.float32)
    fake_gpu.calls.clear()
    np.testing.assert_allclose(r.infer(x), ref_predict(model[1], x), rtol=1e-5, atol=1e-6)
    assert fake_gpu.calls == ["exec64", "exec64", "exec22"]  # chunked at max_batch
    for n in (1, 7, 64):
        np.testing.assert_allclose(r.infer(x[:n]), ref_predict(model[1], x[:n]), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(TypeError, match="float32"):
        r.infer(x.astype(np.float64))
    assert fake_gpu.ctx_depth == 0  # every push popped
    # a second runner loads the cached plan instead of building
    r2 = select_scorer(model[0], backend="tensorrt", max_batch=64, cache_dir=tmp_path / "plans")
    assert fake_gpu.builds == 1 and r2.infer(x[:3]).shape == (3,)
    # a damaged cache file is rebuilt once
    r2.plan_path.write_bytes(b"garbage")
    select_scorer(model[0], backend="tensorrt", max_batch=64, cache_dir=tmp_path / "plans")
    assert fake_gpu.builds == 2
    r.close()
    r.close()
    assert "detach" in fake_gpu.calls and fake_gpu.ctx_depth == 0


def test_tensorrt_build_failure_falls_back(model, tmp_path, fake_gpu, monkeypatch):
    monkeypatch.setattr(fake_gpu.modules["tensorrt"].Builder, "build_serialized_network",
                        lambda self, network, config: None)
    r = select_scorer(model[0], backend="auto", cache_dir=tmp_path)
    assert r.name == "onnxruntime"
    assert "TensorRT plan could not be built" in r.fallback_reason
    assert "failed to build a plan" in r.fallback_reason
    with pytest.raises(EngineError, match="failed to build"):
        select_scorer(model[0], backend="tensorrt", cache_dir=tmp_path)
    assert fake_gpu.ctx_depth == 0 and not list(tmp_path.glob("*.plan"))


def test_build_plan_cli_on_fake_gpu(model, tmp_path, fake_gpu, capsys):
    from slidr.engines.build_plan import main
    assert main([str(model[0]), "--max-batch", "32", "--cache-dir", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["built"] and info["profile"] == [[1, N_FEATURES], [32, N_FEATURES],
                                              [32, N_FEATURES]]
    assert main([str(model[0]), "--max-batch", "32", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("cached:")
    assert fake_gpu.ctx_depth == 0
