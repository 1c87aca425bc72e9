"""The daemon process: public msgpack-RPC port, admin Unix socket, metrics port, model lifecycle.

Life of a process: load + verify + warm the current bundle -> bind -> READY=1 -> serve ->
(SIGHUP / admin reload: new model built off to the side, one reference swapped between
batches) -> SIGTERM: STOPPING=1, stop accepting, answer everything in flight, flush the
decision log, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import logging
import os
import signal
import sys
import time
from typing import Any

from slidr.errors import ErrorCode, RpcError
from slidr.featurespec import SPEC_HASH
from slidr.protocol import ADMIN_METHODS, MAX_MSGID, PUBLIC_METHODS

from .batcher import Batcher
from .busypoll import BusyPoller
from .config import Config
from .decision_log import DecisionLog
from .intake import Group
from .intake import ip_cache as batcher_ip_cache
from .metrics import Metrics, serve_metrics
from .model import ModelLoadError, ServingModel, load_current, rejected_versions
from .model import rollback as registry_rollback
from .monitor import Event, Monitor, expected_from_manifest
from .notify import Notifier
from .rpc import RpcConnection

log = logging.getLogger("slidrd")

# At max_connections a new client takes the place of the connection idle the longest, if that
# one has been idle at least this long (s) with nothing in flight; else the new one is refused.
ROOM_MIN_IDLE_S = 1.0
# When no connection has been idle that long, one whose message began this long ago (s) and is
# still incomplete goes instead (the oldest such message first): trickling clients.
ROOM_SLOW_FRAME_S = 0.25
# Candidates ranked per scan of the connections, and the shortest time between two scans that
# found no one (s).
ROOM_BATCH = 256
ROOM_RESCAN_S = 0.05



def _deadline_of(obj: Any, default_s: float) -> float:
    """Seconds: the shorter of the configured deadline and a `deadline_ms` the client asked for."""
    if type(obj) is dict:
        v = obj.get("deadline_ms")
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise RpcError(ErrorCode.BAD_REQUEST, "deadline_ms must be a positive number")
            return min(default_s, v / 1000.0)
    return default_s


class PublicConnection(RpcConnection):
    def __init__(self, daemon: Daemon) -> None:
        cfg = daemon.cfg
        super().__init__(daemon, cfg.max_message_bytes)
        self.batcher = daemon.batcher
        self.poller = daemon.poller
        self.deadline_s = cfg.deadline_ms / 1000.0
        self.max_per_conn = cfg.max_inflight_per_conn
        self.max_many = cfg.max_score_many
        self.ip_ok, self.ip_check = batcher_ip_cache()
        self.max_errors = cfg.max_errors_per_conn
        self.write_buffer_bytes = cfg.write_buffer_bytes

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        d = self.daemon
        d.metrics.connections_total += 1
        if len(d.conns) >= d.cfg.max_connections and not d.draining:
            d.make_room()
        if len(d.conns) >= d.cfg.max_connections or d.draining:
            self.fatal(ErrorCode.OVERLOADED, "too many connections" if not d.draining
                       else "shutting down")
            return
        d.conns.add(self)
        d.metrics.connections = len(d.conns)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.daemon.conns.discard(self)
        self.daemon.metrics.connections = len(self.daemon.conns)

    def resume_below(self) -> int:
        return self.max_per_conn // 2

    def room(self) -> int:
        b = self.batcher
        return min(self.max_per_conn - self.inflight, b.max_total - b.inflight_clicks)

    def take_items(self, items: list[Any]) -> None:
        self.daemon.metrics.requests += len(items)
        self.batcher.submit_items(items, self)

    def handle(self, msg: Any, t_arr: float) -> None:
        # The hot case, [0, msgid, "score", [click]] with no deadline of its own, straight to
        # the batcher: the general path below gives the same answer with four more calls.
        if type(msg) is list and len(msg) == 4 and msg[0] == 0 and msg[2] == "score":
            msgid = msg[1]
            params = msg[3]
            if type(msgid) is int and 0 <= msgid <= MAX_MSGID and type(params) is list \
                    and len(params) == 1:
                click = params[0]
                if type(click) is dict and "deadline_ms" not in click:
                    self.daemon.metrics.requests += 1
                    if self.inflight >= self.max_per_conn:
                        self.batcher.shed(click, self, msgid, "overload")
                    else:
                        self.batcher.submit(click, self, msgid, t_arr, t_arr + self.deadline_s)
                    return
        super().handle(msg, t_arr)

    def dispatch(self, msgid: int | None, method: str, params: list[Any], t_arr: float) -> None:
        if method == "score":
            if msgid is None:
                return  # a notification cannot carry an answer: nothing to do
            if not 1 <= len(params) <= 2:
                raise RpcError(ErrorCode.BAD_REQUEST, "score takes [click] or [click, options]")
            click = params[0]
            dl = _deadline_of(params[1] if len(params) == 2 else None, self.deadline_s)
            dl = _deadline_of(click, dl)
            b = self.batcher
            if self.inflight >= self.max_per_conn:
                b.shed(click, self, msgid, "overload")
                return
            b.submit(click, self, msgid, t_arr, t_arr + dl)
        elif method == "score_many":
            if msgid is None:
                return
            if not 1 <= len(params) <= 2 or type(params[0]) is not list:
                raise RpcError(ErrorCode.BAD_REQUEST,
                               "score_many takes [[click, ...]] or [[click, ...], options]")
            clicks = params[0]
            if len(clicks) > self.max_many:
                raise RpcError(ErrorCode.TOO_LARGE, f"score_many of {len(clicks)} clicks is over "
                               f"the limit of {self.max_many}")
            if not clicks:
                self.queue_result(msgid, [])
                return
            dl = _deadline_of(params[1] if len(params) == 2 else None, self.deadline_s)
            g = Group(self, msgid, len(clicks))
            b = self.batcher
            over = self.inflight + len(clicks) > self.max_per_conn
            for i, c in enumerate(clicks):
                if over:
                    b.shed(c, g, i, "overload")
                else:
                    b.submit(c, g, i, t_arr, t_arr + _deadline_of(c, dl))
        elif method == "ping":
            self.queue_result(msgid, "pong")
        elif method == "info":
            self.queue_result(msgid, self.daemon.info())
        else:
            raise RpcError(ErrorCode.UNKNOWN_METHOD, f"unknown method {method!r}; this port serves "
                           f"{', '.join(PUBLIC_METHODS)}")

    def after_input(self) -> None:
        if self.poller is not None:
            self.poller.touch()
        self.batcher.kick()
        if self.inflight >= self.max_per_conn:
            self._pause()


class AdminConnection(RpcConnection):
    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon, 1 << 20)

    def dispatch(self, msgid: int | None, method: str, params: list[Any], t_arr: float) -> None:
        d = self.daemon
        if method == "reload":
            self.run_async(msgid, d.reload(reason="admin"))
        elif method == "rollback":
            self.run_async(msgid, d.rollback())
        elif method == "stats":
            self.queue_result(msgid, d.stats())
        elif method == "ping":
            self.queue_result(msgid, "pong")
        elif method == "info":
            self.queue_result(msgid, d.info())
        else:
            raise RpcError(ErrorCode.UNKNOWN_METHOD, f"unknown admin method {method!r}; this "
                           f"socket serves {', '.join(ADMIN_METHODS)}")


def _use_native() -> bool:
    from slidr import kernel
    n = getattr(kernel, "native", None)
    return bool(kernel.NATIVE and hasattr(n, "EmbeddedStore") and hasattr(n, "hash_keys"))


def make_store(cfg: Config) -> Any:
    if cfg.redis:
        # redis_mode: a single Redis (RedisStore) or Redis Cluster (RedisClusterStore, found
        # from the seed URL(s)); raises TopologyError (one line) when the URL does not fit.
        from slidr.store_cluster import open_redis_store
        return open_redis_store(cfg.redis, cfg.redis_mode, prefix=cfg.redis_prefix,
                                timeout_s=cfg.redis_timeout_ms / 1000)
    from slidr.kernel import embedded_store
    # Sized up front: growing a table rehashes it in one go, a multi-ms stall on the loop. With
    # a memory cap the index is sized for the cap at once (no rehash ever).
    return embedded_store(_use_native(), capacity_hint=cfg.embedded_capacity,
                          max_keys=embedded_max_keys(cfg.embedded_max_mb))


def embedded_max_keys(max_mb: int) -> int:
    """Keys per counter table that fit the embedded store in `max_mb` MiB (0 = no cap)."""
    if max_mb <= 0:
        return 0
    from slidr.ext import kernel_native
    if kernel_native is not None:
        return int(kernel_native.max_keys_for_bytes(max_mb << 20))
    # The pure-Python twin: the compiled store's entry sizes (users 72, sessions 72, IPs 280,
    # entities 160 bytes, and an index slot of 16 at 70 % load for each of the four tables),
    # so both paths keep about the same number of keys.
    return max(1, (max_mb << 20) // (584 + 4 * 16 * 2))


class Daemon:
    def __init__(self, cfg: Config, notifier: Notifier | None = None, worker: int = 0,
                 on_ready: Any = None) -> None:
        self.cfg = cfg
        self.worker = worker
        self.notifier = notifier or Notifier("")
        self.on_ready = on_ready
        self.metrics = Metrics()
        self.model: ServingModel | None = None
        self.conns: set[PublicConnection] = set()
        self._room: list[PublicConnection] = []  # eviction candidates at max_connections
        self._room_scan_t = -1.0
        self.draining = False
        self.stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._servers: list[Any] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = time.time()
        self.port = 0
        self.metrics_port = 0
        self.admin_path = ""
        self.store: Any = None
        self.link: Any = None
        self.dlog: DecisionLog | None = None
        self.poller: BusyPoller | None = None
        self.monitor = Monitor(self.metrics, cfg.monitor, cfg.monitor_window_clicks,
                               cfg.monitor_window_s, cfg.monitor_ivr_ratio, cfg.monitor_ivr_abs,
                               cfg.monitor_min_slice_clicks, cfg.monitor_sustain,
                               cfg.monitor_fail_open_max, cfg.monitor_cooldown_s,
                               cfg.monitor_judge_windows, ivr_band=cfg.monitor_ivr_band,
                               slice_ivr_band=cfg.monitor_slice_ivr_band,
                               slice_ivr_abs_slack=cfg.monitor_slice_ivr_abs_slack,
                               z=cfg.monitor_z)
        self.metrics.monitor = self.monitor
        self._lag_tick = time.monotonic()  # the loop-lag timer's last pass (/healthz)
        self._lag_handle: asyncio.TimerHandle | None = None
        self._pointers_mtime = 0
        self._ready = False

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.model = await loop.run_in_executor(None, load_current, cfg.registry, cfg.backend,
                                                cfg.max_batch, cfg.bundle_key)
        self.metrics.model_version = self.model.version
        self.monitor.on_swap(self.model.version, expected_from_manifest(self.model.manifest),
                             old_rejected=False)
        self._pointers_mtime = _mtime(cfg.registry)
        self.store = make_store(cfg)
        from slidr.kernel import FeatureKernel
        kernel = FeatureKernel(self.store, use_native=_use_native())
        link: Any = None
        if cfg.redis and getattr(self.store, "router", None) is not None:
            from .cluster_link import ClusterLink
            link = ClusterLink(self.store, timeout_s=cfg.redis_timeout_ms / 1000)
            self.link = link
            self.metrics.cluster = link
            try:
                await link.connect()
            except Exception as e:
                log.warning("redis cluster not fully reachable at start, failing open for "
                            "the missing part until it is: %s", e)
        elif cfg.redis:
            from .redis_link import RedisLink
            link = RedisLink(cfg.redis, self.store.script, timeout_s=cfg.redis_timeout_ms / 1000,
                             where=self.store.safe_url())
            self.link = link
            try:  # connect (and fail early in the log) before traffic; never fatal
                await link.connect()
            except Exception as e:
                log.warning("store not reachable at start, serving fail-open until it is: %s", e)
        if cfg.decision_log:
            # The decision log's writer thread holding the GIL would make the loop wait up to the
            # default 5 ms switch interval: a tail-latency cliff. Hand over faster.
            sys.setswitchinterval(0.0005)
            self.dlog = DecisionLog(cfg.decision_log, cfg.decision_log_max_bytes,
                                    cfg.decision_log_features,
                                    max_total_bytes=cfg.decision_log_max_total_mb << 20,
                                    max_age_s=cfg.decision_log_max_age_h * 3600.0)
        self.batcher = Batcher(kernel, lambda: self.model, self.metrics, inline=link is None,
                               max_batch=cfg.max_batch, max_wait_us=cfg.max_wait_us,
                               pipeline_depth=cfg.pipeline_depth,
                               max_inflight_total=cfg.max_inflight_total, decision_log=self.dlog,
                               deadline_s=cfg.deadline_ms / 1000.0, link=link,
                               max_clock_skew_s=cfg.max_clock_skew_s,
                               max_click_age_s=cfg.max_click_age_s)
        if cfg.busy_poll_us > 0:
            self.poller = BusyPoller(loop, cfg.busy_poll_us)
            self.metrics.busy_poll = self.poller
        srv = await loop.create_server(lambda: PublicConnection(self), cfg.host, cfg.port,
                                       reuse_port=cfg.workers > 1 or None, backlog=1024)
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        if cfg.admin_socket:
            path = cfg.admin_socket if cfg.workers == 1 else f"{cfg.admin_socket}.{self.worker}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            old_mask = os.umask(0o177)  # the socket is created 0600, never wider for a moment
            try:
                asrv = await loop.create_unix_server(lambda: AdminConnection(self), path)
            finally:
                os.umask(old_mask)
            os.chmod(path, 0o600)
            self._servers.append(asrv)
            self.admin_path = path
        if cfg.metrics_port >= 0:
            mport = cfg.metrics_port + self.worker if cfg.metrics_port else 0
            msrv = await serve_metrics(self.metrics, cfg.metrics_host, mport, probe=self.probe)
            self._servers.append(msrv)
            self.metrics_port = msrv.sockets[0].getsockname()[1]
        # Everything loaded so far (modules, ORT, the model) lives for the whole process: keep it
        # out of the collector's scans, and collect young objects less often. Per-click garbage is
        # mostly acyclic and freed by refcounting; this trims multi-ms gen-2 pauses from the tail.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 1000)
        self._tasks.append(loop.create_task(self._sweeper()))
        self._lag_start()
        self._tasks.append(loop.create_task(self._monitor_loop()))
        self._gc_t0 = 0.0
        gc.callbacks.append(self._on_gc)
        if self.notifier.watchdog_s:
            self._tasks.append(loop.create_task(self._watchdog()))
        log.info("slidrd worker %d serving model %s on %s:%d (store %s, %s)", self.worker,
                 self.model.version, cfg.host, self.port, getattr(self.store, "name", "?"),
                 "inline" if link is None else f"pipelined, depth {cfg.pipeline_depth}")
        self._ready = True
        self.notifier.ready(f"serving model {self.model.version} on port {self.port}")
        if self.on_ready is not None:
            self.on_ready(self)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: loop.create_task(self._reload_quiet("SIGHUP")))
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)

    # ------------------------------------------------------------------ admin
    def info(self) -> dict[str, Any]:
        m = self.model
        return {"model": m.version if m else None, "spec_hash": SPEC_HASH,
                "scorer": m.scorer.name if m else None,
                "store": getattr(self.store, "name", type(self.store).__name__),
                "pid": os.getpid(), "worker": self.worker, "uptime_s": time.time() - self.started,
                "deadline_ms": self.cfg.deadline_ms, "max_batch": self.cfg.max_batch,
                "max_message_bytes": self.cfg.max_message_bytes}

    def stats(self) -> dict[str, Any]:
        s = self.metrics.snapshot()
        s["model"] = self.model.info() if self.model else None
        s["pending"] = len(self.batcher.pending)
        s["inflight_clicks"] = self.batcher.inflight_clicks
        if self.dlog is not None:
            s["decision_log"] = {"dir": str(self.dlog.dir), "run": self.dlog.run_id,
                                 "written": self.dlog.written, "dropped": self.dlog.dropped,
                                 "queued_batches": len(self.dlog.q),
                                 "deleted_files": self.dlog.deleted_files,
                                 "deleted_bytes": self.dlog.deleted_bytes}
        if hasattr(self.link, "stats"):  # Redis Cluster: nodes, retries, map refreshes
            s["redis_cluster"] = self.link.stats()
        s["pid"] = os.getpid()
        s["monitor"] = self.monitor.stats()
        return s

    def probe(self, name: str) -> tuple[bool, dict[str, Any]]:
        """/healthz: the process is alive and its event loop is not wedged (the 10 ms loop-lag
        timer ran within the last 2 s). /readyz: a model is loaded and warmed, the store is
        reachable, and the daemon is not draining."""
        lag_age = time.monotonic() - self._lag_tick
        alive = lag_age < 2.0
        if name == "healthz":
            return alive, {"alive": alive, "loop_timer_age_s": round(lag_age, 3)}
        link = self.link
        store_ok = link is None or bool(getattr(link, "connected", False))
        if not store_ok and hasattr(link, "_start_connect"):
            link._start_connect()  # an idle daemon reconnects when a probe asks
        model_ok = self.model is not None and self._ready
        ok = alive and model_ok and store_ok and not self.draining
        return ok, {"ready": ok, "model": self.model.version if self.model else None,
                    "model_warmed": model_ok, "store_reachable": store_ok,
                    "draining": self.draining, "loop_alive": alive}

    async def reload(self, reason: str = "admin") -> dict[str, Any]:
        async with self._reload_lock:
            old = self.model
            self.notifier.reloading()
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, load_current, self.cfg.registry,
                                                 self.cfg.backend, self.cfg.max_batch,
                                                 self.cfg.bundle_key)
            except ModelLoadError as e:
                self.metrics.reloads_failed += 1
                log.error("reload (%s) refused, still serving %s: %s", reason,
                          old.version if old else None, e)
                self.notifier.ready(f"reload refused: {e}; serving {old.version if old else None}")
                raise RpcError(ErrorCode.ADMIN_FAILED, f"reload refused, still serving "
                               f"{old.version if old else None}: {e}") from None
            rejected = await loop.run_in_executor(None, rejected_versions, self.cfg.registry)
            # One reference swap: the next batch uses `new`; a batch in flight keeps `old`.
            self.model = new
            self.metrics.model_version = new.version
            self.metrics.reloads_ok += 1
            log.info("reload (%s): %s -> %s", reason, old.version if old else None, new.version)
            shadow = self.monitor.on_swap(new.version, expected_from_manifest(new.manifest),
                                          old_rejected=old is not None and
                                          old.version in rejected, previous=old)
            self.batcher.shadow = shadow.sample if shadow is not None else None
            self.notifier.ready(f"serving model {new.version}")
            return {"version": new.version, "previous": old.version if old else None,
                    "warmup_ms": new.warmup_ms}

    async def _reload_quiet(self, reason: str) -> None:
        with contextlib.suppress(RpcError):
            await self.reload(reason)

    async def rollback(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, registry_rollback, self.cfg.registry)
        except Exception as e:
            raise RpcError(ErrorCode.ADMIN_FAILED, f"rollback refused: {e}") from None
        out = await self.reload(reason="rollback")
        out["rolled_back"] = True
        return out

    # ------------------------------------------------------------------ background
    def make_room(self) -> None:
        """At max_connections: close the connection idle the longest (nothing in flight), so
        that a new client gets in; idle and trickling peers cannot lock everyone out. One scan
        of the connections ranks up to ROOM_BATCH candidates, which the next connects use
        (a burst of connects at the limit must not scan every connection each time)."""
        now = time.monotonic()
        for attempt in range(2):
            while self._room:
                c = self._room.pop()
                if c in self.conns and self._room_rank(c, now) is not None:
                    self.conns.discard(c)
                    self.metrics.defence["closed_for_room"] += 1
                    c.fatal(ErrorCode.OVERLOADED, "closed to make room for a new connection "
                            "(max_connections reached; this one was idle the longest)")
                    return
            if attempt or now - self._room_scan_t < ROOM_RESCAN_S:
                return  # scanned a moment ago and found no one: refuse
            self._room_scan_t = now
            ranked = []
            for c in self.conns:
                r = self._room_rank(c, now)
                if r is not None:
                    ranked.append((r, id(c), c))
            # best candidate last: pop() takes it
            self._room = [c for _, _, c in heapq.nsmallest(ROOM_BATCH, ranked)][::-1]

    @staticmethod
    def _room_rank(c: PublicConnection, now: float) -> tuple[int, float] | None:
        """How evictable a connection is (smaller first), or None when it must stay: idle
        at least ROOM_MIN_IDLE_S (longest idle first), else an incomplete message begun at
        least ROOM_SLOW_FRAME_S ago (oldest first)."""
        if c.inflight or c.closing or c.closed:
            return None
        if c.last_active < now - ROOM_MIN_IDLE_S:
            return (0, c.last_active)
        if c.rest and c.frame_t0 < now - ROOM_SLOW_FRAME_S:
            return (1, c.frame_t0)
        return None

    async def _sweeper(self) -> None:
        cfg = self.cfg
        period = min(1.0, cfg.idle_timeout_s / 4, cfg.frame_timeout_s / 4, cfg.write_stall_s / 4)
        defence = self.metrics.defence
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for c in list(self.conns):
                if c.inflight == 0 and now - c.last_active > cfg.idle_timeout_s:
                    c.close()
                elif c.rest and now - c.frame_t0 > cfg.frame_timeout_s and not c.closing \
                        and not c.paused_reading:  # not while the daemon itself holds it back
                    defence["closed_frame_timeout"] += 1
                    c.rest = bytearray()
                    c.fatal(ErrorCode.BAD_REQUEST, f"a message took longer than "
                            f"frame_timeout_s = {cfg.frame_timeout_s:g} s to arrive")
                elif c.write_paused and now - c.write_paused_since > cfg.write_stall_s:
                    defence["closed_write_stall"] += 1
                    c.out.clear()
                    c.closing = True
                    if c.transport is not None:
                        c.transport.abort()  # its unread answers go with it
                    c.closed = True
            if self.dlog is not None:
                self.metrics.decision_log_dropped = self.dlog.dropped
            ev = getattr(self.store, "evicted", None)
            if ev is not None:
                defence["store_evicted"] = int(ev)

    def _lag_start(self) -> None:
        """The loop-lag probe: a 10 ms timer whose lateness goes to the loop_lag histogram and
        whose last pass /healthz looks at. A plain timer callback: no task, future or coroutine
        step per tick (it runs 100 times a second, busy or idle)."""
        loop = asyncio.get_running_loop()
        h = self.metrics.loop_lag
        perf = time.perf_counter

        def tick(t: float) -> None:
            h.observe(max(perf() - t - 0.01, 0.0))
            self._lag_tick = time.monotonic()
            self._lag_handle = loop.call_later(0.01, tick, perf())  # until drain cancels it

        self._lag_handle = loop.call_later(0.01, tick, perf())

    async def _monitor_loop(self, period_s: float = 0.5) -> None:
        """The deviation monitor's tick (off the hot path: a few dict copies every period) and
        the registry watch: a version that becomes rejected (another daemon's monitor, or an
        operator) is not served a moment longer than it takes to notice and reload."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period_s)
            try:
                sh = self.monitor.shadow
                if sh is not None:  # the previous model scores the sampled clicks (a thread)
                    rows = sh.take()
                    if rows:
                        try:
                            counts = await loop.run_in_executor(None, sh.score, rows)
                        except Exception as e:
                            log.warning("monitor: the previous model cannot score the sampled "
                                        "clicks (%s); judging by the live figures", e)
                            self.monitor.end_shadow()
                        else:
                            sh.add(counts)
                ev = self.monitor.tick()
                if self.monitor.shadow is None and self.batcher.shadow is not None:
                    self.batcher.shadow = None  # settled: the previous model is let go
                if ev is not None:
                    await self._on_event(ev)
                mt = _mtime(self.cfg.registry)
                if mt != self._pointers_mtime:
                    self._pointers_mtime = mt
                    rejected = await loop.run_in_executor(None, rejected_versions,
                                                          self.cfg.registry)
                    m = self.model
                    if m is not None and m.version in rejected and not self.draining:
                        log.warning("model %s was rejected in the registry (%s): reloading",
                                    m.version, rejected[m.version].get("reason", "?"))
                        await self._reload_quiet("rejected in registry")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitor tick failed")

    async def _on_event(self, ev: Event) -> None:
        """One line per event in the log; counters in the metrics; a rollback moves the
        registry pointer (only if the bad version is still current) and reloads."""
        log.warning("monitor %s: model %s after %d clicks, %.1f s: %s", ev.kind, ev.version,
                    ev.clicks, ev.seconds, ev.reason)
        if ev.kind != "rollback" or self.draining:
            return
        loop = asyncio.get_running_loop()
        try:
            target = await loop.run_in_executor(
                None, lambda: registry_rollback(
                    self.cfg.registry, reason=f"slidrd monitor: {ev.reason}",
                    expected_current=ev.version, by=f"slidrd pid {os.getpid()}",
                    clicks=ev.clicks, seconds=ev.seconds,
                    served_since=self.monitor.served_since))
        except Exception as e:
            fe = self.monitor.rollback_failed(f"rollback of {ev.version} refused: {e}")
            log.error("monitor rollback_failed: %s; still serving %s", fe.reason, ev.version)
            return
        self._pointers_mtime = _mtime(self.cfg.registry)
        log.warning("monitor rolled the registry back: %s -> %s", ev.version, target)
        await self._reload_quiet("monitor rollback")

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0:
            self.metrics.gc_pause.observe(time.perf_counter() - self._gc_t0)
            self._gc_t0 = 0.0

    async def _watchdog(self) -> None:
        # Sent from the loop itself: a wedged loop stops the pings and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_s / 2)

    # ------------------------------------------------------------------ stop
    def request_stop(self) -> None:
        if not self.draining:
            asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.notifier.stopping()
        log.info("draining: %d connections, %d clicks in flight", len(self.conns),
                 self.batcher.inflight_clicks)
        for s in self._servers[:1]:
            s.close()  # stop accepting; established connections stay open until answered
        for c in list(self.conns):
            c._pause()  # no new requests; what was read is answered
        try:
            await asyncio.wait_for(self.batcher.wait_idle(), self.cfg.drain_timeout_s)
        except TimeoutError:
            log.warning("drain timed out with %d clicks in flight", self.batcher.inflight_clicks)
        for c in list(self.conns):
            c.flush()
            c.close()
        for s in self._servers[1:]:
            s.close()
        for t in self._tasks:
            t.cancel()
        if self._lag_handle is not None:
            self._lag_handle.cancel()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        loop = asyncio.get_running_loop()
        self.batcher.close()
        if self.link is not None:
            self.link.close()
        if self.dlog is not None:
            await loop.run_in_executor(None, self.dlog.close)
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()
        if self.admin_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.admin_path)
        log.info("stopped")
        self.stopped.set()


def _mtime(registry: str) -> int:
    """The pointers file's modification time (ns; 0 when absent): changes at every move."""
    try:
        return os.stat(os.path.join(registry, "pointers.json")).st_mtime_ns
    except OSError:
        return 0


async def serve(cfg: Config, notifier: Notifier | None = None, worker: int = 0,
                on_ready: Any = None) -> None:
    d = Daemon(cfg, notifier, worker, on_ready)
    d.install_signals()
    await d.start()
    await d.stopped.wait()
