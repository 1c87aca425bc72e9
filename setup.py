"""Builds the Cython feature kernel (ext/) into slidr.ext._kernel."""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "slidr.ext._kernel",
        ["ext/_kernel.pyx"],
        include_dirs=[np.get_include()],
        # No -ffast-math / -march=native: the kernel must match the reference twin and the
        # Redis Lua script bit for bit, so no FMA contraction or reassociation.
        extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    # Redis Cluster key slots of a batch; twin of slidr.redis_topology.key_slots_py.
    Extension(
        "slidr.ext._slots",
        ["ext/_slots.pyx"],
        extra_compile_args=["-O3"],
    ),
    # The daemon's per-click fast path (validation, columns, response frames); twin of the
    # Python in slidrd/batcher.py and slidr/contract.py, see tests/test_fastpath.py.
    Extension(
        "slidr.ext._fastpath",
        ["ext/_fastpath.pyx"],
        include_dirs=[np.get_include()],
        extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        annotate=bool(os.environ.get("SLIDR_ANNOTATE")),
    )
)
