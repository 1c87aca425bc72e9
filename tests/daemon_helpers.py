"""Test helpers for slidrd: a tiny bundle, a daemon subprocess, a plain msgpack-RPC client.

The client is deliberately independent of slidr.client and of the daemon's own code: it is what
a third-party msgpack-RPC client would send.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from slidr.featurespec import N_FEATURES

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_model(path: Path, weights: np.ndarray, bias: float) -> None:
    """N_FEATURES float inputs -> sigmoid(x @ w + b), output 'robot_prob' of shape (n,)."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [N_FEATURES, 1], weights.astype(np.float32).tolist())
    b = helper.make_tensor("B", TensorProto.FLOAT, [1], [float(bias)])
    shape = helper.make_tensor("S", TensorProto.INT64, [1], [-1])
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p2"]),
        helper.make_node("Reshape", ["p2", "S"], ["robot_prob"]),
    ]
    graph = helper.make_graph(
        nodes, "slidr_test_linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", N_FEATURES])],
        [helper.make_tensor_value_info("robot_prob", TensorProto.FLOAT, ["n"])],
        initializer=[w, b, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_bundle_src(d: Path, seed: int = 0, bias: float = -2.0,
                    thresholds: dict[str, Any] | None = None,
                    features_used: int | None = None) -> Path:
    """A bundle of a random linear model; `features_used` = n gives weight only to the first
    n features (the rest 0), so a test's score distribution does not move when features are
    appended to the spec."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, N_FEATURES)
    if features_used is not None:
        w[features_used:] = 0.0
    make_model(d / "model.onnx", w, bias)
    th = thresholds or {"method": "slice", "default": 0.5,
                        "slices": {"desktop/in": 0.6, "desktop/out": 0.4, "mobile/in": 0.55,
                                   "mobile/out": 0.45, "app/in": 0.5, "app/out": 0.35},
                        "calibration": {"note": "test"}}
    (d / "thresholds.json").write_text(json.dumps(th))
    return d


def publish(registry: Path, src: Path, version: str, promote: bool = True) -> str:
    from slidr.registry import Registry
    return Registry(registry).publish(src, version=version, promote=promote)


def make_registry(tmp: Path, versions: tuple[str, ...] = ("v1",)) -> Path:
    reg = tmp / "registry"
    for i, v in enumerate(versions):
        src = make_bundle_src(tmp / f"src-{v}", seed=i, bias=-2.0 + i)
        publish(reg, src, v)
    return reg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`slidrd serve` in a subprocess; waits for the port (or READY via notify if given)."""

    def __init__(self, registry: Path, *args: str, env: dict[str, str] | None = None,
                 port: int | None = None, admin: Path | None = None,
                 metrics_port: int | None = None) -> None:
        self.port = port or free_port()
        self.admin = admin
        self.metrics_port = metrics_port
        cmd = [PY, "-m", "slidr.slidrd.main", "serve", "--registry", str(registry),
               "--port", str(self.port)]
        if admin is not None:
            cmd += ["--admin-socket", str(admin)]
        if metrics_port is not None:
            cmd += ["--metrics-port", str(metrics_port)]
        cmd += list(args)
        e = dict(os.environ)
        e.setdefault("SLIDR_REQUIRE_NATIVE", "1")
        if env:
            e.update(env)
        self.log_path = registry.parent / f"slidrd-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> Daemon:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slidrd exited {self.proc.returncode}:\n{self.log()}")
            try:
                with Client(self.port, timeout=1.0) as c:
                    if c.call("ping") == "pong":
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"slidrd did not answer ping in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> Daemon:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RpcError(Exception):
    def __init__(self, err: Any) -> None:
        super().__init__(err)
        self.err = err


class Client:
    """Blocking msgpack-RPC client over TCP or a Unix socket, with pipelining helpers."""

    def __init__(self, port: int | None = None, path: str | Path | None = None,
                 timeout: float = 10.0) -> None:
        if path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.next_id = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, method: str, *params: Any) -> int:
        mid = self.next_id
        self.next_id += 1
        self.sock.sendall(msgpack.packb([0, mid, method, list(params)]))
        return mid

    def recv(self) -> Any:
        """Next message from the server; raises ConnectionError at EOF."""
        while True:
            for msg in self.up:
                return msg
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            self.up.feed(data)

    def recv_until_close(self, limit: int = 100) -> list[Any]:
        out = []
        try:
            for _ in range(limit):
                out.append(self.recv())
        except (ConnectionError, OSError):
            pass
        return out

    def call(self, method: str, *params: Any) -> Any:
        mid = self.send(method, *params)
        while True:
            msg = self.recv()
            if msg[0] == 1 and msg[1] == mid:
                if msg[2] is not None:
                    raise RpcError(msg[2])
                return msg[3]

    def pipeline(self, method: str, param_list: list[tuple[Any, ...]]) -> dict[int, Any]:
        """Send all, then collect every response: {msgid: [error, result]}."""
        ids = [self.send(method, *p) for p in param_list]
        want = set(ids)
        got: dict[int, Any] = {}
        while want:
            msg = self.recv()
            if msg[0] == 1:
                got[msg[1]] = [msg[2], msg[3]]
                want.discard(msg[1])
        return {i: got[i] for i in ids}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


T0 = 1_764_000_000_000  # 2025-11-24


def click(i: int, *, users: int = 50, ips: int = 20, ts: int | None = None,
          **extra: Any) -> dict[str, Any]:
    dev = ("desktop", "mobile", "app")[i % 3]
    li = i % 2 == 0
    c: dict[str, Any] = {
        "click_id": f"c{i}", "ts": T0 + i * 37 if ts is None else ts,
        "session_id": f"s{i % (users * 2)}", "user_id": f"u{i % users}" if li else None,
        "ip": f"10.0.{(i % ips) // 256}.{(i % ips) % 256}", "device": dev, "logged_in": li,
        "tz_offset_min": (i % 5) * 60 - 120, "user_agent": "Mozilla/5.0", "ad_id": f"ad{i % 7}",
    }
    c.update(extra)
    return c


def check_decision(d: dict[str, Any], cid: str) -> None:
    assert d["click_id"] == cid
    assert set(d) == {"click_id", "invalid", "score", "threshold", "slice", "model", "reason"}, d
    assert isinstance(d["invalid"], bool)
    if d["reason"] == "model":
        assert 0.0 <= d["score"] <= 1.0
        assert d["invalid"] == (d["score"] > d["threshold"])
    else:
        assert d["reason"].startswith("fail_open:") and d["invalid"] is False
