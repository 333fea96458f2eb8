"""The Lua scripts of the Redis store: one atomic script per state change.

Every script reads the server's clock (``TIME``), so workers with skewed clocks agree.
Floats go back to Python as strings (a Lua number in a reply is truncated to an int).
"""

from __future__ import annotations

__all__ = [
    "BREAKER_ADMIT",
    "BREAKER_FORCE",
    "BREAKER_RECORD",
    "BREAKER_RESET",
    "BREAKER_SNAPSHOT",
    "BUDGET_ADJUST",
    "BUDGET_RESERVE",
    "BULKHEAD_ACQUIRE",
    "BULKHEAD_COUNT",
    "BULKHEAD_RELEASE",
    "BULKHEAD_RENEW",
    "RATE_REFUND",
    "RATE_RESERVE",
    "THROTTLE_ADMIT",
    "THROTTLE_DONE",
    "THROTTLE_HOLD",
    "THROTTLE_VIEW",
]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
"""

# The breaker. KEYS: state hash, probe zset, window (ring string or bucket hash).
# ARGV[1..11]: the policy config (see _redis_store.breaker_args); ARGV[12]: the channel
# transitions are published on; ARGV[13]: the breaker's name; ARGV[14..]: per script.
# States: 0 CLOSED, 1 OPEN, 2 HALF_OPEN.
_BREAKER = (
    _NOW
    + """
