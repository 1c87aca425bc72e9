# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native per-click fast path of the daemon's batcher (slidrd/batcher.py).

Functions, each a drop-in twin of the Python it replaces (tests/test_fastpath.py checks
them against that Python on generated inputs):

  fast_valid(c, ip_ok, ip_check)   == slidrd.intake.fast_valid(c)
  batch_columns(clicks)            == the fields of ClickBatch.from_clicks(clicks, validate=False)
  ts_outside(ts, lo, hi)           == None, or np.flatnonzero((ts > hi) | (ts < lo))
  encode_results(...)              == msgpack.Packer(use_bin_type=True).pack([1, msgid, None, d])
                                      per click, d being Batcher._decide's decision dict
  expand_rows(resp, n, ...)        == slidr.store_redis.RedisStore.parse_reply_numpy(resp, n)

The contract's limits are read from slidr.contract when this module is imported, never copied.
"""
import msgpack
import numpy as np

from slidr.contract import DEVICE_CODE as _DEVICE_CODE_PY
from slidr.contract import MAX_ID_LEN as _MAX_ID_LEN_PY
from slidr.contract import MAX_UA_LEN as _MAX_UA_LEN_PY
from slidr.contract import TS_MAX as _TS_MAX_PY
from slidr.contract import TS_MIN as _TS_MIN_PY
from slidr.contract import TZ_MAX as _TZ_MAX_PY
from slidr.contract import TZ_MIN as _TZ_MIN_PY

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int16_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy

cnp.import_array()

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    long long PyLong_AsLongLongAndOverflow(object v, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object v) except? <unsigned long long>-1

# The contract (slidr/contract.py), as C values for the hot checks.
cdef dict _DEVICE_CODE = _DEVICE_CODE_PY
cdef Py_ssize_t MAX_ID_LEN = _MAX_ID_LEN_PY
cdef Py_ssize_t MAX_UA_LEN = _MAX_UA_LEN_PY
cdef long long TS_MIN = _TS_MIN_PY
cdef long long TS_MAX = _TS_MAX_PY  # exclusive
cdef long long TZ_MIN = _TZ_MIN_PY
cdef long long TZ_MAX = _TZ_MAX_PY  # inclusive


# ------------------------------------------------------------------ fast_valid

include "ipv4.pxi"


cdef inline bint _str_len_ok(object v, Py_ssize_t lo, Py_ssize_t hi):
    """type(v) is str and lo <= len(v) <= hi (len in code points)."""
    if type(v) is not str:
        return False
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(v)
    return lo <= n <= hi


cdef inline bint _int_in(object v, long long lo, long long hi) except -1:
    """type(v) is int (bool excluded: its type is bool) and lo <= v <= hi."""
    if type(v) is not int:
        return False
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow != 0:
        return False
    return lo <= x <= hi


def fast_valid(object c, dict ip_ok not None, object ip_check):
    """True only when `c` certainly passes contract.validate_click: slidrd.intake.fast_valid
    with the IP cache passed in (ip_ok.get(ip), else ip_check(ip))."""
    if type(c) is not dict:
        return False
    cdef dict d = <dict>c
    cdef object cid, ts, sid, ip, dev, li, uid, tz, ua, ad, ok
    cdef const char* s
    cdef Py_ssize_t ln
    try:
        cid = d["click_id"]
        ts = d["ts"]
        sid = d["session_id"]
        ip = d["ip"]
        dev = d["device"]
        li = d["logged_in"]
    except KeyError:
        return False
    if not _str_len_ok(cid, 1, MAX_ID_LEN):
        return False
    if not _str_len_ok(sid, 1, MAX_ID_LEN):
        return False
    if not _int_in(ts, TS_MIN, TS_MAX - 1):
        return False
    if type(li) is not bool or type(dev) is not str or dev not in _DEVICE_CODE:
        return False
    uid = d.get("user_id")
    if uid is not None and not _str_len_ok(uid, 0, MAX_ID_LEN):
        return False
    # li is exactly True or False; uid is None or a str here.
    if li is True and (uid is None or PyUnicode_GET_LENGTH(uid) == 0):
        return False
    tz = d.get("tz_offset_min")
    if tz is not None and not _int_in(tz, TZ_MIN, TZ_MAX):
        return False
    ua = d.get("user_agent")
    if ua is not None and not _str_len_ok(ua, 0, MAX_UA_LEN):
        return False
    ad = d.get("ad_id")
    if ad is not None and not _str_len_ok(ad, 0, MAX_ID_LEN):
        return False
    if type(ip) is not str:
        return False
    ok = ip_ok.get(ip)
    if ok is None:
        # A miss: a canonical dotted quad is decided here (as the decoder does), anything
        # else by the Python check (which fills the cache).
        try:
            s = PyUnicode_AsUTF8AndSize(ip, &ln)
        except UnicodeEncodeError:  # a lone surrogate: never an address; the check says so
            s = NULL
        if s != NULL and _ipv4(s, ln):
            return True
        ok = ip_check(ip)
    return True if ok else False


def partition(list items not None, double cutoff, dict ip_ok not None, object ip_check):
    """The batcher's first pass over a batch, one C loop (twin: slidrd.intake.partition):
    -> (valid, clicks, expired, late, check). An item (click, sink, slot, t_arr, deadline) whose
    click certainly passes the contract (fast_valid) goes to `expired` (+ its click to `late`)
    when its deadline is at or before `cutoff`, else to `valid` (+ `clicks`); any other item
    goes to `check`, in order, for the contract to name its problem. An item with a sixth
    element that is True (the decoder's: its click passed the contract there) is not checked
    again."""
    cdef list valid = [], clicks = [], expired = [], late = [], check = []
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i
    cdef object it, c
    cdef tuple t
    cdef bint ok
    for i in range(n):
        it = <object>PyList_GET_ITEM(items, i)
        if type(it) is not tuple or PyTuple_GET_SIZE(it) < 5:
            check.append(it)
            continue
        t = <tuple>it
        c = t[0]
        if PyTuple_GET_SIZE(t) > 5 and t[5] is True:
            ok = True
        else:
            try:
                ok = fast_valid(c, ip_ok, ip_check)
            except Exception:
                ok = False
        if not ok:
            check.append(it)
        elif <double>t[4] <= cutoff:
            expired.append(it)
            late.append(c)
        else:
            valid.append(it)
            clicks.append(c)
    return valid, clicks, expired, late, check


# ------------------------------------------------------------------ batch_columns

cdef inline cnp.ndarray _empty1d(Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    return cnp.PyArray_EMPTY(1, dims, typenum, 0)


def ts_outside(ts, double lo, double hi):
    """None when every ts[i] (int64 epoch ms) is within [lo, hi], else the indices of those
    outside it (int64 array): the batcher's clock check (twin: Batcher._clock_refused's numpy
    path), one C loop instead of two numpy reductions on a tiny array."""
    cdef cnp.ndarray a = _c1d(ts, cnp.NPY_INT64, np.int64)
    if cnp.PyArray_NDIM(a) != 1:
        raise ValueError("ts must be 1-D")
    cdef Py_ssize_t n = a.shape[0], i, k = 0
    cdef const int64_t* p = <const int64_t*>cnp.PyArray_DATA(a)
    cdef double v
    for i in range(n):
        v = <double>p[i]
        if v > hi or v < lo:
            k += 1
    if k == 0:
        return None
    cdef cnp.ndarray out = _empty1d(k, cnp.NPY_INT64)
    cdef int64_t* o = <int64_t*>cnp.PyArray_DATA(out)
    k = 0
    for i in range(n):
        v = <double>p[i]
        if v > hi or v < lo:
            o[k] = i
            k += 1
    return out



# ------------------------------------------------------------------ entity keys
# Feature spec 4's entity keys, hashed here while batch_columns has each click's fields in
# hand: the kernel's key hash (ext/kernel_hashing.pxi: FNV-1a 64 over the UTF-8 bytes, then
# the splitmix64 finaliser) under the namespaces "a\0" (ad), "x\0" + ip + "\0" (IP x ad) and
# "g\0" (user agent). Absent (None, missing, "") -> 0; a hash that comes out 0 -> 1.
# tests/test_fastpath.py holds these to slidr.ext.reference.hash64.

cdef extern from "Python.h":
    bint PyUnicode_Check(object o)

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
    return h if h != 0 else 1


cdef uint64_t FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV_A = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"a\x00", 2)
cdef uint64_t FNV_X = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"x\x00", 2)
cdef uint64_t FNV_G = _fnv(FNV_OFFSET, <const unsigned char*><const char*>b"g\x00", 2)

# User agents are long (100-200 bytes) and few: FNV-1a costs ~4 cycles a byte (each byte
# waits for the previous multiply), a memcmp a fraction of one. A direct-mapped cache of
# user agent -> key (the str held, its bytes compared) turns the usual click's UA hash into
# a lookup; a flood of distinct agents only misses (bounded: UA_SLOTS strings held).
DEF UA_SLOTS = 1024
DEF UA_SHIFT = 54  # 64 - log2(UA_SLOTS)
cdef PyObject* _ua_key[UA_SLOTS]
cdef uint64_t _ua_val[UA_SLOTS]


cdef inline const unsigned char* _utf8(object s, Py_ssize_t* n, str field) except NULL:
    if not PyUnicode_Check(s):
        raise TypeError(f"{field} must be str, not {type(s).__name__}")
    return <const unsigned char*>PyUnicode_AsUTF8AndSize(s, n)


cdef inline uint64_t _load8(const unsigned char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef uint64_t _ua_hash(object s) except? 0:
    cdef Py_ssize_t n, m
    cdef const unsigned char* p = _utf8(s, &n, "user_agent")
    if n == 0:
        return 0
    cdef uint64_t a, b, h
    cdef Py_ssize_t k
    if n >= 8:
        a = _load8(p + n - 8)
        b = _load8(p + (n >> 1) - 4) if n >= 16 else _load8(p)
    else:
        a = 0
        for k in range(n):
            a = (a << 8) | p[k]
        b = 0
    cdef Py_ssize_t slot = <Py_ssize_t>(((a ^ (b * 0x9E3779B97F4A7C15ULL) ^ <uint64_t>n)
                                         * 0xD6E8FEB86659FD93ULL) >> UA_SHIFT)
    cdef PyObject* o = _ua_key[slot]
    cdef const unsigned char* q
    if o != NULL:
        if o == <PyObject*>s:
            return _ua_val[slot]
        q = <const unsigned char*>PyUnicode_AsUTF8AndSize(<object>o, &m)
        if m == n and memcmp(p, q, n) == 0:
            return _ua_val[slot]
    h = _mix(_fnv(FNV_G, p, n))
    if type(s) is str:  # a subclass could carry more than its characters: not held
        Py_INCREF(s)
        _ua_key[slot] = <PyObject*>s
        _ua_val[slot] = h
        Py_XDECREF(o)
    return h


def entity_key(str kind, ad_id=None, user_agent=None, ip=None):
    """One entity key as batch_columns computes it (tests): kind "a" (ad_id), "x" (ip, ad_id)
    or "g" (user_agent)."""
    cdef Py_ssize_t n, m
    cdef const unsigned char* p
    cdef const unsigned char* q
    if kind == "g":
        return 0 if user_agent is None else _ua_hash(user_agent)
    if ad_id is None:
        return 0
    p = _utf8(ad_id, &n, "ad_id")
    if n == 0:
        return 0
    if kind == "a":
        return _mix(_fnv(FNV_A, p, n))
    q = _utf8(ip, &m, "ip")
    return _mix(_fnv(_fnv(_fnv(FNV_X, q, m), <const unsigned char*><const char*>b"\x00", 1), p, n))


def batch_columns(list clicks not None, bint entity=False):
    """Columns of ClickBatch.from_clicks(clicks, validate=False), for validated clicks:
    -> (ts int64, user_key list[str], session_id list[str], ip list[str], device uint8,
        logged_in uint8, tz_offset_min int16); with `entity`, followed by eh: uint64 (n, 3),
    each click's entity keys (ad, IP x ad, user agent; 0 = absent), as
    slidr.ext.reference.hash_keys computes them from ad_id and user_agent."""
    cdef Py_ssize_t n = PyList_GET_SIZE(clicks), i, ln, iln
    # PyArray_EMPTY: np.empty without the Python call (four of them cost more than the loop
    # on a batch of one click).
    cdef cnp.ndarray ts_a = _empty1d(n, cnp.NPY_INT64)
    cdef cnp.ndarray dev_a = _empty1d(n, cnp.NPY_UINT8)
    cdef cnp.ndarray li_a = _empty1d(n, cnp.NPY_UINT8)
    cdef cnp.ndarray tz_a = _empty1d(n, cnp.NPY_INT16)
    cdef int64_t* ts_p = <int64_t*>cnp.PyArray_DATA(ts_a)
    cdef uint8_t* dev_p = <uint8_t*>cnp.PyArray_DATA(dev_a)
    cdef uint8_t* li_p = <uint8_t*>cnp.PyArray_DATA(li_a)
    cdef int16_t* tz_p = <int16_t*>cnp.PyArray_DATA(tz_a)
    cdef list ukeys = PyList_New(n)
    cdef list sess = PyList_New(n)
    cdef list ips = PyList_New(n)
    cdef cnp.ndarray eh_a = None
    cdef uint64_t* eh_p = NULL
    cdef cnp.npy_intp dims[2]
    if entity:
        dims[0] = n
        dims[1] = 3
        eh_a = cnp.PyArray_EMPTY(2, dims, cnp.NPY_UINT64, 0)
        eh_p = <uint64_t*>cnp.PyArray_DATA(eh_a)
    cdef object c, t, lio, sid, ip, dev, uid, tz, key, ad = None, ua = None
    cdef dict d
    cdef bint li, has_uid
    cdef const unsigned char* ap
    cdef const unsigned char* ipp
    cdef uint64_t h
    for i in range(n):
        c = <object>PyList_GET_ITEM(clicks, i)
        if type(c) is dict:
            d = <dict>c
            t = d["ts"]
            lio = d["logged_in"]
            sid = d["session_id"]
            ip = d["ip"]
            dev = d["device"]
            uid = d.get("user_id")
            tz = d.get("tz_offset_min")
            if entity:
                ad = d.get("ad_id")
                ua = d.get("user_agent")
        else:  # any other Mapping that validate_click accepted
            t = c["ts"]
            lio = c["logged_in"]
            sid = c["session_id"]
            ip = c["ip"]
            dev = c["device"]
            uid = c.get("user_id")
            tz = c.get("tz_offset_min")
            if entity:
                ad = c.get("ad_id")
                ua = c.get("user_agent")
        ts_p[i] = t
        li = True if lio else False
        li_p[i] = li
        # contract.user_key: "u\0" + user_id when logged in with a user id, else "s\0" + session.
        if uid is None:
            has_uid = False
        elif type(uid) is str:
            has_uid = PyUnicode_GET_LENGTH(uid) != 0
        else:
            has_uid = True if uid else False
        if li and has_uid:
            key = "u\x00" + <str>uid if type(uid) is str else "u\x00" + uid
        else:
            key = "s\x00" + <str>sid if type(sid) is str else "s\x00" + sid
        Py_INCREF(key)
        PyList_SET_ITEM(ukeys, i, key)
        Py_INCREF(sid)
        PyList_SET_ITEM(sess, i, sid)
        Py_INCREF(ip)
        PyList_SET_ITEM(ips, i, ip)
        dev_p[i] = _DEVICE_CODE[dev]
        tz_p[i] = (tz or 0)
        if entity:
            ln = 0
            if ad is not None:
                ap = _utf8(ad, &ln, "ad_id")
            if ln:
                eh_p[3 * i] = _mix(_fnv(FNV_A, ap, ln))
                ipp = _utf8(ip, &iln, "ip")
                h = _fnv(FNV_X, ipp, iln)
                h = (h ^ 0) * 0x100000001B3ULL  # the "\0" between IP and ad
                eh_p[3 * i + 1] = _mix(_fnv(h, ap, ln))
            else:
                eh_p[3 * i] = 0
                eh_p[3 * i + 1] = 0
            eh_p[3 * i + 2] = 0 if ua is None else _ua_hash(ua)
    if entity:
        return ts_a, ukeys, sess, ips, dev_a, li_a, tz_a, eh_a
    return ts_a, ukeys, sess, ips, dev_a, li_a, tz_a


# ------------------------------------------------------------------ encode_results

# [1, msgid, None, {...}]: fixarray(4), positive fixint 1; then nil, fixmap(7) and the map's
# keys, in Batcher._decide's order.
cdef bytes _HEAD = b"\x94\x01"
cdef bytes _K_CLICK = b"\xc0\x87\xa8click_id"
cdef bytes _K_INVALID = b"\xa7invalid"
cdef bytes _K_SCORE = b"\xa5score"
cdef bytes _K_THRESHOLD = b"\xa9threshold"
cdef bytes _K_SLICE = b"\xa5slice"
cdef bytes _K_MODEL = b"\xa5model"
cdef bytes _K_REASON = b"\xa6reason"

# Odd values (an int that is not exactly int, one out of int64/uint64 range, a click id that
# is not exactly str) are packed by msgpack itself: an array or map is packed as its header
# followed by each element's packing, so the pieces concatenate to the same bytes.
_packer = msgpack.Packer(use_bin_type=True)


cdef inline Py_ssize_t _put(char* p, bytes b):
    cdef Py_ssize_t k = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(b), k)
    return k


cdef inline Py_ssize_t _be(char* p, uint64_t v, int nbytes):
    cdef int j
    for j in range(nbytes):
        p[j] = <char>((v >> (8 * (nbytes - 1 - j))) & 0xFF)
    return nbytes


cdef inline Py_ssize_t _pack_uint(char* p, uint64_t v):
    # msgpack: positive fixint, uint8, uint16, uint32, uint64 (smallest that fits).
    if v < 0x80:
        p[0] = <char>v
        return 1
    if v < 0x100:
        p[0] = <char>0xcc
        return 1 + _be(p + 1, v, 1)
    if v < 0x10000:
        p[0] = <char>0xcd
        return 1 + _be(p + 1, v, 2)
    if v < 0x100000000:
        p[0] = <char>0xce
        return 1 + _be(p + 1, v, 4)
    p[0] = <char>0xcf
    return 1 + _be(p + 1, v, 8)


cdef inline Py_ssize_t _pack_int(char* p, long long v):
    # msgpack: negative fixint, int8, int16, int32, int64 (smallest that fits).
    if v >= 0:
        return _pack_uint(p, <uint64_t>v)
    if v >= -32:
        p[0] = <char>v
        return 1
    if v >= -128:
        p[0] = <char>0xd0
        return 1 + _be(p + 1, <uint64_t>v, 1)
    if v >= -32768:
        p[0] = <char>0xd1
        return 1 + _be(p + 1, <uint64_t>v, 2)
    if v >= -2147483648:
        p[0] = <char>0xd2
        return 1 + _be(p + 1, <uint64_t>v, 4)
    p[0] = <char>0xd3
    return 1 + _be(p + 1, <uint64_t>v, 8)


cdef inline Py_ssize_t _pack_double(char* p, double x):
    cdef uint64_t u
    memcpy(&u, &x, 8)
    p[0] = <char>0xcb
    return 1 + _be(p + 1, u, 8)


cdef inline bint _exact(object a, int typenum, Py_ssize_t n):
    """a is already a 1-D C-contiguous ndarray of this dtype and length: use it as it is
    (the batcher's own arrays always are; the generic checks cost more than a small batch)."""
    if type(a) is not np.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == 1
            and arr.shape[0] == n and cnp.PyArray_IS_C_CONTIGUOUS(arr))


