-- slidr counter store, one batch of clicks per call (see slidr/store_redis.py, docs/kernel.md).
-- Twin of ext/reference.py: the same counter math in Lua 5.1 doubles, in the same operation
-- order, so the raw counters equal the embedded store's.
--
-- KEYS: for click i (1-based) KEYS[3i-2] user, KEYS[3i-1] session, KEYS[3i] ip state keys.
-- ARGV[1]: n * 12 bytes, per click "<d" ts (epoch ms) and 4 bytes: session HLL register,
--          session rank, user HLL register, user rank.
-- ARGV[2]: extra physical TTL in ms on top of each logical TTL.
-- Returns n * 32 little-endian doubles (the RAW layout of slidr/featurespec.py).
--
-- State blobs: user "<ddddd" c60 c600 c3600 c86400 last; session "<dddd" c60 c3600 last
-- first; ip "<dddddd" c60 c3600 c86400 last bucket_1h bucket_1d, then 4 x "<dddd" z v pz pv,
-- then 4 x 32 one-byte HLL registers.
-- Constants below are filled in from slidr.featurespec when the script is loaded.

local U_TAU = {__USER_TAUS__}
local S_TAU = {__SESSION_TAUS__}
local I_TAU = {__IP_TAUS__}
local U_TTL, S_TTL, I_TTL = __USER_TTL_MS__, __SESSION_TTL_MS__, __IP_TTL_MS__
local W_HOUR, W_DAY = __HOUR_MS__, __DAY_MS__
local M = __HLL_M__

local exp, floor = math.exp, math.floor
local sunpack, spack = struct.unpack, struct.pack
local sbyte, schar = string.byte, string.char
local call = redis.call

local blob = ARGV[1]
local slack = tonumber(ARGV[2])
local n = #blob / 12

local cache = {}   -- key name -> state table
local kind = {}    -- key name -> "u" | "s" | "i" for touched keys
local touched = {} -- key names in first-touch order

-- Read every key in a few MGETs up front (one redis.call per 1000 keys, not one per key).
local blobs = {}
do
  local nk = #KEYS
  for a = 1, nk, 1000 do
    local b = a + 999
    if b > nk then b = nk end
    local got = call('MGET', unpack(KEYS, a, b))
    for q = 1, b - a + 1 do blobs[a + q - 1] = got[q] end
  end
end

