"""A trivial msgpack-RPC server that answers `score` with a constant decision.

It does no work, so a load run against it measures the load generator itself: its latency
floor (what the generator adds to every number) and its ceiling (the highest rate it can
offer on this machine). Faults for tests: `--stall-after S` or `--stall-at-request N` with
`--stall-ms M` blocks the event loop once (a GC pause / a stuck batch), `--die-after S` exits mid-run.

    python -m slidr.bench.echo_server --port 0      # prints "READY <port>" when listening
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import msgpack

from slidr.util import stop_process

DECISION = {"invalid": False, "score": 0.0, "threshold": 1.0, "slice": "desktop/out",
            "model": "echo", "reason": "model"}


class EchoProtocol(asyncio.Protocol):
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 24)
        self.packer = msgpack.Packer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        st = self.state
        self.unpacker.feed(data)
        out = []
        pack = self.packer.pack
        for msg in self.unpacker:
            if not isinstance(msg, list) or len(msg) != 4 or msg[0] != 0:
                continue
            _, msgid, method, params = msg
            st["n"] += 1
            if st["n"] == st["stall_at_request"]:
                time.sleep(st["stall_s"])  # deliberately block the loop: the fault under test
            if method == "score":
                click = params[0] if params else {}
                d = dict(DECISION)
                d["click_id"] = click.get("click_id") if isinstance(click, dict) else None
                out.append(pack([1, msgid, None, d]))
            elif method == "score_many":
                clicks = params[0] if params else []
                res = [dict(DECISION, click_id=c.get("click_id")) for c in clicks]
                out.append(pack([1, msgid, None, res]))
            elif method == "ping":
                out.append(pack([1, msgid, None, "pong"]))
            elif method == "info":
                out.append(pack([1, msgid, None, {"server": "slidr-bench-echo"}]))
            else:
                out.append(pack([1, msgid, [1, f"no method {method!r}"], None]))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int, stall_after: float | None, stall_ms: float,
                die_after: float | None, ready: Any = None,
                stall_at_request: int = 0) -> None:
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    state: dict[str, Any] = {
        "stall_at": None if stall_after is None else t0 + stall_after,
        "stall_s": stall_ms / 1000.0,
        "stall_at_request": stall_at_request,
        "n": 0,
    }
    server = await loop.create_server(lambda: EchoProtocol(state), host, port,
                                      reuse_address=True, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    if die_after is not None:
        loop.call_later(die_after, lambda: os._exit(3))
    if stall_after is not None:
        def _stall() -> None:  # deliberately block the loop: the fault under test
            if state["stall_at"] is not None:
                state["stall_at"] = None
                time.sleep(state["stall_s"])
        loop.call_later(stall_after, _stall)
    async with server:
        await stop


def _install_uvloop() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is in the bench extra
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slidr-bench-echo", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--stall-after", type=float, default=None, help="seconds after start")
    p.add_argument("--stall-at-request", type=int, default=0,
                   help="block the loop once when the N-th request arrives")
    p.add_argument("--stall-ms", type=float, default=200.0)
    p.add_argument("--die-after", type=float, default=None, help="exit after this many seconds")
    a = p.parse_args(argv)
    _install_uvloop()

    def ready(port: int) -> None:
        print(f"READY {port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.host, a.port, a.stall_after, a.stall_ms, a.die_after, ready,
                          a.stall_at_request))
    return 0


class EchoProcess:
    """The echo server in a child process (so it never shares the generator's event loop).

    Optional `cpus` pins it with taskset where available."""

    def __init__(self, stall_after: float | None = None, stall_ms: float = 200.0,
                 die_after: float | None = None, cpus: str | None = None,
                 stall_at_request: int = 0) -> None:
        args = [sys.executable, "-m", "slidr.bench.echo_server", "--port", "0"]
        if stall_at_request:
            args += ["--stall-at-request", str(stall_at_request), "--stall-ms", str(stall_ms)]
        if stall_after is not None:
            args += ["--stall-after", str(stall_after), "--stall-ms", str(stall_ms)]
        if die_after is not None:
            args += ["--die-after", str(die_after)]
        if cpus:
            import shutil
            if shutil.which("taskset"):
                args = ["taskset", "-c", cpus, *args]
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> EchoProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                sel.close()
                return self
        sel.close()
        self.stop()
        raise RuntimeError("echo server did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> EchoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
