"""The embedded store never makes one batch pay for a whole table: filling past the cap, and
every key expiring at once (traffic back after a pause), the bookkeeping of any single batch
(entries the sweep and eviction look at, index slots walked by deletes) stays within a bound
set by the batch's size, not by the table's. Counted in work units, not wall time, so the
test holds on a loaded machine."""

from __future__ import annotations

import numpy as np
import pytest
from slidr.ext import kernel_native

pytestmark = pytest.mark.skipif(kernel_native is None, reason="native kernel not built")

CAP = 12_000  # the index ~37 % full at the cap, as at the default cap
BATCH = 16
SCAN = 8            # sweep_scan: entries examined per click
EVICT_SAMPLE = 16   # entries an insert at the cap looks at


def _batch(start: int, n: int) -> tuple[np.ndarray, ...]:
    ids = np.arange(start, start + n, dtype=np.uint64)
    # distinct users, sessions and IPs (any distinct 64-bit values are keys to the store)
    uh = ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
    sh = ids * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(2)
    ih = ids * np.uint64(0x165667B19E3779F9) + np.uint64(3)
    hll = np.stack([(ids % 32), (ids % 7) + 1, (ids % 31), (ids % 5) + 1], axis=1)
    # three distinct entity keys per click (ad, (IP, ad), user agent): the entity table
    # takes three new keys per click
    eh = np.stack([ids * np.uint64(0x27D4EB2F165667C5) + np.uint64(k + 4) for k in range(3)],
                  axis=1)
    return uh, sh, ih, hll.astype(np.uint8), eh


def _worst_batch_work(st, clicks: int, jump_at: int) -> tuple[int, int, int]:
    t0 = 1_767_225_600_000
    worst_examined = worst_probes = 0
    evicted_at_jump = evicted_then = 0
    for s in range(0, clicks, BATCH):
        # 20,000 clicks/s of stream time; 3 days ahead from jump_at on (all keys expire)
        ts = t0 + np.arange(s, s + BATCH, dtype=np.int64) // 20
        if s >= jump_at:
            ts += 3 * 86_400_000
        uh, sh, ih, hll, eh = _batch(s, BATCH)
        e0, p0 = st.work()
        st.update(ts, uh, sh, ih, hll, None, eh)
        e1, p1 = st.work()
        worst_examined = max(worst_examined, e1 - e0)
        worst_probes = max(worst_probes, p1 - p0)
        if s == jump_at:
            evicted_at_jump = st.evicted
        if s == jump_at + CAP:
            evicted_then = st.evicted
    return worst_examined, worst_probes, evicted_then - evicted_at_jump


def test_store_work_per_batch_is_bounded():
    every = 16
    st = kernel_native.EmbeddedStore(max_keys=CAP, sweep_every=every, sweep_grace_ms=0)
    clicks = 8 * CAP
    examined, probes, evicted_after = _worst_batch_work(st, clicks, jump_at=3 * CAP)
    # per table: the sweep steps that fall in a batch, and one eviction sample per insert
    # (the entity table: three inserts per click)
    bound = 4 * SCAN * (BATCH + every) + 6 * EVICT_SAMPLE * BATCH
    assert 0 < examined <= bound, (examined, bound)
    # deletes walk short probe chains (the index is at most ~40 % full at the cap)
    assert probes <= 6 * BATCH * 64, probes
    s = st.stats()
    assert s["users"] == s["sessions"] == s["ips"] == s["entities"] == CAP
    assert st.evicted > 0
    # after the jump the sweep freed the expired keys faster than new ones came: of the
    # first CAP new keys per table after it, almost none had to evict one (the entity table
    # takes 3 CAP new keys in those clicks: 2 CAP of them find it full of live keys)
    assert evicted_after < 2 * CAP + 4 * CAP // 100, evicted_after


def test_a_coarse_sweep_step_breaks_the_bound():
    """The bound above is a real one: a sweep step of 256 clicks (the old default) makes
    the batch it lands in examine 2,048 entries per table."""
    st = kernel_native.EmbeddedStore(max_keys=CAP, sweep_every=256, sweep_grace_ms=0)
    examined, _, _ = _worst_batch_work(st, 5 * CAP, jump_at=3 * CAP)
    assert examined > 4 * SCAN * (BATCH + 16) + 6 * EVICT_SAMPLE * BATCH, examined


def test_work_counters_start_at_zero_and_grow():
    st = kernel_native.EmbeddedStore(max_keys=64)
    assert st.work() == (0, 0)
    uh, sh, ih, hll, eh = _batch(0, 1000)
    st.update(np.full(1000, 1_767_225_600_000, dtype=np.int64), uh, sh, ih, hll)
    examined, probes = st.work()
    assert examined > 0 and probes > 0
    # the entity table's bookkeeping is counted too
    st.update(np.full(1000, 1_767_225_600_000, dtype=np.int64), uh, sh, ih, hll, None, eh)
    e2, p2 = st.work()
    assert e2 >= examined + 16 * (3 * 1000 - 64) and p2 > probes
    assert st.stats()["entities"] == 64
