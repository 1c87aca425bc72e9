"""busy_poll_us: the loop polls instead of sleeping for a window after each request, and stops
polling (costs no CPU) once traffic stops."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request

import pytest
import uvloop
from daemon_helpers import Client, Daemon, check_decision, click, free_port, make_registry
from slidr.slidrd.busypoll import BusyPoller
from slidr.slidrd.config import ConfigError, build


def _run(coro):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_poller_polls_for_the_window_then_parks():
    async def main():
        loop = asyncio.get_running_loop()
        p = BusyPoller(loop, 20_000)  # 20 ms
        p.touch()
        assert p.active and p.windows == 1
        # While polling, a 5 ms sleep is spent in loop passes, not blocked in epoll.
        await asyncio.sleep(0.005)
        during = p.passes
        assert during > 20, during
        await asyncio.sleep(0.05)  # the window ends; the poller parks
        assert not p.active
        parked = p.passes
        await asyncio.sleep(0.02)
        assert p.passes == parked  # no polling while idle
        p.touch()  # a new request starts a new window
        assert p.active and p.windows == 2
        await asyncio.sleep(0.001)
        assert p.passes > parked
        return during

    _run(main())


def test_touch_extends_the_window():
    async def main():
        # A 250 ms window touched every 2 ms for 100 ms stays one window, as long as no gap
        # between touches reached the window (a starved loop on a loaded machine can).
        p = BusyPoller(asyncio.get_running_loop(), 250_000)
        end = time.monotonic() + 0.1
        last, worst = time.monotonic(), 0.0
        while time.monotonic() < end:
            p.touch()
            await asyncio.sleep(0.002)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
        if worst >= 0.25:
            pytest.skip(f"the event loop was starved for {worst * 1e3:.0f} ms")
        assert p.active and p.windows == 1

    _run(main())


def test_poller_rejects_a_non_positive_window():
    async def main():
        with pytest.raises(ValueError, match="busy_poll_us"):
            BusyPoller(asyncio.get_running_loop(), 0)

    _run(main())


@pytest.mark.parametrize("value", [-1, 10_000_001, 1.5, True])
def test_config_rejects_bad_busy_poll(value):
    with pytest.raises(ConfigError, match="busy_poll_us"):
        build({"registry": "/x", "busy_poll_us": value}, file_name="test.toml")


def _metric(body: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_daemon_with_busy_poll_scores_and_parks_when_idle(tmp_path):
    reg = make_registry(tmp_path)
    mport = free_port()
    d = Daemon(reg, "--busy-poll-us", "3000", metrics_port=mport)
    d.wait_ready()
    try:
        with Client(d.port) as c:
            for i in range(50):
                check_decision(c.call("score", click(i)), f"c{i}")

        def body() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()

        b1 = body()
        assert _metric(b1, "slidr_busy_poll_windows_total") >= 1
        assert _metric(b1, "slidr_busy_poll_passes_total") > 0
        time.sleep(0.2)  # well past the 3 ms window: the loop sleeps again
        p1 = _metric(body(), "slidr_busy_poll_passes_total")
        time.sleep(0.3)
        p2 = _metric(body(), "slidr_busy_poll_passes_total")
        # A metrics scrape is itself not a scoring request, so nothing restarts polling.
        assert p2 == p1, (p1, p2)
    finally:
        assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log(), d.log()


def test_daemon_without_busy_poll_has_no_poll_metrics(tmp_path):
    reg = make_registry(tmp_path)
    mport = free_port()
    d = Daemon(reg, metrics_port=mport)
    d.wait_ready()
    try:
        with Client(d.port) as c:
            check_decision(c.call("score", click(1)), "c1")
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert "slidr_busy_poll" not in body
    finally:
        assert d.stop() == 0, d.log()
