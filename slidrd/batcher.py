"""The micro-batcher: clicks in, decisions out, one store round trip and one model call per batch.

Flow per batch: drop expired clicks (fail-open: deadline) -> validate each click (a bad one gets
INVALID_CLICK, the rest go on) -> ClickBatch and the clicks' entity keys (one native pass) ->
the store's counters (FeatureKernel's key hashes + the entity keys) -> FeatureKernel.finish ->
scorer.infer -> per-slice thresholds -> decisions -> responses grouped per connection ->
decision log.

Scheduling: flush at once when nothing is in flight; while a batch is in the store or the model,
clicks accumulate and leave as the next batch (at most max_batch each). With the embedded store
the batch runs inline on the loop (microseconds of C). With Redis the batch's one EVALSHA is
written to a pipelined asyncio connection (slidrd/redis_link.py) and the loop goes on serving;
up to pipeline_depth batches are in flight, Redis runs them in send order, and the reply's
callback finishes the batch (features, model, answers) on the loop. A timer answers the batch
fail-open at its earliest deadline if the reply is not there by then. No threads in the batcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import operator
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from slidr.contract import (
    DEVICE_CODE,
    ClickBatch,
    ContractError,
    slice_name,
)
from slidr.errors import ErrorCode, error
from slidr.kernel import FeatureKernel
from slidr.protocol import click_id_of, fail_open_decision

from .intake import Group, Item, click_problem, ip_cache, partition
from .metrics import Metrics

log = logging.getLogger("slidrd")

# The native per-click path (ext/_fastpath.pyx) or None; its reference twin is the Python here
# and in slidrd/intake.py.
from slidr.ext import fastpath as _fp  # noqa: E402

_SLICE_BY_CODE = [slice_name(d, li) for d in range(len(DEVICE_CODE)) for li in (0, 1)]
_SLICE_KEYS = [msgpack.packb(s) for s in _SLICE_BY_CODE]
_REASON_KEY = msgpack.packb("model")
_perf = time.perf_counter
# The IP check cache shared with the native partition (and the decoder).
_ip_ok, _ip_valid = ip_cache()
_deadline_of_item = operator.itemgetter(4)


_PACKED: dict[str, bytes] = {}


def _packed(version: str) -> bytes:
    """msgpack of a model version, once per version (not once per batch)."""
    v = _PACKED.get(version)
    if v is None:
        if len(_PACKED) > 64:
            _PACKED.clear()
        v = _PACKED[version] = msgpack.packb(version)
    return v


def _store_unavailable_types() -> tuple[type[BaseException], ...]:
    try:
        from slidr.store_redis import StoreUnavailable
    except ImportError:
        return ()
    return (StoreUnavailable,)


class Batcher:
    def __init__(self, kernel: FeatureKernel, get_model: Callable[[], Any], metrics: Metrics,
                 *, inline: bool, max_batch: int, max_wait_us: int, pipeline_depth: int,
                 max_inflight_total: int, decision_log: Any = None,
                 deadline_s: float = 0.004, link: Any = None, max_clock_skew_s: float = 0.0,
                 max_click_age_s: float = 0.0) -> None:
        self.kernel = kernel
        # Time sanity (0 = off): a click stamped further ahead of this clock (or behind it)
        # is refused, so no single click can move the store's clock.
        self._skew_ms = max_clock_skew_s * 1000.0
        self._age_ms = max_click_age_s * 1000.0
        self.get_model = get_model
        self.metrics = metrics
        self.inline = inline
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        if not inline and link is None:
            raise ValueError("a batcher that is not inline needs a store link (RedisLink)")
        self.link = link
        self.store: Any = kernel.store  # RedisStore in Redis mode (request, parse_reply)
        self.depth = 1 if inline else pipeline_depth
        self.max_total = max_inflight_total
        self.dlog = decision_log
        # The deviation monitor's sampler (slidrd/monitor.py, Shadow) while a newly swapped-in
        # model is compared with the previous one on the same clicks; None otherwise.
        self.shadow: Callable[[np.ndarray, ClickBatch, np.ndarray, Any], None] | None = None
        self.loop = asyncio.get_event_loop()
        self.pending: list[Item] = []
        self.inflight_batches = 0
        self.inflight_clicks = 0  # pending + in batches
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._min_deadline = float("inf")
        self._dirty: set[Any] = set()
        self._store_errors = _store_unavailable_types()
        self._store_down_until = 0.0
        self._backoff = 0.02
        # Redis mode: a click whose remaining budget is below the usual store+model time is
        # answered fail-open at once instead of waiting for a round trip it cannot use (it is
        # still counted: a count-only row of the batch); capped at half the deadline so a slow
        # store never starves every click (the estimate must keep moving).
        self._est = 0.0
        self._last_warn = -1e9
        self._margin_cap = deadline_s / 2
        self._idle_waiters: list[asyncio.Future[None]] = []
        m = metrics
        self._h_store = m.latency["store"]
        self._h_model = m.latency["model"]
        self._h_size = m.batch_size

    # ------------------------------------------------------------------ intake (loop thread)
    def submit(self, click: Any, sink: Any, slot: int, t_arr: float, deadline: float) -> None:
        conn = sink.conn if type(sink) is Group else sink
        if self.inflight_clicks >= self.max_total:
            self.shed(click, sink, slot, "overload")
            return
        conn.inflight += 1
        self.inflight_clicks += 1
        self.pending.append((click, sink, slot, t_arr, deadline))
        if deadline < self._min_deadline:
            self._min_deadline = deadline

    def submit_items(self, items: list[Item], conn: Any) -> None:
        """Clicks of one read, decoded and checked by slidr.ext.decoder (all to `conn`, one
        deadline), within the room the connection asked for: one step per read."""
        n = len(items)
        conn.inflight += n
        self.inflight_clicks += n
        self.pending.extend(items)
        d = items[0][4]
        if d < self._min_deadline:
            self._min_deadline = d

    def kick(self) -> None:
        """Called after intake: flush now when idle, else make sure a timer watches the queue."""
        if not self.pending or self._scheduled:
            return
        if self.inflight_batches == 0 or len(self.pending) >= self.max_batch:
            if self.inflight_batches < self.depth:
                self._scheduled = True
                # call_soon: every connection readable in this loop pass adds to the batch first.
                # (Flushing at once when the loop had been idle was measured: no CPU gain at
                # 5k/s, +30 % main-thread CPU per click at 20k/s from the batching it loses;
                # bench/results/embedded-cpu-5k-2026-12-04.)
                self.loop.call_soon(self._flush)
                return
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None or not self.pending:
            return
        if self.inflight_batches >= self.depth:
            when = self._min_deadline  # pipeline full: only expiring clicks need us
        else:
            when = min(self._min_deadline, self.pending[0][3] + self.max_wait)
        self._timer = self.loop.call_at(self.loop.time() + max(when - _perf(), 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = _perf()
        if self.pending and self.inflight_batches < self.depth:
            self._flush()
            return
        if now >= self._min_deadline:
            keep: list[Item] = []
            expired: list[Item] = []
            mind = float("inf")
            for it in self.pending:
                if it[4] <= now:
                    expired.append(it)
                else:
                    keep.append(it)
                    mind = min(mind, it[4])
            self.pending = keep
            self._min_deadline = mind
            self._fail_open(expired, "deadline", self._version())
            self._flush_dirty()
        self._arm_timer()

    # ------------------------------------------------------------------ batches
    def _version(self) -> str:
        m = self.get_model()
        return m.version if m is not None else ""

    def _flush(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.pending and self.inflight_batches < self.depth:
            if len(self.pending) <= self.max_batch:  # the usual case: all of it, no copy
                items = self.pending
                self.pending = []
            else:
                items = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
            if not self.pending:
                self._min_deadline = float("inf")
            if self.inline:
                self._run_inline(items)
            else:
                self.inflight_batches += 1
                self._run_async(items)
        if self.pending:
            self._arm_timer()
        if self._idle_waiters:  # drain only
            self._maybe_idle()

    def _prepare(self, items: list[Item], t0: float, version: str, margin: float = 0.0
                 ) -> tuple[list[Item], list[Any], ClickBatch | None, int, np.ndarray | None]:
        """Expire late clicks, validate the rest; -> (valid items, their clicks, ClickBatch,
        n_late, entity keys or None: see _columns). Late clicks are answered fail-open here,
        but the valid ones among them still go to the store: the first `n_late` rows of the
        batch are those clicks, counted and not scored. A click happened whether or not it was
        scored in time, and the counters must stay what the offline replay of the log
        computes (a robot flood that makes the daemon late must not also disappear from its
        own velocity features). Late clicks come first: they arrived before the others (all
        deadlines are arrival + the same budget, unless a client asked for a shorter one)."""
        cutoff = t0 + margin
        if _fp is not None:
            valid, clicks, expired, late, check = _fp.partition(items, cutoff, _ip_ok, _ip_valid)
        else:
            valid, clicks, expired, late, check = partition(items, cutoff)
        for it in check:  # not certainly valid: the contract decides, and names the problem
            c = it[0]
            problem = click_problem(c)
            if problem is not None:
                # Refused whether or not it is late: a click the contract refuses is never
                # counted, and its error is its own (not a fail-open decision).
                self._answer_error(it, error(ErrorCode.INVALID_CLICK, problem))
            elif it[4] <= cutoff:
                expired.append(it)
                late.append(c)
            else:
                valid.append(it)
                clicks.append(c)
        rows = late + clicks if late else clicks
        if not rows:
            if expired:
                self._fail_open(expired, "deadline", version)
            return valid, clicks, None, 0, None
        try:
            batch: ClickBatch | None
            batch, eh = self._columns(rows)
            if self._skew_ms or self._age_ms:
                bad = self._clock_refused(batch.ts)
                if bad is not None:
                    valid, clicks, expired, late = self._refuse_clock(bad, valid, clicks,
                                                                      expired, late)
                    rows = late + clicks
                    batch, eh = self._columns(rows) if rows else (None, None)
        except Exception:  # a bug: the valid clicks are answered (fail-open), once
            log.exception("batch columns failed")
            self._fail_open(expired, "deadline", version)
            self._fail_open(valid, "model_error", version, clicks)
            return [], [], None, 0, None
        if expired:
            self._fail_open(expired, "deadline", version)
        return valid, clicks, batch, len(late), eh

    @staticmethod
    def _columns(rows: list[Any]) -> tuple[ClickBatch, np.ndarray | None]:
        """-> (ClickBatch, eh): eh are the clicks' entity keys (uint64 (n, 3): ad, IP x ad,
        user agent), hashed by the native fast path in the same pass that builds the columns;
        None without it (the kernel then hashes them from the batch)."""
        if _fp is not None:
            c = _fp.batch_columns(rows, True)
            return ClickBatch(*c[:7]), c[7]
        return ClickBatch.from_clicks(rows, validate=False), None

    def _keys(self, batch: ClickBatch, eh: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """(uh, sh, ih, hll, eh): what the store's update() and request() take. The batch from
        the fast path has no ad_id / user_agent columns (the kernel's eh is all absent, not
        hashed): its entity keys are `eh`."""
        k = self.kernel.keys(batch)
        return tuple(k) if eh is None else (*k[:4], eh)

    def _raw(self, batch: ClickBatch, eh: np.ndarray | None) -> np.ndarray:
        """The embedded store's raw counters of a batch (FeatureKernel.raw, with the entity
        keys the fast path hashed)."""
        uh, sh, ih, hll, e = self._keys(batch, eh)
        raw: np.ndarray = self.store.update(batch.ts, uh, sh, ih, hll, batch.tz_offset_min, e,
                                            batch.logged_in)
        return raw

    def _clock_refused(self, ts: np.ndarray) -> np.ndarray | None:
        """Rows stamped beyond max_clock_skew_s ahead of (or max_click_age_s behind) this
        clock, or None (the usual case: two reductions per batch)."""
        now = time.time() * 1000.0
        hi = now + self._skew_ms if self._skew_ms else float("inf")
        lo = now - self._age_ms if self._age_ms else float("-inf")
        if _fp is not None:
            return _fp.ts_outside(ts, lo, hi)  # type: ignore[no-any-return]
        if ts.max() <= hi and ts.min() >= lo:
            return None
        return np.flatnonzero((ts > hi) | (ts < lo))

    def _refuse_clock(self, bad: np.ndarray, valid: list[Item], clicks: list[Any],
                      expired: list[Item], late: list[Any]
                      ) -> tuple[list[Item], list[Any], list[Item], list[Any]]:
        """Answer the rows `bad` (of late + clicks) with INVALID_CLICK naming 'ts'; -> the
        items and clicks that stay."""
        now = time.time() * 1000.0
        drop = set(bad.tolist())
        nl = len(late)
        for i in sorted(drop):
            it = expired[i] if i < nl else valid[i - nl]
            t = int(it[0]["ts"])
            if self._skew_ms and t > now + self._skew_ms:
                problem = (f"is {(t - now) / 1000.0:.0f} s ahead of the daemon's clock (more "
                           f"than max_clock_skew_s = {self._skew_ms / 1000.0:g})")
            else:
                problem = (f"is {(now - t) / 1000.0:.0f} s behind the daemon's clock (more "
                           f"than max_click_age_s = {self._age_ms / 1000.0:g})")
            self.metrics.clock_refused += 1
            self._answer_error(it, error(ErrorCode.INVALID_CLICK,
                                         str(ContractError("ts", t, problem))))
        expired = [it for i, it in enumerate(expired) if i not in drop]
        late = [c for i, c in enumerate(late) if i not in drop]
        valid = [it for i, it in enumerate(valid) if i + nl not in drop]
        clicks = [c for i, c in enumerate(clicks) if i + nl not in drop]
        return valid, clicks, expired, late

    def _run_inline(self, items: list[Item]) -> None:
        t0 = _perf()
        model = self.get_model()
        valid, clicks, batch, n_late, eh = self._prepare(items, t0, model.version)
        try:
            if batch is not None:
                if t0 < self._store_down_until:
                    self._fail_open(valid, "store_down", model.version, clicks)
                else:
                    try:
                        feats, scores, t_store, t_model = self._compute(batch, model, n_late, eh)
                    except _StageError as e:
                        self._stage_failed(e, valid, clicks, model.version)
                    else:
                        if valid:
                            if n_late:
                                batch = batch.slice(n_late, len(batch))
                            self._decide(valid, clicks, batch, feats, scores, model, t0,
                                         t_store, t_model)
        except Exception:  # a bug before the answers: answer the valid clicks, once
            log.exception("batch failed")
            self._fail_open(valid, "model_error", model.version, clicks)
        self._flush_dirty()

    def _run_async(self, items: list[Item]) -> None:
        """Send the batch's one EVALSHA; _on_reply (or _on_expired) answers it later."""
        t0 = _perf()
        model = self.get_model()
        sent = False
        valid, clicks, batch, n_late, eh = self._prepare(items, t0, model.version,
                                                     min(self._est, self._margin_cap))
        try:
            if batch is not None:
                if t0 < self._store_down_until:
                    self._fail_open(valid, "store_down", model.version, clicks)
                else:
                    uh, sh, ih, hll, e = self._keys(batch, eh)
                    req = self.store.request(batch.ts, uh, sh, ih, hll, batch.tz_offset_min, e,
                                             batch.logged_in)
                    st = _InFlight(valid, clicks, batch, model, t0, n_late)
                    try:
                        self.link.send(req, lambda r, e: self._on_reply(st, r, e))
                    except Exception as e:
                        self._stage_failed(_StageError("store", e), valid, clicks, model.version)
                    else:
                        sent = True
                        if valid:
                            first = min(valid, key=_deadline_of_item)[4]
                            st.timer = self.loop.call_at(
                                self.loop.time() + max(first - _perf(), 0.0), self._on_expired, st)
                        else:
                            st.expired = True  # count-only: nobody waits for the reply
        except Exception:  # a bug before the send: answer the valid clicks, once
            log.exception("batch failed")
            if not sent:
                self._fail_open(valid, "model_error", model.version, clicks)
        if not sent:
            self.inflight_batches -= 1
            if self.pending:
                self.kick()
            self._maybe_idle()
        self._flush_dirty()

    def _on_expired(self, st: _InFlight) -> None:
        # The reply is late: answer now. Redis still applies the batch (the counters stay
        # right); the pipeline slot stays taken until the reply or the link's timeout frees it,
        # so a stuck store cannot pile up requests.
        st.timer = None
        st.expired = True
        self._fail_open(st.valid, "deadline", st.model.version, st.clicks)
        self._flush_dirty()

    def _open_breaker(self) -> None:
        self.metrics.redis_errors += 1
        self._store_down_until = _perf() + self._backoff
        self._backoff = min(self._backoff * 2, 0.5)

    def _on_reply(self, st: _InFlight, reply: Any, err: BaseException | None) -> None:
        t1 = _perf()
        self.inflight_batches -= 1
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        model = st.model
        try:
            if err is not None:
                if st.expired:
                    self._open_breaker()  # nobody waits, but the store is in trouble
                else:
                    self._stage_failed(_StageError("store", err), st.valid, st.clicks,
                                       model.version)
            else:
                try:
                    raw = self.store.parse_reply(reply, len(st.batch))
                except Exception as e:  # a reply of the wrong shape: the store's fault
                    if not st.expired:
                        st.expired = True
                        self._stage_failed(_StageError("store", e), st.valid, st.clicks,
                                           model.version)
                    return
                t_store = t1 - st.t0
                # Redis Cluster: a node's part failed (a plain reply is a list: no lookup)
                lost = None if type(reply) is list else getattr(reply, "lost", None)
                if lost is not None and not st.expired:
                    st, raw = self._drop_lost(st, raw, lost)
                if not st.expired:
                    batch = st.batch
                    if st.n_late:
                        raw = raw[st.n_late:]
                        batch = batch.slice(st.n_late, len(batch))
                    feats = self.kernel.finish(raw, batch)
                    try:
                        scores, t_model = self._infer(feats, model)
                    except _StageError as e:
                        self._stage_failed(e, st.valid, st.clicks, model.version)
                    else:
                        self._est = 0.7 * self._est + 0.3 * (t_store + t_model)
                        self._decide(st.valid, st.clicks, batch, feats, scores, model, st.t0,
                                     t_store, t_model)
                        st.expired = True  # answered (_decide's bookkeeping cannot raise)
                else:
                    self._est = 0.7 * self._est + 0.3 * t_store
        except Exception:  # a bug before the answers: answer the valid clicks, once
            log.exception("batch failed")
            if not st.expired:
                st.expired = True
                self._fail_open(st.valid, "model_error", model.version, st.clicks)
        finally:
            self._flush_dirty()
            if self.pending:
                self.kick()
            self._maybe_idle()

    def _drop_lost(self, st: _InFlight, raw: np.ndarray, lost: np.ndarray
                   ) -> tuple[_InFlight, np.ndarray]:
        """Fail open the clicks of a batch whose counters a cluster node could not give (its
        part failed after the retry); the rest of the batch is scored as usual."""
        self.metrics.redis_errors += 1
        nl = st.n_late
        vl = lost[nl:].tolist()
        self._fail_open([it for it, x in zip(st.valid, vl, strict=True) if x], "store_down",
                        st.model.version, [c for c, x in zip(st.clicks, vl, strict=True) if x])
        keep = np.flatnonzero(~lost)
        ki = keep.tolist()
        b = st.batch
        cols: dict[str, Any] = {  # every column, arrays and lists alike, rows `keep`
            f.name: (v[keep] if isinstance(v, np.ndarray) else
                     None if v is None else [v[i] for i in ki])
            for f in dataclasses.fields(b) for v in (getattr(b, f.name),)}
        batch = ClickBatch(**cols)
        out = _InFlight([it for it, x in zip(st.valid, vl, strict=True) if not x],
                        [c for c, x in zip(st.clicks, vl, strict=True) if not x], batch,
                        st.model, st.t0, int((~lost[:nl]).sum()))
        out.expired = not out.valid
        return out, raw[keep]

    def _compute(self, batch: ClickBatch, model: Any, n_late: int = 0,
                 eh: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Embedded store: features through the store, then the model -> (feats, scores,
        store seconds, model seconds). The first `n_late` rows are counted, not scored."""
        t1 = _perf()
        try:
            feats = self.kernel.finish(self._raw(batch, eh), batch)
        except Exception as e:
            raise _StageError("store", e) from e
        t2 = _perf()
        if n_late:
            feats = feats[n_late:]
            if not feats.shape[0]:
                return feats, np.empty(0, dtype=np.float32), t2 - t1, 0.0
        scores, t_model = self._infer(feats, model)
        return feats, scores, t2 - t1, t_model

    def _infer(self, feats: np.ndarray, model: Any) -> tuple[np.ndarray, float]:
        """The model call -> (scores, seconds); a failure is a _StageError("model")."""
        t = _perf()
        try:
            scores = model.scorer.infer(feats)
        except Exception as e:
            raise _StageError("model", e, feats) from e
        return scores, _perf() - t

    def _stage_failed(self, e: _StageError, valid: list[Item], clicks: list[Any],
                      version: str) -> None:
        if e.stage == "store":
            self.metrics.redis_errors += 1
            if not (self._store_errors and isinstance(e.cause, self._store_errors)):
                log.error("store failed: %r", e.cause)
            elif _perf() - self._last_warn > 1.0:  # at most one line a second while it lasts
                self._last_warn = _perf()
                log.warning("store unavailable (%d errors so far), failing open: %s",
                            self.metrics.redis_errors, e.cause)
            # Circuit breaker: stop asking a dead store for a short, growing while.
            self._store_down_until = _perf() + self._backoff
            self._backoff = min(self._backoff * 2, 0.5)
            self._fail_open(valid, "store_down", version, clicks)
        else:
            log.error("model failed: %r", e.cause)
            self._fail_open(valid, "model_error", version, clicks, e.feats)

    def _decide(self, valid: list[Item], clicks: list[Any], batch: ClickBatch, feats: np.ndarray,
                scores: np.ndarray, model: Any, t0: float, t_store: float, t_model: float) -> None:
        self._backoff = 0.02
        if _fp is not None:
            self._decide_native(valid, clicks, batch, feats, scores, model, t0, t_store, t_model)
            if self.shadow is not None:  # after the answers are queued
                self.shadow(feats, batch, scores, model)
            return
        n = len(valid)
        codes = batch.device.astype(np.intp) * 2 + batch.logged_in
        thr = model.thresholds[codes]
        invalid = scores > thr  # the calibration rule (offline/metrics.py): strictly greater
        version = model.version
        dirty = self._dirty
        dlog = self.dlog
        decisions: list[dict[str, Any]] = []
        score_l = scores.tolist()
        thr_l = thr.tolist()
        inv_l = invalid.tolist()
        code_l = codes.tolist()
        for i in range(n):
            it = valid[i]
            d = {"click_id": clicks[i]["click_id"], "invalid": inv_l[i], "score": score_l[i],
                 "threshold": thr_l[i], "slice": _SLICE_BY_CODE[code_l[i]],
                 "model": version, "reason": "model"}
            decisions.append(d)
            sink = it[1]
            if type(sink) is Group:
                sink.fill(it[2], d)
                dirty.add(sink.conn)
            else:
                sink.inflight -= 1
                sink.queue_result(it[2], d)
                dirty.add(sink)
        self.inflight_clicks -= n
        try:  # answered: nothing below may answer again
            t_end = _perf()
            m = self.metrics
            arr = np.fromiter((it[3] for it in valid), dtype=np.float64, count=n)
            m.latency["queue"].observe_many(t0 - arr)
            m.latency["total"].observe_many(t_end - arr)
            per = np.bincount(codes, minlength=len(_SLICE_BY_CODE)).tolist()
            bad = np.bincount(codes, weights=invalid, minlength=len(_SLICE_BY_CODE)).tolist()
            self._count(n, t_store, t_model, per, bad)
            if dlog is not None:
                dlog.submit(clicks, feats, decisions, version)
            if self.shadow is not None:
                self.shadow(feats, batch, scores, model)
        except Exception:
            log.exception("bookkeeping of a decided batch failed")

    def _decide_native(self, valid: list[Item], clicks: list[Any], batch: ClickBatch,
                       feats: np.ndarray, scores: np.ndarray, model: Any, t0: float,
                       t_store: float, t_model: float) -> None:
        """_decide with the per-click work in C (ext/_fastpath.pyx: decide_batch packs every
        answer frame byte-identical to the dict path and fills the latency histograms;
        route_frames hands the frames out). Dicts only where score_many or the log needs
        them."""
        assert _fp is not None
        n = len(valid)
        m = self.metrics
        q = m.latency["queue"]
        tot = m.latency["total"]
        version = model.version
        frames, codes, thr, invalid, qsum, tsum, per, bad = _fp.decide_batch(
            valid, clicks, batch.device, batch.logged_in, scores, model.thresholds, _SLICE_KEYS,
            _packed(version), _REASON_KEY, t0, _perf(), q.bounds, q.counts, tot.counts)
        q.total += qsum
        q.n += n
        tot.total += tsum
        tot.n += n
        dirty = self._dirty
        groups = _fp.route_frames(valid, frames, Group, dirty)
        self.inflight_clicks -= n
        try:  # direct answers are queued; score_many slots are filled below, once each
            self._after_native(valid, clicks, feats, scores, invalid, thr, codes, version,
                               groups, n, t_store, t_model, per, bad)
        except Exception:
            log.exception("bookkeeping of a decided batch failed")
            for i in groups:  # a slot still empty gets its decision's fail-open twin
                sink = valid[i][1]
                if sink.results[valid[i][2]] is None:
                    sink.fill(valid[i][2], fail_open_decision(clicks[i], "model_error", version))
                    dirty.add(sink.conn)

    def _after_native(self, valid: list[Item], clicks: list[Any], feats: np.ndarray,
                      scores: np.ndarray, invalid: Any, thr: Any, codes: Any, version: str,
                      groups: list[int], n: int, t_store: float, t_model: float, per: list[Any],
                      bad: list[Any]) -> None:
        dirty = self._dirty
        dlog = self.dlog
        if groups or dlog is not None:
            # one record per click for the log, else one per score_many slot
            assert _fp is not None
            decisions = _fp.decision_dicts(clicks, invalid, scores, thr, codes, _SLICE_BY_CODE,
                                           version, None if dlog is not None else groups)
            pairs = ((i, decisions[i]) for i in groups) if dlog is not None \
                else zip(groups, decisions, strict=True)
            for i, d in pairs:
                sink = valid[i][1]
                sink.fill(valid[i][2], d)
                dirty.add(sink.conn)
            if dlog is not None:
                dlog.submit(clicks, feats, decisions, version)
        self._count(n, t_store, t_model, per, bad)

    def _count(self, n: int, t_store: float, t_model: float, per: list[Any],
               bad: list[Any]) -> None:
        """Metrics of a decided batch: stage times, batch size, decisions and invalid clicks
        per slice code (per[k] clicks of which bad[k] invalid)."""
        m = self.metrics
        self._h_store.observe(t_store, n)
        self._h_model.observe(t_model, n)
        self._h_size.observe(float(n))
        dec = m.decisions
        inv = m.invalid
        k = 0
        for c in per:
            if c:
                s = _SLICE_BY_CODE[k]
                dec[s] += c
                inv[s] += int(bad[k])
            k += 1

    # ------------------------------------------------------------------ answers
    def shed(self, click: Any, sink: Any, slot: int, cause: str) -> None:
        """Shed without queueing (overload): answered valid at once."""
        d = fail_open_decision(click, cause, self._version())
        self.metrics.fail_open[cause] += 1
        conn = sink.conn if type(sink) is Group else sink
        conn.inflight += 1
        if type(sink) is Group:
            sink.fill(slot, d)
        else:
            conn.inflight -= 1
            conn.queue_result(slot, d)
        self._dirty.add(conn)
        if self.dlog is not None:
            self.dlog.submit([click], None, [d], d["model"])

    def _answer_error(self, it: Item, err: list[Any]) -> None:
        sink = it[1]
        self.inflight_clicks -= 1
        cid = click_id_of(it[0])
        if type(sink) is Group:
            # A score_many row: counted here (the connection's queue_error counts the rest).
            self.metrics.errors[ErrorCode(err[0]).name] += 1
            sink.fill(it[2], {"click_id": cid, "error": err})
            self._dirty.add(sink.conn)
        else:
            sink.inflight -= 1
            sink.queue_error(it[2], err)
            self._dirty.add(sink)

    def _fail_open(self, items: list[Item], cause: str, version: str,
                   clicks: list[Any] | None = None, feats: np.ndarray | None = None) -> None:
        if not items:
            return
        decisions = []
        for it in items:
            d = fail_open_decision(it[0], cause, version)
            decisions.append(d)
            sink = it[1]
            if type(sink) is Group:
                sink.fill(it[2], d)
                self._dirty.add(sink.conn)
            else:
                sink.inflight -= 1
                sink.queue_result(it[2], d)
                self._dirty.add(sink)
        self.inflight_clicks -= len(items)
        self.metrics.fail_open[cause] += len(items)
        log.debug("fail-open (%s): %d clicks", cause, len(items))
        if self.dlog is not None:
            self.dlog.submit(clicks if clicks is not None else [it[0] for it in items], feats,
                             decisions, version)

    def _flush_dirty(self) -> None:
        if self._dirty:
            for conn in self._dirty:
                conn.flush()
            self._dirty.clear()

    # ------------------------------------------------------------------ drain
    def _maybe_idle(self) -> None:
        if self.inflight_clicks == 0 and self.inflight_batches == 0 and self._idle_waiters:
            for f in self._idle_waiters:
                if not f.done():
                    f.set_result(None)
            self._idle_waiters.clear()

    async def wait_idle(self) -> None:
        if self.inflight_clicks == 0 and self.inflight_batches == 0:
            return
        f: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters.append(f)
        await f

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _InFlight:
    """A batch whose store round trip is under way (Redis mode)."""

    __slots__ = ("valid", "clicks", "batch", "model", "t0", "timer", "expired", "n_late")

    def __init__(self, valid: list[Item], clicks: list[Any], batch: ClickBatch, model: Any,
                 t0: float, n_late: int = 0) -> None:
        self.n_late = n_late  # the batch's first rows: counted, answered already
        self.valid = valid
        self.clicks = clicks
        self.batch = batch
        self.model = model
        self.t0 = t0
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False


class _StageError(Exception):
    def __init__(self, stage: str, cause: BaseException, feats: np.ndarray | None = None) -> None:
        super().__init__(f"{stage}: {cause!r}")
        self.stage = stage
        self.cause = cause
        self.feats = feats