cdef cnp.ndarray _f64(object a):
    """_c1d(a, float64) with float32 (the model's output) widened in a C loop: exact, the same
    doubles .tolist() gives, without np.ascontiguousarray's call."""
    cdef cnp.ndarray arr, out
    cdef Py_ssize_t i, n
    cdef const float* src
    cdef double* dst
    if type(a) is np.ndarray:
        arr = <cnp.ndarray>a
        if cnp.PyArray_NDIM(arr) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(arr):
            if cnp.PyArray_TYPE(arr) == cnp.NPY_DOUBLE:
                return arr
            if cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT:
                n = arr.shape[0]
                out = _empty1d(n, cnp.NPY_DOUBLE)
                src = <const float*>cnp.PyArray_DATA(arr)
                dst = <double*>cnp.PyArray_DATA(out)
                for i in range(n):
                    dst[i] = src[i]
                return out
    return np.ascontiguousarray(a, dtype=np.float64)


cdef inline cnp.ndarray _c1d(object a, int typenum, object dtype):
    """np.ascontiguousarray(a, dtype), without the call when a already is that."""
    if type(a) is np.ndarray:
        arr = <cnp.ndarray>a
        if cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr):
            return arr
    return np.ascontiguousarray(a, dtype=dtype)


cdef cnp.ndarray _as_f64(object a, str name, Py_ssize_t n):
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be 1-D of length {n}, got shape {arr.shape}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        raise TypeError(f"{name} must be float16/32/64, not {arr.dtype}")
    # float16/float32 -> float64 is exact: the same value .tolist() gives.
    return np.ascontiguousarray(arr, dtype=np.float64)


