# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native framing and decoding of the daemon's requests (twin: ext/decode.py).

scan(data, pos, ...) walks the msgpack messages in `data` from `pos`, in order, without
building a Python object for anything but the clicks it hands on:

- every message is framed by a non-recursive skipper that bounds nesting depth (a message
  nested deeper than `max_depth` lists/maps is reported as TOO_DEEP, with its end, so the
  connection answers that request alone and goes on);
- a message of the hot shape `[0, msgid, "score", [{click}]]` whose click passes the contract
  (the same rules as slidr.contract.validate_click, the IP through the caller's cached check)
  becomes the click's dict (equal to what msgpack would decode) and one batcher item
  `(click, conn, msgid, t_arr, deadline, True)` appended to `items` (the sixth element says
  the click passed the contract here: the batcher does not check it again);
- anything else stops the scan and is reported with its extent: the caller decodes that one
  message with msgpack and takes the general path (which names every contract error), then
  scans on. So the error codes and messages for bad input are the general path's, by
  construction.

Result: (status, pos, end). status: NEED_MORE (the message at pos is incomplete), GENERAL
(a complete message at [pos, end) for the general path), TOO_DEEP ([pos, end) nests too deep),
INVALID (a byte at pos..end that is never msgpack), TOO_LARGE (a message longer than max_msg),
ROOM (the caller's in-flight room is used up; the message at pos is not taken).
"""

from cpython.dict cimport PyDict_New, PyDict_SetItem
from cpython.list cimport PyList_Append
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from slidr.contract import DEVICE_CODE as _DEVICE_CODE_PY
from slidr.contract import MAX_ID_LEN as _MAX_ID_LEN_PY
from slidr.contract import MAX_UA_LEN as _MAX_UA_LEN_PY
from slidr.contract import TS_MAX as _TS_MAX_PY
from slidr.contract import TS_MIN as _TS_MIN_PY
from slidr.contract import TZ_MAX as _TZ_MAX_PY
from slidr.contract import TZ_MIN as _TZ_MIN_PY

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    object PyLong_FromLongLong(long long v)

NEED_MORE = 0
GENERAL = 1
TOO_DEEP = 2
INVALID = 3
TOO_LARGE = 4
ROOM = 5

cdef dict _DEVICE_CODE = _DEVICE_CODE_PY
cdef Py_ssize_t MAX_ID_LEN = _MAX_ID_LEN_PY
cdef Py_ssize_t MAX_UA_LEN = _MAX_UA_LEN_PY
cdef long long TS_MIN = _TS_MIN_PY
cdef long long TS_MAX = _TS_MAX_PY  # exclusive
cdef long long TZ_MIN = _TZ_MIN_PY
cdef long long TZ_MAX = _TZ_MAX_PY
DEF MAX_STACK = 64

# ------------------------------------------------------------------ framing


cdef inline uint64_t _be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef int _header(const uint8_t* p, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t* hlen,
                 uint64_t* payload, uint64_t* items) noexcept nogil:
    """Header of the object at pos: its length, the bytes that follow it (str/bin/ext/scalars)
    and the objects it contains (arrays: n, maps: 2n). -1: incomplete, -2: never msgpack,
    0: scalar or bytes, 1: container."""
    cdef uint8_t b = p[pos]
    cdef Py_ssize_t left = n - pos
    hlen[0] = 1
    payload[0] = 0
    items[0] = 0
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3:
        return 0
    if b <= 0x8f:
        items[0] = 2 * (b & 0x0f)
        return 1
    if b <= 0x9f:
        items[0] = b & 0x0f
        return 1
    if b <= 0xbf:
        payload[0] = b & 0x1f
        return 0
    if b == 0xc1:
        return -2
    cdef int w
    if b == 0xc4 or b == 0xc5 or b == 0xc6 or b == 0xd9 or b == 0xda or b == 0xdb:
        w = 1 if (b == 0xc4 or b == 0xd9) else (2 if (b == 0xc5 or b == 0xda) else 4)
        if left < 1 + w:
            return -1
        hlen[0] = 1 + w
        payload[0] = _be(p + pos + 1, w)
        return 0
    if b == 0xc7 or b == 0xc8 or b == 0xc9:
        w = 1 if b == 0xc7 else (2 if b == 0xc8 else 4)
        if left < 1 + w:
            return -1
        hlen[0] = 1 + w
        payload[0] = _be(p + pos + 1, w) + 1
        return 0
    if b == 0xca:
        payload[0] = 4
        return 0
    if b == 0xcb:
        payload[0] = 8
        return 0
    if 0xcc <= b <= 0xcf:
        payload[0] = 1 << (b - 0xcc)
        return 0
    if 0xd0 <= b <= 0xd3:
        payload[0] = 1 << (b - 0xd0)
        return 0
    if 0xd4 <= b <= 0xd8:
        payload[0] = (1 << (b - 0xd4)) + 1
        return 0
    # 0xdc..0xdf: array16/32, map16/32
    w = 2 if (b == 0xdc or b == 0xde) else 4
    if left < 1 + w:
        return -1
    hlen[0] = 1 + w
    items[0] = _be(p + pos + 1, w) * (2 if b >= 0xde else 1)
    return 1


cdef class FrameState:
    """Where the framing of an incomplete message stopped, so that the next read resumes there
    instead of walking the message again from its first byte (a client trickling a large
    message byte by byte costs O(size), not O(size^2)). Valid for the message that starts the
    next buffer handed to scan() with this state."""
    cdef public bint active
    cdef Py_ssize_t off  # offset from the message start of the first object not yet read
    cdef int top
    cdef bint deep
    cdef uint64_t rem
    cdef uint64_t stack[MAX_STACK + 2]

    def __cinit__(self):
        self.active = False

    def reset(self):
        self.active = False


cdef Py_ssize_t _frame_end(const uint8_t* p, Py_ssize_t n, Py_ssize_t start, int max_depth,
                           int* too_deep, Py_ssize_t* bad, FrameState st) noexcept:
    """End of the message at start; -1: incomplete; -2: a byte that is never msgpack (at
    bad[0]). Sets too_deep when lists/maps nest deeper than max_depth (the end is still found:
    past the bound only a count of objects still to read is kept, no stack). With a state
    (`st`, may be None): resumes where an earlier call on the same message stopped, and saves
    where this one stops when the message is incomplete."""
    cdef uint64_t stack[MAX_STACK + 2]
    cdef int top = 0, i
    cdef uint64_t rem = 0  # counter mode, once too deep
    cdef Py_ssize_t hlen, pos = start
    cdef uint64_t payload, items
    cdef int kind
    if max_depth > MAX_STACK:
        max_depth = MAX_STACK
    stack[0] = 1
    if st is not None and st.active:
        pos = start + st.off
        top = st.top
        too_deep[0] = st.deep
        rem = st.rem
        for i in range(top + 1):
            stack[i] = st.stack[i]
        st.active = False
    while True:
        if pos >= n:
            break
        kind = _header(p, n, pos, &hlen, &payload, &items)
        if kind == -1:
            break
        if kind == -2:
            bad[0] = pos
            return -2
        if <uint64_t>(n - pos) < <uint64_t>hlen + payload:
            break
        pos += hlen + <Py_ssize_t>payload
        if too_deep[0]:
            rem = rem - 1 + items
            if rem == 0:
                return pos
            continue
        stack[top] -= 1
        if kind == 1:
            if top + 1 > max_depth:
                too_deep[0] = 1
                rem = items
                for i in range(top + 1):
                    rem += stack[i]
                if rem == 0:
                    return pos
                continue
            if items > 0:
                top += 1
                stack[top] = items
        while stack[top] == 0:
            if top == 0:
                return pos
            top -= 1
    # incomplete: remember how far this message is framed
    if st is not None:
        st.active = True
        st.off = pos - start
        st.top = top
        st.deep = too_deep[0]
        st.rem = rem
        for i in range(top + 1):
            st.stack[i] = stack[i]
    return -1


# ------------------------------------------------------------------ the hot shape

cdef object K_CLICK_ID = "click_id"
cdef object K_TS = "ts"
cdef object K_SESSION = "session_id"
cdef object K_USER = "user_id"
cdef object K_IP = "ip"
cdef object K_DEVICE = "device"
cdef object K_LOGGED = "logged_in"
cdef object K_TZ = "tz_offset_min"
cdef object K_UA = "user_agent"
cdef object K_AD = "ad_id"


cdef inline bint _str_at(const uint8_t* p, Py_ssize_t end, Py_ssize_t* pos, const char** s,
                         Py_ssize_t* ln) noexcept nogil:
    cdef Py_ssize_t q = pos[0]
    if q >= end:
        return False
    cdef uint8_t b = p[q]
    cdef Py_ssize_t h, L
    if 0xa0 <= b <= 0xbf:
        h = 1
        L = b & 0x1f
    elif b == 0xd9:
        if q + 2 > end:
            return False
        h = 2
        L = p[q + 1]
    elif b == 0xda:
        if q + 3 > end:
            return False
        h = 3
        L = <Py_ssize_t>_be(p + q + 1, 2)
    else:
        return False
    if q + h + L > end:
        return False
    s[0] = <const char*>(p + q + h)
    ln[0] = L
    pos[0] = q + h + L
    return True


cdef inline bint _int_at(const uint8_t* p, Py_ssize_t end, Py_ssize_t* pos,
                         long long* v) noexcept nogil:
    """An integer msgpack object (not bool) that fits a signed 64-bit value."""
    cdef Py_ssize_t q = pos[0]
    if q >= end:
        return False
    cdef uint8_t b = p[q]
    cdef uint64_t u
    cdef int w
    if b <= 0x7f:
        v[0] = b
        pos[0] = q + 1
        return True
    if b >= 0xe0:
        v[0] = <long long>(<signed char>b)
        pos[0] = q + 1
        return True
    if 0xcc <= b <= 0xcf:
        w = 1 << (b - 0xcc)
        if q + 1 + w > end:
            return False
        u = _be(p + q + 1, w)
        if u > <uint64_t>0x7fffffffffffffff:
            return False
        v[0] = <long long>u
        pos[0] = q + 1 + w
        return True
    if 0xd0 <= b <= 0xd3:
        w = 1 << (b - 0xd0)
        if q + 1 + w > end:
            return False
        u = _be(p + q + 1, w)
        if w == 1:
            v[0] = <long long>(<signed char>u)
        elif w == 2:
            v[0] = <long long>(<short>u)
        elif w == 4:
            v[0] = <long long>(<int>u)
        else:
            v[0] = <long long>u
        pos[0] = q + 1 + w
        return True
    return False


cdef inline bint _eq(const char* s, Py_ssize_t ln, const char* lit, Py_ssize_t litlen) noexcept nogil:
    cdef Py_ssize_t i
    if ln != litlen:
        return False
    for i in range(ln):
        if s[i] != lit[i]:
            return False
    return True


include "ipv4.pxi"


cdef object _ustr(const char* s, Py_ssize_t ln):
    """str from UTF-8, or None when the bytes are not UTF-8 (the general path then refuses the
    message as msgpack does)."""
    try:
        return PyUnicode_DecodeUTF8(s, ln, "strict")
    except UnicodeDecodeError:
        return None


cdef object _hot_click(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, dict ip_ok,
                       object ip_check, uint64_t* msgid):
    """The click dict of a `[0, msgid, "score", [{click}]]` message at [pos, end) whose click
    passes the contract; None for any other message."""
    if end - pos < 10 or p[pos] != 0x94 or p[pos + 1] != 0x00:
        return None
    cdef Py_ssize_t q = pos + 2
    cdef uint8_t b = p[q]
    if b <= 0x7f:
        msgid[0] = b
        q += 1
    elif b == 0xcc or b == 0xcd or b == 0xce:
        q += 1
        if q + (1 << (b - 0xcc)) > end:
            return None
        msgid[0] = _be(p + q, 1 << (b - 0xcc))
        q += 1 << (b - 0xcc)
    else:
        return None
    cdef const char* s
    cdef Py_ssize_t ln
    if not _str_at(p, end, &q, &s, &ln) or not _eq(s, ln, "score", 5):
        return None
    if q + 2 > end or p[q] != 0x91:
        return None
    q += 1
    b = p[q]
    cdef Py_ssize_t nkeys
    if 0x80 <= b <= 0x8f:
        nkeys = b & 0x0f
        q += 1
    else:
        return None
    cdef dict d = PyDict_New()
    cdef unsigned seen = 0, bit
    cdef Py_ssize_t i
    cdef long long iv
    cdef object key, val, ok
    cdef Py_ssize_t L
    cdef int field
    cdef bint li = False, has_uid = False
    for i in range(nkeys):
        if not _str_at(p, end, &q, &s, &ln):
            return None
        # which field
        if _eq(s, ln, "click_id", 8):
            field = 0; key = K_CLICK_ID
        elif _eq(s, ln, "ts", 2):
            field = 1; key = K_TS
        elif _eq(s, ln, "session_id", 10):
            field = 2; key = K_SESSION
        elif _eq(s, ln, "user_id", 7):
            field = 3; key = K_USER
        elif _eq(s, ln, "ip", 2):
            field = 4; key = K_IP
        elif _eq(s, ln, "device", 6):
            field = 5; key = K_DEVICE
        elif _eq(s, ln, "logged_in", 9):
            field = 6; key = K_LOGGED
        elif _eq(s, ln, "tz_offset_min", 13):
            field = 7; key = K_TZ
        elif _eq(s, ln, "user_agent", 10):
            field = 8; key = K_UA
        elif _eq(s, ln, "ad_id", 5):
            field = 9; key = K_AD
        else:
            return None  # another field (or deadline_ms): the general path
        bit = 1u << field
        if seen & bit:
            return None  # a repeated key: the general path decides as msgpack does
        seen |= bit
        if q >= end:
            return None
        b = p[q]
        if field == 1 or field == 7:  # ts, tz_offset_min
            if field == 7 and b == 0xc0:
                val = None
                q += 1
            else:
                if not _int_at(p, end, &q, &iv):
                    return None
                if field == 1 and not (TS_MIN <= iv < TS_MAX):
                    return None
                if field == 7 and not (TZ_MIN <= iv <= TZ_MAX):
                    return None
                val = PyLong_FromLongLong(iv)
        elif field == 6:  # logged_in
            if b == 0xc2:
                val = False
            elif b == 0xc3:
                val = True
                li = True
            else:
                return None
            q += 1
        else:  # strings
            if b == 0xc0 and (field == 3 or field == 8 or field == 9):
                val = None
                q += 1
            else:
                if not _str_at(p, end, &q, &s, &ln):
                    return None
                if field == 4:  # ip
                    val = _ustr(s, ln)
                    if val is None:
                        return None
                    if not _ipv4(s, ln):
                        ok = ip_ok.get(val)
                        if ok is None:
                            ok = ip_check(val)
                        if not ok:
                            return None
                elif field == 5:  # device
                    val = _ustr(s, ln)
                    if val is None or val not in _DEVICE_CODE:
                        return None
                else:
                    val = _ustr(s, ln)
                    if val is None:
                        return None
                    L = PyUnicode_GET_LENGTH(val)
                    if field == 0 or field == 2:
                        if L < 1 or L > MAX_ID_LEN:
                            return None
                    elif field == 8:
                        if L > MAX_UA_LEN:
                            return None
                    elif L > MAX_ID_LEN:
                        return None
                    if field == 3 and L > 0:
                        has_uid = True
        PyDict_SetItem(d, key, val)
    if q != end:
        return None
    if (seen & 0x77) != 0x77:  # click_id, ts, session_id, ip, device, logged_in
        return None
    if li and not has_uid:
        return None
    return d


def scan(const uint8_t[::1] data, Py_ssize_t pos, Py_ssize_t max_msg, int max_depth,
         dict ip_ok not None, object ip_check, object conn, double t_arr, double deadline,
         list items not None, Py_ssize_t room, FrameState state=None):
    """See the module docstring. Appends one item per hot click to `items` (at most `room`);
    -> (status, pos, end). `data`: bytes or bytearray. `state`: see FrameState (the caller
    keeps one per connection and hands the incomplete message back at the start of the next
    buffer)."""
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return NEED_MORE, pos, pos
    cdef const uint8_t* p = &data[0]
    cdef Py_ssize_t end, bad = 0
    cdef int deep
    cdef uint64_t msgid = 0
    cdef object click, t_obj = t_arr, dl_obj = deadline
    cdef tuple it
    while pos < n:
        deep = 0
        end = _frame_end(p, n, pos, max_depth, &deep, &bad, state)
        if end == -2:
            return INVALID, pos, bad + 1
        if end == -1:
            if n - pos > max_msg:
                return TOO_LARGE, pos, n
            return NEED_MORE, pos, n
        if end - pos > max_msg:
            return TOO_LARGE, pos, end
        if deep:
            return TOO_DEEP, pos, end
        click = _hot_click(p, pos, end, ip_ok, ip_check, &msgid)
        if click is None:
            return GENERAL, pos, end
        if room <= 0:
            return ROOM, pos, end
        room -= 1
        it = (click, conn, PyLong_FromLongLong(<long long>msgid), t_obj, dl_obj, True)
        PyList_Append(items, it)
        pos = end
    return NEED_MORE, pos, pos


def frame_end(const uint8_t[::1] data, Py_ssize_t pos, int max_depth):
    """(end or -1 incomplete or -2 invalid, too_deep): the framing alone, for tests and fuzz."""
    cdef int deep = 0
    cdef Py_ssize_t bad = 0
    if data.shape[0] == 0:
        return -1, False
    cdef Py_ssize_t end = _frame_end(&data[0], data.shape[0], pos, max_depth, &deep, &bad, None)
    return end, bool(deep)
