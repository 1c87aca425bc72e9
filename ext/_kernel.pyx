# cython: language_level=3
"""Native feature kernel: key hashing and the embedded counter store (placeholder)."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint64_t, uint8_t

cnp.import_array()

cdef inline uint64_t _hash64(bytes b):
    cdef uint64_t h = 0xCBF29CE484222325ULL
    cdef const unsigned char* p = b
    cdef Py_ssize_t i, n = len(b)
    for i in range(n):
        h ^= p[i]
        h *= 0x100000001B3ULL
    h ^= h >> 30
    h *= 0xBF58476D1CE4E5B9ULL
    h ^= h >> 27
    h *= 0x94D049BB133111EBULL
    h ^= h >> 31
    return h

def hash64(str s):
    return _hash64(s.encode("utf-8"))
