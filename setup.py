"""Builds the Cython modules of ext/ into slidr.ext (one list, one set of compiler flags).

Each compiled module has a pure-Python twin in ext/ and slidr/ext/__init__.py chooses between
them once, at import.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# No -ffast-math / -march=native: the kernel must match the reference twin and the Redis Lua
# script bit for bit, so no FMA contraction or reassociation.
FLAGS = ["-O3", "-fno-fast-math", "-ffp-contract=off"]

MODULES = {
    # the feature kernel: key hashing, the embedded counter store, finish; twin ext/reference.py
    "_kernel": True,
    # the daemon's per-click fast path (validation, columns, answer frames); twin: the Python in
    # slidrd/batcher.py and slidr/contract.py (tests/test_fastpath.py)
    "_fastpath": True,
    # request framing and hot-path decoding; twin ext/decode.py (tests/test_hotpath_parity.py)
    "_decode": False,
    # Redis Cluster key slots of a batch (CRC16); twin in slidr/redis_topology.py
    "_slots": False,
}

extensions = [
    Extension(
        f"slidr.ext.{name}",
        [f"ext/{name}.pyx"],
        include_dirs=[np.get_include()] if uses_numpy else [],
        extra_compile_args=FLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] if uses_numpy else [],
    )
    for name, uses_numpy in MODULES.items()
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        annotate=bool(os.environ.get("SLIDR_ANNOTATE")),
    )
)
