"""Model registry: immutable checksummed bundles, atomic pointer moves, refusal of bad bundles."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slidr.featurespec import SPEC_HASH, spec_dict
from slidr.registry import BundleError, Registry, RegistryError


def make_src(d: Path, tag: str = "a", spec_hash: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(b"fake-onnx-" + tag.encode())
    (d / "thresholds.json").write_text(json.dumps(
        {"method": "slice", "default": 0.8, "slices": {"desktop/in": 0.9, "mobile/out": 0.6},
         "calibration": {}}))
    spec = {**spec_dict(), "spec_hash": SPEC_HASH}
    if spec_hash is not None:  # a spec from another kernel version
        spec["version"] = spec_hash
    (d / "feature_spec.json").write_text(json.dumps(spec))
    (d / "metrics.json").write_text(json.dumps({"ivr": 0.1, "fpr": 0.01}))
    (d / "report.html").write_text("<html></html>")
    (d / "scores.parquet").write_bytes(b"not copied")
    return d


def test_publish_promote_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.current() is None and reg.list() == []
    v1 = reg.publish(make_src(tmp_path / "s1", "a"), version="v1")
    assert reg.list() == ["v1"] and reg.current() is None  # publish alone does not serve
    reg.promote(v1)
    b = reg.current_verified()
    assert b is not None and b.version == "v1"
    assert b.model_path.read_bytes() == b"fake-onnx-a"
    from slidr.slidrd.model import threshold_table

    from slidr.contract import SLICE_BY_CODE
    table, _ = threshold_table(b.thresholds)
    assert table[SLICE_BY_CODE.index("desktop/in")] == 0.9
    assert table[SLICE_BY_CODE.index("app/in")] == 0.8  # default for slices without their own
    assert b.manifest["feature_spec_hash"] == SPEC_HASH
    assert not (b.path / "scores.parquet").exists()
    assert set(b.manifest["files"]) >= {"model.onnx", "thresholds.json", "feature_spec.json",
                                         "metrics.json", "report.html"}
    assert b.manifest["metrics"]["ivr"] == 0.1
    # Immutable on disk.
    assert not os.access(b.model_path, os.W_OK) or os.geteuid() == 0
    with pytest.raises(RegistryError, match="rolls? back|no previous"):
        reg.rollback()

    v2 = reg.publish(make_src(tmp_path / "s2", "b"), promote=True)
    assert reg.current().version == v2 and reg.previous().version == "v1"
    assert reg.rollback() == "v1"
    assert reg.current().version == "v1"
    assert reg.previous() is None  # the rolled-back model is not offered as 'previous'
    assert reg.pointers()["rolled_back"] == [v2]
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(make_src(tmp_path / "s3", "c"), version="v1")


def _tamper(path: Path, name: str, data: bytes) -> None:
    os.chmod(path, 0o755)
    os.chmod(path / name, 0o644)
    (path / name).write_bytes(data)


@pytest.mark.parametrize("damage,reason", [
    (lambda p: _tamper(p, "model.onnx", b"evil"), "checksum mismatch for model.onnx"),
    (lambda p: (os.chmod(p, 0o755), (p / "model.onnx").unlink()), "model.onnx is missing"),
    (lambda p: (os.chmod(p, 0o755), (p / "extra.bin").write_bytes(b"x")),
     "files not in the manifest: extra.bin"),
    (lambda p: _tamper(p, "manifest.json", b"{"), "manifest.json is unreadable"),
])
def test_verify_names_the_problem_and_refuses_promotion(tmp_path: Path, damage, reason) -> None:
    reg = Registry(tmp_path / "reg")
    reg.publish(make_src(tmp_path / "s1"), version="good", promote=True)
    reg.publish(make_src(tmp_path / "s2", "b"), version="bad")
    damage(reg.bundles_dir / "bad")
    with pytest.raises(BundleError) as ei:
        reg.verify("bad")
    assert reason in ei.value.reason
    with pytest.raises(BundleError):
        reg.promote("bad")
    assert reg.current().version == "good"
    assert reg.verify_all()["good"] is None and reason in reg.verify_all()["bad"]


def test_spec_hash_mismatch_is_not_servable(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(BundleError, match="does not match this kernel"):
        reg.publish(make_src(tmp_path / "s", spec_hash="0123456789abcdef"), version="old")
    assert reg.list() == []  # nothing half-made is visible
    assert not any(p.name.endswith(".partial") for p in reg.bundles_dir.iterdir())
    # A current bundle that later fails verification is never returned as servable.
    reg.publish(make_src(tmp_path / "s2"), version="v1", promote=True)
    _tamper(reg.bundles_dir / "v1", "thresholds.json", b'{"method":"slice","default":2}')
    with pytest.raises(BundleError, match="checksum mismatch for thresholds.json"):
        reg.current_verified()


def test_bad_thresholds_refused_at_publish(tmp_path: Path) -> None:
    src = make_src(tmp_path / "s")
    (src / "thresholds.json").write_text(json.dumps({"method": "slice", "default": 1.5}))
    with pytest.raises(RegistryError, match="default must be a number in"):
        Registry(tmp_path / "reg").publish(src)


def _publisher(reg_dir: str, src: str, n: int, q) -> None:
    reg = Registry(reg_dir)
    out = []
    for i in range(n):
        out.append(reg.publish(src, version=f"p{os.getpid()}-{i}", promote=True))
    q.put(out)


def test_concurrent_publishers_do_not_interleave(tmp_path: Path) -> None:
    reg_dir = tmp_path / "reg"
    srcs = [make_src(tmp_path / f"s{i}", str(i)) for i in range(2)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=_publisher, args=(str(reg_dir), str(s), 4, q)) for s in srcs]
    for p in ps:
        p.start()
    for p in ps:
        p.join(30)
    got = sorted(v for _ in ps for v in q.get(timeout=5))
    reg = Registry(reg_dir)
    assert reg.list() == got and len(got) == 8
    assert all(r is None for r in reg.verify_all().values())
    assert reg.current().version in got and reg.previous().version in got


def test_kill_during_publish_leaves_no_half_bundle(tmp_path: Path) -> None:
    reg_dir = tmp_path / "reg"
    src = make_src(tmp_path / "s")
    (src / "big.txt").write_bytes(os.urandom(1 << 20) * 8)  # make publishing take a moment
    code = ("import sys; from slidr.registry import Registry\n"
            "r = Registry(sys.argv[1])\n"
            "for i in range(1000): r.publish(sys.argv[2], promote=True)\n")
    for delay in (0.05, 0.15, 0.3):
        p = subprocess.Popen([sys.executable, "-c", code, str(reg_dir), str(src)])
        time.sleep(delay)
        p.kill()
        p.wait()
        reg = Registry(reg_dir)
        assert all(r is None for r in reg.verify_all().values()), reg.verify_all()
        ptr = reg.pointers()
        for v in (ptr["current"], ptr["previous"]):
            assert v is None or v in reg.list()
    # The next publisher sweeps what a killed one left behind.
    Registry(reg_dir).publish(make_src(tmp_path / "s2", "z"), version="after")
    assert not any(p.name.endswith(".partial") for p in (reg_dir / "bundles").iterdir())


def test_cli_models(tmp_path: Path, capsys) -> None:
    from slidr.cli import main
    reg_dir = tmp_path / "reg"
    reg = Registry(reg_dir)
    v1 = reg.publish(make_src(tmp_path / "s1", "a"), version="v1", promote=True)
    reg.publish(make_src(tmp_path / "s2", "b"), version="v2", promote=True)
    r = ["--registry", str(reg_dir)]
    assert main(["models", "list", *r]) == 0
    assert "* v2" in capsys.readouterr().out
    assert main(["models", "show", *r, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"
    assert main(["models", "rollback", *r]) == 0
    assert reg.current().version == v1
    assert main(["models", "rollback", *r]) == 2  # no previous: refused, one clear line
    assert "no previous" in capsys.readouterr().err
    assert main(["models", "promote", "v2", *r]) == 0 and reg.current().version == "v2"
    assert main(["models", "verify", *r]) == 0
    os.chmod(reg.bundles_dir / "v1", 0o755)
    (reg.bundles_dir / "v1" / "stray.txt").write_text("x")
    capsys.readouterr()
    assert main(["models", "verify", *r, "--json"]) == 5
    out = json.loads(capsys.readouterr().out)
    assert out["results"]["v1"] == "files not in the manifest: stray.txt"
    assert main(["models", "promote", "v1", *r]) == 5 and reg.current().version == "v2"
    cap = capsys.readouterr()  # the refusal: one line on stderr, nothing on stdout
    assert cap.out == "" and cap.err.count("\n") == 1 and "stray.txt" in cap.err


def test_cli_models_missing_registry_is_an_error(tmp_path: Path, capsys) -> None:
    from slidr.cli import main
    missing = tmp_path / "typo"
    for action in (["list"], ["show"], ["verify"], ["rollback"], ["promote", "v1"]):
        assert main(["models", *action, "--registry", str(missing)]) == 2, action
        assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()  # nothing created under a mistyped path
