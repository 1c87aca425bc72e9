"""Type stubs for the daemon's native fast path (ext/_fastpath.pyx); each function is a twin of
the Python it replaces in slidrd/batcher.py (see tests/test_fastpath.py)."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

def fast_valid(c: object, ip_ok: dict[str, bool], ip_check: Callable[[str], bool]) -> bool:
    """slidrd.batcher.fast_valid(c): True only when `c` certainly passes validate_click. The IP
    answer is ip_ok.get(ip), else ip_check(ip) (which should fill ip_ok)."""

def batch_columns(
    clicks: list[Any], entity: bool = False,
) -> tuple[Any, ...]:
    """-> (ts, user_key, session_id, ip, device, logged_in, tz_offset_min): the fields of
    ClickBatch.from_clicks(clicks, validate=False), in that order; with `entity`, followed by
    eh: uint64 (n, 3), the clicks' entity keys (ad, IP x ad, user agent; 0 = absent), equal to
    slidr.ext.reference.hash_keys(..., ad_id, user_agent)'s."""

def entity_key(kind: str, ad_id: str | None = None, user_agent: str | None = None,
               ip: str | None = None) -> int:
    """One entity key as batch_columns hashes it: kind "a" (ad_id), "x" (ip, ad_id) or "g"
    (user_agent); 0 when the field is absent or empty."""

def ts_outside(ts: npt.ArrayLike, lo: float, hi: float) -> npt.NDArray[np.int64] | None:
    """None when every ts[i] is within [lo, hi], else the indices of those outside it (the
    batcher's clock check; twin: np.flatnonzero((ts > hi) | (ts < lo)))."""

def encode_results(
    msgids: list[int],
    click_ids: list[str],
    invalid: npt.NDArray[Any],
    scores: npt.NDArray[Any],
    thresholds: npt.NDArray[Any],
    codes: npt.NDArray[Any],
    slice_keys: Sequence[bytes],
    model_key: bytes,
    reason_key: bytes,
) -> list[bytes]:
    """One msgpack-RPC response per click, byte-identical to
    msgpack.Packer(use_bin_type=True).pack([1, msgids[i], None, {"click_id": click_ids[i],
    "invalid": bool(invalid[i]), "score": scores.tolist()[i], "threshold":
    thresholds.tolist()[i], "slice": <slice name of codes[i]>, "model": <version>, "reason":
    "model"}]). slice_keys[code], model_key and reason_key are the packed strings
    (msgpack.packb(name)). invalid: bool or integer; scores/thresholds: float16/32/64;
    codes: integer (1-D, same length as msgids). Raises IndexError for a code outside
    slice_keys, OverflowError/UnicodeEncodeError as msgpack does."""

def decide_batch(items: list[Any], clicks: list[Any], device: npt.ArrayLike,
                 logged_in: npt.ArrayLike, scores: npt.ArrayLike, table: npt.ArrayLike,
                 slice_keys: Sequence[bytes], model_key: bytes, reason_key: bytes, t0: float,
                 t_end: float, bounds: npt.ArrayLike, q_counts: npt.NDArray[np.int64],
                 tot_counts: npt.NDArray[np.int64]
                 ) -> tuple[list[bytes], npt.NDArray[np.intp], npt.NDArray[np.float64],
                            npt.NDArray[np.bool_], float, float, list[int], list[int]]: ...

def route_frames(items: list[Any], frames: list[bytes], group_type: type,
                 dirty: set[Any]) -> list[int]: ...

def expand_rows(resp: list[Any], n: int, row_doubles: int, d_src: npt.ArrayLike,
                d_dst: npt.ArrayLike, packed_col: int, b_dst: npt.ArrayLike,
                raw_width: int) -> npt.NDArray[np.float64] | None:
    """The Redis counter script's reply -> raw counters (n, raw_width), or None when it does
    not hold n rows of row_doubles doubles (twin: RedisStore.parse_reply_numpy)."""