local function load(ki, what)
  local k = KEYS[ki]
  local st = cache[k]
  if st then return st end
  local raw = blobs[ki]
  if raw then
    if what == 'u' then
      st = {sunpack('<ddddd', raw)}
    elseif what == 's' then
      st = {sunpack('<dddd', raw)}
    else
      st = {sunpack('<dddddddddddddddddddddd', raw)}
      st.regs = {sbyte(raw, 177, 304)}
    end
  else
    st = {absent = true}
  end
  cache[k] = st
  kind[k] = what
  touched[#touched + 1] = k
  return st
end

-- floor(t / w) for integer-valued doubles, robust to the rounding of the division.
local function bucket_of(t, w)
  local b = floor(t / w)
  if b * w > t then b = b - 1 elseif (b + 1) * w <= t then b = b + 1 end
  return b
end

local out = {}
local pos = 1
-- One row table for all clicks (spack copies the values), preallocated to 32 slots.
local row = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
             0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
for i = 1, n do
  local t, sreg, srank, ureg, urank
  t, sreg, srank, ureg, urank, pos = sunpack('<dBBBB', blob, pos)

  -- user: c[1..4], last = [5]
  local u = load(3 * i - 2, 'u')
  local gap
  if u.absent or t - u[5] > U_TTL then
    u.absent = nil
    u[1], u[2], u[3], u[4], u[5] = 1.0, 1.0, 1.0, 1.0, t
    gap = -1.0
  else
    local d = t - u[5]
    if d < 0 then d = 0 end
    gap = d / 1000.0
    for k = 1, 4 do u[k] = u[k] * exp(-gap / U_TAU[k]) + 1.0 end
    if t > u[5] then u[5] = t end
  end
  row[1], row[2], row[3], row[4], row[5] = u[1], u[2], u[3], u[4], gap

  -- session: c[1..2], last = [3], first = [4]
  local s = load(3 * i - 1, 's')
  if s.absent or t - s[3] > S_TTL then
    s.absent = nil
    s[1], s[2], s[3], s[4] = 1.0, 1.0, t, t
    gap = -1.0
  else
    local d = t - s[3]
    if d < 0 then d = 0 end
    gap = d / 1000.0
    for k = 1, 2 do s[k] = s[k] * exp(-gap / S_TAU[k]) + 1.0 end
    if t > s[3] then s[3] = t end
  end
  local age = t - s[4]
  if age < 0 then age = 0 end
  row[6], row[7], row[8], row[9] = s[1], s[2], gap, age / 1000.0

  -- ip: c[1..3], last = [4], buckets [5] (1 h) [6] (1 d), HLL j at [7+4j .. 10+4j]
  local p = load(3 * i, 'i')
  if p.absent or t - p[4] > I_TTL then
    p.absent = nil
    p[1], p[2], p[3], p[4] = 1.0, 1.0, 1.0, t
    p[5], p[6] = bucket_of(t, W_HOUR), bucket_of(t, W_DAY)
    for q = 7, 22 do p[q] = M end
    local regs = {}
    for q = 1, 4 * M do regs[q] = 0 end
    p.regs = regs
  else
    local d = t - p[4]
    if d < 0 then d = 0 end
    gap = d / 1000.0
    for k = 1, 3 do p[k] = p[k] * exp(-gap / I_TAU[k]) + 1.0 end
    if t > p[4] then p[4] = t end
  end
  row[10], row[11], row[12] = p[1], p[2], p[3]
  local regs = p.regs
  for w = 0, 1 do
    local win = (w == 0) and W_HOUR or W_DAY
    local b = bucket_of(t, win)
    local cur = p[5 + w]
    if b > cur then
      for j = 2 * w, 2 * w + 1 do
        local o = 7 + 4 * j
        if b == cur + 1 then
          p[o + 2], p[o + 3] = p[o], p[o + 1]
        else
          p[o + 2], p[o + 3] = M, M
        end
        p[o], p[o + 1] = M, M
        for q = j * M + 1, j * M + M do regs[q] = 0 end
      end
      p[5 + w] = b
      cur = b
    end
    local frac = (t - cur * win) / win
    if frac < 0.0 then frac = 0.0 elseif frac > 1.0 then frac = 1.0 end
    for j = 2 * w, 2 * w + 1 do
      local idx, rank
      if j % 2 == 0 then idx, rank = sreg, srank else idx, rank = ureg, urank end
      local o = 7 + 4 * j
      local q = j * M + idx + 1
      local r = regs[q]
      if rank > r then
        p[o] = p[o] - 2 ^ (-r) + 2 ^ (-rank)
        if r == 0 then p[o + 1] = p[o + 1] - 1.0 end
        regs[q] = rank
      end
      local c = 13 + 5 * j
      row[c], row[c + 1], row[c + 2], row[c + 3], row[c + 4] =
        p[o], p[o + 1], p[o + 2], p[o + 3], frac
    end
  end
  out[i] = spack('<dddddddddddddddddddddddddddddddd', unpack(row, 1, 32))
end

-- Write each touched key once, with a physical TTL past its logical one.
for _, k in ipairs(touched) do
  local st = cache[k]
  local what = kind[k]
  if what == 'u' then
    call('SET', k, spack('<ddddd', st[1], st[2], st[3], st[4], st[5]), 'PX', U_TTL + slack)
  elseif what == 's' then
    call('SET', k, spack('<dddd', st[1], st[2], st[3], st[4]), 'PX', S_TTL + slack)
  else
    call('SET', k, spack('<dddddddddddddddddddddd', unpack(st, 1, 22))
      .. schar(unpack(st.regs, 1, 4 * M)), 'PX', I_TTL + slack)
  end
end
return table.concat(out)
