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
    """A 24 -> hidden -> 1 MLP with a sigmoid, built with onnx.helper; returns its weights."""
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
    (np.zeros((3, 23), np.float32), ValueError, "(n, 24)"),
    (np.zeros(N_FEATURES, np.float32), ValueError, "(n, 24)"),
    (np.zeros((2, 3, N_FEATURES), np.float32), ValueError, "(n, 24)"),
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
    with pytest.raises(EngineError, match=r"expected \[batch, 24\]"):
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
    assert profile_shapes(1024) == ((1, 24), (256, 24), (1024, 24))
    assert profile_shapes(100) == ((1, 24), (100, 24), (100, 24))
    assert profile_shapes(1) == ((1, 24), (1, 24), (1, 24))
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
    want = 1.0 / (1.0 + np.exp(-2.4))
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
