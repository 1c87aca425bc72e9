# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native feature kernel: key hashing and the embedded counter store.

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
from libc.math cimport cos, exp, ldexp, log, log1p, sin
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
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
    RAW_WIDTH = 32
    N_FEATURES = 24
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
cdef int64_t HOUR_MS = 3600000
cdef int64_t DAY_MS = 86400000
cdef double GAP_CAP = 7 * 86400.0


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


_check_spec()

# ------------------------------------------------------------------------------ hashing

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil
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


def hash_keys(user_key, session_id, ip):
    """-> (uh, sh, ih: uint64 (n,), hll: uint8 (n, 4)); see reference.hash_keys."""
    cdef Py_ssize_t n = len(user_key), i
    if len(session_id) != n or len(ip) != n:
        raise ValueError("hash_keys: user_key, session_id and ip must have the same length")
    uh_a = np.empty(n, dtype=np.uint64)
    sh_a = np.empty(n, dtype=np.uint64)
    ih_a = np.empty(n, dtype=np.uint64)
    hll_a = np.empty((n, 4), dtype=np.uint8)
    cdef uint64_t[::1] uh = uh_a
    cdef uint64_t[::1] sh = sh_a
    cdef uint64_t[::1] ih = ih_a
    cdef uint8_t[:, ::1] hll = hll_a
    cdef uint64_t u, s
    if type(user_key) is list and type(session_id) is list and type(ip) is list:
        for i in range(n):
            u = _hash_str(FNV_OFFSET, <object>(<list>user_key)[i])
            s = _hash_str(FNV_S, <object>(<list>session_id)[i])
            uh[i] = u
            sh[i] = s
            ih[i] = _hash_str(FNV_I, <object>(<list>ip)[i])
            _hll_index_rank(s, &hll[i, 0], &hll[i, 1])
            _hll_index_rank(u, &hll[i, 2], &hll[i, 3])
    else:
        for i in range(n):
            u = _hash_str(FNV_OFFSET, user_key[i])
            s = _hash_str(FNV_S, session_id[i])
            uh[i] = u
            sh[i] = s
            ih[i] = _hash_str(FNV_I, ip[i])
            _hll_index_rank(s, &hll[i, 0], &hll[i, 1])
            _hll_index_rank(u, &hll[i, 2], &hll[i, 3])
    return uh_a, sh_a, ih_a, hll_a


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


def hash_key_columns(user_id, session_id, ip, logged_in):
    """hash_keys without building the user key strings: the user key is "u\\0" + user_id when
    logged_in and user_id is a non-empty string, else "s\\0" + session_id (contract.user_key).

    user_id / session_id / ip: pyarrow string arrays (hashed from their buffers without the GIL)
    or sequences of str (user_id: str | None, or None for no column); logged_in: bools (n,).
    -> (uh, sh, ih: uint64 (n,), hll: uint8 (n, 4)), equal to
    hash_keys([user_key(li, uid, sid) ...], session_id, ip)."""
    cdef const uint8_t[::1] li = np.ascontiguousarray(np.asarray(logged_in, dtype=bool)
                                                      ).view(np.uint8)
    cdef Py_ssize_t n = li.shape[0], i
    if len(session_id) != n or len(ip) != n or (user_id is not None and len(user_id) != n):
        raise ValueError("hash_key_columns: columns must have the same length")
    sa = _arrow_utf8(session_id, "session_id", False)
    ia = _arrow_utf8(ip, "ip", False)
    ua = None
    if user_id is not None:
        ua = _arrow_utf8(user_id, "user_id", True)
    if sa is None or ia is None or (user_id is not None and ua is None):
        # Python sequences: build the keys (contract.user_key) and hash them.
        sess = list(session_id.to_pylist() if hasattr(session_id, "to_pylist") else session_id)
        ips = list(ip.to_pylist() if hasattr(ip, "to_pylist") else ip)
        uids = (list(user_id.to_pylist() if hasattr(user_id, "to_pylist") else user_id)
                if user_id is not None else None)
        ukeys = []
        for i in range(n):
            uid = uids[i] if uids is not None else None
            if li[i] and uid:
                ukeys.append("u\x00" + uid)
            else:
                ukeys.append("s\x00" + sess[i])
        return hash_keys(ukeys, sess, ips)
    cdef const int64_t[::1] so = sa[0]
    cdef const uint8_t[::1] sd = sa[1]
    cdef const int64_t[::1] io = ia[0]
    cdef const uint8_t[::1] idd = ia[1]
    cdef const int64_t[::1] uo = sa[0] if ua is None else ua[0]
    cdef const uint8_t[::1] ud = sa[1] if ua is None else ua[1]
    cdef bint has_uid = ua is not None
    uvalid_a = np.ones(n if n else 1, dtype=np.uint8) if (ua is None or ua[2] is None) else ua[2]
    cdef const uint8_t[::1] uv = uvalid_a
    uh_a = np.empty(n, dtype=np.uint64)
    sh_a = np.empty(n, dtype=np.uint64)
    ih_a = np.empty(n, dtype=np.uint64)
    hll_a = np.empty((n, 4), dtype=np.uint8)
    cdef uint64_t[::1] uh = uh_a
    cdef uint64_t[::1] sh = sh_a
    cdef uint64_t[::1] ih = ih_a
    cdef uint8_t[:, ::1] hll = hll_a
    cdef uint64_t u, s
    cdef const unsigned char* sdp = &sd[0]
    cdef const unsigned char* udp = &ud[0]
    cdef const unsigned char* idp = &idd[0]
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
    return uh_a, sh_a, ih_a, hll_a


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

