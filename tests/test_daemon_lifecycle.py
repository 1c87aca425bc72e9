"""slidrd model lifecycle and process life: reload under load, rollback, bad bundles, systemd
notify, SIGTERM drain, decision log completeness and online/offline feature parity."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from daemon_helpers import (
    REPO,
    Client,
    Daemon,
    RpcError,
    check_decision,
    click,
    make_bundle_src,
    make_registry,
    publish,
)
from slidr.slidrd.decision_log import log_files, read_decisions
from slidr.slidrd.server import _use_native

from slidr.contract import ClickBatch
from slidr.errors import ErrorCode
from slidr.kernel import FeatureKernel, embedded_store


class Load(threading.Thread):
    """Steady pipelined load on one connection; records every answer."""

    def __init__(self, port: int, window: int = 50, start: int = 0, pause_s: float = 0.002,
                 **click_kw: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.window = window
        self.i = start
        self.pause_s = pause_s
        self.click_kw = click_kw  # e.g. users=, ips= (daemon_helpers.click)
        self.answers: list[tuple[str, list]] = []
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(self.port) as c:
                while not self.stop_flag.is_set():
                    ps = [(click(self.i + k, **self.click_kw),) for k in range(self.window)]
                    res = c.pipeline("score", ps)
                    for k, (_mid, r) in enumerate(res.items()):
                        self.answers.append((f"c{self.i + k}", r))
                    self.i += self.window
                    time.sleep(self.pause_s)
        except BaseException as e:  # reported by the test
            self.error = e

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


def test_reload_rollback_under_load(tmp_path):
    reg = make_registry(tmp_path, ("v1",))
    adm = tmp_path / "admin.sock"
    with Daemon(reg, "--deadline-ms", "500", admin=adm) as d:
        loads = [Load(d.port, start=k * 10_000_000) for k in range(2)]
        for ld in loads:
            ld.start()
        time.sleep(0.3)
        publish(reg, make_bundle_src(tmp_path / "s2", seed=7, bias=1.0), "v2")
        with Client(path=adm) as a:
            r = a.call("reload")
            assert r["version"] == "v2" and r["previous"] == "v1"
            time.sleep(0.3)
            # A bad bundle (model bytes that are not ONNX) is refused; v2 keeps serving.
            bad = make_bundle_src(tmp_path / "s3", seed=3)
            (bad / "model.onnx").write_bytes(b"this is not an onnx model")
            publish(reg, bad, "v3")
            with pytest.raises(RpcError) as ei:
                a.call("reload")
            assert ei.value.err[0] == ErrorCode.ADMIN_FAILED and "v2" in ei.value.err[1]
            with Client(d.port) as c:
                assert c.call("info")["model"] == "v2"
            time.sleep(0.2)
            # SIGHUP reloads too (still the bad v3: refused, logged, v2 serves).
            d.signal(signal.SIGHUP)
            time.sleep(0.3)
            r = a.call("rollback")  # registry: v3 -> v2
            assert r["version"] == "v2" and r["rolled_back"]
            r = a.call("rollback")  # v2 -> v1
            assert r["version"] == "v1"
            time.sleep(0.3)
            stats = a.call("stats")
        for ld in loads:
            ld.finish()
    answers = [x for ld in loads for x in ld.answers]
    assert len(answers) > 500
    errors = [r for _, r in answers if r[0] is not None]
    assert errors == []
    reasons = {r[1]["reason"] for _, r in answers}
    assert reasons == {"model"}, reasons
    for cid, r in answers:
        check_decision(r[1], cid)
    models = [r[1]["model"] for _, r in answers]
    assert {"v1", "v2"} <= set(models)
    assert "v3" not in models
    assert stats["reloads_failed"] >= 2 and stats["reloads_ok"] >= 3
    assert "reload (SIGHUP) refused" in d.log()


def test_slidr_admin_cli(tmp_path):
    reg = make_registry(tmp_path, ("v1", "v2"))
    adm = tmp_path / "admin.sock"
    with Daemon(reg, admin=adm) as d:
        with Client(d.port) as c:
            c.call("score", click(1))
        run = [sys.executable, "-m", "slidr.cli", "admin"]
        out = subprocess.run(run + ["stats", "--admin-socket", str(adm), "--json"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert '"model_version": "v2"' in out.stdout
        out = subprocess.run(run + ["rollback", "--admin-socket", str(adm)], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "serving v1 (was v2)" in out.stdout, out.stdout + out.stderr
        out = subprocess.run(run + ["rollback", "--admin-socket", str(adm)], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "no previous" in out.stderr, out.stderr
        out = subprocess.run(run + ["stats", "--admin-socket", str(tmp_path / "nope.sock")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "cannot reach" in out.stderr  # a failure, not bad input
        with Client(d.port) as c:
            assert c.call("info")["model"] == "v1"


def _recv_states(sock: socket.socket, until: str, timeout: float) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sock.settimeout(max(end - time.monotonic(), 0.01))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.extend(data.split("\n"))
        if until in got:
            return got
    raise AssertionError(f"no {until} in {got}")


def test_systemd_notify(tmp_path):
    reg = make_registry(tmp_path, ("v1",))
    path = str(tmp_path / "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    try:
        d = Daemon(reg, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        got = _recv_states(ns, "READY=1", 30)
        assert any(s.startswith("MAINPID=") for s in got)
        with Client(d.port) as c:  # READY means serving: the port answers at once
            assert c.call("ping") == "pong"
        _recv_states(ns, "WATCHDOG=1", 5)
        publish(reg, make_bundle_src(tmp_path / "s2", seed=2), "v2")
        d.signal(signal.SIGHUP)
        got = _recv_states(ns, "RELOADING=1", 10)
        assert any(s.startswith("MONOTONIC_USEC=") for s in got)
        _recv_states(ns, "READY=1", 10)
        with Client(d.port) as c:
            assert c.call("info")["model"] == "v2"
        d.signal(signal.SIGTERM)
        _recv_states(ns, "STOPPING=1", 10)
        assert d.proc.wait(20) == 0
    finally:
        ns.close()
        if d.proc.poll() is None:
            d.stop()


def _offline_features(clicks: list[dict], store=None) -> np.ndarray:
    k = FeatureKernel(store if store is not None else embedded_store(_use_native()),
                      use_native=_use_native())
    return k.features(ClickBatch.from_clicks(clicks))


def check_log_parity(log_dir, answered: dict[str, dict], store=None) -> int:
    """Every answer is in the log with the same decision; the features the daemon logged equal
    the offline kernel's features for the same clicks in log order."""
    recs = list(read_decisions(log_dir))
    assert not list(log_dir.glob("*.part")), "decision log not closed"
    by_id = {r["decision"]["click_id"]: r for r in recs}
    assert len(by_id) == len(recs)
    for cid, dec in answered.items():
        assert by_id[cid]["decision"] == dec
    scored = [r for r in recs if r["decision"]["reason"] == "model"]
    assert scored and all(r["features"] is not None for r in scored)
    online = np.asarray([r["features"] for r in scored], dtype=np.float32)
    offline = _offline_features([r["click"] for r in scored], store)
    np.testing.assert_array_equal(online, offline)
    return len(recs)


