# Key hashing (FNV-1a + mix) and the HLL register index of the native feature kernel;
# included by ext/_kernel.pyx (one compiled module), twin: ext/reference.py.

# ------------------------------------------------------------------------------ hashing

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil
    int __builtin_popcount(unsigned int) nogil
    void __builtin_prefetch(const void*) nogil


cdef inline uint64_t _fnv(uint64_t h, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h ^= p[i]
        h *= 0x100000001B3ULL
    return h


cdef inline uint64_t _mix(uint64_t h) noexcept nogil:
    h ^= h >> 30
    h *= 0xBF58476D1CE4E5B9ULL
    h ^= h >> 27
    h *= 0x94D049BB133111EBULL
    h ^= h >> 31
    return h


cdef uint64_t FNV_OFFSET = 0xCBF29CE484222325ULL
# FNV state after the namespace prefixes "s\0" and "i\0".
cdef uint64_t FNV_S = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"s\x00", 2)
cdef uint64_t FNV_I = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"i\x00", 2)


cdef inline uint64_t _hash_str(uint64_t seed, object s) except? 0:
    cdef Py_ssize_t n
    cdef const char* p
    if not PyUnicode_Check(s):
        raise TypeError(f"key must be str, not {type(s).__name__}")
    p = PyUnicode_AsUTF8AndSize(s, &n)
    return _mix(_fnv(seed, <const unsigned char*>p, n))


cdef inline void _hll_index_rank(uint64_t h, uint8_t* idx, uint8_t* rank) noexcept nogil:
    cdef uint64_t w = h << HLL_P
    cdef int r
    idx[0] = <uint8_t>(h >> (64 - HLL_P))
    if w == 0:
        rank[0] = HLL_RANK_CAP
    else:
        r = __builtin_clzll(w)
        rank[0] = <uint8_t>(r + 1)


def hash64(str s):
    """FNV-1a 64 over the UTF-8 bytes + splitmix64 finaliser (reference.hash64)."""
    return _hash_str(FNV_OFFSET, s)


# spec 4: the entity namespaces (ad, (IP, ad), user agent)
cdef uint64_t FNV_A = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"a\x00", 2)
cdef uint64_t FNV_X = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"x\x00", 2)
cdef uint64_t FNV_G = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"g\x00", 2)
cdef unsigned char NUL_BYTE = 0


cdef inline uint64_t _nz(uint64_t h) noexcept nogil:
    """An entity key: 0 means absent, so a real hash of 0 becomes 1."""
    return h if h != 0 else 1


cdef inline uint64_t _ipad_key(const unsigned char* ip, Py_ssize_t nip,
                               const unsigned char* ad, Py_ssize_t nad) noexcept nogil:
    cdef uint64_t x = _fnv(FNV_X, ip, nip)
    x = _fnv(x, &NUL_BYTE, 1)
    return _nz(_mix(_fnv(x, ad, nad)))


cdef inline const char* _utf8(object s, Py_ssize_t* n) except NULL:
    if not PyUnicode_Check(s):
        raise TypeError(f"key must be str, not {type(s).__name__}")
    return PyUnicode_AsUTF8AndSize(s, n)


cdef int _entity_keys(const char* ipp, Py_ssize_t nip, object ado, object uao,
                      uint64_t* e) except -1:
    """The click's entity keys (ad, (IP, ad), user agent) into e[0..2]; 0 where absent."""
    cdef Py_ssize_t na
    cdef const char* p
    e[0] = 0
    e[1] = 0
    e[2] = 0
    if ado is not None:
        p = _utf8(ado, &na)
        if na > 0:
            e[0] = _nz(_mix(_fnv(FNV_A, <const unsigned char*>p, na)))
            e[1] = _ipad_key(<const unsigned char*>ipp, nip, <const unsigned char*>p, na)
    if uao is not None:
        p = _utf8(uao, &na)
        if na > 0:
            e[2] = _nz(_mix(_fnv(FNV_G, <const unsigned char*>p, na)))
    return 0


