# The embedded counter store of the native feature kernel: tables of fixed-size C structs
# with an open-addressing index, eviction and the incremental sweep; included by
# ext/_kernel.pyx, twin: ext/reference.py.

# ------------------------------------------------------------------------------ state

ctypedef struct UserSt:
    uint64_t key
    int64_t last
    double c[4]
    double lg_n       # spec 4: Welford state of ln gap, as the session's
    double lg_mean
    double lg_m2

ctypedef struct SessSt:
    uint64_t key
    int64_t last
    int64_t first
    double c[2]
    double subsec     # gaps under SUBSEC_MS so far
    double lg_n       # Welford state of ln gap: count, mean, M2
    double lg_mean
    double lg_m2

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
    # active hours: bit k = a click in hour bucket[0] - k (the last IP_HOURS hours)
    uint32_t hmask
    # spec 3: client time zone (UTC offset, min) of the IP's newest click, and the decayed
    # count (tau I_TAU[2]) of its clicks whose zone differed from the newest click's before them
    int32_t tz
    double tzsw
    # spec 5: the decayed count (tau I_TAU[2], as c[2]) of its logged-in clicks
    double li
    uint8_t regs[4][HLL_M]

# spec 4: one struct for the three entity kinds (ad, (IP, ad), user agent; the key's hash
# namespace keeps them apart): decayed counts and two day HLLs (distinct sessions, distinct
# IPs) sharing one bucket.
ctypedef struct EntSt:
    uint64_t key
    int64_t last
    double c[E_NC]
    double z[2]
    double pz[2]
    int64_t bucket
    uint8_t v[2]
    uint8_t pv[2]
    uint8_t regs[2][HLL_M]


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
    # Work counters (never reset): dense entries looked at by the sweep and by eviction
    # samples, and index slots walked by deletes. Tests bound the work of one batch by them.
    uint64_t examined
    uint64_t probes


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
    t.examined = 0
    t.probes = 0
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
    t.examined += m
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
        t.probes += 1
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


cdef object _li_bytes(object li, Py_ssize_t n):
    """The clicks' logged_in flags as C-contiguous one-byte values, nonzero = logged in: a
    uint8 or bool array as it is (viewed, not copied, when C-contiguous), anything else as
    `li != 0`; None: 0 for each of the n clicks."""
    if li is None:
        return np.zeros(n, dtype=np.uint8)
    a = np.asarray(li)
    if a.dtype != np.uint8 and a.dtype != np.bool_:
        a = a != 0
    return np.ascontiguousarray(a).view(np.uint8)