# ------------------------------------------------------------------------------ state

ctypedef struct UserSt:
    uint64_t key
    int64_t last
    double c[4]

ctypedef struct SessSt:
    uint64_t key
    int64_t last
    int64_t first
    double c[2]

ctypedef struct IpSt:
    uint64_t key
    int64_t last
    double c[3]
    double z[4]
    double pz[4]
    # HLLs 0,1 (1 h) and 2,3 (1 d) see the same timestamps, so they share a bucket.
    int64_t bucket[2]
    uint8_t v[4]
    uint8_t pv[4]
    uint8_t regs[4][HLL_M]

ctypedef struct Slot:
    uint64_t key
    uint32_t idx
    uint32_t pad

ctypedef struct Table:
    Slot* slots
    size_t mask       # slot count - 1 (power of two)
    char* dense       # count entries of `esize` bytes
    size_t esize
    size_t count
    size_t cap        # dense capacity
    size_t cursor     # sweep position in dense
    uint64_t seed     # per-table random salt for slot positions
    size_t max_count  # cap on count (0 = none): at it, an insert evicts first
    uint64_t evicted  # entries evicted at the cap (or when memory ran out)


cdef size_t _nslots_for(size_t keys) noexcept nogil:
    """Slots an index needs to hold `keys` without growing (load factor <= 0.7)."""
    cdef size_t nslots = 64
    while nslots * 7 < keys * 10:
        nslots <<= 1
    return nslots


cdef int _table_init(Table* t, size_t esize, size_t hint, size_t max_count) except -1:
    # With a cap the index is sized for it at once: it never rehashes (a rehash of millions
    # of slots stalls the loop), and calloc'd pages cost memory only once keys land on them.
    cdef size_t nslots = _nslots_for(hint if hint > max_count else max_count)
    cdef size_t cap = _nslots_for(hint) // 2
    if max_count:
        cap = max_count  # reserved at once (pages used as it fills): never a realloc copy
    t.slots = <Slot*>calloc(nslots, sizeof(Slot))
    t.dense = <char*>malloc(cap * esize)
    if t.dense == NULL and cap > _nslots_for(hint) // 2:  # too much to reserve: grow instead
        cap = _nslots_for(hint) // 2
        t.dense = <char*>malloc(cap * esize)
    if t.slots == NULL or t.dense == NULL:
        raise MemoryError()
    t.mask = nslots - 1
    t.esize = esize
    t.count = 0
    t.cap = cap
    t.max_count = max_count
    t.evicted = 0
    t.cursor = 0
    t.seed = _mix(<uint64_t>(<size_t>t) ^ (<uint64_t>os_urandom_u64()))
    return 0


cdef void _table_free(Table* t) noexcept:
    free(t.slots)
    free(t.dense)
    t.slots = NULL
    t.dense = NULL
    t.count = 0
    t.cap = 0


cdef size_t _table_bytes(Table* t) noexcept:
    if t.slots == NULL:
        return 0
    return (t.mask + 1) * sizeof(Slot) + t.cap * t.esize


cdef inline void* _entry(Table* t, size_t i) noexcept nogil:
    return t.dense + i * t.esize


cdef inline size_t _home(Table* t, uint64_t key) noexcept nogil:
    # Keys are hashes of client-chosen strings: salt them per table so nobody can aim many
    # keys at one probe chain (the unsalted low bits are easy to collide offline).
    return <size_t>_mix(key ^ t.seed) & t.mask


cdef inline size_t _find_slot(Table* t, uint64_t key) noexcept nogil:
    """Slot holding key, or the empty slot where it would go."""
    cdef size_t p = _home(t, key)
    while t.slots[p].idx != EMPTY and t.slots[p].key != key:
        p = (p + 1) & t.mask
    return p


