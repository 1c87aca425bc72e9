"""The one boundary between slidr's compiled code and its pure-Python twins.

Chosen once, at import, and the same names exported either way:

    kernel_native   the compiled feature kernel (ext/_kernel.pyx), or None on the twin path
    fastpath        the daemon's compiled per-click path (ext/_fastpath.pyx), or None
    slots_native    Redis Cluster key slots of a batch (ext/_slots.pyx), or None (the numpy
                    twin is slidr.redis_topology.key_slots_py)
    decoder         request framing + hot-path decoding: ext/_decode.pyx or its twin ext/decode.py
    reference       the plain-Python feature kernel (ext/reference.py), always present
    NATIVE          True when the compiled kernel is in use

Environment: SLIDR_PURE_PYTHON=1 selects the twins even when the compiled modules are built
(the parity tests and `slidrd` run both ways); SLIDR_REQUIRE_NATIVE=1 makes a missing compiled
module an ImportError, so CI never tests the fallback by accident. Nothing else in slidr imports
`slidr.ext._x` or a twin directly; the feature kernel facade (slidr/kernel.py) is the only door
to features for the daemon, replay and training.
"""

from __future__ import annotations

import os
from types import ModuleType

from . import reference

PURE_PYTHON = os.environ.get("SLIDR_PURE_PYTHON") == "1"
REQUIRE_NATIVE = os.environ.get("SLIDR_REQUIRE_NATIVE") == "1"

if PURE_PYTHON and REQUIRE_NATIVE:
    raise ImportError("SLIDR_PURE_PYTHON=1 and SLIDR_REQUIRE_NATIVE=1 contradict each other; "
                      "set one")


def _load(name: str) -> ModuleType | None:
    if PURE_PYTHON:
        return None
    try:
        return __import__(f"{__name__}.{name}", fromlist=[name])
    except ImportError:
        if REQUIRE_NATIVE:
            raise ImportError(
                f"SLIDR_REQUIRE_NATIVE=1 but the compiled module slidr.ext.{name} is not built; "
                "run `pip install -e .` (or `python setup.py build_ext --inplace`)") from None
        return None


kernel_native: ModuleType | None = _load("_kernel")
fastpath: ModuleType | None = _load("_fastpath")
slots_native: ModuleType | None = _load("_slots")
_decode_native = _load("_decode")
if _decode_native is None:
    from . import decode as _decode_twin
    decoder: ModuleType = _decode_twin
else:
    decoder = _decode_native
NATIVE = kernel_native is not None

__all__ = ["NATIVE", "PURE_PYTHON", "REQUIRE_NATIVE", "decoder", "fastpath", "kernel_native",
           "reference", "slots_native"]