def hash_keys(user_key, session_id, ip, ad_id=None, user_agent=None):
    """-> (uh, sh, ih: uint64 (n,), hll: uint8 (n, 4), eh: uint64 (n, 3)); see
    reference.hash_keys."""
    cdef Py_ssize_t n = len(user_key), i, nip
    if len(session_id) != n or len(ip) != n:
        raise ValueError("hash_keys: user_key, session_id and ip must have the same length")
    if (ad_id is not None and len(ad_id) != n) or (user_agent is not None
                                                   and len(user_agent) != n):
        raise ValueError("hash_keys: ad_id and user_agent must have the keys' length")
    uh_a = np.empty(n, dtype=np.uint64)
    sh_a = np.empty(n, dtype=np.uint64)
    ih_a = np.empty(n, dtype=np.uint64)
    hll_a = np.empty((n, 4), dtype=np.uint8)
    eh_a = np.zeros((n, 3), dtype=np.uint64)
    cdef uint64_t[::1] uh = uh_a
    cdef uint64_t[::1] sh = sh_a
    cdef uint64_t[::1] ih = ih_a
    cdef uint8_t[:, ::1] hll = hll_a
    cdef uint64_t[:, ::1] eh = eh_a
    cdef uint64_t u, s
    cdef const char* ipp
    cdef bint ents = ad_id is not None or user_agent is not None
    if type(user_key) is list and type(session_id) is list and type(ip) is list:
        for i in range(n):
            u = _hash_str(FNV_OFFSET, <object>(<list>user_key)[i])
            s = _hash_str(FNV_S, <object>(<list>session_id)[i])
            uh[i] = u
            sh[i] = s
            ipp = _utf8(<object>(<list>ip)[i], &nip)
            ih[i] = _mix(_fnv(FNV_I, <const unsigned char*>ipp, nip))
            _hll_index_rank(s, &hll[i, 0], &hll[i, 1])
            _hll_index_rank(u, &hll[i, 2], &hll[i, 3])
            if ents:
                _entity_keys(ipp, nip, ad_id[i] if ad_id is not None else None,
                             user_agent[i] if user_agent is not None else None, &eh[i, 0])
    else:
        for i in range(n):
            u = _hash_str(FNV_OFFSET, user_key[i])
            s = _hash_str(FNV_S, session_id[i])
            uh[i] = u
            sh[i] = s
            ipo = ip[i]
            ipp = _utf8(ipo, &nip)
            ih[i] = _mix(_fnv(FNV_I, <const unsigned char*>ipp, nip))
            _hll_index_rank(s, &hll[i, 0], &hll[i, 1])
            _hll_index_rank(u, &hll[i, 2], &hll[i, 3])
            if ents:
                _entity_keys(ipp, nip, ad_id[i] if ad_id is not None else None,
                             user_agent[i] if user_agent is not None else None, &eh[i, 0])
    return uh_a, sh_a, ih_a, hll_a, eh_a


cdef uint64_t FNV_U = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"u\x00", 2)


