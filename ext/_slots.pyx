# cython: language_level=3
"""Redis Cluster slots of a batch of slidr keys, in C: the native twin of
slidr.redis_topology.key_slots_py (numpy + plain Python, the reference).

A key is head + the 8 big-endian bytes of a hash; its slot is CRC16-XMODEM of the key mod 16384,
or of its hash tag: the bytes between the first "{" and the first "}" after it, when not empty.
tests/test_cluster_topology.py holds the two to the same answers, hash tags included.
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy

cdef uint16_t TABLE[256]


cdef void _init_table():
    cdef int i, j
    cdef unsigned int c
    for i in range(256):
        c = i << 8
        for j in range(8):
            c = ((c << 1) ^ 0x1021) if (c & 0x8000) else (c << 1)
        TABLE[i] = c & 0xFFFF


_init_table()


cdef inline uint16_t _crc(const uint8_t* p, Py_ssize_t n, uint16_t c) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        c = <uint16_t>((c << 8) ^ TABLE[((c >> 8) ^ p[i]) & 0xFF])
    return c


cdef inline int64_t _slot(const uint8_t* k, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t s = 0, e
    while s < n and k[s] != 0x7B:
        s += 1
    if s < n:
        e = s + 1
        while e < n and k[e] != 0x7D:
            e += 1
        if e < n and e > s + 1:
            return _crc(k + s + 1, e - s - 1, 0) & 16383
    return _crc(k, n, 0) & 16383


def key_slots(bytes head, const uint64_t[::1] hashes):
    """Slots of head + 8 big-endian hash bytes, one per hash -> int64 array."""
    cdef Py_ssize_t n = hashes.shape[0], h = len(head), i, j
    if h > 1000:
        raise ValueError("key prefix longer than 1000 bytes")
    out = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef uint8_t buf[1008]
    cdef const uint8_t* hp = head
    memcpy(buf, hp, h)
    cdef bint head_tag = False
    for i in range(h):
        if hp[i] == 0x7B:
            head_tag = True
    cdef uint16_t c0 = _crc(buf, h, 0)
    cdef uint64_t v
    cdef bint brace
    with nogil:
        for i in range(n):
            v = hashes[i]
            brace = False
            for j in range(8):
                buf[h + j] = (v >> (56 - 8 * j)) & 0xFF
                if buf[h + j] == 0x7B:
                    brace = True
            if head_tag or brace:
                o[i] = _slot(buf, h + 8)
            else:
                o[i] = _crc(buf + h, 8, c0) & 16383
    return out
