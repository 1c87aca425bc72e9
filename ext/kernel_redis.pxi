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


cdef inline int _ndigits(Py_ssize_t v) noexcept nogil:
    # decimal digits of v >= 0
    cdef int d = 1
    while v >= 10:
        v //= 10
        d += 1
    return d


cdef inline char* _put_int(char* p, Py_ssize_t v) noexcept nogil:
    # v >= 0 in decimal, no terminator
    cdef int m = _ndigits(v)
    cdef int i
    for i in range(m - 1, -1, -1):
        p[i] = <char>(48 + v % 10)
        v //= 10
    return p + m


cdef inline char* _put_bulk_int(char* p, Py_ssize_t v) noexcept nogil:
    # an integer >= 0 as a RESP bulk string: "$<len>\r\n<v>\r\n"
    p[0] = b'$'
    p = _put_int(p + 1, _ndigits(v))
    p[0] = b'\r'
    p[1] = b'\n'
    p = _put_int(p + 2, v)
    p[0] = b'\r'
    p[1] = b'\n'
    return p + 2


cdef inline Py_ssize_t _bulk_int_len(Py_ssize_t v) noexcept nogil:
    cdef int m = _ndigits(v)
    return 1 + _ndigits(m) + 2 + m + 2


cdef inline bint _is_c_array(object a, int typenum) noexcept:
    # a C-contiguous numpy array of that type: its data can be read in place
    return (cnp.PyArray_Check(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a))


# Batches up to this size dedup their keys in stack buffers (no malloc).
DEF _STACK_CLICKS = 64