cdef int _grow_slots(Table* t) noexcept nogil:
    """-1 when out of memory (the table is unchanged)."""
    cdef size_t old_n = t.mask + 1, i, p
    cdef Slot* old = t.slots
    cdef size_t n = old_n * 2
    cdef Slot* s = <Slot*>calloc(n, sizeof(Slot))
    if s == NULL:
        return -1
    t.slots = s
    t.mask = n - 1
    for i in range(old_n):
        if old[i].idx != EMPTY:
            p = _home(t, old[i].key)
            while s[p].idx != EMPTY:
                p = (p + 1) & t.mask
            s[p] = old[i]
    free(old)
    return 0


# Software prefetch distances (clicks ahead) for the per-table passes: the home slot of the
# key PF_SLOT clicks ahead, and the entry of the key PF_ENTRY clicks ahead (found through its
# home slot, fetched PF_SLOT - PF_ENTRY clicks earlier). Hints only: results do not change.
cdef enum:
    PF_SLOT = 16
    PF_ENTRY = 8


cdef inline void _prefetch_slot(Table* t, uint64_t key) noexcept nogil:
    __builtin_prefetch(&t.slots[_home(t, key)])


cdef inline void _prefetch_entry(Table* t, uint64_t key, int lines) noexcept nogil:
    cdef Slot* sl = &t.slots[_home(t, key)]
    cdef const char* e
    cdef int k
    if sl.idx != EMPTY and sl.key == key:
        e = <const char*>_entry(t, sl.idx - 1)
        for k in range(lines):
            __builtin_prefetch(e + 64 * k)


cdef void* _lookup(Table* t, uint64_t key) noexcept nogil:
    cdef size_t p = _find_slot(t, key)
    if t.slots[p].idx == EMPTY:
        return NULL
    return _entry(t, t.slots[p].idx - 1)


cdef enum:
    EVICT_SAMPLE = 16


cdef void _evict_one(Table* t) noexcept nogil:
    """Delete the least recently seen of EVICT_SAMPLE entries from the sweep cursor on (an
    expired entry is older than any live one, so it goes first)."""
    cdef size_t k, i, best = 0
    cdef size_t m = EVICT_SAMPLE if t.count > EVICT_SAMPLE else t.count
    cdef int64_t bl = 0x7FFFFFFFFFFFFFFF, l
    if t.count == 0:
        return
    if t.cursor >= t.count:
        t.cursor = 0
    i = t.cursor
    for k in range(m):
        l = (<int64_t*>_entry(t, i))[1]
        if l < bl:
            bl = l
            best = i
        i += 1
        if i >= t.count:
            i = 0
    t.cursor = i
    _delete_at(t, best)
    t.evicted += 1


cdef void* _insert(Table* t, uint64_t key) noexcept nogil:
    """Append a zeroed entry for a key known to be absent. At the cap, or when memory runs
    out, an older entry is evicted first; NULL only when the table is empty and memory is
    out (never a lasting state: the next insert tries again)."""
    cdef size_t p, ncap
    cdef char* d
    if t.max_count and t.count >= t.max_count:
        _evict_one(t)
    if (t.count + 1) * 10 > (t.mask + 1) * 7:
        if _grow_slots(t) < 0:
            if t.count == 0:
                return NULL
            _evict_one(t)  # the index stays under ~70 % full: probing still ends
    if t.count == t.cap:
        ncap = t.cap + t.cap // 2 + 16
        if t.max_count and ncap > t.max_count:
            ncap = t.max_count
        d = <char*>realloc(t.dense, ncap * t.esize) if ncap > t.cap else NULL
        if d == NULL:
            if t.count == 0:
                return NULL
            _evict_one(t)
        else:
            t.dense = d
            t.cap = ncap
    p = _find_slot(t, key)
    t.slots[p].key = key
    t.slots[p].idx = <uint32_t>(t.count + 1)
    d = <char*>_entry(t, t.count)
    memset(d, 0, t.esize)
    (<uint64_t*>d)[0] = key
    t.count += 1
    return d


