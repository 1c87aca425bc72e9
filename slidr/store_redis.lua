-- slidr counter store, one batch of clicks per call (see slidr/store_redis.py, docs/kernel.md).
-- Twin of ext/reference.py: the same counter math in Lua 5.1 doubles, in the same operation
-- order, so the raw counters equal the embedded store's.
--
-- KEYS: the batch's distinct state keys, users first, then sessions, then IPs, then entities
--       (ads, (IP, ad) pairs and user agents: one table, the key hash's namespace keeps the
--       kinds apart). The client deduplicates, so each key is named, read and written once
--       per batch, however many clicks (or kinds of one click) use it.
-- ARGV[1]: n * 41 bytes, per click "<dBBBBBBI4I4I4I4I4I4hB": ts (epoch ms), session HLL
--          register, session rank, user HLL register, user rank, IP register, IP rank (of the
--          IP key's hash: the entities' distinct-IP sketches), the 1-based positions of the
--          click's user key among the users, its session among the sessions, its IP among
--          the IPs, and of its ad, (IP, ad) and user-agent keys among the entities (0: the
--          click has no such key: the absent values, nothing read or written), the click's
--          client time zone (tz_offset_min) and its logged_in flag (0 or 1).
-- ARGV[2..5]: physical TTL in ms of user, session, IP and entity keys (the logical TTL plus
--          the client's slack plus the kind's refresh period, see "Physical TTLs" below).
-- ARGV[6], ARGV[7], ARGV[8]: the number of user, session and IP keys in KEYS (the rest are
--          entities).
-- Returns n bulk strings, one per click: the click's raw counters in 568 bytes (see ROW
-- below; slidr/store_redis.py expands them to the RAW layout of slidr/featurespec.py).
--
-- State blobs: user "<dddddddd" c60 c600 c3600 c86400 last lg_n lg_mean lg_m2 (a user blob of
-- another size, spec 3's 40 bytes, starts afresh); session "<dddddddd" c60 c3600 last
-- first subsec lg_n lg_mean lg_m2; ip "<ddddddd" c60 c3600 c86400 last tz tz_switches
-- logged_in (what changes on every click, contiguous), "<dd" hours_mask hours (rarely), "<dd"
-- bucket_1h bucket_1d, then 4 x "<dddd" z v pz pv, then 4 x 32 one-byte HLL registers, then
-- one layout byte (LAYOUT): 345 bytes. An IP blob of another size or layout byte (an older
-- spec: spec 4's 337 bytes with layout byte 1, or spec 3's earlier field order, 336 bytes)
-- starts afresh. Entity "<ddddd" c60 c3600 c86400 c604800 last
-- (what changes on every click), "<d" day bucket, 2 x "<dddd" z v pz pv (distinct sessions,
-- distinct IPs), then 2 x 32 one-byte registers, then one layout byte (E_LAYOUT): 177 bytes.
-- An entity blob of another size or layout byte (the 169-byte one without c604800) starts
-- afresh.
-- Constants below are filled in from slidr.featurespec when the script is loaded.
--
-- Speed (the script is most of the store's cost): every key is decoded once into a Lua table,
-- mutated in place click by click and encoded once; a missing key starts as a state whose
-- "last" is -inf, so the logical-expiry test resets it without a separate branch; powers of two
-- are 2 ^ -r (pow: exact); exp is skipped when dt == 0 (exp(-0) is
-- exactly 1, so c * 1 + 1 == c + 1); each click's outputs go to one struct.pack, in
-- 23 doubles instead of 32 (Lua hashes every byte of every string it makes).
--
-- Physical TTLs (memory bound only; logical expiry is the "last" stamp in each blob, tested
-- above, exactly as the embedded store does): a key's Redis TTL is set (SET ... PX) only when
-- its "last" stamp enters a new refresh period (REF_* ms of click time: a new key, a reset
-- state, or a click REF_* after the period of the last refresh); every other write is
-- SET ... KEEPTTL, which skips Redis's expire-dict delete + insert. The TTL last set covers the
-- key until (end of the period of its "last") + logical TTL + slack, because the client's
-- ARGV TTLs carry REF_* on top of logical TTL + slack; keys outlive their logical expiry by at
-- most slack + REF_*. (The cluster variant, slidr/redis_split.py, skips every write to a key
-- its node does not hold.)

local U_TAU1, U_TAU2, U_TAU3, U_TAU4 = __USER_TAUS__
local S_TAU1, S_TAU2 = __SESSION_TAUS__
local I_TAU1, I_TAU2, I_TAU3 = __IP_TAUS__
local E_TAU1, E_TAU2, E_TAU3, E_TAU4 = __ENTITY_TAUS__
local U_TTL, S_TTL, I_TTL, E_TTL = __USER_TTL_MS__, __SESSION_TTL_MS__, __IP_TTL_MS__,
                                   __ENTITY_TTL_MS__
local U_REF, S_REF, I_REF, E_REF = __USER_REFRESH_MS__, __SESSION_REFRESH_MS__,
                                   __IP_REFRESH_MS__, __ENTITY_REFRESH_MS__
local W_HOUR, W_DAY, W_ENT = __HOUR_MS__, __DAY_MS__, __ENTITY_WINDOW_MS__
local M = __HLL_M__
local SUBSEC, LOG_FLOOR, NH = __SUBSEC_MS__, math.log(__LOG_GAP_FLOOR_S__), __IP_HOURS__
local ULGMAX = __USER_LG_MAX_S__
local HFULL = 2 ^ NH

local exp, floor, log = math.exp, math.floor, math.log
local sunpack, spack = struct.unpack, struct.pack
local sbyte, schar = string.byte, string.char
local call = redis.call
local NEVER = -math.huge

local blob = ARGV[1]
local upx, spx, ipx, epx = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nu, ns, ni = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local nk = #KEYS
local n = #blob / 41

-- IP blob: 27 doubles (IFMT), then the 4 * M one-byte registers (string.byte / string.char:
-- far cheaper per byte than struct items).
local IFMT = '<' .. string.rep('d', 27)
local SFMT = '<dddddddd'
local RO = 27 * 8  -- the registers' offset in the blob
local NR = 4 * M
-- The layout byte after the registers: kept as register table entry NR + 1, so it is read and
-- written with the registers at no extra cost.
local LAYOUT = 2
local IBYTES = RO + NR + 1
local function new_regs() return {__ZERO_REGS__, LAYOUT} end

-- An IP's registers are read straight from its stored blob (RS[ii], one string.byte per
-- register read) until a click changes one; only then are they unpacked into a table
-- (R[ii]), which is what gets written back. An IP whose registers did not change in the
-- batch writes its stored register bytes back as they were: no per-register work, which is
-- most of an IP key's cost when its sketches are settled.
local R, RS = {}, {}   -- IP registers: a table once changed (or new), else false + the blob
local IH = {}          -- IH[ii]: the IP's active-hours fields changed in this batch
local function regs_of(ii)
  local regs = R[ii]
  if not regs then
    regs = {sbyte(RS[ii], RO + 1, RO + NR + 1)}
    R[ii] = regs
  end
  return regs
end

-- floor(t / w) for integer-valued doubles, robust to the rounding of the division.
local function bucket_of(t, w)
  local b = floor(t / w)
  if b * w > t then b = b - 1 elseif (b + 1) * w <= t then b = b + 1 end
  return b
end

-- Register q of one HyperLogLog takes `rank` if larger; z = p[zi] (the sum of 2^-r) and
-- v = p[zi + 1] (registers at zero) follow.
local function hll_add(p, zi, ii, q, rank)
  local regs = R[ii]
  local r
  if regs then r = regs[q] else r = sbyte(RS[ii], RO + q) end
  if rank > r then
    p[zi] = p[zi] - 2 ^ (-r) + 2 ^ (-rank)
    if r == 0 then p[zi + 1] = p[zi + 1] - 1.0 end
    if not regs then regs = regs_of(ii) end
    regs[q] = rank
  end
end

-- One window of an IP (width w; its bucket at p[bi]; its session HLL's z v pz pv at
-- p[z0 .. z0+3] and its user HLL's at p[z0+4 .. z0+7]; their registers at regs[r0 + 1 ..
-- r0 + 2M]): rolled to t's bucket (a new bucket starts at (cur + 1) * w, exact: integer
-- doubles; the current sketch becomes the previous one when the buckets are adjacent), then
-- the click's session and user added. Returns the share of the bucket elapsed at t.
-- Bits set in an hours mask (0 .. 2^NH - 1; Lua 5.1 numbers, no bit operations).
local function popcount(m)
  local c = 0
  while m > 0 do
    local h = floor(m / 2)
    c = c + (m - 2 * h)
    m = h
  end
  return c
