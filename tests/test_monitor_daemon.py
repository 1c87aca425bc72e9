"""The deviation monitor end to end with real daemons: a good bundle serves under steady load,
a bad one (thresholds far too low) is promoted and reloaded, the monitor rolls the registry back
within its window, a second daemon on the same registry follows, no request fails; `slidr
replay --bad-window` then gives, for every click the bad bundle decided, what the good bundle
decides; /healthz and /readyz answer on the metrics port."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from daemon_helpers import (
    REPO,
    Client,
    Daemon,
    check_decision,
    free_port,
    make_bundle_src,
    publish,
)
from test_daemon_lifecycle import Load as DaemonLoad

from slidr.contract import SLICE_BY_CODE
from slidr.registry import Registry

# The test models weigh the first 29 features only (users, sessions, IPs, time, slice), so
# their scores do not drift as the counters of the load's one user agent and seven ads grow.
# Scores on this load: median 0.010, p90 0.0165. The good bundle invalidates about 10 % of
# the clicks, the bad one nearly all of them.
USED = 29
GOOD_THRESHOLDS = {"method": "global", "default": 0.0165, "slices": {}, "calibration": {}}
BAD_THRESHOLDS = {"method": "global", "default": 0.001, "slices": {}, "calibration": {}}
WINDOW = 600  # clicks per monitor window in this test (the default is 20,000)


def Load(port: int) -> DaemonLoad:
    """Steady pipelined load on one connection (400 users, 300 IPs); keeps every answer."""
    return DaemonLoad(port, window=40, pause_s=0.004, users=400, ips=300)


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(cond: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def good_decisions(bundle: Path, feats: np.ndarray, clicks: list[dict[str, Any]]) -> np.ndarray:
    """What the good bundle decides for logged features, computed here with onnxruntime and
    its thresholds.json (independently of slidr's replay code)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = sess.run(None, {"features": feats.astype(np.float32)})[0].reshape(-1)
    th = json.loads((bundle / "thresholds.json").read_text())
    names = [f"{c['device']}/{'in' if c['logged_in'] else 'out'}" for c in clicks]
    thr = np.array([float(th["slices"].get(n, th["default"])) for n in names])
    assert set(names) <= set(SLICE_BY_CODE)
    return scores > thr


def test_monitor_rolls_back_bad_bundle_and_replay_corrects(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    publish(reg, make_bundle_src(tmp_path / "src-old", seed=5, features_used=USED), "old")
    publish(reg, make_bundle_src(tmp_path / "src-good", seed=0, thresholds=GOOD_THRESHOLDS,
                                 features_used=USED), "good")
    adm1, adm2 = tmp_path / "a1.sock", tmp_path / "a2.sock"
    logdir = tmp_path / "dlog"
    monitor = ["--monitor-window-clicks", str(WINDOW), "--monitor-window-s", "0.3",
               "--monitor-min-slice-clicks", "60", "--monitor-sustain", "2",
               "--monitor-cooldown-s", "30"]
    mport = free_port()
    d1 = Daemon(reg, "--deadline-ms", "1000", "--decision-log", str(logdir), *monitor,
                admin=adm1, metrics_port=mport).wait_ready()
    # A second daemon on the same registry that sees no traffic: its own monitor never
    # judges anything; it must follow the registry's rejection.
    d2 = Daemon(reg, "--deadline-ms", "1000", *monitor, admin=adm2).wait_ready()
    try:
        assert http(mport, "/healthz")[0] == 200
        code, body = http(mport, "/readyz")
        assert code == 200 and json.loads(body)["model"] == "good", body
        assert http(mport, "/nope")[0] == 404
        load = Load(d1.port)
        load.start()
        with Client(path=adm1) as a1, Client(path=adm2) as a2:
            wait_for(lambda: a1.call("stats")["monitor"]["windows"] >= 2, 60,
                     "two monitor windows of the good bundle")
            good_ivr = a1.call("stats")["monitor"]["last_window"]["ivr"]
            # The bad bundle: published and promoted, both daemons reload.
            publish(reg, make_bundle_src(tmp_path / "src-bad", seed=0,
                                         thresholds=BAD_THRESHOLDS, features_used=USED), "bad")
            assert a1.call("reload")["version"] == "bad"
            assert a2.call("reload")["version"] == "bad"
            t_swap = time.monotonic()
            wait_for(lambda: a1.call("stats")["monitor"]["counts"]["rollback"] == 1, 60,
                     "the monitor's rollback")
            t_detect = time.monotonic() - t_swap
            wait_for(lambda: a1.call("info")["model"] == "good", 10, "daemon 1 back on good")
            wait_for(lambda: a2.call("info")["model"] == "good", 10, "daemon 2 following")
            time.sleep(1.0)  # more windows on the restored bundle: no flapping
            s1 = a1.call("stats")
            s2 = a2.call("stats")
        load.finish()
        text = subprocess.run([sys.executable, "-m", "slidr.cli", "admin", "stats",
                               "--admin-socket", str(adm1)], cwd=REPO, capture_output=True,
                              text=True, timeout=60).stdout
        code, metrics = http(mport, "/metrics")
    finally:
        d1.stop()
        d2.stop()

    ev = s1["monitor"]["last_event"]
    assert ev["kind"] == "rollback" and ev["version"] == "bad", ev
    assert "the previous model on the same clicks" in ev["reason"], ev
    print(f"\ndetection: {ev['clicks']} clicks, {ev['seconds']:.2f} s after the swap "
          f"(window {WINDOW} clicks, sustain 2); wall {t_detect:.2f} s to the rollback; good IVR "
          f"{good_ivr:.3f}")
    # Two windows (sustain 2), each closed at the first 0.5 s tick after it holds WINDOW
    # clicks and 0.3 s: about 1 s of traffic, whatever the load's rate on a busy machine.
    assert ev["clicks"] >= 2 * WINDOW and ev["seconds"] < 5.0, ev
    assert s1["monitor"]["windows"] >= 4
    assert s1["monitor"]["counts"] == {"rollback": 1, "alert": 0, "fail_open": 0,
                                       "rollback_failed": 0}
    assert s2["monitor"]["counts"]["rollback"] == 0  # it followed, it did not roll back
    assert "rejected in registry" in d2.log()
    assert "monitor rollback: model bad after" in d1.log()
    # One pointer swap: good is current again (not 'old': nobody rolled back twice), and the
    # bad bundle is marked with the reason.
    r = Registry(reg)
    assert r.current().version == "good"  # type: ignore[union-attr]
    rej = r.rejected()
    assert list(rej) == ["bad"] and "windows in a row" in rej["bad"]["reason"]
    assert rej["bad"]["clicks"] == ev["clicks"]
    assert "slidr_monitor_rollbacks_total 1" in metrics
    assert "monitor rollback:" in text and "1 rollbacks" in text, text
    assert "last event: rollback of bad" in text and "windows in a row" in text, text
    assert 'slidr_model_info{version="good"} 1' in metrics

    # Zero failed requests across both swaps, every answer a model decision.
    answers = load.answers
    assert len(answers) > 4 * WINDOW
    assert [r for _, r in answers if r[0] is not None] == []
    for cid, res in answers:
        check_decision(res[1], cid)
    assert {res[1]["reason"] for _, res in answers} == {"model"}
    by_model: dict[str, list[bool]] = {}
    for _, res in answers:
        by_model.setdefault(res[1]["model"], []).append(res[1]["invalid"])
    assert set(by_model) == {"good", "bad"}
    assert np.mean(by_model["bad"]) > 0.9 and 0.03 < np.mean(by_model["good"]) < 0.3

    # `slidr models list` says why; promote refuses without --force.
    cli = [sys.executable, "-m", "slidr.cli"]
    out = subprocess.run(cli + ["models", "list", "--registry", str(reg)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "x bad" in out.stdout and "windows in a row" in out.stdout
    out = subprocess.run(cli + ["models", "promote", "bad", "--registry", str(reg)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--force" in out.stderr

    # Replay of the bad window through the restored (current) bundle.
    corrected = tmp_path / "corrected.jsonl"
    run = subprocess.run(cli + ["replay", "--decisions", str(logdir), "--registry", str(reg),
                                "--bad-window", "bad", "--out", str(corrected), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    rows = [json.loads(line) for line in corrected.read_text().splitlines()]
    assert len(rows) == len(by_model["bad"]) == summary["selected"]
    assert {r["replayed_with"] for r in rows} == {"good"}
    assert {r["original"]["model"] for r in rows} == {"bad"}
    assert summary["newly_valid"] > 0 and summary["newly_invalid"] == 0
    assert sum(p["newly_valid"] for p in summary["by_slice"].values()) == summary["newly_valid"]
    # Equal to what the good bundle decides for those clicks, from the logged features.
    from slidr.decision_file import read_decisions
    logged = {rec["click"]["click_id"]: rec for rec in read_decisions(logdir)
              if rec["model"] == "bad"}
    ids = [r["click_id"] for r in rows]
    feats = np.array([logged[i]["features"] for i in ids], dtype=np.float32)
    want = good_decisions(reg / "bundles" / "good", feats, [logged[i]["click"] for i in ids])
    got = np.array([r["invalid"] for r in rows])
    assert np.array_equal(got, want)
    assert 0 < want.sum() < want.size  # both outcomes occur among the corrected decisions


def test_readyz_follows_the_store_and_healthz_the_loop(tmp_path: Path, redis_server: Any) -> None:
    """/readyz: 503 while Redis is down (the daemon fails open meanwhile), 200 again when it is
    back; /healthz stays 200 (the process and its loop are fine)."""
    reg = tmp_path / "registry"
    publish(reg, make_bundle_src(tmp_path / "src", seed=0, features_used=USED), "v1")
    mport = free_port()
    with Daemon(reg, "--redis", redis_server.url, "--redis-prefix", "t-ready:",
                metrics_port=mport):
        code, body = http(mport, "/readyz")
        assert code == 200 and json.loads(body)["store_reachable"] is True, body
        redis_server.kill()
        code, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(
            http(mport, "/readyz")), 10, "/readyz to say the store is down")
        detail = json.loads(body)
        assert detail["store_reachable"] is False and detail["model_warmed"] is True
        assert http(mport, "/healthz")[0] == 200
        redis_server.start()
        wait_for(lambda: http(mport, "/readyz")[0] == 200, 15, "/readyz back to 200")


def test_a_normal_swap_is_not_rolled_back(tmp_path: Path) -> None:
    """The next day's bundle decides a little differently (thresholds 2 % higher: the test
    model's scores crowd around the threshold, 10 % would halve a slice's IVR) while the
    traffic's IVR moves on its own (new users and sessions build up their counters): judged on
    the same clicks as the bundle before it, it is settled without an alarm."""
    reg = tmp_path / "registry"
    publish(reg, make_bundle_src(tmp_path / "src-good", seed=0, thresholds=GOOD_THRESHOLDS,
                                 features_used=USED), "day1")
    adm = tmp_path / "a.sock"
    d = Daemon(reg, "--deadline-ms", "1000", "--monitor-window-clicks", str(WINDOW),
               "--monitor-window-s", "0.3", "--monitor-min-slice-clicks", "60",
               "--monitor-judge-windows", "6", admin=adm).wait_ready()
    try:
        load = Load(d.port)
        load.start()
        with Client(path=adm) as a:
            wait_for(lambda: a.call("stats")["monitor"]["windows"] >= 2, 60, "two windows")
            next_day = {**GOOD_THRESHOLDS, "default": GOOD_THRESHOLDS["default"] * 1.02}
            publish(reg, make_bundle_src(tmp_path / "src-next", seed=0, thresholds=next_day,
                                         features_used=USED), "day2")
            assert a.call("reload")["version"] == "day2"
            wait_for(lambda: not a.call("stats")["monitor"]["judging"], 60, "day2 settled")
            mon = a.call("stats")["monitor"]
        load.finish()
    finally:
        d.stop()
    assert mon["version"] == "day2" and mon["judged_windows"] == 6, mon
    assert mon["counts"] == {"rollback": 0, "alert": 0, "fail_open": 0, "rollback_failed": 0}
    assert mon["reference"]["source"] == "previous_same_clicks"
    assert 0.6 < mon["ratios"]["all"] < 1.0  # a higher threshold invalidates a little less
    assert Registry(reg).current().version == "day2"  # type: ignore[union-attr]
    assert Registry(reg).rejected() == {}