def encode_results(list msgids not None, list click_ids not None, invalid, scores, thresholds,
                   codes, slice_keys, bytes model_key not None, bytes reason_key not None):
    """One msgpack-RPC response frame per click, frame i byte-identical to
    msgpack.Packer(use_bin_type=True).pack([1, msgids[i], None, d]) with d = {"click_id":
    click_ids[i], "invalid": bool(invalid[i]), "score": scores.tolist()[i], "threshold":
    thresholds.tolist()[i], "slice": <name of codes[i]>, "model": <version>, "reason": "model"};
    slice_keys[code], model_key and reason_key are those strings already packed."""
    cdef Py_ssize_t n = PyList_GET_SIZE(msgids), i, k, size, cid_len, hdr_len, nsl
    if PyList_GET_SIZE(click_ids) != n:
        raise ValueError(f"click_ids has {len(click_ids)} items, msgids {n}")
    cdef cnp.ndarray inv, sc, th, cd
    if (_exact(invalid, cnp.NPY_BOOL, n) and _exact(scores, cnp.NPY_DOUBLE, n)
            and _exact(thresholds, cnp.NPY_DOUBLE, n) and _exact(codes, cnp.NPY_INTP, n)):
        inv, sc, th, cd = invalid, scores, thresholds, codes  # bool is one byte: 0 or 1
    else:
        inv, sc, th, cd = _encode_inputs(invalid, scores, thresholds, codes, n)
    return _encode(msgids, click_ids, inv, sc, th, cd, slice_keys, model_key, reason_key, n)