end

local function window(p, bi, z0, r0, ii, t, w, sreg, srank, ureg, urank)
  local cur = p[bi]
  local start = cur * w
  if t >= start + w then
    local b = bucket_of(t, w)
    if b == cur + 1 then
      p[z0 + 2], p[z0 + 3], p[z0 + 6], p[z0 + 7] = p[z0], p[z0 + 1], p[z0 + 4], p[z0 + 5]
    else
      p[z0 + 2], p[z0 + 3], p[z0 + 6], p[z0 + 7] = M, M, M, M
    end
    p[z0], p[z0 + 1], p[z0 + 4], p[z0 + 5] = M, M, M, M
    local regs = regs_of(ii)
    for q = r0 + 1, r0 + 2 * M do regs[q] = 0 end
    p[bi] = b
    start = b * w
  end
  local frac = (t - start) / w
  if frac < 0.0 then frac = 0.0 elseif frac > 1.0 then frac = 1.0 end
  hll_add(p, z0, ii, r0 + 1 + sreg, srank)
  hll_add(p, z0 + 4, ii, r0 + 1 + M + ureg, urank)
  return frac
end

-- Entities (ad, (IP, ad), user agent): E[k] = {c60, c3600, c86400, c604800, last, day bucket,
-- z v pz pv of the distinct-session sketch, z v pz pv of the distinct-IP sketch}; their
-- registers as the IPs' (ER[k] a table once changed or new, else false and ERS[k] the stored
-- blob), sessions' at 1 .. M, IPs' at M + 1 .. 2M, the layout byte at 2M + 1.
local E, ER, ERS = {}, {}, {}
local ERO = 14 * 8     -- the registers' offset in an entity blob
local ENR = 2 * M
local E_LAYOUT = 2
local EBYTES = ERO + ENR + 1
local EFMT = '<dddddddddddddd'
local function new_eregs() return {__ZERO_EREGS__, E_LAYOUT} end
local function eregs_of(k)
  local regs = ER[k]
  if not regs then
    regs = {sbyte(ERS[k], ERO + 1, ERO + ENR + 1)}
    ER[k] = regs
  end
  return regs