cdef inline void _ip_reset(IpSt* e, int64_t t, int32_t tz, uint8_t li) noexcept nogil:
    cdef int j
    for j in range(3):
        e.c[j] = 1.0
    e.last = t
    e.tz = tz
    e.tzsw = 0.0
    e.li = 1.0 if li else 0.0
    e.bucket[0] = _floordiv(t, HOUR_MS)
    e.bucket[1] = _floordiv(t, DAY_MS)
    e.hmask = 0
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
    cdef Table ents
    # Per table (users, sessions, ips, entities): the newest ts seen (the sweep's clock) and
    # the clicks since the last sweep step. The tables are independent, so update_tables can
    # count one table (or two) while another thread counts the rest; with all four counted in
    # the same calls the clocks and counters stay equal, as with one shared clock.
    cdef int64_t now[4]
    cdef Py_ssize_t since_sweep[4]
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
        self.ents.slots = NULL
        self.ents.dense = NULL

    def __init__(self, Py_ssize_t capacity_hint=1024, Py_ssize_t sweep_every=16,
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
        _table_init(&self.ents, sizeof(EntSt), capacity_hint, max_keys)
        self.now[:] = [-(1 << 62), -(1 << 62), -(1 << 62), -(1 << 62)]
        self.sweep_every = sweep_every
        self.sweep_scan = sweep_scan
        self.since_sweep[:] = [0, 0, 0, 0]
        self.sweep_grace_ms = sweep_grace_ms
        self.closed = False

    def __dealloc__(self):
        _table_free(&self.users)
        _table_free(&self.sessions)
        _table_free(&self.ips)
        _table_free(&self.ents)

    def close(self):
        _table_free(&self.users)
        _table_free(&self.sessions)
        _table_free(&self.ips)
        _table_free(&self.ents)
        self.closed = True

    def __len__(self):
        return self.users.count + self.sessions.count + self.ips.count + self.ents.count

    @property
    def evicted(self):
        """Entries evicted at the cap (all tables)."""
        return self.users.evicted + self.sessions.evicted + self.ips.evicted + self.ents.evicted

    def work(self):
        """(entries examined, index slots probed) by the sweep, eviction and deletes so far,
        all tables: the store's bookkeeping work, to bound what one batch may cost."""
        return (self.users.examined + self.sessions.examined + self.ips.examined
                + self.ents.examined,
                self.users.probes + self.sessions.probes + self.ips.probes + self.ents.probes)

    def stats(self):
        cdef size_t b = _table_bytes(&self.users) + _table_bytes(&self.sessions) + \
            _table_bytes(&self.ips) + _table_bytes(&self.ents)
        keys = len(self)
        return {"users": self.users.count, "sessions": self.sessions.count,
                "ips": self.ips.count, "entities": self.ents.count, "keys": keys, "bytes": b,
                "max_keys": self.users.max_count, "evicted": self.evicted,
                "bytes_per_key": (b / keys) if keys else 0.0,
                "table_bytes": {"user": _table_bytes(&self.users),
                                "session": _table_bytes(&self.sessions),
                                "ip": _table_bytes(&self.ips),
                                "entity": _table_bytes(&self.ents)},
                "entry_bytes": {"user": sizeof(UserSt), "session": sizeof(SessSt),
                                "ip": sizeof(IpSt), "entity": sizeof(EntSt),
                                "slot": sizeof(Slot)}}

    def sweep(self, Py_ssize_t budget=-1):
        """Free up to `budget` entries' worth of expired keys per table (all when -1)."""
        self._sweep(budget)

    cdef void _sweep(self, Py_ssize_t budget) noexcept nogil:
        _sweep_table(&self.users, self.now[0] - U_TTL - self.sweep_grace_ms, budget)
        _sweep_table(&self.sessions, self.now[1] - S_TTL - self.sweep_grace_ms, budget)
        _sweep_table(&self.ips, self.now[2] - I_TTL - self.sweep_grace_ms, budget)
        _sweep_table(&self.ents, self.now[3] - E_TTL - self.sweep_grace_ms, budget)

    def update(self, ts, uh, sh, ih, hll, tz=None, eh=None, li=None):
        """Count one batch of clicks in order -> raw counters float64 (n, RAW_WIDTH).
        tz: the clicks' tz_offset_min (None: 0 for every click); eh: uint64 (n, 3) entity keys
        (ad, (IP, ad), user agent; 0 = absent), None: no click has any; li: the clicks'
        logged_in flags (uint8 0/1; None: 0 for every click)."""
        return self.update_tables(ts, uh, sh, ih, hll, None, 15, tz, eh, li)

    def update_tables(self, ts, uh, sh, ih, hll, out=None, int tables=15, tz=None, eh=None,
                      li=None):
        """update() for some of the tables, into `out` (float64 (n, RAW_WIDTH), made when None),
        without the GIL. tables: bit mask, 1 users, 2 sessions, 4 ips, 8 entities (their raw
        columns: featurespec.RAW_SPANS). The tables are independent: counting a batch with
        tables=3 and tables=12 (in either order, or at the same time from two threads) equals
        update(). Every batch must go to every table, in log order, before the next batch goes
        to that table."""
        if self.closed:
            raise RuntimeError("EmbeddedStore is closed")
        if tables < 0 or tables > 15:
            raise ValueError("update_tables: tables is a bit mask in 0..15")
        cdef const int64_t[::1] tsv = np.ascontiguousarray(ts, dtype=np.int64)
        cdef const uint64_t[::1] u = np.ascontiguousarray(uh, dtype=np.uint64)
        cdef const uint64_t[::1] s = np.ascontiguousarray(sh, dtype=np.uint64)
        cdef const uint64_t[::1] ip = np.ascontiguousarray(ih, dtype=np.uint64)
        cdef const uint8_t[:, ::1] hl = np.ascontiguousarray(hll, dtype=np.uint8)
        cdef Py_ssize_t n = tsv.shape[0]
        cdef const int32_t[::1] zv = (np.zeros(n, dtype=np.int32) if tz is None
                                      else np.ascontiguousarray(tz, dtype=np.int32))
        cdef const uint64_t[:, ::1] ev = (np.zeros((n, 3), dtype=np.uint64) if eh is None
                                          else np.ascontiguousarray(eh, dtype=np.uint64))
        cdef const uint8_t[::1] lv = _li_bytes(li, n)
        if (u.shape[0] != n or s.shape[0] != n or ip.shape[0] != n or hl.shape[0] != n
                or zv.shape[0] != n or ev.shape[0] != n or lv.shape[0] != n):
            raise ValueError("update: ts, uh, sh, ih, hll, tz, eh and li must have the same "
                             "length")
        if n and hl.shape[1] != 4:
            raise ValueError("update: hll must have shape (n, 4)")
        if n and ev.shape[1] != 3:
            raise ValueError("update: eh must have shape (n, 3)")
        if out is None:
            out = np.empty((n, RAW_WIDTH), dtype=np.float64)
        cdef double[:, ::1] o = out
        if o.shape[0] != n or o.shape[1] != RAW_WIDTH:
            raise ValueError(f"update_tables: out must be float64 (n, {RAW_WIDTH}), "
                             "C-contiguous")
        cdef int rc = 0
        if n == 0:
            return out
        with nogil:
            if tables & 1:
                rc = self._count_users(&tsv[0], &u[0], n, &o[0, 0])
            if rc == 0 and tables & 2:
                rc = self._count_sessions(&tsv[0], &s[0], n, &o[0, 0])
            if rc == 0 and tables & 4:
                rc = self._count_ips(&tsv[0], &ip[0], &hl[0, 0], &zv[0], &lv[0], n,
                                     &o[0, 0])
            if rc == 0 and tables & 8:
                rc = self._count_entities(&tsv[0], &ev[0, 0], &ip[0], &hl[0, 0], n, &o[0, 0])
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
        cdef double gap, x, delta
        cdef double* row
        cdef int64_t t, d
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
                ue.lg_n = 0.0
                ue.lg_mean = 0.0
                ue.lg_m2 = 0.0
                gap = -1.0
            else:
                d = t - ue.last if t > ue.last else 0
                gap = d / 1000.0
                for j in range(4):
                    ue.c[j] = ue.c[j] * exp(-gap / U_TAU[j]) + 1.0
                if t > ue.last:
                    ue.last = t
                if gap <= U_LG_MAX:
                    x = log(gap if d > 0 else LOG_GAP_FLOOR)
                    ue.lg_n = ue.lg_n + 1.0
                    delta = x - ue.lg_mean
                    ue.lg_mean = ue.lg_mean + delta / ue.lg_n
                    ue.lg_m2 = ue.lg_m2 + delta * (x - ue.lg_mean)
            for j in range(4):
                row[j] = ue.c[j]
            row[4] = gap
            row[5] = ue.lg_n
            row[6] = ue.lg_mean
            row[7] = ue.lg_m2
            self._after(0, &self.users, U_TTL)
        return 0

    cdef int _count_sessions(self, const int64_t* ts, const uint64_t* keys, Py_ssize_t n,
                             double* out) noexcept nogil:
        cdef Py_ssize_t i
        cdef SessSt* se
        cdef double gap, x, delta
        cdef double* row
        cdef int64_t t, d
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
                se.subsec = 0.0
                se.lg_n = 0.0
                se.lg_mean = 0.0
                se.lg_m2 = 0.0
                gap = -1.0
            else:
                d = t - se.last if t > se.last else 0
                gap = d / 1000.0
                for j in range(2):
                    se.c[j] = se.c[j] * exp(-gap / S_TAU[j]) + 1.0
                if t > se.last:
                    se.last = t
                if d < SUBSEC_MS:
                    se.subsec = se.subsec + 1.0
                x = log(gap if d > 0 else LOG_GAP_FLOOR)
                se.lg_n = se.lg_n + 1.0
                delta = x - se.lg_mean
                se.lg_mean = se.lg_mean + delta / se.lg_n
                se.lg_m2 = se.lg_m2 + delta * (x - se.lg_mean)
            row[R_S + 0] = se.c[0]
            row[R_S + 1] = se.c[1]
            row[R_S + 2] = gap
            row[R_S + 3] = (t - se.first if t > se.first else 0) / 1000.0
            row[R_S + 4] = se.subsec
            row[R_S + 5] = se.lg_n
            row[R_S + 6] = se.lg_mean
            row[R_S + 7] = se.lg_m2
            self._after(1, &self.sessions, S_TTL)
        return 0

    cdef int _count_ips(self, const int64_t* ts, const uint64_t* keys, const uint8_t* hll,
                        const int32_t* tzs, const uint8_t* lis, Py_ssize_t n,
                        double* out) noexcept nogil:
        cdef Py_ssize_t i
        cdef IpSt* ie
        cdef double gap, day
        cdef double* row
        cdef const uint8_t* hl
        cdef int64_t t
        cdef int j, idx, rank, r, w
        cdef int64_t b, win, hk
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
                _ip_reset(ie, t, tzs[i], lis[i])
            else:
                gap = (t - ie.last if t > ie.last else 0) / 1000.0
                for j in range(2):
                    ie.c[j] = ie.c[j] * exp(-gap / I_TAU[j]) + 1.0
                # the day decay, once for the day count, the zone switches and the logged-in
                # count (the same factor each would compute)
                day = exp(-gap / I_TAU[2])
                ie.c[2] = ie.c[2] * day + 1.0
                ie.tzsw = ie.tzsw * day + (1.0 if tzs[i] != ie.tz else 0.0)
                ie.li = ie.li * day + (1.0 if lis[i] else 0.0)
                if t >= ie.last:
                    ie.tz = tzs[i]
                if t > ie.last:
                    ie.last = t
            row[R_I] = ie.c[0]
            row[R_I + 1] = ie.c[1]
            row[R_I + 2] = ie.c[2]
            # active hours, anchored at the hour bucket of the IP's newest click so far
            hk = _floordiv(t, HOUR_MS) - ie.bucket[0]
            if hk > 0:
                ie.hmask = 1 if hk >= IP_HOURS else (((ie.hmask << hk) & HOURS_FULL) | 1)
            elif -hk < IP_HOURS:
                ie.hmask |= (<uint32_t>1) << (-hk)
            row[R_I + 3] = __builtin_popcount(ie.hmask)
            row[R_I + 24] = ie.tzsw
            row[R_I + 25] = ie.li
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
                    row[R_I + 4 + 5 * j] = ie.z[j]
                    row[R_I + 5 + 5 * j] = ie.v[j]
                    row[R_I + 6 + 5 * j] = ie.pz[j]
                    row[R_I + 7 + 5 * j] = ie.pv[j]
                    row[R_I + 8 + 5 * j] = frac
            self._after(2, &self.ips, I_TTL)
        return 0

    cdef int _count_entities(self, const int64_t* ts, const uint64_t* keys, const uint64_t* ih,
                             const uint8_t* hll, Py_ssize_t n, double* out) noexcept nogil:
        """The entity table: per click its ad, (IP, ad) and user-agent keys, in that order
        (keys: n x 3; 0 = absent: the absent values, the table untouched)."""
        cdef Py_ssize_t i
        cdef EntSt* e
        cdef double gap, frac
        cdef double* row
        cdef int64_t t, b
        cdef int j, k, r, idx[2], rank[2]
        cdef uint8_t ii, ir
        cdef uint64_t key
        for i in range(n):
            t = ts[i]
            if i + PF_SLOT < n:
                for k in range(3):
                    if keys[3 * (i + PF_SLOT) + k]:
                        _prefetch_slot(&self.ents, keys[3 * (i + PF_SLOT) + k])
            if i + PF_ENTRY < n:
                for k in range(3):
                    if keys[3 * (i + PF_ENTRY) + k]:
                        _prefetch_entry(&self.ents, keys[3 * (i + PF_ENTRY) + k], 3)
            self._tick(3, t)
            idx[0] = hll[4 * i] & (HLL_M - 1)
            rank[0] = hll[4 * i + 1]
            _hll_index_rank(ih[i], &ii, &ir)
            idx[1] = ii
            rank[1] = ir
            for k in range(3):
                row = out + i * RAW_WIDTH + R_E + E_W * k
                key = keys[3 * i + k]
                if key == 0:
                    for j in range(E_NC):
                        row[j] = 0.0
                    for j in range(2):
                        row[E_NC + 5 * j] = HLL_M
                        row[E_NC + 1 + 5 * j] = HLL_M
                        row[E_NC + 2 + 5 * j] = HLL_M
                        row[E_NC + 3 + 5 * j] = HLL_M
                        row[E_NC + 4 + 5 * j] = 0.0
                    continue
                e = <EntSt*>_lookup(&self.ents, key)
                if e == NULL or t - e.last > E_TTL:
                    if e == NULL:
                        e = <EntSt*>_insert(&self.ents, key)
                        if e == NULL:
                            return -1
                    for j in range(E_NC):
                        e.c[j] = 1.0
                    e.last = t
                    e.bucket = _floordiv(t, DAY_MS)
                    for j in range(2):
                        e.z[j] = HLL_M
                        e.pz[j] = HLL_M
                        e.v[j] = HLL_M
                        e.pv[j] = HLL_M
                    memset(e.regs, 0, sizeof(e.regs))
                else:
                    gap = (t - e.last if t > e.last else 0) / 1000.0
                    for j in range(E_NC):
                        e.c[j] = e.c[j] * exp(-gap / E_TAU[j]) + 1.0
                    if t > e.last:
                        e.last = t
                for j in range(E_NC):
                    row[j] = e.c[j]
                b = _floordiv(t, DAY_MS)
                if b > e.bucket:
                    for j in range(2):
                        if b == e.bucket + 1:
                            e.pz[j] = e.z[j]
                            e.pv[j] = e.v[j]
                        else:
                            e.pz[j] = HLL_M
                            e.pv[j] = HLL_M
                        e.z[j] = HLL_M
                        e.v[j] = HLL_M
                        memset(e.regs[j], 0, HLL_M)
                    e.bucket = b
                frac = <double>(t - e.bucket * DAY_MS) / <double>DAY_MS
                if frac < 0.0:
                    frac = 0.0
                elif frac > 1.0:
                    frac = 1.0
                for j in range(2):
                    # j 0: distinct sessions (the session's register); 1: distinct IPs
                    r = e.regs[j][idx[j]]
                    if rank[j] > r:
                        e.z[j] = e.z[j] - ldexp(1.0, -r) + ldexp(1.0, -rank[j])
                        if r == 0:
                            e.v[j] -= 1
                        e.regs[j][idx[j]] = <uint8_t>rank[j]
                    row[E_NC + 5 * j] = e.z[j]
                    row[E_NC + 1 + 5 * j] = e.v[j]
                    row[E_NC + 2 + 5 * j] = e.pz[j]
                    row[E_NC + 3 + 5 * j] = e.pv[j]
                    row[E_NC + 4 + 5 * j] = frac
            self._after(3, &self.ents, E_TTL)
        return 0


def max_keys_for_bytes(size_t budget):
    """The largest per-table cap whose four tables (dense entries plus an index sized for
    the cap) fit in `budget` bytes."""
    cdef size_t per = sizeof(UserSt) + sizeof(SessSt) + sizeof(IpSt) + sizeof(EntSt)
    cdef size_t n = 64, k, idx, best = 0
    while n <= (<size_t>1 << 33):
        k = n * 7 // 10
        idx = 4 * n * sizeof(Slot)
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
    t.examined += <uint64_t>k
