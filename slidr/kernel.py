"""The feature kernel facade: ClickBatch -> float32 features, through a counter store.

The compiled kernel (ext/_kernel.pyx) or its pure-Python twin (ext/reference.py), as the one
boundary slidr/ext/__init__.py chose at import (SLIDR_PURE_PYTHON=1, SLIDR_REQUIRE_NATIVE=1).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from slidr.contract import ClickBatch
from slidr.ext import NATIVE as NATIVE
from slidr.ext import kernel_native as native
from slidr.ext import reference as reference
from slidr.featurespec import N_FEATURES, finish


class Store(Protocol):
    name: str

    def update(self, ts: np.ndarray, uh: np.ndarray, sh: np.ndarray, ih: np.ndarray,
               hll: np.ndarray, tz: np.ndarray | None = None,
               eh: np.ndarray | None = None, li: np.ndarray | None = None) -> np.ndarray: ...
    # tz: the clicks' tz_offset_min (spec 3's IP time-zone switches); None counts every click
    # in zone 0 (tests and benches that do not look at that counter). eh: uint64 (n, 3), the
    # clicks' ad, (IP, ad) and user-agent keys (spec 4; 0 = absent); None: none has any.
    # li: the clicks' logged_in flags (spec 5's IP logged-in count; nonzero = logged in);
    # None: no click is.

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def hash_keys(batch: ClickBatch, use_native: bool | None = None):
    """-> (uh, sh, ih, hll, eh): what a store's update() takes (eh after tz, then the batch's
    logged_in flags as li)."""
    mod = native if (NATIVE if use_native is None else use_native) else reference
    return mod.hash_keys(batch.user_key, batch.session_id, batch.ip, batch.ad_id,
                         batch.user_agent)


def embedded_store(use_native: bool | None = None, **kw: Any) -> Store:
    if NATIVE if use_native is None else use_native:
        if native is None:
            raise ImportError("native kernel not built")
        return native.EmbeddedStore(**kw)
    return reference.ReferenceStore(max_keys=kw.get("max_keys", 0))


class FeatureKernel:
    """One kernel, any store: the daemon and the offline replay both go through this."""

    def __init__(self, store: Store | None = None, use_native: bool | None = None) -> None:
        self.use_native = NATIVE if use_native is None else use_native
        self.store = store if store is not None else embedded_store(self.use_native)

    def raw(self, batch: ClickBatch) -> np.ndarray:
        uh, sh, ih, hll, eh = hash_keys(batch, self.use_native)
        return self.store.update(batch.ts, uh, sh, ih, hll, batch.tz_offset_min, eh,
                                 batch.logged_in)

    def keys(self, batch: ClickBatch
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user, session, IP key hashes, HLL bytes, entity keys (n, 3)): what a store's
        update() takes (the entity keys after the time zones, then the batch's logged_in
        flags)."""
        return hash_keys(batch, self.use_native)

    def finish(self, raw: np.ndarray, batch: ClickBatch, out: np.ndarray | None = None
               ) -> np.ndarray:
        """Raw counters (from any store, or an asynchronous round trip) -> float32 features."""
        # The native finish computes the same doubles in one pass (numpy's is ~60 array ops).
        fin = native.finish_into if self.use_native and native is not None else finish
        return fin(raw, batch.ts, batch.tz_offset_min, batch.logged_in, batch.device, out)

    def features(self, batch: ClickBatch, out: np.ndarray | None = None) -> np.ndarray:
        if len(batch) == 0:
            return np.empty((0, N_FEATURES), dtype=np.float32)
        return self.finish(self.raw(batch), batch, out)
