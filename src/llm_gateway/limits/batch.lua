-- The Redis limiter's batch script (llm_gateway.limits.batch loads it).
-- The names in capitals (WINDOW, LEASE_SHARE, LEASE_MIN_S, LEASE_MIN,
-- LEASE_GRACE) are placeholders: the loader fills them in from
-- llm_gateway.limits.base and llm_gateway.limits.lease before loading it.
-- A batch of admissions and settlements, applied atomically.
-- ARGV[1]: now ('' = server TIME); ARGV[2]: in-flight TTL (s); then two
-- arguments per call: the key's base name, and the call itself:
--   'a <id> <rpm> <tpm> <concurrent> <estimate> <lease>'   (-1 = limit unset)
--   's <id> <slot> <token delta>'
--   'r <id> <slot> <tokens back> <first unused> <size> [<held index> ...]'
-- Per key, <base>:r is the request log (zset id -> time), <base>:u the token
-- buckets (hash second -> tokens, with 'sum' and 'low'; named :t before the
-- running total, so replicas of both versions do not misread each other's
-- hash during a rolling upgrade), <base>:c the in-flight reservations (zset
-- id -> expiry). Replies, in call order: per admission {reason, retry ms,
-- requests, requests reset ms, tokens, tokens reset ms (the resets of a
-- refusal; 0 for an admission), slot, lease size,
-- lease ms (-1: none, too near a limit)}; per settlement or lease return 1
-- (applied) or 0 (settled already, or expired; returned already).
--
-- Leases: an admission may ask for up to <lease> more admissions in advance,
-- for its process to hand out without asking again. They are granted only far
-- from every limit (at most 1/LEASE_SHARE of what is left of each, at least
-- LEASE_MIN, <estimate> tokens each) and only until the end of the current
-- second, and are counted at once on the strict side: requests <id>:1..n in
-- the log scored at the end of the second (no later use can count for less
-- than 60 s), their tokens in this second's bucket, and n in-flight slots
-- <id>:1..n expiring LEASE_GRACE seconds after the lease. The return ('r')
-- takes back what was not used: the unused requests and tokens (<tokens back>,
-- which also carries the settled ones' estimates minus their real use), the
-- in-flight slots no longer held; the held ones get the normal in-flight TTL
-- and are settled like any admission ('s <id>:<index> ...'). A return is
-- applied once (a marker key), so sending it again after a lost reply is safe.
--
-- The calls of a batch were all made before any of them was answered, so any
-- order is a valid one: settlements go first (they free room), then the
-- admissions in call order. Redis work is per key, not per call: a key's
-- state is read once a batch, kept here while its admissions are decided,
-- and written once at the end (one ZADD for all its new requests, ...).
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local ttl = tonumber(ARGV[2])
local window = WINDOW
local slot = math.floor(now)
local replies = {}
local admissions = {}  -- {reply index, base, id, rpm, tpm, concurrent, estimate}
local settling, settled_bases = {}, {}  -- base -> {{reply index, id, slot, delta}}
local returns = {}  -- {reply index, base, words}

for i = 3, #ARGV, 2 do
  local n = (i - 1) / 2
  local base = ARGV[i]
  local f = {}
  for word in string.gmatch(ARGV[i + 1], '%S+') do f[#f + 1] = word end
  if f[1] == 'a' then
    admissions[#admissions + 1] = {n, base, f[2], tonumber(f[3]), tonumber(f[4]),
                                   tonumber(f[5]), tonumber(f[6]), tonumber(f[7]) or 0}
  elseif f[1] == 'r' then
    returns[#returns + 1] = {n, base, f}
  else
    local list = settling[base]
    if list == nil then
      list = {}
      settling[base] = list
      settled_bases[#settled_bases + 1] = base
    end
    list[#list + 1] = {n, f[2], f[3], tonumber(f[4])}
  end
end

-- Lease returns: see the header.
for _, r in ipairs(returns) do
  local base, f = r[2], r[3]
  local lease, bucket, back = f[2], f[3], tonumber(f[4])
  local first, size = tonumber(f[5]), tonumber(f[6])
  local applied = redis.call('SET', base .. ':l:' .. lease, 1, 'NX', 'EX', 2 * window)
  if applied then
    local kc = base .. ':c'
    local held = {}
    for j = 7, #f do held[tonumber(f[j])] = true end
    local gone, unused, extend = {}, {}, {}
    for j = 1, size do
      local id = lease .. ':' .. j
      if held[j] then
        extend[#extend + 1] = now + ttl
        extend[#extend + 1] = id
      else
        gone[#gone + 1] = id
      end
      if j >= first then unused[#unused + 1] = id end
    end
    if #gone > 0 then redis.call('ZREM', kc, unpack(gone)) end
    if #extend > 0 then
      redis.call('ZADD', kc, 'XX', unpack(extend))
      redis.call('EXPIRE', kc, math.ceil(ttl) + 1)
    end
    if #unused > 0 then redis.call('ZREM', base .. ':r', unpack(unused)) end
    local kt = base .. ':u'
    if back ~= 0 and redis.call('HEXISTS', kt, bucket) == 1 then
      redis.call('HINCRBY', kt, bucket, -back)
      redis.call('HINCRBY', kt, 'sum', -back)
    end
  end
  replies[r[1]] = applied and 1 or 0
end

-- Settlements: a reservation still held frees its slot, and its token delta
-- goes to its bucket if that bucket is still there.
for _, base in ipairs(settled_bases) do
  local list, kc, kt = settling[base], base .. ':c', base .. ':u'
  local ids = {}
  for j, s in ipairs(list) do ids[j] = s[2] end
  local held = redis.call('ZMSCORE', kc, unpack(ids))
  local found, seen, deltas, buckets = {}, {}, {}, {}
  for j, s in ipairs(list) do
    local ok = held[j] and not seen[s[2]]
    if ok then
      seen[s[2]] = true
      found[#found + 1] = s[2]
      if s[4] ~= 0 then
        if deltas[s[3]] == nil then
          deltas[s[3]] = 0
          buckets[#buckets + 1] = s[3]
        end
        deltas[s[3]] = deltas[s[3]] + s[4]
      end
    end
    replies[s[1]] = ok and 1 or 0
  end
  if #found > 0 then redis.call('ZREM', kc, unpack(found)) end
  local total = 0
  for _, b in ipairs(buckets) do
    if deltas[b] ~= 0 and redis.call('HEXISTS', kt, b) == 1 then
      redis.call('HINCRBY', kt, b, deltas[b])
      total = total + deltas[b]
    end
  end
  if total ~= 0 then redis.call('HINCRBY', kt, 'sum', total) end
end

-- A key's state, read on first use in this batch.
local states, order = {}, {}
local function state(base)
  local st = states[base]
  if st == nil then
    st = {kr = base .. ':r', kt = base .. ':u', kc = base .. ':c', radd = {}, cadd = {},
          lreq = {}, lconc = {}}
    redis.call('ZREMRANGEBYSCORE', st.kc, '-inf', now)
    st.conc = redis.call('ZCARD', st.kc)
    states[base] = st
    order[#order + 1] = st
  end
  return st
end

local function requests_of(st)
  -- Requests: a request counts while now - time < window.
  if st.nreq == nil then
    redis.call('ZREMRANGEBYSCORE', st.kr, '-inf', now - window)
    st.nreq = redis.call('ZCARD', st.kr)
  end
end

local function tokens_of(st)
  -- Tokens: bucket s counts while floor(now) - s <= window. The hash keeps a
  -- running total ('sum') and its oldest live bucket ('low'), so this reads
  -- two fields, not every bucket; a bucket is dropped once, when it leaves
  -- the window.
  if st.used ~= nil then return end
  local kt = st.kt
  local first = slot - window
  local meta = redis.call('HMGET', kt, 'sum', 'low')
  local used, low = tonumber(meta[1]) or 0, tonumber(meta[2])
  if low ~= nil and low < first then
    while low < first do
      local v = redis.call('HGET', kt, low)
      if v then
        used = used - tonumber(v)
        redis.call('HDEL', kt, low)
      end
      low = low + 1
    end
    while low <= slot and redis.call('HEXISTS', kt, low) == 0 do low = low + 1 end
    if low > slot then
      low, used = nil, 0
      redis.call('DEL', kt)
    else
      redis.call('HSET', kt, 'sum', used, 'low', low)
    end
  end
  st.used, st.low, st.tadd = used, low, 0
end

local function acquire(st, id, rpm, tpm, conc, est, want)
  local reason, retry = 0, 0
  local function refuse(code, after)
    if reason == 0 then reason = code end
    if after > retry then retry = after end
  end

  local nreq = 0
  if rpm >= 0 then
    requests_of(st)
    nreq = st.nreq + #st.radd + #st.lreq
    if nreq >= rpm then
      local after = window
      if rpm > 0 then
        local i, at = nreq - rpm, now  -- this batch's requests are at now
        if i < st.nreq then
          at = tonumber(redis.call('ZRANGE', st.kr, i, i, 'WITHSCORES')[2])
        end
        after = at + window - now
      end
      refuse(1, after)
    end
  end

  local used = 0
  if tpm >= 0 then
    tokens_of(st)
    used = st.used
    if used + est > tpm then
      local after = window
      if est <= tpm then
        local need, freed = used + est - tpm, 0
        after = window + 1
        for s = st.low or slot, slot do
          freed = freed + (tonumber(redis.call('HGET', st.kt, s)) or 0)
          if s == slot then freed = freed + st.tadd end
          if freed >= need then
            after = s + window + 1 - now
            break
          end
        end
      end
      refuse(2, after)
    end
  end

  local inflight = st.conc + #st.cadd + #st.lconc
  if conc >= 0 and inflight >= conc then refuse(3, 1) end

  -- Refused: the resets (until the newest counted request and token bucket
  -- leave the window; an admission's are always the same, and not sent).
  local req_reset, tok_reset = 0, 0
  if reason ~= 0 then
    if rpm >= 0 then
      local newest
      if #st.lreq > 0 then newest = slot + 1
      elseif #st.radd > 0 then newest = now end
      if st.nreq > 0 then
        local stored = tonumber(redis.call('ZRANGE', st.kr, -1, -1, 'WITHSCORES')[2])
        if newest == nil or stored > newest then newest = stored end
      end
      if newest ~= nil then req_reset = newest + window - now end
    end
    if tpm >= 0 and st.low ~= nil then
      local s = slot
      if st.tadd == 0 then
        while s > st.low and redis.call('HEXISTS', st.kt, s) == 0 do s = s - 1 end
      end
      tok_reset = s + window + 1 - now
    end
  end

  if reason == 0 then
    if rpm >= 0 then
      st.radd[#st.radd + 1] = id
      nreq = nreq + 1
    end
    if tpm >= 0 then
      st.tadd = st.tadd + est
      st.twrite = true
      if st.low == nil then st.low, st.tlow = slot, true end
      st.used = used + est
      used = st.used
    end
    st.cadd[#st.cadd + 1] = id
    inflight = inflight + 1
  end
  local granted, lease_ms = 0, 0
  if reason == 0 and want > 0 and slot + 1 - now >= LEASE_MIN_S then
    lease_ms = -1  -- unless granted below: too near a limit
    local n = want
    if rpm >= 0 then n = math.min(n, math.floor((rpm - nreq) / LEASE_SHARE)) end
    if tpm >= 0 and est > 0 then
      n = math.min(n, math.floor((tpm - used) / (LEASE_SHARE * est)))
    end
    if conc >= 0 then n = math.min(n, math.floor((conc - inflight) / LEASE_SHARE)) end
    if n >= LEASE_MIN then
      granted, lease_ms = n, math.floor((slot + 1 - now) * 1000)
      for j = 1, n do
        local lid = id .. ':' .. j
        if rpm >= 0 then st.lreq[#st.lreq + 1] = lid end
        st.lconc[#st.lconc + 1] = lid
      end
      if rpm >= 0 then nreq = nreq + n end
      if tpm >= 0 then
        st.tadd = st.tadd + n * est
        st.used = st.used + n * est
        used = st.used
      end
    end
  end
  return {reason, math.ceil(retry * 1000), nreq, math.ceil(req_reset * 1000), used,
          math.ceil(tok_reset * 1000), slot, granted, lease_ms}
end

for _, a in ipairs(admissions) do
  replies[a[1]] = acquire(state(a[2]), a[3], a[4], a[5], a[6], a[7], a[8])
end

-- Each key's admissions, written at once; each written key gets a TTL just
-- past what it must remember.
local function zadd(key, score, ids)
  local args = {}
  for j, id in ipairs(ids) do
    args[2 * j - 1] = score
    args[2 * j] = id
  end
  redis.call('ZADD', key, unpack(args))
end
for _, st in ipairs(order) do
  if #st.radd > 0 then
    zadd(st.kr, now, st.radd)
    redis.call('EXPIRE', st.kr, window + 1)
  end
  if st.twrite then
    redis.call('HINCRBY', st.kt, slot, st.tadd)
    redis.call('HINCRBY', st.kt, 'sum', st.tadd)
    if st.tlow then redis.call('HSET', st.kt, 'low', slot) end
    redis.call('EXPIRE', st.kt, window + 2)
  end
  if #st.lreq > 0 then
    zadd(st.kr, slot + 1, st.lreq)
    redis.call('EXPIRE', st.kr, window + 2)
  end
  if #st.cadd > 0 or #st.lconc > 0 then
    if #st.cadd > 0 then zadd(st.kc, now + ttl, st.cadd) end
    if #st.lconc > 0 then zadd(st.kc, slot + 1 + LEASE_GRACE, st.lconc) end
    redis.call('EXPIRE', st.kc, math.ceil(ttl) + 1)
  end
end
return replies
