-- Portico rate-limit script: a Lua mirror of algo.Step and algo.Refund (the
-- Go code is the reference; the differential test holds this file to it).
--
-- KEYS[1]    the subject's HASH, rl:{H}: one field per policy, "A,B,C"
--            (algo.State; for a sliding log A is the member sequence; a
--            bucket writes C = -1 to mark its state as a bucket's)
-- KEYS[2..]  the subject's sliding-log ZSETs, rl:{H}:log:<policy>, in the
--            order of the sliding-log policies in ARGV
-- ARGV[1]    op: d = decide, r = refund, l = lease
-- ARGV[2]    now in µs, or '' to read Redis TIME (tests pass a clock)
-- ARGV[3]    n, the number of policies
-- ARGV[4]    active nodes (lease size clamp)
-- then per policy 10 values:
--            name, kind, limit, window, max_delay, cost, lease_want,
--            lease_ttl, lease_back (units of a lapsed lease given back),
--            lease_back_window (the window start that lease was taken in)
--
-- Reply: {now, all_allowed, then per policy: allowed, remaining,
--         retry_after, reset_after, delay, granted, lease_expires_after,
--         lease_window}
--
-- Numbers are integer µs in Lua doubles, exact below 2^53 (algo.Validate
-- keeps every value there). They are written with string.format('%d'),
-- never tostring, which rounds to 14 digits. State is written only when
-- every policy admitted (all or nothing) and only for a cost above 0; every
-- written key gets a TTL that covers the state it holds.

local FIXED, LOG, COUNTER, TOKEN, LEAKY = 1, 2, 3, 4, 5
local NEVER = -1

local op = ARGV[1]
local now, realnow
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
realnow = now
-- With a test clock, keys outlive real time by an hour: virtual time may
-- move slower than the wall clock, and a TTL in virtual µs would drop state
-- the reference still holds.
local slackms = 0
if ARGV[2] ~= '' then slackms = 3600000 end
local n = tonumber(ARGV[3])
local nodes = math.max(tonumber(ARGV[4]), 1)

-- floor(a / b) for b > 0, exact: the float quotient can be one off.
local function fdiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- Go's truncated a / b for b > 0.
local function tdiv(a, b)
  if a >= 0 then return fdiv(a, b) end
  return -fdiv(-a, b)
end

local function nonneg(v)
  if v < 0 then return 0 end
  return v
end

local function fmt(x) return string.format('%d', x) end

-- Makes key live at least us µs more (rounded up to ms, at least 1 ms),
-- never shortening it: a key may hold state that must live longer.
local function extend(key, us)
  local ms = math.max(math.ceil(us / 1000), 1) + slackms
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end

-- Parameters and state.
local P = {}
local fields = {}
local logi = 1
for i = 1, n do
  local o = 4 + (i - 1) * 10
  local p = {
    name = ARGV[o + 1],
    kind = tonumber(ARGV[o + 2]),
    limit = tonumber(ARGV[o + 3]),
    window = tonumber(ARGV[o + 4]),
    maxdelay = tonumber(ARGV[o + 5]),
    cost = nonneg(tonumber(ARGV[o + 6])),
    want = tonumber(ARGV[o + 7]),
    ttl = tonumber(ARGV[o + 8]),
    back = tonumber(ARGV[o + 9]),
    backwin = tonumber(ARGV[o + 10]),
    allowed = false, remaining = 0, retry = 0, reset = 0, delay = 0,
    granted = 0, expires = 0, write = false,
  }
  if p.kind == LOG then
    logi = logi + 1
    p.logkey = KEYS[logi]
  end
  P[i] = p
  fields[i] = p.name
end
local raw = redis.call('HMGET', KEYS[1], unpack(fields))
for i = 1, n do
  local p = P[i]
  local a, b, c = 0, 0, 0
  if raw[i] then
    local x, y, z = string.match(raw[i], '^(%-?%d+),(%-?%d+),(%-?%d+)$')
    if x then a, b, c = tonumber(x), tonumber(y), tonumber(z) end
  end
  -- A field is named by the policy alone, so a reload that changes a
  -- policy's algorithm finds the old algorithm's state. A bucket's state
  -- (marked c = -1 below) read as a window would take its tat, up to
  -- burst*T ahead, for a window start: start empty instead, as the memory
  -- store (which keys state by algorithm) does.
  if c == -1 and (p.kind == FIXED or p.kind == COUNTER) then a, b, c = 0, 0, 0 end
  p.a, p.b, p.c = a, b, c
end

-- Each step reads p.a/b/c, sets the decision fields, and when it would
-- write the state sets p.write with the new p.a/b/c (and, for the log,
-- p.add entries at p.at and p.cut, the score at or below which entries are
-- dropped). room(p) is the most units a request could take right now.

-- FixedWindow. Returns the state after the roll, the clamped now and the
-- window's end (after a reload changed the window length, the first
-- boundary of the new length after the stored start).
local function fixedRoll(p)
  local w = p.window
  local t = now
  local start = t - t % w
  local a, count = p.a, p.b
  local wend = start + w
  if start < a then
    if t < a then t = a end
    wend = a - a % w + w
  elseif start > a then
    a, count = start, 0
  end
  return a, count, t, wend