cdef void _delete_at(Table* t, size_t i) noexcept nogil:
    """Remove dense entry i: backward-shift delete its slot, move the last entry into i."""
    cdef uint64_t key = (<uint64_t*>_entry(t, i))[0]
    cdef size_t p = _find_slot(t, key), q, home
    cdef size_t last = t.count - 1
    cdef uint64_t lkey
    # Backward-shift deletion keeps probe chains intact without tombstones.
    q = p
    while True:
        q = (q + 1) & t.mask
        if t.slots[q].idx == EMPTY:
            break
        home = _home(t, t.slots[q].key)
        # Move q back to p if its home is not cyclically in (p, q].
        if (q > p and (home <= p or home > q)) or (q < p and (home <= p and home > q)):
            t.slots[p] = t.slots[q]
            p = q
    t.slots[p].idx = EMPTY
    if i != last:
        lkey = (<uint64_t*>_entry(t, last))[0]
        memcpy_entry(t, i, last)
        t.slots[_find_slot(t, lkey)].idx = <uint32_t>(i + 1)
    t.count -= 1


cdef inline void memcpy_entry(Table* t, size_t dst, size_t src) noexcept nogil:
    cdef char* d = <char*>_entry(t, dst)
    cdef char* s = <char*>_entry(t, src)
    cdef size_t k
    for k in range(t.esize):
        d[k] = s[k]


