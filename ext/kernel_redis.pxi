# The Redis store's request (RESP) built in C for a batch; included by ext/_kernel.pyx,
# twin: slidr/store_redis.py.

# ---------------------------------------------------------------- Redis store request (RESP)

cdef struct _HKey:
    uint64_t h
    uint32_t i


cdef int _cmp_hkey(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<_HKey*>a).h
    cdef uint64_t y = (<_HKey*>b).h
    if x < y:
        return -1
    if x > y:
        return 1
    # ties by position: a stable order, so equal inputs always give equal bytes
    return (<int>((<_HKey*>a).i > (<_HKey*>b).i)) - (<int>((<_HKey*>a).i < (<_HKey*>b).i))


cdef Py_ssize_t _dedup_keys(const uint64_t* h, Py_ssize_t n, _HKey* tmp, uint64_t* out_keys,
                            uint32_t* idx, Py_ssize_t stride) noexcept nogil:
    """Distinct values of h, ascending, into out_keys; idx[i*stride] = 1-based rank of h[i]."""
    cdef Py_ssize_t i, k = 0
    for i in range(n):
        tmp[i].h = h[i]
        tmp[i].i = <uint32_t>i
    qsort(tmp, n, sizeof(_HKey), _cmp_hkey)
    for i in range(n):
        if k == 0 or tmp[i].h != out_keys[k - 1]:
            out_keys[k] = tmp[i].h
            k += 1
        idx[tmp[i].i * stride] = <uint32_t>k
    return k


cdef inline char* _put_bulk_int(char* p, Py_ssize_t v):
    # an integer as a RESP bulk string: "$<len>\r\n<v>\r\n"
    cdef char digits[24]
    cdef int m = snprintf(digits, 24, b"%zd", v)
    p += snprintf(p, 24, b"$%d\r\n", m)
    memcpy(p, digits, m)
    p[m] = b'\r'
    p[m + 1] = b'\n'
    return p + m + 2


def redis_request(ts, uh, sh, ih, hll, bytes rec_head, bytes cmd_head, bytes argv_px,
                  tz=None):
    """The Redis store's whole EVALSHA command for one batch as one RESP buffer, byte for byte
    what slidr.store_redis.RedisStore.request builds with numpy (see store_redis.lua):

      *<k+9> cmd_head $<len k> k  <k key records>  $<26n> <n click records>  argv_px
      $<len nu> nu  $<len ns> ns

    key record = "$<klen>\\r\\n" + prefix (rec_head) + tag (u|s|i) + 8-byte big-endian hash +
    "\\r\\n", keys of each kind distinct and ascending; click record = ts (<f8), the 4 HLL bytes,
    the 1-based positions of the click's user, session and IP keys (<u4 each), its
    tz_offset_min (<i2; 0 when tz is None)."""
    cdef cnp.ndarray[cnp.float64_t, ndim=1] t = np.ascontiguousarray(ts, dtype=np.float64)
    cdef cnp.ndarray[cnp.uint64_t, ndim=1] u = np.ascontiguousarray(uh, dtype=np.uint64)
    cdef cnp.ndarray[cnp.uint64_t, ndim=1] s = np.ascontiguousarray(sh, dtype=np.uint64)
    cdef cnp.ndarray[cnp.uint64_t, ndim=1] ip = np.ascontiguousarray(ih, dtype=np.uint64)
    cdef cnp.ndarray[cnp.uint8_t, ndim=2] hb = np.ascontiguousarray(hll, dtype=np.uint8).reshape(-1, 4)
    cdef Py_ssize_t n = t.shape[0]
    cdef cnp.ndarray[cnp.int16_t, ndim=1] zt = (np.zeros(n, dtype=np.int16) if tz is None
                                               else np.ascontiguousarray(tz, dtype=np.int16))
    if (u.shape[0] != n or s.shape[0] != n or ip.shape[0] != n or hb.shape[0] != n
            or zt.shape[0] != n):
        raise ValueError("redis_request: ts, uh, sh, ih, hll and tz must have the same length")
    if n == 0:
        raise ValueError("redis_request: empty batch")
    cdef Py_ssize_t hl = len(rec_head)
    cdef Py_ssize_t reclen = hl + 11
    cdef _HKey* tmp = <_HKey*>malloc(n * sizeof(_HKey))
    cdef uint64_t* keys = <uint64_t*>malloc(3 * n * sizeof(uint64_t))
    cdef uint32_t* idx = <uint32_t*>malloc(3 * n * sizeof(uint32_t))
    cdef Py_ssize_t nu, ns, ni, k, i, j, size
    cdef char* p
    cdef char* base
    cdef const char* head = rec_head
    cdef uint64_t h
    cdef double tv
    cdef bytes out
    cdef char tag
    if tmp == NULL or keys == NULL or idx == NULL:
        free(tmp); free(keys); free(idx)
        raise MemoryError()
    try:
        nu = _dedup_keys(&u[0], n, tmp, keys, idx, 3)
        ns = _dedup_keys(&s[0], n, tmp, keys + nu, idx + 1, 3)
        ni = _dedup_keys(&ip[0], n, tmp, keys + nu + ns, idx + 2, 3)
        k = nu + ns + ni
        size = (24 + len(cmd_head) + 24 + 24 + k * reclen + 24 + 26 * n + 2 + len(argv_px)
                + 2 * 48)
        out = PyBytes_FromStringAndSize(NULL, size)
        base = PyBytes_AS_STRING(out)
        p = base
        p += snprintf(p, 24, b"*%zd", k + 9)
        memcpy(p, <const char*>cmd_head, len(cmd_head))
        p += len(cmd_head)
        p = _put_bulk_int(p, k)
        for i in range(k):
            memcpy(p, head, hl)
            p += hl
            tag = b'u' if i < nu else (b's' if i < nu + ns else b'i')
            p[0] = tag
            h = keys[i]
            for j in range(8):
                p[1 + j] = <char>((h >> (56 - 8 * j)) & 0xFF)
            p[9] = b'\r'
            p[10] = b'\n'
            p += 11
        p += snprintf(p, 24, b"$%zd\r\n", 26 * n)
        for i in range(n):
            tv = t[i]
            memcpy(p, &tv, 8)  # little-endian hosts only (x86-64, aarch64)
            p[8] = <char>hb[i, 0]
            p[9] = <char>hb[i, 1]
            p[10] = <char>hb[i, 2]
            p[11] = <char>hb[i, 3]
            memcpy(p + 12, &idx[3 * i], 12)
            memcpy(p + 24, &zt[i], 2)
            p += 26
        p[0] = b'\r'
        p[1] = b'\n'
        p += 2
        memcpy(p, <const char*>argv_px, len(argv_px))
        p += len(argv_px)
        p = _put_bulk_int(p, nu)
        p = _put_bulk_int(p, ns)
        return out[:p - base]
    finally:
        free(tmp)
        free(keys)
        free(idx)
