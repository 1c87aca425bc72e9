# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native feature kernel: key hashing, the embedded counter store, feature finishing and the
Redis request builder, one compiled module made of the ext/kernel_*.pxi parts included below.

Twin of ext/reference.py (the algorithms are specified in slidr/featurespec.py). The raw
counters must equal the reference bit for bit: every floating-point expression below keeps the
reference's operation order, and setup.py forbids FMA contraction.

State layout (docs/kernel.md): per table a dense array of fixed-size C structs plus an
open-addressing index (linear probing, 64-bit key hash -> dense slot). Deleting swaps the last
dense entry into the hole, so the incremental sweep walks one contiguous array.
"""
import numpy as np

cimport numpy as cnp
from cpython.unicode cimport PyUnicode_Check
from libc.math cimport cos, exp, ldexp, log, log1p, sin, sqrt
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc, qsort, realloc, calloc
from libc.string cimport memcpy, memset

cnp.import_array()


cdef uint64_t os_urandom_u64() except? 0:
    import os
    return int.from_bytes(os.urandom(8), "little")

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

# Constants mirrored from slidr.featurespec (checked at import time below).
cdef enum:
    HLL_M = 32
    HLL_P = 5
    HLL_RANK_CAP = 60
    RAW_WIDTH = 84
    N_FEATURES = 45
    IP_HOURS = 24
    SUBSEC_MS = 1000
    # first raw column of each key kind (featurespec.RAW_SPANS) and an entity kind's width
    R_S = 8
    R_I = 16
    R_E = 42
    E_W = 14
    # an entity kind's decayed counts (its first columns; the two HLLs' follow)
    E_NC = 4
# A slot's idx is its dense index + 1; 0 marks an empty slot, so a fresh index is calloc'd
# memory (pages untouched until used: a table sized for its cap costs nothing up front).
cdef uint32_t EMPTY = 0

cdef double U_TAU[4]
U_TAU[:] = [60.0, 600.0, 3600.0, 86400.0]
cdef double S_TAU[2]
S_TAU[:] = [60.0, 3600.0]
cdef double I_TAU[3]
I_TAU[:] = [60.0, 3600.0, 86400.0]
cdef int64_t U_TTL = 2 * 86400000
cdef int64_t S_TTL = 86400000
cdef int64_t I_TTL = 2 * 86400000
cdef double E_TAU[E_NC]
E_TAU[:] = [60.0, 3600.0, 86400.0, 604800.0]
cdef int64_t E_TTL = 2 * 86400000
cdef int64_t HOUR_MS = 3600000
cdef int64_t DAY_MS = 86400000
cdef double GAP_CAP = 7 * 86400.0
cdef double LOG_GAP_FLOOR = 0.001
cdef double U_LG_MAX = 3600.0
cdef double LOG_GAP_CAP = log(GAP_CAP)
cdef uint32_t HOURS_FULL = (1 << IP_HOURS) - 1


def _check_spec():
    from slidr import featurespec as fs
    assert fs.USER_TAUS == (60.0, 600.0, 3600.0, 86400.0), "native kernel: USER_TAUS drifted"
    assert fs.SESSION_TAUS == (60.0, 3600.0), "native kernel: SESSION_TAUS drifted"
    assert fs.IP_TAUS == (60.0, 3600.0, 86400.0), "native kernel: IP_TAUS drifted"
    assert (fs.USER_TTL_MS, fs.SESSION_TTL_MS, fs.IP_TTL_MS) == (U_TTL, S_TTL, I_TTL)
    assert fs.HLL_P == HLL_P and fs.HLL_RANK_CAP == HLL_RANK_CAP
    assert fs.HLL_WINDOWS_MS == (HOUR_MS, HOUR_MS, DAY_MS, DAY_MS)
    assert fs.RAW_WIDTH == RAW_WIDTH and fs.N_FEATURES == N_FEATURES
    assert fs.GAP_CAP_S == GAP_CAP
    assert fs.SUBSEC_MS == SUBSEC_MS and fs.LOG_GAP_FLOOR_S == LOG_GAP_FLOOR
    assert fs.USER_LG_MAX_S == U_LG_MAX
    assert fs.IP_HOURS == IP_HOURS and fs.LOG_GAP_CAP == LOG_GAP_CAP
    assert fs.ENTITY_TAUS == (60.0, 3600.0, 86400.0, 604800.0), \
        "native kernel: ENTITY_TAUS drifted"
    assert fs.ENTITY_TTL_MS == E_TTL and fs.ENTITY_WINDOW_MS == DAY_MS
    assert fs.RAW_SPANS == {"user": (0, R_S), "session": (R_S, R_I), "ip": (R_I, R_E),
                            "entity": (R_E, RAW_WIDTH)}
    assert fs.ENTITY_RAW_WIDTH == E_W and fs.ENTITY_PREFIXES == ("a", "x", "g")
    assert fs.RAW_INDEX["u_lg_n"] == 5 and fs.RAW_INDEX["s_subsec"] == R_S + 4
    assert fs.RAW_INDEX["i_hours"] == R_I + 3 and fs.RAW_INDEX["h0_z"] == R_I + 4
    assert fs.RAW_INDEX["i_li"] == R_I + 25
    assert fs.RAW_INDEX["i_tzsw"] == R_I + 24 and fs.RAW_INDEX["gi_z"] == R_E + 2 * E_W + E_NC + 5
    assert fs.RAW_INDEX["as_z"] == R_E + E_NC and len(fs.ENTITY_TAUS) == E_NC


_check_spec()


# The kernel's parts, one compiled module (C-level names shared, nothing crosses a Python
# boundary): hashing, the embedded store, feature finishing, the Redis request builder.
include "kernel_hashing.pxi"
include "kernel_store.pxi"
include "kernel_finish.pxi"
include "kernel_redis.pxi"
