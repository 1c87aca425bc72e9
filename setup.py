"""Builds the Cython modules of ext/ into slidr.ext.*."""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def native(name: str) -> Extension:
    """slidr.ext.<name> from ext/<name>.pyx, built the same way for every module. No
    -ffast-math / -march=native: the native code must match its plain-Python twin (and the
    kernel the Redis Lua script) bit for bit, so no FMA contraction or reassociation."""
    return Extension(
        f"slidr.ext.{name}",
        [f"ext/{name}.pyx"],
        include_dirs=[np.get_include()],
        extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


extensions = [
    native("_kernel"),  # the feature kernel and the embedded store; twin: ext/reference.py
    # The daemon's per-click fast path (validation, columns, response frames); twin of the
    # Python in slidrd/batcher.py and slidr/contract.py, see tests/test_fastpath.py.
    native("_fastpath"),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        annotate=bool(os.environ.get("SLIDR_ANNOTATE")),
    )
)
