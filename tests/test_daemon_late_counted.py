"""A click answered fail-open because it was late is still counted: the counters stay what
the offline replay of the same log computes (embedded store and Redis)."""

from __future__ import annotations

import pytest
from daemon_helpers import T0, Client, Daemon, make_registry


def _pair(k: int) -> tuple[dict, dict]:
    """Two clicks of one user / session / IP, 2 s apart; k names a fresh user, session and
    IP so that scenarios do not share counters (everything else identical)."""
    base = {"session_id": f"late-s{k}", "user_id": f"late-u{k}", "ip": f"10.9.{k}.1",
            "device": "mobile", "logged_in": True, "tz_offset_min": 60}
    return ({**base, "click_id": f"a{k}", "ts": T0}, {**base, "click_id": f"b{k}", "ts": T0 + 2000})


def _run(port: int) -> tuple[float, float, float]:
    with Client(port, timeout=10) as c:
        # 1: A scored normally, then B.
        a, b = _pair(1)
        assert c.call("score", a)["reason"] == "model"
        s_after_scored = c.call("score", b)["score"]
        # 2: A late (a 1 ns deadline expires before its batch starts), then B.
        a, b = _pair(2)
        late = c.call("score", a, {"deadline_ms": 1e-6})
        assert late["reason"] == "fail_open:deadline" and late["invalid"] is False
        s_after_late = c.call("score", b)["score"]
        # 3: B alone.
        _a, b = _pair(3)
        s_alone = c.call("score", b)["score"]
    return s_after_scored, s_after_late, s_alone


def test_late_click_is_counted_embedded(tmp_path):
    d = Daemon(make_registry(tmp_path))
    d.wait_ready()
    try:
        scored, late, alone = _run(d.port)
    finally:
        assert d.stop() == 0, d.log()
    assert late == pytest.approx(scored, abs=1e-6)  # the late click counted like a scored one
    assert abs(scored - alone) > 1e-4  # and the test can tell counted from not counted


@pytest.mark.redis
def test_late_click_is_counted_redis(tmp_path, redis_server):
    d = Daemon(make_registry(tmp_path), "--redis", redis_server.url)
    d.wait_ready()
    try:
        scored, late, alone = _run(d.port)
    finally:
        assert d.stop() == 0, d.log()
    assert late == pytest.approx(scored, abs=1e-6)
    assert abs(scored - alone) > 1e-4