cdef tuple _encode_inputs(invalid, scores, thresholds, codes, Py_ssize_t n):
    """encode_results' arguments of any accepted form -> (uint8, f64, f64, intp) arrays."""
    inv_a = np.asarray(invalid)
    if inv_a.ndim != 1 or inv_a.shape[0] != n:
        raise ValueError(f"invalid must be 1-D of length {n}, got shape {inv_a.shape}")
    if inv_a.dtype != np.bool_:
        inv_a = inv_a != 0  # bool(x) of a number
    cdef cnp.ndarray inv = np.ascontiguousarray(inv_a).view(np.uint8)
    cdef cnp.ndarray sc = _as_f64(scores, "scores", n)
    cdef cnp.ndarray th = _as_f64(thresholds, "thresholds", n)
    cd_a = np.asarray(codes)
    if cd_a.ndim != 1 or cd_a.shape[0] != n:
        raise ValueError(f"codes must be 1-D of length {n}, got shape {cd_a.shape}")
    if cd_a.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, not {cd_a.dtype}")
    cdef cnp.ndarray cd = np.ascontiguousarray(cd_a, dtype=np.intp)
    return inv, sc, th, cd


cdef list _encode(list msgids, list click_ids, cnp.ndarray inv, cnp.ndarray sc, cnp.ndarray th,
                  cnp.ndarray cd, slice_keys, bytes model_key, bytes reason_key, Py_ssize_t n):
    cdef Py_ssize_t i, k, size, cid_len, hdr_len, nsl
    cdef tuple sk = tuple(slice_keys)
    nsl = len(sk)
    for k in range(nsl):
        if type(sk[k]) is not bytes:
            raise TypeError("slice_keys must be bytes (msgpack-packed slice names)")
    cdef const uint8_t* inv_p = <const uint8_t*>cnp.PyArray_DATA(inv)
    cdef const double* sc_p = <const double*>cnp.PyArray_DATA(sc)
    cdef const double* th_p = <const double*>cnp.PyArray_DATA(th)
    cdef const Py_ssize_t* cd_p = <const Py_ssize_t*>cnp.PyArray_DATA(cd)
    cdef Py_ssize_t fixed = (PyBytes_GET_SIZE(_HEAD) + PyBytes_GET_SIZE(_K_CLICK)
                             + PyBytes_GET_SIZE(_K_INVALID) + 1
                             + PyBytes_GET_SIZE(_K_SCORE) + 9
                             + PyBytes_GET_SIZE(_K_THRESHOLD) + 9
                             + PyBytes_GET_SIZE(_K_SLICE)
                             + PyBytes_GET_SIZE(_K_MODEL) + PyBytes_GET_SIZE(model_key)
                             + PyBytes_GET_SIZE(_K_REASON) + PyBytes_GET_SIZE(reason_key))
    cdef list out = PyList_New(n)
    cdef object mid, cid, frame
    cdef bytes mid_b, cid_b, slice_b
    cdef char mid_buf[9]
    cdef char hdr[5]
    cdef const char* mid_p
    cdef const char* cid_p
    cdef Py_ssize_t mid_len, code
    cdef long long v
    cdef int overflow
    cdef char* p
    for i in range(n):
        # msgid: as msgpack packs an int; anything unusual goes through msgpack itself.
        mid = <object>PyList_GET_ITEM(msgids, i)
        mid_p = NULL
        if type(mid) is int:
            v = PyLong_AsLongLongAndOverflow(mid, &overflow)
            if overflow == 0:
                mid_len = _pack_int(mid_buf, v)
                mid_p = mid_buf
            elif overflow > 0 and mid.bit_length() <= 64:
                mid_len = _pack_uint(mid_buf, PyLong_AsUnsignedLongLong(mid))
                mid_p = mid_buf
        if mid_p == NULL:
            mid_b = _packer.pack(mid)
            mid_len = PyBytes_GET_SIZE(mid_b)
            mid_p = PyBytes_AS_STRING(mid_b)
        # click id: UTF-8 with the smallest str header.
        cid = <object>PyList_GET_ITEM(click_ids, i)
        cid_p = NULL
        if type(cid) is str:
            cid_p = PyUnicode_AsUTF8AndSize(cid, &cid_len)
            if cid_len < 32:
                hdr[0] = <char>(0xa0 | cid_len)
                hdr_len = 1
            elif cid_len < 0x100:
                hdr[0] = <char>0xd9
                hdr_len = 1 + _be(hdr + 1, <uint64_t>cid_len, 1)
            elif cid_len < 0x10000:
                hdr[0] = <char>0xda
                hdr_len = 1 + _be(hdr + 1, <uint64_t>cid_len, 2)
            elif cid_len <= 0xFFFFFFFF:
                hdr[0] = <char>0xdb
                hdr_len = 1 + _be(hdr + 1, <uint64_t>cid_len, 4)
            else:
                cid_p = NULL
        if cid_p == NULL:
            cid_b = _packer.pack(cid)
            cid_len = PyBytes_GET_SIZE(cid_b)
            cid_p = PyBytes_AS_STRING(cid_b)
            hdr_len = 0
        code = cd_p[i]
        if code < 0:
            code += nsl  # a Python list index
        if code < 0 or code >= nsl:
            raise IndexError("list index out of range")
        slice_b = <bytes>sk[code]
        size = fixed + mid_len + hdr_len + cid_len + PyBytes_GET_SIZE(slice_b)
        frame = PyBytes_FromStringAndSize(NULL, size)
        p = PyBytes_AS_STRING(frame)
        p += _put(p, _HEAD)
        memcpy(p, mid_p, mid_len)
        p += mid_len
        p += _put(p, _K_CLICK)
        memcpy(p, hdr, hdr_len)
        p += hdr_len
        memcpy(p, cid_p, cid_len)
        p += cid_len
        p += _put(p, _K_INVALID)
        p[0] = <char>(0xc3 if inv_p[i] else 0xc2)
        p += 1
        p += _put(p, _K_SCORE)
        p += _pack_double(p, sc_p[i])
        p += _put(p, _K_THRESHOLD)
        p += _pack_double(p, th_p[i])
        p += _put(p, _K_SLICE)
        p += _put(p, slice_b)
        p += _put(p, _K_MODEL)
        p += _put(p, model_key)
        p += _put(p, _K_REASON)
        p += _put(p, reason_key)
        Py_INCREF(frame)
        PyList_SET_ITEM(out, i, frame)
    return out


