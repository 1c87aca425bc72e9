"""Busy polling: keep the event loop polling its sockets for a while after the last request
instead of sleeping in epoll_wait.

Why: on a virtual machine an idle vCPU halts and the hypervisor takes it away; the next packet
has to wait for the host to schedule the vCPU again. `slidr bench hiccup` measures that here:
a thread that sleeps 200 us wakes up late by p50 0.1 ms, p99.9 2-2.5 ms. At a few thousand
clicks/s the loop sleeps between almost every click, so that wake-up lands in the tail of the
daemon's latency. A loop that keeps polling never halts the vCPU.

How: while polling, one callback re-schedules itself with `call_soon`, so every loop pass has
ready work and the loop polls epoll with a zero timeout instead of blocking. Each request pushes
the end of the polling window `busy_poll_us` ahead; when the window has passed with no request,
the callback stops and the loop sleeps as usual (so an idle daemon costs no CPU).

Cost: one core spent polling while traffic flows (a loop pass is ~1 us: one epoll_wait syscall
and one callback). Use it where the daemon has its own core; leave it off (0, the default) on a
box where the daemon shares cores with other work, since polling then takes CPU from them.
"""

from __future__ import annotations

import asyncio
import time


class BusyPoller:
    __slots__ = ("loop", "window_ns", "until_ns", "active", "passes", "windows")

    def __init__(self, loop: asyncio.AbstractEventLoop, window_us: int) -> None:
        if window_us <= 0:
            raise ValueError(f"busy_poll_us must be > 0 to poll, got {window_us}")
        self.loop = loop
        self.window_ns = int(window_us) * 1000
        self.until_ns = 0
        self.active = False
        self.passes = 0    # loop passes spent polling (metrics: CPU the option costs)
        self.windows = 0   # polling windows started (idle -> polling transitions)

    def touch(self) -> None:
        """A request came in: poll for `busy_poll_us` from now."""
        self.until_ns = time.monotonic_ns() + self.window_ns
        if not self.active:
            self.active = True
            self.windows += 1
            self.loop.call_soon(self._poll)

    def _poll(self) -> None:
        if time.monotonic_ns() < self.until_ns:
            self.passes += 1
            self.loop.call_soon(self._poll)
        else:
            self.active = False

    def stop(self) -> None:
        self.until_ns = 0
