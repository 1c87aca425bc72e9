"""Type stubs for the native feature kernel (ext/_kernel.pyx); see ext/reference.py for the
plain-Python twin and docs/kernel.md for the algorithms."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

def hash64(s: str) -> int:
    """FNV-1a 64 over the UTF-8 bytes + splitmix64 finaliser (reference.hash64)."""

def hash_keys(
    user_key: Sequence[str], session_id: Sequence[str], ip: Sequence[str],
    ad_id: Sequence[str | None] | None = None, user_agent: Sequence[str | None] | None = None
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64],
           npt.NDArray[np.uint8], npt.NDArray[np.uint64]]:
    """-> (uh, sh, ih: uint64 (n,), hll: uint8 (n, 4), eh: uint64 (n, 3) = the ad, (IP, ad)
    and user-agent keys, 0 where absent). Raises ValueError on unequal lengths,
    TypeError("key must be str, not <type>") for a non-str key (None allowed for ad_id and
    user_agent), UnicodeEncodeError for surrogates."""

class EmbeddedStore:
    """In-process counter store in C arrays; not thread-safe."""

    name: str

    def __init__(self, capacity_hint: int = 1024, sweep_every: int = 16,
                 sweep_grace_ms: int = 3_600_000, sweep_scan: int = 8,
                 max_keys: int = 0) -> None: ...
    @property
    def evicted(self) -> int: ...
    def work(self) -> tuple[int, int]:
        """(entries examined, index slots probed) by the sweep, eviction and deletes so far."""
    def close(self) -> None: ...
    def __len__(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def sweep(self, budget: int = -1) -> None: ...
    def update(self, ts: npt.ArrayLike, uh: npt.ArrayLike, sh: npt.ArrayLike,
               ih: npt.ArrayLike, hll: npt.ArrayLike,
               tz: npt.ArrayLike | None = None,
               eh: npt.ArrayLike | None = None,
               li: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """Count one batch of clicks in order -> raw counters float64 (n, RAW_WIDTH); eh:
        uint64 (n, 3) entity keys (0 = absent), None: no click has any; li: the clicks'
        logged_in flags (nonzero = logged in), None: none is."""
    def update_tables(self, ts: npt.ArrayLike, uh: npt.ArrayLike, sh: npt.ArrayLike,
                      ih: npt.ArrayLike, hll: npt.ArrayLike,
                      out: npt.NDArray[np.float64] | None = None,
                      tables: int = 15,
                      tz: npt.ArrayLike | None = None,
                      eh: npt.ArrayLike | None = None,
                      li: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
        """update() for some tables (bit mask: 1 users, 2 sessions, 4 IPs, 8 entities), into
        `out`."""

def max_keys_for_bytes(budget: int) -> int: ...
def finish_into(raw: npt.ArrayLike, ts: npt.ArrayLike, tz_offset_min: npt.ArrayLike,
                logged_in: npt.ArrayLike, device: npt.ArrayLike,
                out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Native twin of featurespec.finish: raw counters -> float32 features (n, N_FEATURES)."""

def hash_key_columns(
    user_id: Any, session_id: Any, ip: Any, logged_in: npt.ArrayLike, ad_id: Any = None,
    user_agent: Any = None
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64],
           npt.NDArray[np.uint8], npt.NDArray[np.uint64]]:
    """hash_keys straight from columns (pyarrow string arrays, user_agent also
    dictionary-encoded, or sequences): the user key is "u\\0"+user_id when logged in with a
    user id, else "s\\0"+session_id, hashed without building the concatenated string."""

def not_ipv4(offsets: npt.ArrayLike, data: npt.ArrayLike,
             valid: npt.ArrayLike | None = None) -> npt.NDArray[np.uint8]:
    """uint8 mask over an Arrow utf8 column: 1 where the value is not a strict dotted quad."""

def _arrow_utf8(col: Any, name: str, nullable: bool
                ) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None] | None: ...

def redis_request(ts: npt.ArrayLike, uh: npt.ArrayLike, sh: npt.ArrayLike, ih: npt.ArrayLike,
                  hll: npt.ArrayLike, rec_head: bytes, cmd_head: bytes, argv_px: bytes,
                  tz: npt.ArrayLike | None = None, eh: npt.ArrayLike | None = None,
                  li: npt.ArrayLike | None = None) -> bytes:
    """The Redis store's EVALSHA command for one batch, byte for byte RedisStore.request's
    numpy build. Raises ValueError on unequal lengths or an empty batch."""