end

local function fixedStep(p, cost)
  local w, l = p.window, p.limit
  local a, count, t, wend = fixedRoll(p)
  if cost > l or count + cost > l then
    p.remaining = nonneg(l - count)
    p.retry = wend - t
    if cost > l then p.retry = NEVER end
    if count > 0 then p.reset = wend - t end
    return
  end
  count = count + cost
  if cost > 0 then
    p.write = true
    p.a, p.b = a, count
  end
  p.allowed = true
  p.remaining = l - count
  if count > 0 then p.reset = wend - t end
  p.leaseEnd = wend - t
end

local function fixedRoom(p)
  local _, count = fixedRoll(p)
  return nonneg(p.limit - count)
end

-- SlidingWindowCounter.
local function weighted(prev, r, w)
  if prev == 0 then return 0 end
  return math.ceil(prev * r / w)
end

local function lastFit(cnt, room, w, maxr)
  local r = math.floor(room * w / cnt)
  if r > maxr then r = maxr end
  while r > 0 and weighted(cnt, r, w) > room do r = r - 1 end
  return r
end

local function counterReset(wend, w, t, cur, prev)
  if cur > 0 then return wend + w - t end
  if prev > 0 then return wend - t end
  return 0
end

local function counterRoll(p)
  local w = p.window
  local t = now
  local start = t - t % w
  local a, cur, prev = p.a, p.b, p.c
  local wend = start + w
  if start < a then
    if t < a then t = a end
    wend = a - a % w + w
  elseif start > a then
    if start - w <= a then prev = cur else prev = 0 end
    a, cur = start, 0
  end
  return a, cur, prev, t, wend
end

local function counterStep(p, cost)
  local w, l = p.window, p.limit
  local a, cur, prev, t, wend = counterRoll(p)
  local r = wend - t
  local used = weighted(prev, r, w) + cur
  if cost > l or used + cost > l then
    p.remaining = nonneg(l - used)
    p.reset = counterReset(wend, w, t, cur, prev)
    if cost > l then
      p.retry = NEVER
    elseif cur + cost <= l then
      local rr = lastFit(prev, l - cur - cost, w, w)
      p.retry = wend - rr - t
    else
      local rr = lastFit(cur, l - cost, w, w)
      p.retry = wend + w - rr - t
    end
    return
  end
  cur = cur + cost
  if cost > 0 then
    p.write = true
    p.a, p.b, p.c = a, cur, prev
  end
  p.allowed = true
  p.remaining = l - used - cost
  p.reset = counterReset(wend, w, t, cur, prev)
  p.leaseEnd = wend - t
end

local function counterRoom(p)
  local _, cur, prev, t, wend = counterRoll(p)
  local used = weighted(prev, wend - t, p.window) + cur
  return nonneg(p.limit - used)
end

