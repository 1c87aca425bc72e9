"""systemd readiness protocol (sd_notify) without libsystemd: one datagram per state change."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends `KEY=VALUE` datagrams to $NOTIFY_SOCKET; a no-op when it is not set."""

    def __init__(self, path: str | None = None) -> None:
        path = path if path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.addr: str | None = None
        self.sock: socket.socket | None = None
        if path:
            # '@name' is an abstract-namespace socket.
            self.addr = "\0" + path[1:] if path.startswith("@") else path
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        usec = os.environ.get("WATCHDOG_USEC", "")
        wpid = os.environ.get("WATCHDOG_PID", "")
        ok_pid = not wpid or wpid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and ok_pid and int(usec) > 0 else 0.0

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *states: str) -> bool:
        if self.sock is None or self.addr is None:
            return False
        try:
            self.sock.sendto("\n".join(states).encode(), self.addr)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", f"MAINPID={os.getpid()}", *( [f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        mono = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.send("RELOADING=1", f"MONOTONIC_USEC={mono}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
