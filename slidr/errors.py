"""Stable wire error codes: one source of truth for the daemon, the client and the docs.

An error on the wire is a ``[code, message]`` pair (docs/daemon.md, "Wire protocol"). Codes never
change meaning; new codes are only ever appended.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    BAD_REQUEST = 1  # not a well-formed msgpack-RPC request (shape, types, params)
    UNKNOWN_METHOD = 2  # method name not served on this socket
    INVALID_CLICK = 3  # a click violates the contract; the message names the field
    TOO_LARGE = 4  # message (or batch) over the configured limit; connection is closed
    OVERLOADED = 5  # too many connections or requests in flight
    INTERNAL = 6  # a bug or an unexpected failure inside the daemon
    NOT_MSGPACK = 7  # bytes that are not msgpack; connection is closed
    ADMIN_FAILED = 8  # an admin action (reload, rollback) was refused; old model still serves


def error(code: ErrorCode, message: str) -> list[object]:
    """The wire form of an error: ``[int code, str message]``."""
    return [int(code), message]


class RpcError(Exception):
    """Raised inside request handlers; turned into an error response with this code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def wire(self) -> list[object]:
        return error(self.code, self.message)