def _arrow_utf8(col, str name, bint nullable):
    """A pyarrow string column -> (offsets int64 (n+1,), data uint8, valid uint8 (n,) or None),
    or None when `col` is not a pyarrow (large_)string array / chunked array."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not isinstance(col, pa.Array):
        return None
    t = col.type
    if pa.types.is_string(t):
        odt = np.int32
    elif pa.types.is_large_string(t):
        odt = np.int64
    else:
        return None
    n = len(col)
    if col.null_count and not nullable:
        raise TypeError(f"key must be str, not NoneType ({name} has nulls)")
    bufs = col.buffers()
    off = np.frombuffer(bufs[1], dtype=odt, count=col.offset + n + 1)[col.offset:]
    off = off.astype(np.int64)
    data = (np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size
            else np.zeros(1, dtype=np.uint8))
    valid = None
    if col.null_count:
        bits = np.frombuffer(bufs[0], dtype=np.uint8)
        valid = np.unpackbits(bits, bitorder="little")[col.offset:col.offset + n]
    return off, data, valid


def _plain_utf8(col):
    """A pyarrow dictionary-encoded string column decoded to plain strings (other columns as
    they are)."""
    try:
        import pyarrow as pa
    except ImportError:
        return col
    if isinstance(col, pa.ChunkedArray) and pa.types.is_dictionary(col.type):
        return pa.chunked_array([c.dictionary_decode() for c in col.chunks],
                                type=col.type.value_type)
    if isinstance(col, pa.DictionaryArray):
        return col.dictionary_decode()
    return col


def _entity_hashes_utf8(uint64_t seed, offsets, data, valid):
    """Entity keys of an Arrow utf8 column's values: hash(prefix + value), 0 for a null or
    empty value, a real 0 mapped to 1."""
    cdef const int64_t[::1] off = offsets
    cdef const uint8_t[::1] d = data
    cdef Py_ssize_t n = off.shape[0] - 1, i
    vmask = np.ones(n if n else 1, dtype=np.uint8) if valid is None else valid
    cdef const uint8_t[::1] v = vmask
    out_a = np.zeros(n, dtype=np.uint64)
    cdef uint64_t[::1] out = out_a
    cdef const unsigned char* dp = &d[0]
    with nogil:
        for i in range(n):
            if v[i] and off[i + 1] > off[i]:
                out[i] = _nz(_mix(_fnv(seed, dp + off[i], off[i + 1] - off[i])))
    return out_a


def _ua_keys(col, Py_ssize_t n):
    """User-agent keys (uint64 (n,)) of a pyarrow column, plain or dictionary-encoded (the
    dictionary's values hashed once); None when `col` is not a pyarrow string column."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = []
    for c in chunks:
        if isinstance(c, pa.DictionaryArray):
            dic = _arrow_utf8(c.dictionary, "user_agent", True)
            if dic is None:
                return None
            dh = _entity_hashes_utf8(FNV_G, *dic)
            idx = c.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            h = dh[idx] if dh.shape[0] else np.zeros(len(c), np.uint64)
            if c.null_count:
                h[c.is_null().to_numpy(zero_copy_only=False)] = 0
            parts.append(h)
        else:
            a = _arrow_utf8(c, "user_agent", True)
            if a is None:
                return None
            parts.append(_entity_hashes_utf8(FNV_G, *a))
    out = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if out.shape[0] != n:
        raise ValueError("hash_key_columns: columns must have the same length")
    return out


def hash_key_columns(user_id, session_id, ip, logged_in, ad_id=None, user_agent=None):
    """hash_keys without building the user key strings: the user key is "u\\0" + user_id when
    logged_in and user_id is a non-empty string, else "s\\0" + session_id (contract.user_key).

    user_id / session_id / ip / ad_id / user_agent: pyarrow string arrays (hashed from their
    buffers without the GIL; user_agent may be dictionary-encoded: each distinct value hashed
    once) or sequences of str (user_id, ad_id, user_agent: str | None, or None for no
    column); logged_in: bools (n,).
    -> (uh, sh, ih: uint64 (n,), hll: uint8 (n, 4), eh: uint64 (n, 3)), equal to
    hash_keys([user_key(li, uid, sid) ...], session_id, ip, ad_id, user_agent)."""
    cdef const uint8_t[::1] li = np.ascontiguousarray(np.asarray(logged_in, dtype=bool)
                                                      ).view(np.uint8)
    cdef Py_ssize_t n = li.shape[0], i
    if (len(session_id) != n or len(ip) != n or (user_id is not None and len(user_id) != n)
            or (ad_id is not None and len(ad_id) != n)
            or (user_agent is not None and len(user_agent) != n)):
        raise ValueError("hash_key_columns: columns must have the same length")
    sa = _arrow_utf8(session_id, "session_id", False)
    ia = _arrow_utf8(ip, "ip", False)
    ua = None
    if user_id is not None:
        ua = _arrow_utf8(user_id, "user_id", True)
    aa = None
    if ad_id is not None:
        aa = _arrow_utf8(_plain_utf8(ad_id), "ad_id", True)
    gk = None
    if user_agent is not None:
        gk = _ua_keys(user_agent, n)
    if (sa is None or ia is None or (user_id is not None and ua is None)
            or (ad_id is not None and aa is None) or (user_agent is not None and gk is None)):
        # Python sequences: build the keys (contract.user_key) and hash them.
        def seq(col):
            if col is None:
                return None
            col = _plain_utf8(col)
            return list(col.to_pylist() if hasattr(col, "to_pylist") else col)
        sess = seq(session_id)
        ips = seq(ip)
        uids = seq(user_id)
        ukeys = []
        for i in range(n):
            uid = uids[i] if uids is not None else None
            if li[i] and uid:
                ukeys.append("u\x00" + uid)
            else:
                ukeys.append("s\x00" + sess[i])
        return hash_keys(ukeys, sess, ips, seq(ad_id), seq(user_agent))
    cdef const int64_t[::1] so = sa[0]
    cdef const uint8_t[::1] sd = sa[1]
    cdef const int64_t[::1] io = ia[0]
    cdef const uint8_t[::1] idd = ia[1]
    cdef const int64_t[::1] uo = sa[0] if ua is None else ua[0]
    cdef const uint8_t[::1] ud = sa[1] if ua is None else ua[1]
    cdef bint has_uid = ua is not None
    uvalid_a = np.ones(n if n else 1, dtype=np.uint8) if (ua is None or ua[2] is None) else ua[2]
    cdef const uint8_t[::1] uv = uvalid_a
    cdef bint has_ad = aa is not None
    cdef const int64_t[::1] ao = sa[0] if aa is None else aa[0]
    cdef const uint8_t[::1] ad = sa[1] if aa is None else aa[1]
    avalid_a = np.ones(n if n else 1, dtype=np.uint8) if (aa is None or aa[2] is None) else aa[2]
    cdef const uint8_t[::1] av = avalid_a
    uh_a = np.empty(n, dtype=np.uint64)
    sh_a = np.empty(n, dtype=np.uint64)
    ih_a = np.empty(n, dtype=np.uint64)
    hll_a = np.empty((n, 4), dtype=np.uint8)
    eh_a = np.zeros((n, 3), dtype=np.uint64)
    if gk is not None:
        eh_a[:, 2] = gk
    cdef uint64_t[::1] uh = uh_a
    cdef uint64_t[::1] sh = sh_a
    cdef uint64_t[::1] ih = ih_a
    cdef uint8_t[:, ::1] hll = hll_a
    cdef uint64_t[:, ::1] eh = eh_a
    cdef uint64_t u, s
    cdef const unsigned char* sdp = &sd[0]
    cdef const unsigned char* udp = &ud[0]
    cdef const unsigned char* idp = &idd[0]
    cdef const unsigned char* adp = &ad[0]
    with nogil:
        for i in range(n):
            s = _mix(_fnv(FNV_S, sdp + so[i], so[i + 1] - so[i]))
            if has_uid and li[i] and uv[i] and uo[i + 1] > uo[i]:
                u = _mix(_fnv(FNV_U, udp + uo[i], uo[i + 1] - uo[i]))
            else:
                u = s
            uh[i] = u
            sh[i] = s
            ih[i] = _mix(_fnv(FNV_I, idp + io[i], io[i + 1] - io[i]))
            _hll_index_rank(s, &hll[i, 0], &hll[i, 1])
            _hll_index_rank(u, &hll[i, 2], &hll[i, 3])
            if has_ad and av[i] and ao[i + 1] > ao[i]:
                eh[i, 0] = _nz(_mix(_fnv(FNV_A, adp + ao[i], ao[i + 1] - ao[i])))
                eh[i, 1] = _ipad_key(idp + io[i], io[i + 1] - io[i], adp + ao[i],
                                     ao[i + 1] - ao[i])
    return uh_a, sh_a, ih_a, hll_a, eh_a


def not_ipv4(offsets, data, valid=None):
    """uint8 mask (n,): 1 where a row is not a strict dotted-quad IPv4 address (four decimal
    octets 0..255, no leading zeros, nothing else). Such rows may still be valid (IPv6): the
    caller checks them with the ipaddress module. offsets: int64 (n+1,) into the UTF-8 bytes
    `data`; valid: optional uint8 (n,), rows with 0 (nulls) are never flagged."""
    cdef const int64_t[::1] off = np.ascontiguousarray(offsets, dtype=np.int64)
    cdef Py_ssize_t n = off.shape[0] - 1, i
    if n <= 0:
        return np.zeros(0, dtype=np.uint8)
    data_a = np.ascontiguousarray(data, dtype=np.uint8)
    if data_a.size == 0:
        data_a = np.zeros(1, dtype=np.uint8)
    cdef const uint8_t[::1] d = data_a
    vmask = np.ones(n, dtype=np.uint8) if valid is None else \
        np.ascontiguousarray(valid, dtype=np.uint8)
    cdef const uint8_t[::1] v = vmask
    if v.shape[0] < n:
        raise ValueError("not_ipv4: valid is shorter than the column")
    if off[n] > d.shape[0] or off[0] < 0:
        raise ValueError("not_ipv4: offsets run past the data")
    out_a = np.zeros(n, dtype=np.uint8)
    cdef uint8_t[::1] out = out_a
    cdef const unsigned char* p = &d[0]
    cdef int64_t a, b, k
    cdef int parts, digits, val, c
    cdef bint ok
    with nogil:
        for i in range(n):
            if not v[i]:
                continue
            a = off[i]
            b = off[i + 1]
            ok = b - a >= 7 and b - a <= 15
            parts = 0
            digits = 0
            val = 0
            k = a
            while ok and k < b:
                c = p[k]
                if c >= 48 and c <= 57:
                    if digits == 1 and val == 0:
                        ok = False  # leading zero
                    val = val * 10 + (c - 48)
                    digits += 1
                    if val > 255:
                        ok = False
                elif c == 46 and digits > 0 and parts < 3:
                    parts += 1
                    digits = 0
                    val = 0
                else:
                    ok = False
                k += 1
            if not ok or parts != 3 or digits == 0:
                out[i] = 1
    return out_a
