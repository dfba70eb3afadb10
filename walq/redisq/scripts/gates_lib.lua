-- The storm gates every host shares (walq/redisq/gates.py): a task's breaker,
-- rate limit and concurrency cap, and the queue's retry budget. Times in server
-- ms. Keys:
--   P:gb        hash   the retry budget: f<slice> first attempts, r<slice> refunds,
--                      w<slice> retries paid, tat the floor's token bucket
--   P:gr:TASK   string the task's rate limit (a token bucket: its theoretical arrival time)
--   P:gk:TASK   hash   the task's breaker: st closed|open|half, n failures in a row,
--                      reopen ms, probe ms (a half-open probe's deadline)
--   P:gc:TASK   hash   the task's running attempts by holder (one per worker)
--   P:gl:TASK   zset   holders by lease deadline: a dead host's count is dropped at it
-- A token bucket of PER calls/s and BURST at once, stored at key K (or field F
-- of hash K): ms until a call may start (0: now); take it if TAKE.
local function bucket(k, f, per, burst, take)
  local tat
  if f then tat = tonumber(redis.call('HGET', k, f)) else tat = tonumber(redis.call('GET', k)) end
  tat = tat or 0
  local step = 1000 / per
  local earliest = tat - (burst - 1) * step
  if NOW < earliest then return earliest - NOW end
  if take then
    local v = tostring(math.max(tat, NOW) + step)
    if f then redis.call('HSET', k, f, v) else redis.call('SET', k, v, 'PX', math.ceil(burst * step) + 60000) end
  end
  return 0
end
-- The retry budget's credit now (in retries), its stale slices dropped.
local function credit(ratio, window)
  local k = P .. ':gb'
  local slice = window / 20
  local oldest = math.floor((NOW - window) / slice)
  local f, r, w = 0, 0, 0
  local all = redis.call('HGETALL', k)
  for i = 1, #all, 2 do
    local name, v = all[i], tonumber(all[i + 1])
    local kind, idx = string.sub(name, 1, 1), tonumber(string.sub(name, 2))
    if idx then
      if idx <= oldest then redis.call('HDEL', k, name)
      elseif kind == 'f' then f = f + v
      elseif kind == 'r' then r = r + v
      elseif kind == 'w' then w = w + v end
    end
  end
  return ratio * f + r - w
end
local function ledger(kind, window)
  local slice = window / 20
  redis.call('HINCRBY', P .. ':gb', kind .. math.floor(NOW / slice), 1)
  redis.call('PEXPIRE', P .. ':gb', math.ceil(window * 2) + 60000)
end
-- ms until the budget pays for a retry (0: now); pay if TAKE.
local function budget(ratio, floor, window, take)
  if credit(ratio, window) >= 1 then
    if take then ledger('w', window) end
    return 0
  end
  if floor > 0 then
    local wait = bucket(P .. ':gb', 'tat', floor, math.max(1, floor), take)
    return math.min(wait, window / 20)
  end
  return window / 20
end
-- The breaker of TASK: its state after time has passed, as {st, n, reopen, probe}.
local function breaker(task)
  local k = P .. ':gk:' .. task
  local b = redis.call('HMGET', k, 'st', 'n', 'reopen', 'probe')
  local st, n, reopen, probe = b[1] or 'closed', tonumber(b[2]) or 0, tonumber(b[3]) or 0, tonumber(b[4])
  if st == 'open' and NOW >= reopen then st, probe = 'half', nil
  elseif probe and NOW >= probe then probe = nil end
  return {st = st, n = n, reopen = reopen, probe = probe}
end
local function save_breaker(task, b)
  local k = P .. ':gk:' .. task
  redis.call('HSET', k, 'st', b.st, 'n', b.n, 'reopen', b.reopen)
  if b.probe then redis.call('HSET', k, 'probe', b.probe) else redis.call('HDEL', k, 'probe') end
end
local function breaker_at(b)
  if b.st == 'open' then return b.reopen end
  if b.st == 'half' and b.probe then return b.probe end
  return NOW
end
-- The concurrency cap: running attempts of TASK on live holders (expired ones dropped).
local function running(task)
  local c, l = P .. ':gc:' .. task, P .. ':gl:' .. task
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', l, '-inf', NOW)) do
    redis.call('ZREM', l, h)
    redis.call('HDEL', c, h)
  end
  local n = 0
  local all = redis.call('HVALS', c)
  for _, v in ipairs(all) do n = n + tonumber(v) end
  return n
end