local S, P, W = KEYS[1], KEYS[2], KEYS[3]
-- ARGV[1]: recovery_timeout, then the OPEN periods of the 1st, 2nd, ... re-open from
-- HALF_OPEN (the breaker's open_backoff; the last one repeats), comma-separated.
local rts = {}
for v in string.gmatch(ARGV[1], '[^,]+') do rts[#rts + 1] = tonumber(v) end
local rt = rts[1]
local homax = tonumber(ARGV[2])
local hot = tonumber(ARGV[3])
local slow_rate = tonumber(ARGV[4])
local policy = ARGV[5]
local threshold = tonumber(ARGV[6])
local size = tonumber(ARGV[7])
local seconds = tonumber(ARGV[8])
local min_calls = tonumber(ARGV[9])
local frate = tonumber(ARGV[10])
local probe_ttl = tonumber(ARGV[11])
local channel, bname = ARGV[12], ARGV[13]
local h = redis.call('HMGET', S, 'st', 'gen', 'open_until', 'ho_since', 'ho_ok', 'forced',
  'streak', 'reopens')
local st = tonumber(h[1]) or 0
local gen = tonumber(h[2]) or 0
local open_until = tonumber(h[3]) or 0
local ho_since = tonumber(h[4]) or 0
local ho_ok = tonumber(h[5]) or 0
local forced = h[6] == '1'
local streak = tonumber(h[7]) or 0
local reopens = tonumber(h[8]) or 0
local function clear_window()
  redis.call('DEL', W)
  redis.call('HSET', S, 'wc', 0, 'wf', 0, 'ws', 0, 'wi', 0, 'wb', 0)
end
local function go(new, reason, force)
  local from = st
  gen = gen + 1
  st = new
  redis.call('DEL', P)
  if new == 1 then
    local period = rt
    if from == 2 and #rts > 1 then
      reopens = reopens + 1
      period = rts[math.min(reopens + 1, #rts)]
    else
      reopens = 0
    end
    open_until = now + period
    forced = force
    redis.call('HSET', S, 'st', 1, 'gen', gen, 'opened_at', fmt(now),
      'open_until', fmt(open_until), 'forced', force and 1 or 0, 'reason', reason,
      'reopens', reopens)
  elseif new == 2 then
    ho_since = now
    ho_ok = 0
    forced = false
    redis.call('HSET', S, 'st', 2, 'gen', gen, 'ho_since', fmt(now), 'ho_ok', 0,
      'forced', 0, 'reason', reason)
  else
    streak = 0
    forced = false
    reopens = 0
    redis.call('HSET', S, 'st', 0, 'gen', gen, 'streak', 0, 'forced', 0, 'ho_ok', 0,
      'reason', reason, 'reopens', 0)
    clear_window()
  end
  redis.call('PUBLISH', channel, bname .. '\\n' .. gen .. '\\n' .. st)
end
local function refresh()
  if st == 1 then
    if (not forced) and now >= open_until then go(2, 'recovery_timeout', false) end
  elseif st == 2 then
    if hot and now >= ho_since + hot then go(1, 'half_open_timeout', false) end
  end
end
local function retry_after()
  if st ~= 1 then return '0' end
  if forced then return 'inf' end
  return fmt(math.max(0, open_until - now))
end
"""
)

# ARGV[14]: the probe id to take; ARGV[15..]: probes of this worker whose admission or
# record reply was lost, given back first.
BREAKER_ADMIT = (
    _BREAKER
    + """
for i = 15, #ARGV do redis.call('ZREM', P, ARGV[i]) end
refresh()
if st == 0 then return {1, gen, 0, '0', 0} end
if st == 1 then return {0, gen, 1, retry_after(), 0} end
redis.call('ZREMRANGEBYSCORE', P, '-inf', fmt(now))
local n = redis.call('ZCARD', P)
if n + ho_ok < homax then
  redis.call('ZADD', P, fmt(now + probe_ttl), ARGV[14])
  redis.call('PEXPIRE', P, math.ceil(probe_ttl * 1000) + 1000)
  return {1, gen, 2, '0', 1}
end
return {0, gen, 2, '0', 0}
"""
)

# ARGV[14]: generation, ARGV[15]: outcome, ARGV[16]: probe id or '', ARGV[17..]: lost probes.
BREAKER_RECORD = (
    _BREAKER
    + """
local function window_add(fail, slow)
  local cfg = policy == 'count' and ('c' .. ARGV[7]) or ('t' .. ARGV[8])
  local hw = redis.call('HMGET', S, 'wcfg', 'wc', 'wf', 'ws', 'wi', 'wb')
  local wc, wf, ws = tonumber(hw[2]) or 0, tonumber(hw[3]) or 0, tonumber(hw[4]) or 0
  local wi, wb = tonumber(hw[5]) or 0, tonumber(hw[6]) or 0
  if hw[1] ~= cfg then
    redis.call('DEL', W)
    wc, wf, ws, wi, wb = 0, 0, 0, 0, 0
  end
  local f = fail and 1 or 0
  local s = slow and 1 or 0
  if policy == 'count' then
    if wc >= size then
      local old = tonumber(redis.call('GETRANGE', W, wi, wi)) or 0
      wf = wf - old % 2
      ws = ws - math.floor(old / 2)
    else
      wc = wc + 1
    end
    redis.call('SETRANGE', W, wi, tostring(f + 2 * s))
    wi = (wi + 1) % size
  else
    local width = seconds / 60
    local idx = math.floor(now / width)
    local drop = idx - 60
    if wc <= 0 or wb == 0 or drop >= wb + 60 then
      redis.call('DEL', W)
      wc, wf, ws, wb = 0, 0, 0, idx
    elseif drop >= wb then
      for b = wb, drop do
        local old = redis.call('HMGET', W, 'c' .. b, 'f' .. b, 's' .. b)
        if old[1] then
          wc = wc - tonumber(old[1])
          wf = wf - (tonumber(old[2]) or 0)
          ws = ws - (tonumber(old[3]) or 0)
          redis.call('HDEL', W, 'c' .. b, 'f' .. b, 's' .. b)
        end
      end
      wb = drop + 1
    end
    redis.call('HINCRBY', W, 'c' .. idx, 1)
    if fail then redis.call('HINCRBY', W, 'f' .. idx, 1) end
    if slow then redis.call('HINCRBY', W, 's' .. idx, 1) end
    redis.call('PEXPIRE', W, math.ceil(seconds * 1000) + 1000)
    wc = wc + 1
  end
  wf = wf + f
  ws = ws + s
  redis.call('HSET', S, 'wcfg', cfg, 'wc', wc, 'wf', wf, 'ws', ws, 'wi', wi, 'wb', wb)
  if wc >= min_calls then
    if wf >= frate * wc then return 'failure_rate' end
    if ws > 0 and ws >= slow_rate * wc then return 'slow' end
  end
  return nil
end

for i = 17, #ARGV do redis.call('ZREM', P, ARGV[i]) end
refresh()
if ARGV[16] ~= '' then redis.call('ZREM', P, ARGV[16]) end
local outcome = ARGV[15]
if outcome == 'neutral' or tonumber(ARGV[14]) ~= gen then return {gen, st, retry_after()} end
local fail = outcome == 'failure' or outcome == 'slow_failure'
local slow = outcome == 'slow' or outcome == 'slow_failure'
if st == 2 then
  if fail then go(1, 'half_open_failure', false)
  elseif slow then go(1, 'slow', false)
  else
    ho_ok = ho_ok + 1
    redis.call('HSET', S, 'ho_ok', ho_ok)
    if ho_ok >= homax then go(0, 'probes_succeeded', false) end
  end
elseif st == 0 then
  if policy == 'consecutive' then
    if fail or slow then
      streak = streak + 1
      redis.call('HSET', S, 'streak', streak)
      if streak >= threshold then go(1, fail and 'failures' or 'slow', false) end
    elseif streak ~= 0 then
      redis.call('HSET', S, 'streak', 0)
    end
  else
    local reason = window_add(fail, slow)
    if reason then go(1, reason, false) end
  end
end
return {gen, st, retry_after()}
"""
)

# ARGV[14]: the state to force (0, 1 or 2).
BREAKER_FORCE = (
    _BREAKER
    + """
local target = tonumber(ARGV[14])
go(target, 'forced', target == 1)
return {gen, st, retry_after()}
"""
)

# KEYS: state hash, probe zset, window. ARGV[1]: channel, ARGV[2]: name.
BREAKER_RESET = """
local S, P, W = KEYS[1], KEYS[2], KEYS[3]
local gen = redis.call('HINCRBY', S, 'gen', 1)
redis.call('DEL', P, W)
redis.call('HSET', S, 'st', 0, 'streak', 0, 'forced', 0, 'ho_ok', 0, 'reason', 'reset',
  'wc', 0, 'wf', 0, 'ws', 0, 'wi', 0, 'wb', 0)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\\n' .. gen .. '\\n0')
return gen
"""

BREAKER_SNAPSHOT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
local h = redis.call('HGETALL', KEYS[1])
h[#h + 1] = 'ho_taken'
h[#h + 1] = redis.call('ZCARD', KEYS[2])
h[#h + 1] = 'now'
h[#h + 1] = fmt(now)
return h
"""
)

# The bulkhead. KEYS[1]: a zset of lease ids scored by expiry; KEYS[2]: a zset of lease ids
# released while not held, scored by when they may be forgotten: an acquire of one of them
# that arrives later (one whose reply the client never saw) takes nothing.
_BULKHEAD_GIVE_BACK = """
local function give_back(from, keep)
  local forget = nil
  for i = from, #ARGV do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 0 then
      forget = forget or now + keep
      redis.call('ZADD', KEYS[2], fmt(forget), ARGV[i])
    end
  end
  if forget then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
    local ms = math.ceil(keep * 1000) + 1000
    if redis.call('PTTL', KEYS[2]) < ms then redis.call('PEXPIRE', KEYS[2], ms) end
  end
end
"""

# ARGV: limit, lease id, ttl, how long a released id is remembered, then the lease ids of
# this worker whose acquire or release reply was lost (released first).
BULKHEAD_ACQUIRE = (
    _NOW
    + _BULKHEAD_GIVE_BACK
    + """
local L = KEYS[1]
local ttl = tonumber(ARGV[3])
if #ARGV > 4 then give_back(5, tonumber(ARGV[4])) end
redis.call('ZREMRANGEBYSCORE', L, '-inf', fmt(now))
if not redis.call('ZSCORE', L, ARGV[2]) then
  if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
  if redis.call('ZCARD', L) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('ZADD', L, fmt(now + ttl), ARGV[2])
local ms = math.ceil(ttl * 1000) + 1000
if redis.call('PTTL', L) < ms then redis.call('PEXPIRE', L, ms) end
return 1
"""
)

# ARGV: how long a released id is remembered, then the lease ids to release. A lease that
# is not held is remembered as released instead.
BULKHEAD_RELEASE = (
    _NOW
    + _BULKHEAD_GIVE_BACK
    + """
give_back(2, tonumber(ARGV[1]))
return 1
"""
)

# ARGV: ttl, lease ids... Returns how many of them were still live and are renewed.
BULKHEAD_RENEW = (
    _NOW
    + """
local L = KEYS[1]
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', L, '-inf', fmt(now))
local renewed = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', L, ARGV[i]) then
    redis.call('ZADD', L, fmt(now + ttl), ARGV[i])
    renewed[#renewed + 1] = ARGV[i]
  end
end
local ms = math.ceil(ttl * 1000) + 1000
if #renewed > 0 and redis.call('PTTL', L) < ms then redis.call('PEXPIRE', L, ms) end
return renewed
"""
)

BULKHEAD_COUNT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. fmt(now), '+inf')
"""
)

# The rate limiter. KEYS[1]: the GCRA theoretical arrival time (TAT); KEYS[2]: a zset of
# the reservations not yet due, scored by their TAT (so that one whose reply was lost can
# be taken back). ARGV: interval, capacity (burst * interval), cost, max_wait or '', the
# reservation's id ('<worker>-<n>-<cost>'), then the ids of this worker's reservations
# whose reply was lost, taken back first.
RATE_RESERVE = (
    _NOW
    + """
local interval, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if #ARGV > 5 then
  local back = 0
  for i = 6, #ARGV do
    if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
      back = back + (tonumber(string.match(ARGV[i], '%-(%d+)$')) or 0)
    end
  end
  if back > 0 then
    tat = tat - back * interval
    if tat <= now then
      redis.call('DEL', KEYS[1])
    else
      redis.call('SET', KEYS[1], fmt(tat), 'PX', math.ceil((tat - now) * 1000) + 1)
    end
  end
end
if tat < now then tat = now end
local new_tat = tat + cost * interval
local wait = new_tat - now - capacity
if wait < 1e-9 then
  wait = 0
elseif max_wait and wait > max_wait then
  return {0, fmt(wait)}
end
local px = math.ceil((new_tat - now) * 1000) + 1
redis.call('SET', KEYS[1], fmt(new_tat), 'PX', px)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
redis.call('ZADD', KEYS[2], fmt(new_tat), ARGV[5])
redis.call('PEXPIRE', KEYS[2], px)
return {1, fmt(wait)}
"""
)

# ARGV: interval, cost.
RATE_REFUND = (
    _NOW
    + """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local new_tat = tat - tonumber(ARGV[2]) * tonumber(ARGV[1])
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], fmt(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1)
end
return 1
"""
)

# Budgets. KEYS[1]: a zset of charge ids scored by start; KEYS[2]: a hash with 'used',
# 'win' and one 'a<id>' amount per charge. ARGV: amount, cap, window, then per script;
# the last ones are the charges of this worker whose reserve reply was lost (taken back).
_BUDGET = (
    _NOW
    + """
local Z, H = KEYS[1], KEYS[2]
local window = tonumber(ARGV[3]) or tonumber(redis.call('HGET', H, 'win'))
if not window then return 0 end
local used = tonumber(redis.call('HGET', H, 'used')) or 0
local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', fmt(now - window))
if #gone > 0 then
  for _, id in ipairs(gone) do
    used = used - (tonumber(redis.call('HGET', H, 'a' .. id)) or 0)
    redis.call('HDEL', H, 'a' .. id)
  end
  redis.call('ZREMRANGEBYSCORE', Z, '-inf', fmt(now - window))
  if redis.call('ZCARD', Z) == 0 then used = 0 end
  redis.call('HSET', H, 'used', fmt(used))
end
local function take_back(from)
  for i = from, #ARGV do
    local charged = tonumber(redis.call('HGET', H, 'a' .. ARGV[i]))
    if charged then
      used = used - charged
      redis.call('HDEL', H, 'a' .. ARGV[i])
      redis.call('ZREM', Z, ARGV[i])
      redis.call('HSET', H, 'used', fmt(used))
    end
  end
end
"""
)

# ARGV[4]: the new charge's id (unique per worker and call); ARGV[5..]: lost charges.
BUDGET_RESERVE = (
    _BUDGET
    + """
take_back(5)
local amount, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
if used + amount <= cap then
  local id = ARGV[4]
  redis.call('ZADD', Z, fmt(now), id)
  redis.call('HSET', H, 'used', fmt(used + amount), 'a' .. id, fmt(amount), 'win', fmt(window))
  local ms = math.ceil(window * 1000) + 1000
  redis.call('PEXPIRE', Z, ms)
  redis.call('PEXPIRE', H, ms)
  return {1, '', id}
end
if amount > cap then return {0, '', ''} end
local need = used + amount - cap
local freed = 0
local charges = redis.call('ZRANGE', Z, 0, -1, 'WITHSCORES')
for i = 1, #charges, 2 do
  freed = freed + (tonumber(redis.call('HGET', H, 'a' .. charges[i])) or 0)
  if freed >= need then
    return {0, fmt(math.max(0, tonumber(charges[i + 1]) + window - now)), ''}
  end
end
return {0, '', ''}
"""
)

# ARGV: amount, entry id, '' (the window is the one the last reserve stored), lost charges.
BUDGET_ADJUST = (
    _BUDGET
    + """
take_back(4)
local old = tonumber(redis.call('HGET', H, 'a' .. ARGV[2]))
if not old then return 0 end
local amount = tonumber(ARGV[1])
redis.call('HSET', H, 'a' .. ARGV[2], fmt(amount), 'used', fmt(used + amount - old))
return 1
"""
)

# The shared adaptive throttle. KEYS: lease zset (scored by expiry), state hash, failure
# zset (scored by time). ARGV[1..9]: max, min, initial, failure_threshold, failure_window,
# decrease_factor, cooling_period, increase_by, min_dispatch_interval; ARGV[10..]: per script.
# The state hash: limit, epoch, last_change, last_dispatch, hold_until, decreases.
_THROTTLE = (
    _NOW
    + """
local L, S, F = KEYS[1], KEYS[2], KEYS[3]
local max_c, min_c, initial = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local threshold, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local factor, cooling = tonumber(ARGV[6]), tonumber(ARGV[7])
local step, interval = tonumber(ARGV[8]), tonumber(ARGV[9])
local h = redis.call('HMGET', S, 'limit', 'epoch', 'last_change', 'last_dispatch',
  'hold_until', 'decreases')
local limit = tonumber(h[1]) or initial
if limit > max_c then limit = max_c end
if limit < min_c then limit = min_c end
local epoch = tonumber(h[2]) or 0
local last_change = tonumber(h[3])
local last_dispatch = tonumber(h[4]) or -1e308
local hold_until = tonumber(h[5]) or 0
local decreases = tonumber(h[6]) or 0
redis.call('ZREMRANGEBYSCORE', L, '-inf', fmt(now))
local function keep(key, seconds)
  local ms = math.ceil(seconds * 1000) + 1000
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function save()
  redis.call('HSET', S, 'limit', limit, 'epoch', epoch, 'hold_until', fmt(hold_until),
    'decreases', decreases)
  if last_change then redis.call('HSET', S, 'last_change', fmt(last_change)) end
  keep(S, math.max(cooling, window, hold_until - now, 0) + 3600)
end
local function decrease()
  local new = math.max(min_c, math.floor(limit * factor))
  if new < limit then
    limit = new
    epoch = epoch + 1
    decreases = decreases + 1
    last_change = now
  end
  redis.call('DEL', F)
end
local function view()
  return {limit, redis.call('ZCARD', L), epoch, fmt(math.max(0, hold_until - now)), decreases}
end
"""
)

# ARGV[10]: lease id, ARGV[11]: lease ttl, ARGV[12..]: lease ids to give back first.
# Returns {admitted (0/1), wait (-1: until a lease ends), limit, in_flight, epoch, hold, decreases}.
THROTTLE_ADMIT = (
    _THROTTLE
    + """
for i = 12, #ARGV do redis.call('ZREM', L, ARGV[i]) end
local function refuse(wait)
  local v = view()
  return {0, fmt(wait), v[1], v[2], v[3], v[4], v[5]}
end
if hold_until > now then return refuse(hold_until - now) end
if redis.call('ZCARD', L) >= limit then return refuse(-1) end
if interval > 0 and last_dispatch + interval > now then
  return refuse(last_dispatch + interval - now)
end
local ttl = tonumber(ARGV[11])
redis.call('ZADD', L, fmt(now + ttl), ARGV[10])
keep(L, ttl)
redis.call('HSET', S, 'last_dispatch', fmt(now))
save()
local v = view()
return {1, '0', v[1], v[2], v[3], v[4], v[5]}
"""
)

# ARGV[10]: lease id, ARGV[11]: outcome ('success', 'failure' or 'neutral'), ARGV[12]: the
# epoch the call was admitted in, ARGV[13..]: lease ids to give back.
# Returns {limit, in_flight, epoch, hold, decreases}.
THROTTLE_DONE = (
    _THROTTLE
    + """
redis.call('ZREM', L, ARGV[10])
for i = 13, #ARGV do redis.call('ZREM', L, ARGV[i]) end
local outcome, admitted = ARGV[11], tonumber(ARGV[12])
if outcome == 'failure' and admitted == epoch then
  redis.call('ZADD', F, fmt(now), ARGV[10])
  redis.call('ZREMRANGEBYSCORE', F, '-inf', fmt(now - window))
  keep(F, window)
  if redis.call('ZCARD', F) >= threshold then decrease() end
elseif outcome == 'success' and limit < max_c then
  if last_change == nil then
    last_change = now
  elseif now - last_change >= cooling then
    limit = math.min(max_c, limit + step)
    last_change = now
  end
end
save()
return view()
"""
)

# ARGV[10]: seconds to hold dispatch (from now, server time), ARGV[11]: the epoch the call
# that got the hint was admitted in (-1: none; a hint then never decreases).
# Returns {limit, in_flight, epoch, hold, decreases}.
THROTTLE_HOLD = (
    _THROTTLE
    + """
local seconds = tonumber(ARGV[10])
if seconds > 0 and now + seconds > hold_until then hold_until = now + seconds end
if tonumber(ARGV[11]) == epoch then decrease() end
save()
return view()
"""
)

# Returns {limit, in_flight, epoch, hold, decreases}.
THROTTLE_VIEW = (
    _THROTTLE
    + """
return view()
"""
)