cdef inline int64_t _floordiv(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline void _ip_reset(IpSt* e, int64_t t) noexcept nogil:
    cdef int j
    for j in range(3):
        e.c[j] = 1.0
    e.last = t
    e.bucket[0] = _floordiv(t, HOUR_MS)
    e.bucket[1] = _floordiv(t, DAY_MS)
    for j in range(4):
        e.z[j] = HLL_M
        e.pz[j] = HLL_M
        e.v[j] = HLL_M
        e.pv[j] = HLL_M
    memset(e.regs, 0, sizeof(e.regs))


cdef class EmbeddedStore:
    """In-process counter store in C arrays; the default store of a single process."""

    cdef Table users
    cdef Table sessions
    cdef Table ips
    # Per table (users, sessions, ips): the newest ts seen (the sweep's clock) and the clicks
    # since the last sweep step. The tables are independent, so update_tables can count one
    # table (or two) while another thread counts the rest; with all three counted in the same
    # calls the clocks and counters stay equal, as with one shared clock.
    cdef int64_t now[3]
    cdef Py_ssize_t since_sweep[3]
    cdef Py_ssize_t sweep_every
    cdef Py_ssize_t sweep_scan
    cdef int64_t sweep_grace_ms
    cdef bint closed
    cdef public str name

    def __cinit__(self):
        self.users.slots = NULL
        self.users.dense = NULL
        self.sessions.slots = NULL
        self.sessions.dense = NULL
        self.ips.slots = NULL
        self.ips.dense = NULL

    def __init__(self, Py_ssize_t capacity_hint=1024, Py_ssize_t sweep_every=256,
                 int64_t sweep_grace_ms=3_600_000, Py_ssize_t sweep_scan=8,
                 Py_ssize_t max_keys=0):
        """capacity_hint: keys per table to size for; sweep_every: clicks between sweep steps
        (each step examines sweep_scan * sweep_every entries per table, so a full pass over a
        table takes at most size/sweep_scan clicks and dead keys stay a small fraction);
        sweep_grace_ms: how long past its TTL (in stream time) a key is kept, so a click up to
        that much older than the newest one still sees it, exactly as the reference would.
        The sweep only frees memory: the counters do not depend on sweep_every / sweep_scan
        (a batch replay of a time-ordered log can sweep less, e.g. sweep_scan=1).
        max_keys: keys per table at most (0 = no cap); at the cap a new key evicts the least
        recently seen of a small sample of older keys (expired ones first), counted in
        `evicted`; the index is sized for the cap at once, so it never rehashes."""
        if capacity_hint < 0 or sweep_every < 1 or sweep_grace_ms < 0 or sweep_scan < 1 \
                or max_keys < 0 or max_keys >= (1 << 32) - 1:
            raise ValueError("capacity_hint >= 0, sweep_every >= 1, sweep_grace_ms >= 0, "
                             "sweep_scan >= 1, 0 <= max_keys < 2**32 - 1")
        self.name = "embedded"
        _table_init(&self.users, sizeof(UserSt), capacity_hint, max_keys)
        _table_init(&self.sessions, sizeof(SessSt), capacity_hint, max_keys)
        _table_init(&self.ips, sizeof(IpSt), capacity_hint, max_keys)
        self.now[:] = [-(1 << 62), -(1 << 62), -(1 << 62)]
        self.sweep_every = sweep_every
        self.sweep_scan = sweep_scan
        self.since_sweep[:] = [0, 0, 0]
        self.sweep_grace_ms = sweep_grace_ms
        self.closed = False

    def __dealloc__(self):
        _table_free(&self.users)
        _table_free(&self.sessions)
        _table_free(&self.ips)

    def close(self):
        _table_free(&self.users)
        _table_free(&self.sessions)
        _table_free(&self.ips)
        self.closed = True

    def __len__(self):
        return self.users.count + self.sessions.count + self.ips.count

    @property
    def evicted(self):
        """Entries evicted at the cap (all tables)."""
        return self.users.evicted + self.sessions.evicted + self.ips.evicted

    def stats(self):
        cdef size_t b = _table_bytes(&self.users) + _table_bytes(&self.sessions) + \
            _table_bytes(&self.ips)
        keys = len(self)
        return {"users": self.users.count, "sessions": self.sessions.count,
                "ips": self.ips.count, "keys": keys, "bytes": b,
                "max_keys": self.users.max_count, "evicted": self.evicted,
                "bytes_per_key": (b / keys) if keys else 0.0,
                "entry_bytes": {"user": sizeof(UserSt), "session": sizeof(SessSt),
                                "ip": sizeof(IpSt), "slot": sizeof(Slot)}}

    def sweep(self, Py_ssize_t budget=-1):
        """Free up to `budget` entries' worth of expired keys per table (all when -1)."""
        self._sweep(budget)

    cdef void _sweep(self, Py_ssize_t budget) noexcept nogil:
        _sweep_table(&self.users, self.now[0] - U_TTL - self.sweep_grace_ms, budget)
        _sweep_table(&self.sessions, self.now[1] - S_TTL - self.sweep_grace_ms, budget)
        _sweep_table(&self.ips, self.now[2] - I_TTL - self.sweep_grace_ms, budget)

    def update(self, ts, uh, sh, ih, hll):
        """Count one batch of clicks in order -> raw counters float64 (n, RAW_WIDTH)."""
        return self.update_tables(ts, uh, sh, ih, hll, None, 7)

    def update_tables(self, ts, uh, sh, ih, hll, out=None, int tables=7):
        """update() for some of the tables, into `out` (float64 (n, RAW_WIDTH), made when None),
        without the GIL. tables: bit mask, 1 users (raw columns 0-4), 2 sessions (5-8), 4 ips
        (9-31). The tables are independent: counting a batch with tables=3 and tables=4 (in
        either order, or at the same time from two threads) equals update(). Every batch must
        go to every table, in log order, before the next batch goes to that table."""
        if self.closed:
            raise RuntimeError("EmbeddedStore is closed")
        if tables < 0 or tables > 7:
            raise ValueError("update_tables: tables is a bit mask in 0..7")
        cdef const int64_t[::1] tsv = np.ascontiguousarray(ts, dtype=np.int64)
        cdef const uint64_t[::1] u = np.ascontiguousarray(uh, dtype=np.uint64)
        cdef const uint64_t[::1] s = np.ascontiguousarray(sh, dtype=np.uint64)
        cdef const uint64_t[::1] ip = np.ascontiguousarray(ih, dtype=np.uint64)
        cdef const uint8_t[:, ::1] hl = np.ascontiguousarray(hll, dtype=np.uint8)
        cdef Py_ssize_t n = tsv.shape[0]
        if u.shape[0] != n or s.shape[0] != n or ip.shape[0] != n or hl.shape[0] != n:
            raise ValueError("update: ts, uh, sh, ih and hll must have the same length")
        if n and hl.shape[1] != 4:
            raise ValueError("update: hll must have shape (n, 4)")
        if out is None:
            out = np.empty((n, RAW_WIDTH), dtype=np.float64)
        cdef double[:, ::1] o = out
        if o.shape[0] != n or o.shape[1] != RAW_WIDTH:
            raise ValueError("update_tables: out must be float64 (n, 32), C-contiguous")
        cdef int rc = 0
        if n == 0:
            return out
        with nogil:
            if tables & 1:
                rc = self._count_users(&tsv[0], &u[0], n, &o[0, 0])
            if rc == 0 and tables & 2:
                rc = self._count_sessions(&tsv[0], &s[0], n, &o[0, 0])
            if rc == 0 and tables & 4:
                rc = self._count_ips(&tsv[0], &ip[0], &hl[0, 0], n, &o[0, 0])
        if rc != 0:
            raise MemoryError("EmbeddedStore: out of memory")
        return out

    cdef inline void _tick(self, int k, int64_t t) noexcept nogil:
        if t > self.now[k]:
            self.now[k] = t

    cdef inline void _after(self, int k, Table* tab, int64_t ttl) noexcept nogil:
        self.since_sweep[k] += 1
        if self.since_sweep[k] >= self.sweep_every:
            self.since_sweep[k] = 0
            _sweep_table(tab, self.now[k] - ttl - self.sweep_grace_ms,
                         self.sweep_scan * self.sweep_every)

    cdef int _count_users(self, const int64_t* ts, const uint64_t* keys, Py_ssize_t n,
                          double* out) noexcept nogil:
        cdef Py_ssize_t i
        cdef UserSt* ue
        cdef double gap
        cdef double* row
        cdef int64_t t
        cdef int j
        for i in range(n):
            t = ts[i]
            row = out + i * RAW_WIDTH
            if i + PF_SLOT < n:
                _prefetch_slot(&self.users, keys[i + PF_SLOT])
            if i + PF_ENTRY < n:
                _prefetch_entry(&self.users, keys[i + PF_ENTRY], 2)
            self._tick(0, t)
            ue = <UserSt*>_lookup(&self.users, keys[i])
            if ue == NULL or t - ue.last > U_TTL:
                if ue == NULL:
                    ue = <UserSt*>_insert(&self.users, keys[i])
                    if ue == NULL:
                        return -1
                for j in range(4):
                    ue.c[j] = 1.0
                ue.last = t
                gap = -1.0
            else:
                gap = (t - ue.last if t > ue.last else 0) / 1000.0
                for j in range(4):
                    ue.c[j] = ue.c[j] * exp(-gap / U_TAU[j]) + 1.0
                if t > ue.last:
                    ue.last = t
            for j in range(4):
                row[j] = ue.c[j]
            row[4] = gap
            self._after(0, &self.users, U_TTL)
        return 0

    cdef int _count_sessions(self, const int64_t* ts, const uint64_t* keys, Py_ssize_t n,
                             double* out) noexcept nogil:
        cdef Py_ssize_t i
        cdef SessSt* se
        cdef double gap
        cdef double* row
        cdef int64_t t
        cdef int j
        for i in range(n):
            t = ts[i]
            row = out + i * RAW_WIDTH
            if i + PF_SLOT < n:
                _prefetch_slot(&self.sessions, keys[i + PF_SLOT])
            if i + PF_ENTRY < n:
                _prefetch_entry(&self.sessions, keys[i + PF_ENTRY], 1)
            self._tick(1, t)
            se = <SessSt*>_lookup(&self.sessions, keys[i])
            if se == NULL or t - se.last > S_TTL:
                if se == NULL:
                    se = <SessSt*>_insert(&self.sessions, keys[i])
                    if se == NULL:
                        return -1
                se.c[0] = 1.0
                se.c[1] = 1.0
                se.last = t
                se.first = t
                gap = -1.0
            else:
                gap = (t - se.last if t > se.last else 0) / 1000.0
                for j in range(2):
                    se.c[j] = se.c[j] * exp(-gap / S_TAU[j]) + 1.0
                if t > se.last:
                    se.last = t
            row[5] = se.c[0]
            row[6] = se.c[1]
            row[7] = gap
            row[8] = (t - se.first if t > se.first else 0) / 1000.0
            self._after(1, &self.sessions, S_TTL)
        return 0

    cdef int _count_ips(self, const int64_t* ts, const uint64_t* keys, const uint8_t* hll,
                        Py_ssize_t n, double* out) noexcept nogil:
        cdef Py_ssize_t i
        cdef IpSt* ie
        cdef double gap
        cdef double* row
        cdef const uint8_t* hl
        cdef int64_t t
        cdef int j, idx, rank, r, w
        cdef int64_t b, win
        cdef double frac
        for i in range(n):
            t = ts[i]
            row = out + i * RAW_WIDTH
            if i + PF_SLOT < n:
                _prefetch_slot(&self.ips, keys[i + PF_SLOT])
            if i + PF_ENTRY < n:
                _prefetch_entry(&self.ips, keys[i + PF_ENTRY], 4)
            hl = hll + 4 * i
            self._tick(2, t)
            ie = <IpSt*>_lookup(&self.ips, keys[i])
            if ie == NULL or t - ie.last > I_TTL:
                if ie == NULL:
                    ie = <IpSt*>_insert(&self.ips, keys[i])
                    if ie == NULL:
                        return -1
                _ip_reset(ie, t)
            else:
                gap = (t - ie.last if t > ie.last else 0) / 1000.0
                for j in range(3):
                    ie.c[j] = ie.c[j] * exp(-gap / I_TAU[j]) + 1.0
                if t > ie.last:
                    ie.last = t
            row[9] = ie.c[0]
            row[10] = ie.c[1]
            row[11] = ie.c[2]
            for w in range(2):
                win = HOUR_MS if w == 0 else DAY_MS
                b = _floordiv(t, win)
                if b > ie.bucket[w]:
                    for j in range(2 * w, 2 * w + 2):
                        if b == ie.bucket[w] + 1:
                            ie.pz[j] = ie.z[j]
                            ie.pv[j] = ie.v[j]
                        else:
                            ie.pz[j] = HLL_M
                            ie.pv[j] = HLL_M
                        ie.z[j] = HLL_M
                        ie.v[j] = HLL_M
                        memset(ie.regs[j], 0, HLL_M)
                    ie.bucket[w] = b
                frac = <double>(t - ie.bucket[w] * win) / <double>win
                if frac < 0.0:
                    frac = 0.0
                elif frac > 1.0:
                    frac = 1.0
                for j in range(2 * w, 2 * w + 2):
                    # j even: session HLL (hll cols 0,1); j odd: user HLL (cols 2,3)
                    idx = hl[2 * (j % 2)] & (HLL_M - 1)
                    rank = hl[2 * (j % 2) + 1]
                    r = ie.regs[j][idx]
                    if rank > r:
                        ie.z[j] = ie.z[j] - ldexp(1.0, -r) + ldexp(1.0, -rank)
                        if r == 0:
                            ie.v[j] -= 1
                        ie.regs[j][idx] = <uint8_t>rank
                    row[12 + 5 * j] = ie.z[j]
                    row[13 + 5 * j] = ie.v[j]
                    row[14 + 5 * j] = ie.pz[j]
                    row[15 + 5 * j] = ie.pv[j]
                    row[16 + 5 * j] = frac
            self._after(2, &self.ips, I_TTL)
        return 0


def max_keys_for_bytes(size_t budget):
    """The largest per-table cap whose three tables (dense entries plus an index sized for
    the cap) fit in `budget` bytes."""
    cdef size_t per = sizeof(UserSt) + sizeof(SessSt) + sizeof(IpSt)
    cdef size_t n = 64, k, idx, best = 0
    while n <= (<size_t>1 << 33):
        k = n * 7 // 10
        idx = 3 * n * sizeof(Slot)
        if idx < budget:
            if (budget - idx) // per < k:
                k = (budget - idx) // per
            if k > best:
                best = k
        n <<= 1
    return min(best, (1 << 32) - 2)


cdef void _sweep_table(Table* t, int64_t limit, Py_ssize_t budget) noexcept nogil:
    """Free up to `budget` (all when < 0) entries' worth of keys whose `last` < limit."""
    # `last` sits right after the key in every entry struct.
    cdef Py_ssize_t k = 0
    cdef size_t n = t.count if budget < 0 else <size_t>budget
    if t.count == 0:
        return
    while <size_t>k < n and t.count > 0:
        if t.cursor >= t.count:
            t.cursor = 0
        if (<int64_t*>(_entry(t, t.cursor)))[1] < limit:
            _delete_at(t, t.cursor)   # the last entry moved here; look at it next
        else:
            t.cursor += 1
        k += 1

# ------------------------------------------------------------------------------ finish

cdef double _ALPHA = 0.697
cdef double _TWO_PI = 2.0 * 3.141592653589793


cdef inline double _hll_est(double z, double v) noexcept nogil:
    cdef double raw = _ALPHA * HLL_M * HLL_M / z
    if raw <= 2.5 * HLL_M and v > 0:
        return HLL_M * log(HLL_M / v)
    return raw


def finish_into(raw, ts, tz_offset_min, logged_in, device, out=None):
    """Native twin of featurespec.finish: raw counters -> float32 features (n, 24)."""
    cdef const double[:, ::1] r = np.ascontiguousarray(raw, dtype=np.float64)
    cdef const int64_t[::1] tsv = np.ascontiguousarray(ts, dtype=np.int64)
    cdef const int64_t[::1] tz = np.ascontiguousarray(tz_offset_min, dtype=np.int64)
    cdef const uint8_t[::1] li = np.ascontiguousarray(logged_in, dtype=np.uint8)
    cdef const uint8_t[::1] dev = np.ascontiguousarray(device, dtype=np.uint8)
    cdef Py_ssize_t n = r.shape[0], i, k, j
    if out is None:
        out = np.empty((n, N_FEATURES), dtype=np.float32)
    cdef float[:, ::1] o = out
    if n and r.shape[1] != RAW_WIDTH:
        raise ValueError("finish_into: raw must have shape (n, 32)")
    if (tsv.shape[0] != n or tz.shape[0] != n or li.shape[0] != n or dev.shape[0] != n
            or o.shape[0] != n or o.shape[1] != N_FEATURES):
        raise ValueError("finish_into: column lengths / out shape do not match raw")
    cdef double g, est, hour_angle, dow_angle, dow
    cdef int64_t local, day_ms, days
    cdef const double* x
    cdef Py_ssize_t bad = -1
    if n == 0:
        return out
    with nogil:
      for i in range(n):
          x = &r[i, 0]
          for k in range(4):
              o[i, k] = <float>log1p(x[k])
          g = x[4]
          o[i, 4] = <float>log1p(GAP_CAP if g < 0 else (g if g < GAP_CAP else GAP_CAP))
          o[i, 5] = <float>log1p(x[5])
          o[i, 6] = <float>log1p(x[6])
          g = x[7]
          o[i, 7] = <float>log1p(GAP_CAP if g < 0 else (g if g < GAP_CAP else GAP_CAP))
          o[i, 8] = <float>log1p(x[8])
          o[i, 9] = <float>log1p(x[9])
          o[i, 10] = <float>log1p(x[10])
          o[i, 11] = <float>log1p(x[11])
          for j in range(4):
              est = _hll_est(x[12 + 5 * j], x[13 + 5 * j]) + \
                  _hll_est(x[14 + 5 * j], x[15 + 5 * j]) * (1.0 - x[16 + 5 * j])
              o[i, 12 + j] = <float>log1p(est)
          local = tsv[i] + tz[i] * 60000
          day_ms = local - _floordiv(local, DAY_MS) * DAY_MS
          days = _floordiv(local, DAY_MS)
          hour_angle = _TWO_PI * day_ms / 86400000.0
          dow = <double>((days + 3) - _floordiv(days + 3, 7) * 7) + day_ms / 86400000.0
          dow_angle = _TWO_PI * dow / 7.0
          o[i, 16] = <float>sin(hour_angle)
          o[i, 17] = <float>cos(hour_angle)
          o[i, 18] = <float>sin(dow_angle)
          o[i, 19] = <float>cos(dow_angle)
          o[i, 20] = li[i]
          o[i, 21] = 0.0
          o[i, 22] = 0.0
          o[i, 23] = 0.0
          if dev[i] > 2:
              bad = i
              break
          o[i, 21 + dev[i]] = 1.0
    if bad >= 0:
        raise ValueError(f"finish_into: device code {dev[bad]} at row {bad} is not 0, 1 or 2")
    return out


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


def redis_request(ts, uh, sh, ih, hll, bytes rec_head, bytes cmd_head, bytes argv_px):
    """The Redis store's whole EVALSHA command for one batch as one RESP buffer, byte for byte
    what slidr.store_redis.RedisStore.request builds with numpy (see store_redis.lua):

      *<k+9> cmd_head $<len k> k  <k key records>  $<24n> <n click records>  argv_px
      $<len nu> nu  $<len ns> ns

    key record = "$<klen>\\r\\n" + prefix (rec_head) + tag (u|s|i) + 8-byte big-endian hash +
    "\\r\\n", keys of each kind distinct and ascending; click record = ts (<f8), the 4 HLL bytes,
    the 1-based positions of the click's user, session and IP keys (<u4 each)."""
    cdef cnp.ndarray[cnp.float64_t, ndim=1] t = np.ascontiguousarray(ts, dtype=np.float64)
    cdef cnp.ndarray[cnp.uint64_t, ndim=1] u = np.ascontiguousarray(uh, dtype=np.uint64)
    cdef cnp.ndarray[cnp.uint64_t, ndim=1] s = np.ascontiguousarray(sh, dtype=np.uint64)
    cdef cnp.ndarray[cnp.uint64_t, ndim=1] ip = np.ascontiguousarray(ih, dtype=np.uint64)
    cdef cnp.ndarray[cnp.uint8_t, ndim=2] hb = np.ascontiguousarray(hll, dtype=np.uint8).reshape(-1, 4)
    cdef Py_ssize_t n = t.shape[0]
    if u.shape[0] != n or s.shape[0] != n or ip.shape[0] != n or hb.shape[0] != n:
        raise ValueError("redis_request: ts, uh, sh, ih and hll must have the same length")
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
        size = (24 + len(cmd_head) + 24 + 24 + k * reclen + 24 + 24 * n + 2 + len(argv_px)
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
        p += snprintf(p, 24, b"$%zd\r\n", 24 * n)
        for i in range(n):
            tv = t[i]
            memcpy(p, &tv, 8)  # little-endian hosts only (x86-64, aarch64)
            p[8] = <char>hb[i, 0]
            p[9] = <char>hb[i, 1]
            p[10] = <char>hb[i, 2]
            p[11] = <char>hb[i, 3]
            memcpy(p + 12, &idx[3 * i], 12)
            p += 24
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