end
local function ehll_add(p, zi, k, q, rank)
  local regs = ER[k]
  local r
  if regs then r = regs[q] else r = sbyte(ERS[k], ERO + q) end
  if rank > r then
    p[zi] = p[zi] - 2 ^ (-r) + 2 ^ (-rank)
    if r == 0 then p[zi + 1] = p[zi + 1] - 1.0 end
    if not regs then regs = eregs_of(k) end
    regs[q] = rank
  end
end

-- One click on entity k: counts (the IP's decay, out-of-order and expiry rules), then its day
-- window rolled to t's bucket and the click's session and IP added. Returns the 13 row values
-- of the kind: c60 c3600 c86400 c604800, sessions z v pz pv, the bucket fraction, IPs z v pz pv.
local function entity(k, t, sreg, srank, ireg, irank)
  local p = E[k]
  local d = t - p[5]
  if d > E_TTL then
    p = {1.0, 1.0, 1.0, 1.0, t, bucket_of(t, W_ENT), M, M, M, M, M, M, M, M}
    E[k] = p
    ER[k] = new_eregs()
  elseif d > 0 then
    local g = d / 1000.0
    p[1] = p[1] * exp(-g / E_TAU1) + 1.0
    p[2] = p[2] * exp(-g / E_TAU2) + 1.0
    p[3] = p[3] * exp(-g / E_TAU3) + 1.0
    p[4] = p[4] * exp(-g / E_TAU4) + 1.0
    p[5] = t
  else
    p[1], p[2], p[3], p[4] = p[1] + 1.0, p[2] + 1.0, p[3] + 1.0, p[4] + 1.0
  end
  local cur = p[6]
  local start = cur * W_ENT
  if t >= start + W_ENT then
    local b = bucket_of(t, W_ENT)
    if b == cur + 1 then
      p[9], p[10], p[13], p[14] = p[7], p[8], p[11], p[12]
    else
      p[9], p[10], p[13], p[14] = M, M, M, M
    end
    p[7], p[8], p[11], p[12] = M, M, M, M
    local regs = eregs_of(k)
    for q = 1, ENR do regs[q] = 0 end
    p[6] = b
    start = b * W_ENT
  end
  local frac = (t - start) / W_ENT
  if frac < 0.0 then frac = 0.0 elseif frac > 1.0 then frac = 1.0 end
  ehll_add(p, 7, k, 1 + sreg, srank)
  ehll_add(p, 11, k, 1 + M + ireg, irank)
  return p[1], p[2], p[3], p[4], p[7], p[8], p[9], p[10], frac, p[11], p[12], p[13], p[14]
end

-- Read every key with a few MGETs (one redis.call per CHUNK keys; 1 on a cluster, where one
-- command may not span slots) and decode each blob once.
local CHUNK = __MGET_CHUNK__
local U, S, P = {}, {}, {}   -- users, sessions, IP counters (IP registers: R, RS above)
local UB = 8 * 8             -- user blob bytes
-- RE[k]: the end of the refresh period of key k's stored "last" (-inf for a new key): the
-- key's TTL is kept while its "last" stays below (see the writes).
local RE = {}
do
  local su, ss, si = nu, nu + ns, nu + ns + ni
  for a = 1, nk, CHUNK do
    local b = a + CHUNK - 1
    if b > nk then b = nk end
    local got = call('MGET', unpack(KEYS, a, b))
    for q = 1, b - a + 1 do
      local k = a + q - 1
      local raw = got[q]
      if k <= su then
        if raw and #raw == UB then
          local u = {sunpack(SFMT, raw)}
          U[k], RE[k] = u, (floor(u[5] / U_REF) + 1) * U_REF
        else
          U[k], RE[k] = {0, 0, 0, 0, NEVER}, NEVER
        end
      elseif k <= ss then
        if raw then
          local st = {sunpack(SFMT, raw)}
          S[k - su], RE[k] = st, (floor(st[3] / S_REF) + 1) * S_REF
        else
          S[k - su], RE[k] = {0, 0, NEVER, 0}, NEVER
        end
      elseif k <= si then
        if raw and #raw == IBYTES and sbyte(raw, IBYTES) == LAYOUT then
          local p = {sunpack(IFMT, raw)}
          P[k - ss], R[k - ss], RS[k - ss], RE[k] = p, false, raw, (floor(p[4] / I_REF) + 1) * I_REF
        else
          P[k - ss], R[k - ss], RE[k] = {0, 0, 0, NEVER}, false, NEVER
        end
      else
        if raw and #raw == EBYTES and sbyte(raw, EBYTES) == E_LAYOUT then
          local p = {sunpack(EFMT, raw)}
          E[k - si], ER[k - si], ERS[k - si], RE[k] = p, false, raw,
            (floor(p[5] / E_REF) + 1) * E_REF
        else
          E[k - si], ER[k - si], RE[k] = {0, 0, 0, 0, NEVER}, false, NEVER
        end
      end
    end
  end
end

-- On a cluster a click whose key of some kind lives on another node carries position 0 for that
-- kind: it works on a scratch state here that is never written (slidr/redis_split.py). Its
-- "last" times and window buckets lie in the future and its HLL registers are full, so the
-- cheapest branches run (no exp, no window roll, no register update).
-- Built on the first such click (never on a single Redis): no per-call set-up otherwise.
local function scratch()
  local LATER = math.huge
  U[0], S[0], R[0] = {0, 0, 0, 0, LATER, 0, 0, 0}, {0, 0, LATER, 0, 0, 0, 0, 0},
                     {__FULL_REGS__}
  P[0] = {0, 0, 0, LATER, 0, 0, 0, 0, 0, LATER, LATER, M, M, M, M, M, M, M, M, M, M, M, M, M,
          M, M, M}
end

local out = {}
local pos = 1
-- Row of one click (71 doubles, 568 bytes): u c60 c600 c3600 c86400 gap, s c60 c3600 gap age,
-- ip c60 c3600 c86400, z and pz of HLL 0..3, frac 1 h, frac 1 d, the register counts v, pv
-- of HLL 0..3 (each 0..32) as 6-bit fields of one exact integer (v0 in the low bits) with the
-- IP's active hours (0..24) in bits 48..52, then s subsec lg_n lg_mean lg_m2, then the IP's
-- time-zone switches (spec 3) and logged-in clicks (spec 5), then u lg_n lg_mean lg_m2, then
-- per entity kind (ad, (IP, ad),
-- user agent) c60 c3600 c86400 c604800, sessions z v pz pv, day fraction, IPs z v pz pv
-- (spec 4; the absent values for a click without that key). Fewer struct items: struct.pack costs about
-- 25 ns per item. The client expands the row to RAW.
local ROW = '<' .. string.rep('d', 71)
for i = 1, n do
  local t, sreg, srank, ureg, urank, ireg, irank, ui, si, ii, ea, ex, eg, z, lf
  t, sreg, srank, ureg, urank, ireg, irank, ui, si, ii, ea, ex, eg, z, lf, pos =
    sunpack('<dBBBBBBI4I4I4I4I4I4hB', blob, pos)
  if lf ~= 0 then lf = 1.0 else lf = 0.0 end
  if (ui == 0 or si == 0 or ii == 0) and not U[0] then scratch() end

  -- user: c[1..4], last = [5], ln-gap n mean M2 [6..8]
  local u = U[ui]
  local ugap
  local d = t - u[5]
  if d > U_TTL then
    u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8] = 1.0, 1.0, 1.0, 1.0, t, 0.0, 0.0, 0.0
    ugap = -1.0
  else
    local x
    if d > 0 then
      ugap = d / 1000.0
      u[1] = u[1] * exp(-ugap / U_TAU1) + 1.0
      u[2] = u[2] * exp(-ugap / U_TAU2) + 1.0
      u[3] = u[3] * exp(-ugap / U_TAU3) + 1.0
      u[4] = u[4] * exp(-ugap / U_TAU4) + 1.0
      u[5] = t
      x = log(ugap)
    else
      ugap = 0.0
      u[1], u[2], u[3], u[4] = u[1] + 1.0, u[2] + 1.0, u[3] + 1.0, u[4] + 1.0
      x = LOG_FLOOR
    end
    if ugap <= ULGMAX then
      local n1 = u[6] + 1.0
      local dl = x - u[7]
      local mean = u[7] + dl / n1
      u[6], u[7], u[8] = n1, mean, u[8] + dl * (x - mean)
    end
  end

  -- session: c[1..2], last = [3], first = [4], sub-second gaps [5], ln-gap n mean M2 [6..8]
  local s = S[si]
  local sgap
  d = t - s[3]
  if d > S_TTL then
    s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8] = 1.0, 1.0, t, t, 0.0, 0.0, 0.0, 0.0
    sgap = -1.0
  else
    local x
    if d > 0 then
      sgap = d / 1000.0
      s[1] = s[1] * exp(-sgap / S_TAU1) + 1.0
      s[2] = s[2] * exp(-sgap / S_TAU2) + 1.0
      s[3] = t
      x = log(sgap)
      if d < SUBSEC then s[5] = s[5] + 1.0 end
    else
      sgap = 0.0
      s[1], s[2] = s[1] + 1.0, s[2] + 1.0
      x = LOG_FLOOR
      s[5] = s[5] + 1.0
    end
    local n1 = s[6] + 1.0
    local dl = x - s[7]
    local mean = s[7] + dl / n1
    s[6], s[7], s[8] = n1, mean, s[8] + dl * (x - mean)
  end
  local age = t - s[4]
  if age < 0 then age = 0 end

  -- ip: c[1..3], last = [4], the newest click's time zone [5] and the decayed count of
  -- clicks whose zone differed from it [6] (tau I_TAU3), the decayed count of logged-in
  -- clicks [7] (tau I_TAU3, as c[3]), active hours [8..9], buckets [10] (1 h) [11] (1 d),
  -- HLL j (z, v, pz, pv) at [12+4j .. 15+4j], j = 0 sessions 1 h, 1 users 1 h, 2 sessions
  -- 1 d, 3 users 1 d; registers of HLL j at regs[32j + 1 .. 32j + 32]
  local p = P[ii]
  d = t - p[4]
  if d > I_TTL then
    p = {1.0, 1.0, 1.0, t, z, 0.0, lf, 0, 0, bucket_of(t, W_HOUR), bucket_of(t, W_DAY),
         M, M, M, M, M, M, M, M, M, M, M, M, M, M, M, M}
    P[ii] = p
    R[ii] = new_regs()
  else
    local sw = 0.0
    if z ~= p[5] then sw = 1.0 end
    if d > 0 then
      local g = d / 1000.0
      p[1] = p[1] * exp(-g / I_TAU1) + 1.0
      p[2] = p[2] * exp(-g / I_TAU2) + 1.0
      local f3 = exp(-g / I_TAU3)
      p[3] = p[3] * f3 + 1.0
      p[6] = p[6] * f3 + sw
      p[7] = p[7] * f3 + lf
      p[4] = t
      p[5] = z
    else
      p[1], p[2], p[3] = p[1] + 1.0, p[2] + 1.0, p[3] + 1.0
      p[6] = p[6] + sw
      p[7] = p[7] + lf
      if d == 0 then p[5] = z end
    end
  end

  -- active hours: mask [8] (bit k = a click in hour [10] - k, before the roll below), count [9]
  local a0 = p[10] * W_HOUR
  if t >= a0 + W_HOUR then
    local k = bucket_of(t, W_HOUR) - p[10]
    local hm = 1
    if k < NH then hm = (p[8] * 2 ^ k) % HFULL + 1 end
    p[8], p[9] = hm, popcount(hm)
    IH[ii] = true
  elseif t < a0 then
    local k = p[10] - bucket_of(t, W_HOUR)
    if k < NH then
      local b = 2 ^ k
      if floor(p[8] / b) % 2 == 0 then p[8], p[9], IH[ii] = p[8] + b, p[9] + 1, true end
    end
  elseif p[8] % 2 == 0 then
    p[8], p[9], IH[ii] = p[8] + 1, p[9] + 1, true
  end

  -- hour window: HLLs 0 and 1, registers 1 .. 2M; day window: HLLs 2 and 3, the rest
  local hfrac = window(p, 10, 12, 0, ii, t, W_HOUR, sreg, srank, ureg, urank)
  local dfrac = window(p, 11, 20, 2 * M, ii, t, W_DAY, sreg, srank, ureg, urank)

  local a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13 =
    0, 0, 0, 0, M, M, M, M, 0, M, M, M, M
  if ea > 0 then a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13 =
    entity(ea, t, sreg, srank, ireg, irank) end
  local x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13 =
    0, 0, 0, 0, M, M, M, M, 0, M, M, M, M
  if ex > 0 then x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13 =
    entity(ex, t, sreg, srank, ireg, irank) end
  local g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13 =
    0, 0, 0, 0, M, M, M, M, 0, M, M, M, M
  if eg > 0 then g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13 =
    entity(eg, t, sreg, srank, ireg, irank) end

  out[i] = spack(ROW, u[1], u[2], u[3], u[4], ugap, s[1], s[2], sgap, age / 1000.0,
                 p[1], p[2], p[3], p[12], p[14], p[16], p[18], p[20], p[22], p[24], p[26],
                 hfrac, dfrac,
                 (((((((p[9] * 64 + p[27]) * 64 + p[25]) * 64 + p[23]) * 64 + p[21]) * 64
                   + p[19]) * 64 + p[17]) * 64 + p[15]) * 64 + p[13],
                 s[5], s[6], s[7], s[8], p[6], p[7], u[6], u[7], u[8],
                 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13,
                 x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13,
                 g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13)