-- SlidingWindowLog over the ZSET (score = admission time, one member per
-- unit). Like the Go log it drops expired entries only when it admits.
local function logStep(p, cost)
  local w, l = p.window, p.limit
  local t = now
  local newest = redis.call('ZRANGE', p.logkey, -1, -1, 'WITHSCORES')
  local last = nil
  if newest[2] then
    last = tonumber(newest[2])
    if t < last then t = last end
    p.logidle = last + w - realnow
  end
  local cut = t - w
  local live = redis.call('ZCOUNT', p.logkey, '(' .. fmt(cut), '+inf')
  if cost > l or live + cost > l then
    p.remaining = nonneg(l - live)
    if live > 0 then p.reset = last + w - t end
    if cost > l then
      p.retry = NEVER
    else
      local k = live + cost - l
      local e = redis.call('ZRANGEBYSCORE', p.logkey, '(' .. fmt(cut), '+inf', 'WITHSCORES', 'LIMIT', k - 1, 1)
      p.retry = tonumber(e[2]) + w - t
    end
    return
  end
  p.allowed = true
  p.remaining = l - live - cost
  if cost > 0 then
    p.write = true
    p.add, p.at, p.cut = cost, t, cut
    p.reset = w
  elseif live > 0 then
    p.reset = last + w - t
  end
end

-- TokenBucket and LeakyBucket (GCRA).
local function gcraStep(p, cost)
  local t, l = p.window, p.limit
  local capacity = l * t
  local tat = p.a
  if tat < now then tat = now end
  if cost > l then
    p.remaining = nonneg(tdiv(capacity - (tat - now), t))
    p.retry = NEVER
    p.reset = tat - now
    return
  end
  local nxt = tat + cost * t
  local excess = nxt - now - capacity
  local delay = 0
  if excess > 0 then
    local maxdelay = 0
    if p.kind == LEAKY then maxdelay = p.maxdelay end
    if excess > maxdelay or cost == 0 then
      p.remaining = nonneg(tdiv(capacity - (tat - now), t))
      p.retry = excess - maxdelay
      p.reset = tat - now
      return
    end
    delay = excess
  end
  if cost > 0 then
    p.write = true
    p.a = nxt
  end
  p.allowed = true
  p.remaining = nonneg(tdiv(capacity - (nxt - now), t))
  p.reset = nxt - now
  p.delay = delay
  p.leaseEnd = nil
end

local function gcraRoom(p)
  local tat = p.a
  if tat < now then tat = now end
  return nonneg(fdiv(p.limit * p.window - (tat - now), p.window))
end

local STEP = {[FIXED] = fixedStep, [COUNTER] = counterStep, [LOG] = logStep,
              [TOKEN] = gcraStep, [LEAKY] = gcraStep}
local ROOM = {[FIXED] = fixedRoom, [COUNTER] = counterRoom,
              [TOKEN] = gcraRoom, [LEAKY] = gcraRoom}

-- algo.Refund.
local function refund(p)
  local cost = p.cost
  if cost <= 0 then return end
  if p.kind == FIXED or p.kind == COUNTER then
    if raw[p.idx] then
      p.b = nonneg(p.b - cost)
      p.write = true
    end
  elseif p.kind == LOG then
    redis.call('ZPOPMAX', p.logkey, cost)
  else
    local tat = p.a - cost * p.window
    if tat < now then tat = now end
    if tat < p.a then
      p.a = tat
      p.write = true
    end
  end
end

-- The µs from now until the state holds no usage (algo.IdleAt - now).
local function idleAfter(p)
  if p.kind == FIXED then
    if p.b == 0 then return 0 end
    return p.a + p.window - realnow
  elseif p.kind == COUNTER then
    if p.b > 0 then return p.a + 2 * p.window - realnow end
    if p.c > 0 then return p.a + p.window - realnow end
    return 0
  elseif p.kind == LOG then
    return p.logidle or 0
  end
  return p.a - realnow
end