# ---------------------------------------------------------------- the batcher's decide step

cdef inline Py_ssize_t _bisect_left(const double* b, Py_ssize_t nb, double v) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = nb, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if b[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


def decide_batch(list items not None, list clicks not None, device, logged_in, scores, table,
                 slice_keys, bytes model_key not None, bytes reason_key not None,
                 double t0, double t_end, bounds, q_counts, tot_counts):
    """The per-batch arithmetic of slidrd's Batcher._decide in one call.

    items[i] is the batcher's (click, sink, msgid_or_slot, t_arrival, deadline); clicks[i] its
    click. code = device * 2 + logged_in; threshold = table[code]; invalid = score > threshold
    (strictly, the calibration rule). Adds each click's queue time (t0 - t_arrival) and total
    time (t_end - t_arrival) to the histogram counts q_counts / tot_counts (int64, one more
    than bounds; bucket = bisect_left(bounds, value), as slidrd.metrics.Histogram does).

    Returns (frames, codes intp, thresholds f64, invalid bool, queue_sum, total_sum,
    per_slice_n list, per_slice_invalid list); frames as encode_results builds them."""
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i, c, nslices
    if PyList_GET_SIZE(clicks) != n:
        raise ValueError(f"clicks has {len(clicks)} items, items {n}")
    cdef cnp.ndarray dev = _c1d(device, cnp.NPY_UINT8, np.uint8)
    cdef cnp.ndarray li = _c1d(logged_in, cnp.NPY_UINT8, np.uint8)
    cdef cnp.ndarray sc = _f64(scores)
    cdef cnp.ndarray tb = _c1d(table, cnp.NPY_DOUBLE, np.float64)
    cdef cnp.ndarray bd = _c1d(bounds, cnp.NPY_DOUBLE, np.float64)
    if dev.shape[0] != n or li.shape[0] != n or sc.shape[0] != n:
        raise ValueError(f"device, logged_in and scores must have {n} entries")
    cdef cnp.ndarray qc = q_counts
    cdef cnp.ndarray tc = tot_counts
    if (cnp.PyArray_TYPE(qc) != cnp.NPY_INT64 or cnp.PyArray_TYPE(tc) != cnp.NPY_INT64
            or cnp.PyArray_NDIM(qc) != 1 or cnp.PyArray_NDIM(tc) != 1
            or not cnp.PyArray_IS_C_CONTIGUOUS(qc) or not cnp.PyArray_IS_C_CONTIGUOUS(tc)
            or qc.shape[0] != bd.shape[0] + 1 or tc.shape[0] != bd.shape[0] + 1):
        raise ValueError("q_counts and tot_counts must be contiguous int64 of len(bounds) + 1")
    nslices = tb.shape[0]
    cdef cnp.ndarray codes = _empty1d(n, cnp.NPY_INTP)
    cdef cnp.ndarray thr = _empty1d(n, cnp.NPY_DOUBLE)
    cdef cnp.ndarray inv = _empty1d(n, cnp.NPY_BOOL)
    cdef const uint8_t* dp = <const uint8_t*>cnp.PyArray_DATA(dev)
    cdef const uint8_t* lp = <const uint8_t*>cnp.PyArray_DATA(li)
    cdef const double* sp = <const double*>cnp.PyArray_DATA(sc)
    cdef const double* tp = <const double*>cnp.PyArray_DATA(tb)
    cdef const double* bp = <const double*>cnp.PyArray_DATA(bd)
    cdef Py_ssize_t nb = bd.shape[0]
    cdef int64_t* qp = <int64_t*>cnp.PyArray_DATA(qc)
    cdef int64_t* totp = <int64_t*>cnp.PyArray_DATA(tc)
    cdef Py_ssize_t* cp = <Py_ssize_t*>cnp.PyArray_DATA(codes)
    cdef double* thp = <double*>cnp.PyArray_DATA(thr)
    cdef uint8_t* ip = <uint8_t*>cnp.PyArray_DATA(inv)
    per_n = [0] * nslices
    per_bad = [0] * nslices
    cdef list msgids = PyList_New(0)
    cdef list cids = PyList_New(0)
    cdef double qsum = 0.0, tsum = 0.0, ta, v
    cdef object it
    for i in range(n):
        c = <Py_ssize_t>dp[i] * 2 + (1 if lp[i] else 0)
        if c >= nslices:
            raise IndexError(f"slice code {c} outside the threshold table of {nslices}")
        cp[i] = c
        thp[i] = tp[c]
        ip[i] = 1 if sp[i] > tp[c] else 0
        per_n[c] += 1
        if ip[i]:
            per_bad[c] += 1
        it = items[i]
        msgids.append(it[2])
        cids.append(clicks[i]["click_id"])
        ta = it[3]
        v = t0 - ta
        qsum += v
        qp[_bisect_left(bp, nb, v)] += 1
        v = t_end - ta
        tsum += v
        totp[_bisect_left(bp, nb, v)] += 1
    # The arrays are this function's own (exact dtypes and length): straight to the encoder.
    frames = _encode(msgids, cids, inv, sc, thr, codes, slice_keys, model_key, reason_key, n)
    return frames, codes, thr, inv, qsum, tsum, per_n, per_bad


def decision_dicts(list clicks not None, invalid, scores, thr, codes, list slice_names not None,
                   str version not None, indices=None):
    """The decision records of a decided batch, one C loop (twin: the Python in
    slidrd.batcher.Batcher._after_native): for i in `indices` (default: every click),
    {"click_id": clicks[i]["click_id"], "invalid": bool(invalid[i]), "score":
    float(scores[i]), "threshold": float(thr[i]), "slice": slice_names[codes[i]], "model":
    version, "reason": "model"}."""
    cdef cnp.ndarray inv = _c1d(invalid, cnp.NPY_BOOL, np.bool_)
    cdef cnp.ndarray sc = _c1d(scores, cnp.NPY_DOUBLE, np.float64)
    cdef cnp.ndarray th = _c1d(thr, cnp.NPY_DOUBLE, np.float64)
    cdef cnp.ndarray cd = _c1d(codes, cnp.NPY_INTP, np.intp)
    cdef Py_ssize_t n = PyList_GET_SIZE(clicks), k, i, m
    if inv.shape[0] != n or sc.shape[0] != n or th.shape[0] != n or cd.shape[0] != n:
        raise ValueError(f"invalid, scores, thr and codes must have {n} entries")
    cdef const uint8_t* ip = <const uint8_t*>cnp.PyArray_DATA(inv)
    cdef const double* sp = <const double*>cnp.PyArray_DATA(sc)
    cdef const double* tp = <const double*>cnp.PyArray_DATA(th)
    cdef const Py_ssize_t* cp = <const Py_ssize_t*>cnp.PyArray_DATA(cd)
    cdef list idx = list(range(n)) if indices is None else list(indices)
    m = PyList_GET_SIZE(idx)
    cdef list out = PyList_New(0)
    cdef dict d
    for k in range(m):
        i = idx[k]
        if i < 0 or i >= n:
            raise IndexError(f"index {i} outside the batch of {n}")
        d = {"click_id": clicks[i]["click_id"], "invalid": True if ip[i] else False,
             "score": sp[i], "threshold": tp[i], "slice": slice_names[cp[i]],
             "model": version, "reason": "model"}
        out.append(d)
    return out


def route_frames(list items not None, list frames not None, group_type, set dirty not None):
    """Hand frame i to items[i]'s connection (decrement its in-flight count; append the frame
    unless it is closed; mark it dirty). Items whose sink is a `group_type` (score_many) are
    left to the caller: their indices are returned."""
    cdef Py_ssize_t n = PyList_GET_SIZE(items), i
    if PyList_GET_SIZE(frames) != n:
        raise ValueError("one frame per item")
    cdef list groups = []
    cdef object sink
    for i in range(n):
        sink = (<tuple>items[i])[1]
        if type(sink) is group_type:
            groups.append(i)
            continue
        sink.inflight = sink.inflight - 1
        if not sink.closed:
            sink.out.append(frames[i])
            dirty.add(sink)
    return groups


# ---------------------------------------------------------------- the Redis reply

from libc.stdlib cimport free, malloc


def expand_rows(list resp not None, Py_ssize_t n, Py_ssize_t row_doubles, d_src, d_dst,
                Py_ssize_t packed_col, b_dst, Py_ssize_t raw_width):
    """The counter script's reply -> raw counters (n, raw_width) float64, or None when the
    reply does not hold n rows of row_doubles little-endian doubles (the caller names the
    error). Twin: slidr.store_redis.RedisStore.parse_reply's numpy path, i.e. with
    rec = the rows: raw[:, d_dst] = rec[:, d_src]; p = int64(rec[:, packed_col]);
    raw[:, b_dst[j]] = (p >> 6 j) & 63. Columns named by neither map are left as np.empty
    leaves them (the maps cover every column)."""
    cdef Py_ssize_t k = PyList_GET_SIZE(resp), i, j, total = 0, L, nd, nb
    cdef object part
    for i in range(k):
        part = <object>PyList_GET_ITEM(resp, i)
        if type(part) is not bytes:
            return None
        total += PyBytes_GET_SIZE(part)
    if n < 0 or row_doubles <= 0 or total != n * row_doubles * 8:
        return None
    cdef cnp.ndarray s_a = _c1d(d_src, cnp.NPY_INTP, np.intp)
    cdef cnp.ndarray t_a = _c1d(d_dst, cnp.NPY_INTP, np.intp)
    cdef cnp.ndarray b_a = _c1d(b_dst, cnp.NPY_INTP, np.intp)
    nd = s_a.shape[0]
    nb = b_a.shape[0]
    if t_a.shape[0] != nd:
        raise ValueError("d_src and d_dst differ in length")
    cdef const Py_ssize_t* sp = <const Py_ssize_t*>cnp.PyArray_DATA(s_a)
    cdef const Py_ssize_t* tp = <const Py_ssize_t*>cnp.PyArray_DATA(t_a)
    cdef const Py_ssize_t* bp = <const Py_ssize_t*>cnp.PyArray_DATA(b_a)
    for j in range(nd):
        if not (0 <= sp[j] < row_doubles and 0 <= tp[j] < raw_width):
            raise IndexError("d_src / d_dst outside the row or the raw width")
    for j in range(nb):
        if not 0 <= bp[j] < raw_width:
            raise IndexError("b_dst outside the raw width")
    if not 0 <= packed_col < row_doubles:
        raise IndexError("packed_col outside the row")
    cdef cnp.npy_intp dims[2]
    dims[0] = n
    dims[1] = raw_width
    cdef cnp.ndarray raw = cnp.PyArray_EMPTY(2, dims, cnp.NPY_DOUBLE, 0)
    cdef double* out = <double*>cnp.PyArray_DATA(raw)
    cdef char* buf = <char*>malloc(total if total > 0 else 1)
    if buf == NULL:
        raise MemoryError()
    cdef Py_ssize_t off = 0
    cdef const double* rec
    cdef double* o
    cdef int64_t p
    try:
        for i in range(k):
            part = <object>PyList_GET_ITEM(resp, i)
            L = PyBytes_GET_SIZE(part)
            memcpy(buf + off, PyBytes_AS_STRING(part), L)
            off += L
        for i in range(n):
            rec = <const double*>(buf + i * row_doubles * 8)  # host order: little-endian only
            o = out + i * raw_width
            for j in range(nd):
                o[tp[j]] = rec[sp[j]]
            p = <int64_t>rec[packed_col]
            for j in range(nb):
                o[bp[j]] = <double>((p >> (6 * j)) & 63)
    finally:
        free(buf)
    return raw