end

-- Write each key once: SET KEEPTTL while its "last" stays in the refresh period of the stored
-- one (RE), else SET with a new physical TTL (a new key, a reset state, a new period; see
-- "Physical TTLs" at the top). "last" never decreases, so one comparison decides.
do
  for k = 1, nu do
    local u = U[k]
    local v = spack(SFMT, u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8])
    if u[5] < RE[k] then call('SET', KEYS[k], v, 'KEEPTTL') else call('SET', KEYS[k], v, 'PX', upx) end
  end
  for k = nu + 1, nu + ns do
    local s = S[k - nu]
    local v = spack(SFMT, s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8])
    if s[3] < RE[k] then call('SET', KEYS[k], v, 'KEEPTTL') else call('SET', KEYS[k], v, 'PX', spx) end
  end
  -- An IP whose registers did not change (R false) and whose TTL is kept is rewritten in
  -- place (SETRANGE keeps the TTL and the bytes not written), and only in the fields that can
  -- have changed: IP fields 10..27 (window buckets, HLL z v pz pv) change only together with
  -- the registers (a window roll, a register update or a reset all make R a table), so what
  -- is left is fields 1..7 (counts, last, time-zone fields, logged-in count) and, when IH
  -- says so, 8..9 (active hours), right after them: one SETRANGE either way (each redis.call
  -- costs ~8 k instructions, each struct item ~0.5 k). A new IP field updated on every click
  -- must go in fields 1..7's run (shifting the rest, with a new LAYOUT byte).
  local o = nu + ns
  for k = o + 1, o + ni do
    local regs, p = R[k - o], P[k - o]
    if p[4] < RE[k] then
      if regs then
        call('SET', KEYS[k], spack(IFMT, unpack(p, 1, 27)) .. schar(unpack(regs, 1, NR + 1)),
             'KEEPTTL')
      else
        if IH[k - o] then
          call('SETRANGE', KEYS[k], 0, spack('<ddddddddd', p[1], p[2], p[3], p[4], p[5], p[6],
                                             p[7], p[8], p[9]))
        else
          call('SETRANGE', KEYS[k], 0, spack('<ddddddd', p[1], p[2], p[3], p[4], p[5], p[6],
                                             p[7]))
        end
      end
    else
      call('SET', KEYS[k], spack(IFMT, unpack(p, 1, 27))
           .. (regs and schar(unpack(regs, 1, NR + 1)) or RS[k - o]:sub(RO + 1, IBYTES)), 'PX', ipx)
    end
  end
  -- Entities as IPs: fields 6..14 (bucket, HLL z v pz pv) change only with the registers, so
  -- an entity whose registers did not change and whose TTL is kept gets one SETRANGE of
  -- fields 1..5 (counts, last).
  o = nu + ns + ni
  for k = o + 1, nk do
    local regs, p = ER[k - o], E[k - o]
    if p[5] < RE[k] then
      if regs then
        call('SET', KEYS[k], spack(EFMT, unpack(p, 1, 14)) .. schar(unpack(regs, 1, ENR + 1)),
             'KEEPTTL')
      else
        call('SETRANGE', KEYS[k], 0, spack('<ddddd', p[1], p[2], p[3], p[4], p[5]))
      end
    else
      call('SET', KEYS[k], spack(EFMT, unpack(p, 1, 14))
           .. (regs and schar(unpack(regs, 1, ENR + 1)) or ERS[k - o]:sub(ERO + 1, EBYTES)),
           'PX', epx)
    end
  end
end
-- One bulk string per click (Redis hashes every byte of every Lua string it creates, so a
-- table.concat of the rows would cost as much again as building them).
return out
