"""A throwaway real Redis Cluster for tests and benches: N masters (+ N replicas) on loopback.

Each node is a `redis-server --cluster-enabled yes` on a free 127.0.0.1 port with nothing on
disk; `redis-cli --cluster create ... --cluster-replicas R --cluster-yes` joins them, and start()
returns once every node reports cluster_state:ok and agrees on full slot coverage. Nodes can be
killed (failover tests) and the cluster resharded with `redis-cli --cluster reshard`.

The nodes run with `cluster-require-full-coverage no` (docs/cluster.md: while a dead master's
replica takes over, the other masters keep serving their slots) and a short node timeout so a
failover finishes in about a second.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from slidr.testing.redis_server import RedisServer, free_port

__all__ = ["RedisCluster", "cluster_info"]


def _cmd(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command on a raw socket -> the raw reply bytes (enough for INFO / CLUSTER INFO)."""
    from slidr.store_redis import resp_bulk
    req = b"*%d\r\n" % len(args) + b"".join(resp_bulk(a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
            if buf.startswith(b"$"):
                head, _, rest = buf.partition(b"\r\n")
                if int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2:
                    return buf
            elif buf.endswith(b"\r\n"):
                return buf


def cluster_info(port: int) -> dict[str, str]:
    """CLUSTER INFO of the node on `port` as a dict."""
    raw = _cmd(port, "CLUSTER", "INFO").decode(errors="replace")
    out = {}
    for line in raw.splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


class RedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 extra: list[str] | None = None) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli binary not found (install Debian's redis-tools)")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra = extra or []
        self.nodes: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """A seed URL (the first node)."""
        return self.nodes[0].url

    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        count = self.masters * (1 + self.replicas)
        try:
            for _ in range(count):
                port = free_port()
                srv = RedisServer(port=port, extra=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-require-full-coverage", "no",
                    "--cluster-replica-validity-factor", "0",
                    *self.extra])
                self.nodes.append(srv)
                srv.start()
            if self.masters < 3:
                # redis-cli --cluster create wants 3 masters: join and assign slots by hand.
                if self.replicas:
                    raise ValueError("a cluster of fewer than 3 masters takes no replicas here")
                self._assign_by_hand()
                self.wait_ok(timeout)
                return self
            args = ["redis-cli", "--cluster", "create",
                    *[f"127.0.0.1:{p}" for p in self.ports],
                    "--cluster-replicas", str(self.replicas), "--cluster-yes"]
            r = subprocess.run(args, capture_output=True, timeout=timeout)
            if r.returncode != 0:
                raise RuntimeError("redis-cli --cluster create failed: "
                                   + (r.stdout + r.stderr).decode(errors="replace")[-800:])
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_by_hand(self) -> None:
        first = self.nodes[0].port
        for n in self.nodes[1:]:
            _cmd(n.port, "CLUSTER", "MEET", "127.0.0.1", str(first))
        step = -(-16384 // self.masters)
        for j, n in enumerate(self.nodes):
            lo, hi = j * step, min((j + 1) * step, 16384) - 1
            _cmd(n.port, "CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok with all 16384 slots assigned and ok."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                infos = [cluster_info(n.port) for n in self.alive()]
                if all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                       for i in infos) and len({i.get("cluster_known_nodes") for i in infos}) == 1:
                    return
                last = infos[0] if infos else {}
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis cluster not ok after {timeout}s: {last}")

    def wait_failover(self, dead_port: int, timeout: float = 30.0) -> None:
        """Until every live node's slot map names a live master for every slot (a replica of
        the dead master promoted), then until cluster_state:ok everywhere."""
        deadline = time.monotonic() + timeout
        live = {n.port for n in self.alive()}
        while time.monotonic() < deadline:
            ok = True
            for port in live:
                try:
                    raw = _cmd(port, "CLUSTER", "NODES").decode(errors="replace")
                except OSError:
                    ok = False
                    break
                for line in raw.splitlines():
                    f = line.split()
                    if len(f) > 8 and "master" in f[2] and "fail" not in f[2]:
                        p = int(f[1].split("@")[0].rsplit(":", 1)[1])
                        if p == dead_port:
                            ok = False
                    if len(f) > 2 and "master" in f[2] and "fail" in f[2] and len(f) > 8:
                        ok = False  # a failed master still holds slots
            if ok:
                self.wait_ok(max(deadline - time.monotonic(), 1.0))
                return
            time.sleep(0.02)
        raise RuntimeError(f"no replica took over from 127.0.0.1:{dead_port} in {timeout}s")

    def role(self, port: int) -> str:
        raw = _cmd(port, "ROLE").decode(errors="replace")
        return "master" if "master" in raw.split("\r\n")[2] else "slave"

    def master_ports(self) -> list[int]:
        return [n.port for n in self.alive() if self.role(n.port) == "master"]

    def node_id(self, port: int) -> str:
        return _cmd(port, "CLUSTER", "MYID").split(b"\r\n")[1].decode()

    def reshard(self, src_port: int, dst_port: int, slots: int, timeout: float = 60.0,
                pipeline: int = 10) -> subprocess.CompletedProcess[bytes]:
        """Move `slots` slots from one master to another with `redis-cli --cluster reshard`."""
        args = ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{src_port}",
                "--cluster-from", self.node_id(src_port), "--cluster-to", self.node_id(dst_port),
                "--cluster-slots", str(slots), "--cluster-yes",
                "--cluster-pipeline", str(pipeline)]
        r = subprocess.run(args, capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("redis-cli --cluster reshard failed: "
                               + (r.stdout + r.stderr).decode(errors="replace")[-800:])
        return r

    def kill(self, port: int) -> None:
        for n in self.nodes:
            if n.port == port:
                n.kill()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        self.nodes = []

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
