"""The wire protocol of slidrd: one owner for framing, methods, error codes and the Decision.

msgpack-RPC over TCP (docs/daemon.md, "Wire protocol"): a request is
``[REQUEST, msgid, method, params]``, its answer ``[RESPONSE, msgid, error, result]`` (possibly
out of order), a notification ``[NOTIFY, method, params]`` gets nothing back. An error on the
wire is ``[code, message]`` (codes in slidr/errors.py, re-exported here). The daemon, the client,
replay, the bench and the decision log read these names from here.

Decoding is bounded: the framing (slidr.ext.decoder) refuses a message nested deeper than
MAX_DEPTH lists/maps as that request's own BAD_REQUEST (the connection stays usable), so no later
step (validation, error messages, the decision log) ever walks a hostile structure.
"""

from __future__ import annotations

from typing import Any, TypedDict

from slidr.contract import DEVICE_CODE, slice_name
from slidr.errors import ErrorCode, RpcError, error

__all__ = ["REQUEST", "RESPONSE", "NOTIFY", "MAX_MSGID", "MAX_DEPTH", "PUBLIC_METHODS",
           "ADMIN_METHODS", "Decision", "ErrorCode", "RpcError", "error", "click_id_of",
           "best_slice", "fail_open_decision"]

REQUEST, RESPONSE, NOTIFY = 0, 1, 2
MAX_MSGID = (1 << 32) - 1
# [0, id, "score_many", [[{click: value}], {options}]] is 5 levels; 16 leaves room for clients
# that nest their own extra fields a little, and refuses the 1,000-level bombs.
MAX_DEPTH = 16

PUBLIC_METHODS = ("score", "score_many", "ping", "info")
ADMIN_METHODS = ("reload", "rollback", "stats", "ping", "info")


class Decision(TypedDict):
    """The decision contract (docs/contract.md, "Decision")."""

    click_id: Any
    invalid: bool
    score: float | None
    threshold: float | None
    slice: str | None
    model: str | None
    reason: str


def click_id_of(click: Any) -> str | None:
    """The click's id when it is a string (echoed in answers), else None: a hostile click_id
    (a map, a deep list) is never echoed."""
    cid = click.get("click_id") if type(click) is dict else None
    return cid if type(cid) is str else None


def best_slice(click: Any) -> str | None:
    """The click's slice when its device and logged_in are readable, else None."""
    if type(click) is not dict:
        return None
    dev, li = click.get("device"), click.get("logged_in")
    if type(dev) is not str or dev not in DEVICE_CODE or type(li) is not bool:
        return None
    return slice_name(DEVICE_CODE[dev], 1 if li else 0)


def fail_open_decision(click: Any, cause: str, model: str | None) -> Decision:
    """The answer for a click that could not be scored in time: valid, unscored."""
    return {"click_id": click_id_of(click), "invalid": False, "score": None, "threshold": None,
            "slice": best_slice(click), "model": model, "reason": "fail_open:" + cause}
