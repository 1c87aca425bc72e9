"""Start what a scenario needs: a registry with a published model, a throwaway redis-server,
and `slidrd serve` on free loopback ports, each torn down after the run.

The model is the production shape (N_FEATURES features -> the widths `slidr daily` publishes
(offline/train.published_widths: 192 -> 96 with staged training) -> 1, ReLU, sigmoid) built
with onnx.helper and random weights: the daemon's cost does not depend on what the weights say.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from slidr.featurespec import N_FEATURES
from slidr.util import stop_process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_mlp(path: Path, hidden: tuple[int, ...] | None = None, seed: int = 0) -> Path:
    """N_FEATURES float32 inputs 'features' (n, N_FEATURES) -> 'robot_prob' (n,): FC+ReLU layers, sigmoid.
    hidden: None = the published shape (train.published_widths())."""
    import onnx
    from onnx import TensorProto, helper
    from slidr.offline.train import published_widths
    hidden = published_widths() if hidden is None else hidden
    rng = np.random.default_rng(seed)
    sizes = (N_FEATURES, *hidden, 1)
    inits, nodes = [], []
    x = "features"
    for li, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)
        inits.append(helper.make_tensor(f"W{li}", TensorProto.FLOAT, [a, b], w.ravel().tolist()))
        inits.append(helper.make_tensor(f"B{li}", TensorProto.FLOAT, [b], [0.0] * b))
        nodes.append(helper.make_node("MatMul", [x, f"W{li}"], [f"m{li}"]))
        nodes.append(helper.make_node("Add", [f"m{li}", f"B{li}"], [f"a{li}"]))
        x = f"a{li}"
        if li < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{li}"]))
            x = f"r{li}"
    inits.append(helper.make_tensor("S", TensorProto.INT64, [1], [-1]))
    nodes.append(helper.make_node("Sigmoid", [x], ["p2"]))
    nodes.append(helper.make_node("Reshape", ["p2", "S"], ["robot_prob"]))
    graph = helper.make_graph(
        nodes, "slidr_bench_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", N_FEATURES])],
        [helper.make_tensor_value_info("robot_prob", TensorProto.FLOAT, ["n"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def tiny_registry(root: Path) -> Path:
    """A registry under root with one published, current bundle."""
    from slidr.registry import Registry
    src = root / "bundle-src"
    src.mkdir(parents=True, exist_ok=True)
    make_mlp(src / "model.onnx")
    th = {"method": "slice", "default": 0.5,
          "slices": {"desktop/in": 0.6, "desktop/out": 0.5, "mobile/in": 0.6,
                     "mobile/out": 0.5, "app/in": 0.6, "app/out": 0.5},
          "calibration": {"note": "bench: random weights, thresholds are placeholders"}}
    (src / "thresholds.json").write_text(json.dumps(th))
    reg = root / "registry"
    Registry(reg).publish(src, version="bench1", promote=True)
    return reg


def ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(msgpack.packb([0, 1, "ping", []]))
            u = msgpack.Unpacker(raw=False)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                data = s.recv(4096)
                if not data:
                    return False
                u.feed(data)
                for msg in u:
                    return isinstance(msg, list) and len(msg) == 4 and msg[2] is None
    except OSError:
        return False
    return False


class DaemonRun:
    """Registry (+ Redis) + slidrd for one scenario; a context manager."""

    def __init__(self, store: str = "embedded", daemon_args: dict[str, Any] | None = None,
                 workdir: str | None = None, cpus: str | None = None,
                 redis_cpus: str | None = None) -> None:
        if store not in ("embedded", "redis", "cluster"):
            raise ValueError(f"store must be embedded, redis or cluster, got {store!r}")
        self.store = store
        self.daemon_args = daemon_args or {}
        self.cpus = cpus
        self.redis_cpus = redis_cpus
        self._own_root = workdir is None
        self.root = Path(workdir or tempfile.mkdtemp(prefix="slidr-bench-"))
        self.port = free_port()
        self.metrics_port = free_port()
        self.redis: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "slidrd.log"
        self.cmd: list[str] = []

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> DaemonRun:
        reg = tiny_registry(self.root)
        cmd = [sys.executable, "-m", "slidr.slidrd.main", "serve", "--registry", str(reg),
               "--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        if self.store == "redis":
            from slidr.testing.redis_server import RedisServer
            self.redis = RedisServer(cpus=self.redis_cpus).start()
            cmd += ["--redis", self.redis.url]
        elif self.store == "cluster":  # a throwaway local Redis Cluster, 3 masters
            from slidr.testing.redis_cluster import RedisCluster
            self.redis = RedisCluster(masters=3, replicas=0).start()
            cmd += ["--redis", self.redis.url, "--redis-mode", "cluster"]
        for k, v in self.daemon_args.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        if self.cpus:
            import shutil
            if shutil.which("taskset"):
                cmd = ["taskset", "-c", self.cpus, *cmd]
        self.cmd = cmd
        env = dict(os.environ)
        env.setdefault("SLIDR_REQUIRE_NATIVE", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                self.stop(keep=True)
                raise RuntimeError(f"slidrd exited with {self.proc.returncode if self.proc else '?'}"
                                   f" before answering: {' | '.join(tail)}")
            if ping(self.port, 0.5):
                return self
            time.sleep(0.1)
        self.stop(keep=True)
        raise RuntimeError(f"slidrd did not answer ping within {timeout:.0f}s (log: {self.log_path})")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, keep: bool = False) -> None:
        """Stop slidrd (and Redis); remove the work dir unless `keep` (e.g. to read the log
        of a run that went wrong) or it was given by the caller."""
        if self.proc is not None:
            stop_process(self.proc, 15)
        if hasattr(self, "_log"):
            self._log.close()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if not keep and self._own_root:
            import shutil
            for d, _dirs, _files in os.walk(self.root):
                with contextlib.suppress(OSError):
                    os.chmod(d, 0o755)  # published bundles are read-only
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> DaemonRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
