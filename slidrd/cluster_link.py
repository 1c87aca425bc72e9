"""The daemon's link to Redis Cluster: one pipelined RedisLink per master, a batch fanned out.

The batcher asks the store for a batch's request (slidr.store_cluster.RedisClusterStore.request
returns a Plan: one EVALSHA per node the batch touches) and hands it to `ClusterLink.send`
exactly as it hands a single Redis's request to RedisLink.send. Every node's part is written
at once on that node's connection; when the last reply is in, the callback gets a ClusterReply
and the store's parse_reply stitches the counters back in click order. A batch costs one round
trip of wall time however many nodes it touches; each node runs its parts in send order, so
every key still sees its clicks in arrival order.

Faults (all within timeout_s of the batch's send):
- a part refused because its keys are not (or no longer) on that node -- "non local key" from
  the script, MOVED, ASK, TRYAGAIN, CLUSTERDOWN -- or its node unreachable: the slot map is read
  again (CLUSTER SHARDS from any node that answers, at most one refresh in flight), keys the
  map still places on the refusing node are located one by one (EXISTS answers -ASK with the
  importing node of a slot under migration), and the failed parts are sent once more where they
  belong now (after ASKING for an importing node). If that fails too, the callback gets
  StoreUnavailable and the batcher fails the batch open;
- node failover: the dead master's connection fails at once; the map read after its replica is
  promoted names the new master, and the next batches go there;
- NOSCRIPT: RedisLink loads the script again (per node).
A retried part runs after batches written later to that node: during a fault its keys may see a
few clicks out of arrival order (a difference of decay, not of counts).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from slidr import redis_topology as rt
from slidr.redis_split import ASKING, Part, Plan, is_redirect, split_absent, without_absent
from slidr.store_cluster import ClusterReply, RedisClusterStore, parse_redirect
from slidr.store_redis import StoreUnavailable

from .redis_link import RedisLink, _cmd

log = logging.getLogger("slidrd")

Callback = Callable[[Any, BaseException | None], None]
_mono = time.monotonic


def _noop(reply: Any, err: BaseException | None) -> None:
    return None


class _Batch:
    __slots__ = ("plan", "cb", "t0", "parts", "replies", "errors", "left", "retried", "done",
                 "result")

    def __init__(self, plan: Plan, cb: Callback) -> None:
        self.plan = plan
        self.cb = cb
        self.t0 = _mono()
        self.parts: list[Part] = []
        self.replies: list[Any] = []
        self.errors: list[tuple[Part, str]] = []
        self.left = 0
        self.retried = False
        self.done = False
        self.result: tuple[Any, BaseException | None] | None = None


class ClusterLink:
    """Pipelined connections to every master of a cluster; `send(plan, cb)` as RedisLink."""

    def __init__(self, store: RedisClusterStore, timeout_s: float = 0.05,
                 connect_timeout_s: float | None = None) -> None:
        self.store = store
        self.router = store.router
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s or max(timeout_s, 0.2)
        self.links: dict[str, RedisLink] = {}
        self.where = store.safe_url()
        self.retries = 0
        self.retried_ok = 0
        self.failed = 0
        self.partial = 0
        self._last_warn = -1e9
        self.refreshes = 0
        self.closed = False
        self._refresh_task: asyncio.Task[bool] | None = None
        self._retry_lock = asyncio.Lock()
        self._last_refresh = 0.0
        # Batches in the order they were sent: each is answered only after every earlier one,
        # as a single Redis answers them (a batch whose parts sit on fewer masters would
        # otherwise be answered, and logged, before an earlier batch counted before it on a
        # shared key, e.g. a popular ad).
        self._order: collections.deque[_Batch] = collections.deque()

    # ------------------------------------------------------------------ public
    @property
    def connected(self) -> bool:
        return all(self._link(a).connected for a in self.router.topo.addrs())

    def inflight(self) -> int:
        return sum(lk.inflight() for lk in self.links.values())

    async def connect(self) -> None:
        """Connect to every master now (start-up); raises StoreUnavailable naming the ones
        that failed."""
        addrs = self.router.topo.addrs()
        res = await asyncio.gather(*(self._link(a).connect() for a in addrs),
                                   return_exceptions=True)
        bad = [f"{a}: {r}" for a, r in zip(addrs, res, strict=True) if isinstance(r, Exception)]
        if bad:
            raise StoreUnavailable("redis cluster: " + "; ".join(bad))

    def send(self, plan: Plan, cb: Callback) -> None:
        """Write every part of the batch; `cb(ClusterReply, None)` or `cb(None, error)` later.
        Raises StoreUnavailable at once when no part could be written."""
        st = _Batch(plan, cb)
        sent = self._send_parts(st, plan.parts)
        if sent == 0 and not st.errors:
            raise StoreUnavailable("redis cluster: empty plan")
        if sent == 0:
            # Nothing is on the wire: the caller fails the batch at once, unless a retry can
            # still run -- then the callback answers later, never from inside send().
            if self._can_retry(st):
                st.left = 0
                self._order.append(st)
                asyncio.get_running_loop().call_soon(self._finish_soon, st)
                return
            raise StoreUnavailable("redis cluster: " + "; ".join(
                f"{p.addr}: {e}" for p, e in st.errors[:3]))
        self._order.append(st)
        if st.left == 0:  # pragma: no cover - every written part answers later
            asyncio.get_running_loop().call_soon(self._finish_soon, st)

    def close(self) -> None:
        self.closed = True
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for lk in self.links.values():
            lk.close()
        self.links.clear()

    def stats(self) -> dict[str, Any]:
        return {"nodes": self.router.topo.addrs(), "retries": self.retries,
                "retried_ok": self.retried_ok, "failed": self.failed, "partial": self.partial,
                "refreshes": self.refreshes, "epoch": self.router.epoch}

    # ------------------------------------------------------------------ parts
    def _link(self, addr: str) -> RedisLink:
        lk = self.links.get(addr)
        if lk is None:
            lk = RedisLink(rt.node_url(self.store.url, addr), self.store.script,
                           timeout_s=self.timeout_s, connect_timeout_s=self.connect_timeout_s,
                           where=addr)
            self.links[addr] = lk
        return lk

    def _send_parts(self, st: _Batch, parts: list[Part]) -> int:
        sent = 0
        for part in parts:
            lk = self._link(part.addr)
            try:
                if part.asking:
                    lk.send(ASKING, _noop)
                lk.send(part.req, self._part_cb(st, part))
            except StoreUnavailable as e:
                st.errors.append((part, str(e)))
                continue
            st.left += 1
            sent += 1
        return sent

    def _part_cb(self, st: _Batch, part: Part) -> Callback:
        def cb(reply: Any, err: BaseException | None) -> None:
            self._on_part(st, part, reply, err)
        return cb

    def _on_part(self, st: _Batch, part: Part, reply: Any, err: BaseException | None) -> None:
        if err is not None:
            st.errors.append((part, str(err)))
        else:
            rows, absent = split_absent(reply)
            if absent:
                # The node held only some of the keys: those are counted; the others go
                # where they live now (a slot moved or under migration).
                part, missing = without_absent(st.plan, part, absent)
                st.errors.append((missing, f"non local key ({len(absent)} keys)"))
            st.parts.append(part)
            st.replies.append(rows)
        st.left -= 1
        if st.left == 0:
            self._finish(st)

    def _finish_soon(self, st: _Batch) -> None:
        if st.left == 0:
            self._finish(st)

    def _can_retry(self, st: _Batch) -> bool:
        return not st.retried and not self.closed and _mono() - st.t0 < self.timeout_s

    def _finish(self, st: _Batch) -> None:
        if st.done:
            return
        if not st.errors:
            st.done = True
            if st.retried:
                self.retried_ok += 1
            self._answer(st, ClusterReply(st.plan, st.parts, st.replies), None)
            return
        if self._can_retry(st):
            st.retried = True
            self.retries += 1
            asyncio.get_running_loop().create_task(self._retry(st))
            return
        st.done = True
        why = "; ".join(f"{p.addr}: {e}" for p, e in st.errors[:3])
        if st.parts:
            # Some nodes answered: their clicks are scored, the others' fail open (a master
            # down does not take the whole store with it).
            self.partial += 1
            if _mono() - self._last_warn > 1.0:
                self._last_warn = _mono()
                log.warning("redis cluster: part of a batch failed open (%d so far): %s",
                            self.partial, why)
            self._answer(st, ClusterReply(st.plan, st.parts, st.replies,
                                          [p for p, _ in st.errors]), None)
            return
        self.failed += 1
        self._answer(st, None, StoreUnavailable("redis cluster: " + why))

    def _answer(self, st: _Batch, reply: Any, err: BaseException | None) -> None:
        """Answer st, and every later batch already done, once all earlier ones are."""
        st.result = (reply, err)
        order = self._order
        while order and order[0].result is not None:
            head = order.popleft()
            res = head.result
            assert res is not None
            try:
                head.cb(res[0], res[1])
            except Exception:  # one caller's bug must not hold the batches after it
                log.exception("cluster batch callback failed")

    async def _retry(self, st: _Batch) -> None:
        # One retry at a time, in the order the failures came in: the parts of one key then
        # reach its new node in the order they were first sent.
        async with self._retry_lock:
            await self._retry_locked(st)

    async def _retry_locked(self, st: _Batch) -> None:
        failed = [p for p, _ in st.errors]
        why = list(st.errors)
        st.errors = []
        try:
            left = max(self.timeout_s - (_mono() - st.t0), 0.001)
            await asyncio.wait_for(self._refresh(), left)
            located: dict[tuple[int, int], tuple[str, bool]] = {}
            if any(is_redirect(e) for _, e in why):
                left = max(self.timeout_s - (_mono() - st.t0), 0.001)
                located = await asyncio.wait_for(self._locate(st.plan, failed), left)
            parts = self.router.replan(st.plan, failed, located)
        except (TimeoutError, StoreUnavailable, OSError) as e:
            st.errors = why + [(failed[0], f"retry: {type(e).__name__}: {e}")]
            self._finish(st)
            return
        except Exception:  # a bug: answer rather than hold the batch
            log.exception("cluster retry failed")
            st.errors = why
            self._finish(st)
            return
        self._send_parts(st, parts)
        if st.left == 0:
            self._finish(st)

    # ------------------------------------------------------------------ topology
    async def _refresh(self) -> bool:
        """Read the slot map again (one refresh in flight; at most every 50 ms)."""
        if self._refresh_task is not None and not self._refresh_task.done():
            return await asyncio.shield(self._refresh_task)
        if _mono() - self._last_refresh < 0.05:
            return False
        self._last_refresh = _mono()
        self._refresh_task = asyncio.get_running_loop().create_task(self._do_refresh())
        return await asyncio.shield(self._refresh_task)

    async def _ask(self, addr: str, req: bytes) -> Any:
        lk = self._link(addr)
        if not lk.connected:
            await lk.connect()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any, err: BaseException | None) -> None:
            if not fut.done():
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(reply)
        lk.send(req, done)
        return await fut

    async def _do_refresh(self) -> bool:
        addrs = self.router.known_addrs()
        # Connected nodes first: a refresh must not wait on a dead one.
        addrs.sort(key=lambda a: 0 if a in self.links and self.links[a].connected else 1)
        for a in addrs:
            try:
                reply = await asyncio.wait_for(self._ask(a, _cmd("CLUSTER", "SHARDS")),
                                               self.connect_timeout_s)
                topo = rt.parse_shards(reply, a.rpartition(":")[0])
            except Exception as e:  # noqa: BLE001 - any node that fails: ask the next
                log.debug("cluster map from %s failed: %s", a, e)
                continue
            if not topo.nodes:
                continue
            old = self.router.topo.addrs()
            changed = (old != topo.addrs()
                       or not np.array_equal(self.router.topo.owner, topo.owner))
            self.router.set_topology(topo)
            self.refreshes += 1
            if changed:
                log.warning("redis cluster map changed: %s", topo.describe())
            return changed
        return False

    async def _locate(self, plan: Plan, failed: list[Part]) -> dict[tuple[int, int],
                                                                      tuple[str, bool]]:
        """EXISTS each key the map still puts on the node that refused it; -ASK / -MOVED say
        where it lives now."""
        todo = self.router.unmoved(plan, failed)
        out: dict[tuple[int, int], tuple[str, bool]] = {}
        if not todo:
            return out
        loop = asyncio.get_running_loop()
        futs: list[tuple[tuple[int, int], asyncio.Future[Any]]] = []
        for k, i, a in todo:
            lk = self._link(a)
            fut: asyncio.Future[Any] = loop.create_future()

            def done(reply: Any, err: BaseException | None,
                     fut: asyncio.Future[Any] = fut) -> None:
                if not fut.done():
                    fut.set_result(err if err is not None else reply)
            try:
                lk.send(_cmd("EXISTS", self.router.key_name(k, int(plan.keys[k][i]))), done)
            except StoreUnavailable:
                continue
            futs.append(((k, i), fut))
        for key, fut in futs:
            r = await fut
            if isinstance(r, BaseException):
                red = parse_redirect(str(r))
                if red is not None:
                    out[key] = red
        return out
