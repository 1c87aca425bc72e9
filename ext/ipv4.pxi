# The contract's IPv4 check in C (included by ext/_decode.pyx and ext/_fastpath.pyx): a dotted
# quad exactly as Python's ipaddress.IPv4Address accepts it. True means the address certainly
# passes contract.validate_click; False means "not a canonical dotted quad": the caller asks
# the Python check (IPv6 and everything else).

cdef inline int _digits(const char* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Value of an IPv4 octet s[a:b] as ipaddress accepts it (1-3 digits, no leading zero,
    <= 255), else -1."""
    cdef Py_ssize_t L = b - a, i
    cdef int v = 0
    if L < 1 or L > 3:
        return -1
    if L > 1 and s[a] == 48:
        return -1
    for i in range(a, b):
        if s[i] < 48 or s[i] > 57:
            return -1
        v = v * 10 + (s[i] - 48)
    return v if v <= 255 else -1


cdef inline bint _ipv4(const char* s, Py_ssize_t ln) noexcept nogil:
    cdef Py_ssize_t i, a = 0
    cdef int parts = 0
    for i in range(ln + 1):
        if i == ln or s[i] == 46:
            if _digits(s, a, i) < 0:
                return False
            parts += 1
            a = i + 1
    return parts == 4