local all = true
for i = 1, n do
  local p = P[i]
  p.idx = i
  if op == 'r' then
    refund(p)
    p.allowed = true
  elseif op == 'l' then
    -- Units a node could not spend before its lease lapsed go back first,
    -- into the window they were taken from only (a window that has rolled
    -- has no use for them; a bucket takes them back down to full).
    if p.back > 0 then
      if p.kind == FIXED or p.kind == COUNTER then
        if raw[i] and p.a == p.backwin then p.b = nonneg(p.b - p.back) end
      else
        local tat = p.a - p.back * p.window
        if tat < now then tat = now end
        if tat < p.a then p.a = tat end
      end
    end
    -- Grant g = min(max(k, cost), room) with k = clamp(want, 1,
    -- room / (4 * nodes)): batches shrink to single units as the quota
    -- runs out, and never exceed what an exact decision would admit.
    local room = ROOM[p.kind](p)
    local k = math.min(p.want, fdiv(room, 4 * nodes))
    if k < 1 then k = 1 end
    local g = math.min(math.max(k, p.cost), room)
    if p.cost == 0 or g < p.cost then g = p.cost end
    STEP[p.kind](p, g)
    if p.allowed then
      p.granted = g
      local life = p.ttl
      if p.leaseEnd and p.leaseEnd < life then life = p.leaseEnd end
      p.expires = life
    end
  else
    STEP[p.kind](p, p.cost)
  end
  if not p.allowed then all = false end
end

if all then
  local hset = {}
  local need = 0
  for i = 1, n do
    local p = P[i]
    if p.write then
      if p.kind == LOG then
        -- a sequence per policy keeps members unique across nodes and
        -- within one µs; the score is the admission time
        if p.add then
          redis.call('ZREMRANGEBYSCORE', p.logkey, '-inf', fmt(p.cut))
          local z = {}
          for j = 1, p.add do
            p.a = p.a + 1
            z[#z + 1] = fmt(p.at)
            z[#z + 1] = fmt(p.at) .. '-' .. fmt(p.a)
          end
          redis.call('ZADD', p.logkey, unpack(z))
          p.logidle = p.at + p.window - realnow
          redis.call('PEXPIRE', p.logkey, math.max(math.ceil(p.logidle / 1000), 1) + slackms)
        end
      end
      local c = p.c
      if p.kind == TOKEN or p.kind == LEAKY then c = -1 end -- bucket state (unused by GCRA)
      hset[#hset + 1] = p.name
      hset[#hset + 1] = fmt(p.a) .. ',' .. fmt(p.b) .. ',' .. fmt(c)
      need = math.max(need, idleAfter(p))
    end
  end
  if #hset > 0 then
    redis.call('HSET', KEYS[1], unpack(hset))
    -- The hash may hold other policies' state with longer lives: only ever
    -- extend its TTL.
    extend(KEYS[1], need)
  end
else
  -- A rejection writes no state, but the state it read may have to live
  -- longer than the TTL its last write gave it: a reload that lengthens a
  -- window (or turns a fixed window into a sliding counter) keeps a count
  -- until a boundary of the new length, and a key expiring at the old
  -- window's end would hand a throttled client a fresh limit.
  local need = 0
  for i = 1, n do
    local p = P[i]
    if raw[i] then need = math.max(need, idleAfter(p)) end
    if p.logkey and p.logidle and p.logidle > 0 then extend(p.logkey, p.logidle) end
  end
  if need > 0 then extend(KEYS[1], need) end
end

local out = {now, 0}
if all then out[2] = 1 end
for i = 1, n do
  local p = P[i]
  local ok = 0
  if p.allowed then ok = 1 end
  local granted, expires, win = p.granted, p.expires, 0
  if not all then granted, expires = 0, 0 end
  if p.kind == FIXED or p.kind == COUNTER then win = p.a end
  out[#out + 1] = ok
  out[#out + 1] = p.remaining
  out[#out + 1] = p.retry
  out[#out + 1] = p.reset
  out[#out + 1] = p.delay
  out[#out + 1] = granted
  out[#out + 1] = expires
  out[#out + 1] = win
end
return out