def redis_request(ts, uh, sh, ih, hll, bytes rec_head, bytes cmd_head, bytes argv_px,
                  tz=None, eh=None, li=None):
    """The Redis store's whole EVALSHA command for one batch as one RESP buffer, byte for byte
    what slidr.store_redis.RedisStore.request builds with numpy (see store_redis.lua):

      *<k+11> cmd_head $<len k> k  <k key records>  $<41n> <n click records>  argv_px
      $<len nu> nu  $<len ns> ns  $<len ni> ni

    key record = "$<klen>\\r\\n" + prefix (rec_head) + tag (u|s|i|e) + 8-byte big-endian hash +
    "\\r\\n", keys of each kind distinct and ascending (entities: the ad, (IP, ad) and
    user-agent keys together, 0 left out); click record = ts (<f8), the 4 HLL bytes, the IP
    hash's HLL register and rank, the 1-based positions of the click's user, session and IP
    keys and of its ad, (IP, ad) and user-agent keys among the entities (<u4 each; 0: absent),
    its tz_offset_min (<i2; 0 when tz is None), its logged_in flag (one byte, 0 or 1; 0 when li
    is None).

    Arrays of the usual types (ts int64 or float64, hashes uint64, hll uint8 with 4 bytes per
    click, tz int16, eh uint64 (n, 3), li uint8 or bool), C-contiguous, are read in place
    (a nonzero li byte is 1 in the record); anything else is
    converted first. The buffer is sized exactly, and batches of up to 64 clicks dedup in stack
    buffers: a one-click request costs about a microsecond."""
    # one-dimensional views of the inputs, converted only when they are not already usable
    if not _is_c_array(ts, cnp.NPY_INT64) and not _is_c_array(ts, cnp.NPY_FLOAT64):
        ts = np.ascontiguousarray(ts, dtype=np.float64)
    if not _is_c_array(uh, cnp.NPY_UINT64):
        uh = np.ascontiguousarray(uh, dtype=np.uint64)
    if not _is_c_array(sh, cnp.NPY_UINT64):
        sh = np.ascontiguousarray(sh, dtype=np.uint64)
    if not _is_c_array(ih, cnp.NPY_UINT64):
        ih = np.ascontiguousarray(ih, dtype=np.uint64)
    if not _is_c_array(hll, cnp.NPY_UINT8):
        hll = np.ascontiguousarray(hll, dtype=np.uint8)
    if tz is not None and not _is_c_array(tz, cnp.NPY_INT16):
        tz = np.ascontiguousarray(tz, dtype=np.int16)
    if eh is not None and not _is_c_array(eh, cnp.NPY_UINT64):
        eh = np.ascontiguousarray(eh, dtype=np.uint64)
    if li is not None and not _is_c_array(li, cnp.NPY_UINT8) \
            and not _is_c_array(li, cnp.NPY_BOOL):
        li = np.ascontiguousarray(np.asarray(li) != 0)
    cdef cnp.ndarray ta = <cnp.ndarray>ts
    cdef cnp.ndarray ua = <cnp.ndarray>uh
    cdef cnp.ndarray sa = <cnp.ndarray>sh
    cdef cnp.ndarray ia = <cnp.ndarray>ih
    cdef cnp.ndarray ha = <cnp.ndarray>hll
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ta)
    if (cnp.PyArray_NDIM(ta) != 1 or cnp.PyArray_NDIM(ua) != 1 or cnp.PyArray_NDIM(sa) != 1
            or cnp.PyArray_NDIM(ia) != 1 or cnp.PyArray_SIZE(ua) != n
            or cnp.PyArray_SIZE(sa) != n or cnp.PyArray_SIZE(ia) != n
            or cnp.PyArray_SIZE(ha) != 4 * n or (cnp.PyArray_NDIM(ha) == 2
                                                 and cnp.PyArray_DIM(ha, 1) != 4)
            or (tz is not None and (cnp.PyArray_NDIM(<cnp.ndarray>tz) != 1
                                    or cnp.PyArray_SIZE(<cnp.ndarray>tz) != n))
            or (eh is not None and (cnp.PyArray_NDIM(<cnp.ndarray>eh) != 2
                                    or cnp.PyArray_DIM(<cnp.ndarray>eh, 0) != n
                                    or cnp.PyArray_DIM(<cnp.ndarray>eh, 1) != 3))
            or (li is not None and (cnp.PyArray_NDIM(<cnp.ndarray>li) != 1
                                    or cnp.PyArray_SIZE(<cnp.ndarray>li) != n))):
        raise ValueError("redis_request: ts, uh, sh, ih, hll, tz, eh and li must have the "
                         "same length (eh: n x 3)")
    # the clicks' time zones (NULL: zone 0 for every click)
    cdef const int16_t* zt = (<const int16_t*>cnp.PyArray_DATA(<cnp.ndarray>tz)
                              if tz is not None else NULL)
    cdef int16_t z0 = 0
    # the clicks' logged_in flags (NULL: none logged in)
    cdef const uint8_t* lt = (<const uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>li)
                              if li is not None else NULL)
    # the clicks' entity keys (NULL: none)
    cdef const uint64_t* et = (<const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>eh)
                               if eh is not None else NULL)
    if n == 0:
        raise ValueError("redis_request: empty batch")
    cdef bint ts_int = cnp.PyArray_TYPE(ta) == cnp.NPY_INT64
    cdef const int64_t* ti = <const int64_t*>cnp.PyArray_DATA(ta)
    cdef const double* tf = <const double*>cnp.PyArray_DATA(ta)
    cdef const uint8_t* hb = <const uint8_t*>cnp.PyArray_DATA(ha)
    cdef const uint64_t* ih_p = <const uint64_t*>cnp.PyArray_DATA(ia)
    cdef Py_ssize_t hl = len(rec_head)
    cdef Py_ssize_t reclen = hl + 11
    cdef _HKey tmp_s[3 * _STACK_CLICKS]
    cdef uint64_t keys_s[6 * _STACK_CLICKS]
    cdef uint32_t idx_s[9 * _STACK_CLICKS]
    cdef _HKey* tmp = tmp_s
    cdef uint64_t* keys = keys_s
    cdef uint32_t* idx = idx_s
    cdef Py_ssize_t nu, ns, ni, ne = 0, k, i, j, size
    cdef uint8_t irank[2]
    cdef char* p
    cdef char* base
    cdef const char* head = rec_head
    cdef uint64_t h
    cdef double tv
    cdef bytes out
    cdef char tag
    if n > _STACK_CLICKS:
        tmp = <_HKey*>malloc(3 * n * sizeof(_HKey))
        keys = <uint64_t*>malloc(6 * n * sizeof(uint64_t))
        idx = <uint32_t*>malloc(9 * n * sizeof(uint32_t))
        if tmp == NULL or keys == NULL or idx == NULL:
            free(tmp); free(keys); free(idx)
            raise MemoryError()
    try:
        nu = _dedup_keys(<const uint64_t*>cnp.PyArray_DATA(ua), n, tmp, keys, idx, 6)
        ns = _dedup_keys(<const uint64_t*>cnp.PyArray_DATA(sa), n, tmp, keys + nu, idx + 1, 6)
        ni = _dedup_keys(<const uint64_t*>cnp.PyArray_DATA(ia), n, tmp, keys + nu + ns,
                         idx + 2, 6)
        k = nu + ns + ni
        if et != NULL:
            # the 3n entity keys as one kind, ranked into idx[6n .. 9n) (three per click, not
            # one stride), then spread to the click records; zeros (absent) sort first
            ne = _dedup_keys(et, 3 * n, tmp, keys + k, idx + 6 * n, 1)
            j = 0
            if keys[k] == 0:
                j = 1
                for i in range(ne - 1):
                    keys[k + i] = keys[k + i + 1]
                ne -= 1
            for i in range(n):
                idx[6 * i + 3] = idx[6 * n + 3 * i] - j
                idx[6 * i + 4] = idx[6 * n + 3 * i + 1] - j
                idx[6 * i + 5] = idx[6 * n + 3 * i + 2] - j
            k += ne
        else:
            for i in range(n):
                idx[6 * i + 3] = 0
                idx[6 * i + 4] = 0
                idx[6 * i + 5] = 0
        size = (1 + _ndigits(k + 11) + len(cmd_head) + _bulk_int_len(k) + k * reclen
                + 1 + _ndigits(41 * n) + 2 + 41 * n + 2 + len(argv_px)
                + _bulk_int_len(nu) + _bulk_int_len(ns) + _bulk_int_len(ni))
        out = PyBytes_FromStringAndSize(NULL, size)
        base = PyBytes_AS_STRING(out)
        p = base
        p[0] = b'*'
        p = _put_int(p + 1, k + 11)
        memcpy(p, <const char*>cmd_head, len(cmd_head))
        p += len(cmd_head)
        p = _put_bulk_int(p, k)
        for i in range(k):
            memcpy(p, head, hl)
            p += hl
            tag = b'u' if i < nu else (b's' if i < nu + ns else (b'i' if i < nu + ns + ni
                                                                  else b'e'))
            p[0] = tag
            h = keys[i]
            for j in range(8):
                p[1 + j] = <char>((h >> (56 - 8 * j)) & 0xFF)
            p[9] = b'\r'
            p[10] = b'\n'
            p += 11
        p[0] = b'$'
        p = _put_int(p + 1, 41 * n)
        p[0] = b'\r'
        p[1] = b'\n'
        p += 2
        for i in range(n):
            tv = <double>ti[i] if ts_int else tf[i]
            memcpy(p, &tv, 8)  # little-endian hosts only (x86-64, aarch64)
            memcpy(p + 8, hb + 4 * i, 4)
            _hll_index_rank(ih_p[i], &irank[0], &irank[1])
            p[12] = <char>irank[0]
            p[13] = <char>irank[1]
            memcpy(p + 14, &idx[6 * i], 24)
            memcpy(p + 38, (zt + i) if zt != NULL else &z0, 2)
            p[40] = 1 if lt != NULL and lt[i] != 0 else 0
            p += 41
        p[0] = b'\r'
        p[1] = b'\n'
        p += 2
        memcpy(p, <const char*>argv_px, len(argv_px))
        p += len(argv_px)
        p = _put_bulk_int(p, nu)
        p = _put_bulk_int(p, ns)
        p = _put_bulk_int(p, ni)
        assert p - base == size
        return out
    finally:
        if n > _STACK_CLICKS:
            free(tmp)
            free(keys)
            free(idx)