def test_sigterm_drain_and_decision_log_parity(tmp_path):
    reg = make_registry(tmp_path, ("v1",))
    logdir = tmp_path / "dlog"
    d = Daemon(reg, "--decision-log", str(logdir), "--deadline-ms", "10000", "--max-batch", "32",
               "--decision-log-max-bytes", "65536").wait_ready()
    n = 6000
    answered: dict[str, dict] = {}
    with Client(d.port) as c:
        for i in range(1000):  # a warm phase with many small batches
            answered[f"c{i}"] = c.call("score", click(i, users=30, ips=7))
        # many users, few IPs, shuffled times are fine: the kernel takes arrival order
        ids = {c.send("score", click(i, users=30, ips=7)): f"c{i}" for i in range(1000, n)}
        first = c.recv()
        answered[ids[first[1]]] = first[3]
        d.signal(signal.SIGTERM)
        for m in c.recv_until_close(limit=n):
            if m[0] == 1:
                assert m[2] is None
                answered[ids[m[1]]] = m[3]
    assert d.proc.wait(30) == 0, d.log()
    assert "Traceback" not in d.log()
    for cid, dec in answered.items():
        check_decision(dec, cid)
        assert dec["reason"] == "model"
    assert len(answered) >= 1001
    # Nothing lost: everything answered is logged (with decision-identical records), the log
    # files were rotated, and features match the offline kernel.
    assert len(log_files(logdir)) > 1
    nrec = check_log_parity(logdir, answered)
    assert nrec == len(answered)
    # After SIGTERM the port is closed.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=1).close()


def test_decision_log_replays_unchanged_with_same_bundle(tmp_path):
    """`slidr replay` of the daemon's decision log through the bundle that served it changes no
    decision: the log carries exactly what the model saw."""
    import json

    reg = make_registry(tmp_path, ("v1",))
    logdir = tmp_path / "dlog"
    with Daemon(reg, "--decision-log", str(logdir), "--deadline-ms", "2000") as d:
        with Client(d.port) as c:
            res = c.pipeline("score", [(click(i, users=15, ips=4),) for i in range(600)])
    assert all(v[0] is None for v in res.values())
    out = tmp_path / "replayed.jsonl"
    run = subprocess.run([sys.executable, "-m", "slidr.cli", "replay", "--decisions", str(logdir),
                          "--registry", str(reg), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 600
    assert not any(r["changed"] for r in rows)
    assert {r["replayed_with"] for r in rows} == {"v1"}
