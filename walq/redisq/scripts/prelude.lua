-- The prelude every script starts with (walq/redisq/lua.py puts it first, then
-- the script's body inside `local function main()`): the prefix, the server's
-- time, and the helpers the steps share. Counts change in memory and reach P:n
-- and P:tn once, in flush(), after main() returns.
--
-- P, the queue's key prefix, is its one declared key KEYS[1]: the queue's name
-- as a hash tag, "{name}", so that every key below hashes to P's Cluster slot
-- and the script runs whole on one node. The first ARGV entry repeats it, so
-- that each script's own arguments start at the second.
--
-- Keys, all under the prefix P (docs/REDIS.md draws them):
--   P:meta  hash   format version
--   P:seq   string the last job id issued (INCR-like; ids never repeat)
--   P:j:ID  hash   one live job: t task, p payload, k kind, key, pr priority, ma own
--                  max_attempts (0: default), a attempts, g claims so far (the lease
--                  token), s state, rs ready score, c created ms, due ms, dl lease
--                  deadline ms, rv reservation token, e last error, sz accounted bytes
--   P:r:TASK zset  pending jobs of TASK by rs = (32767 - priority) * 2^37 + id
--   P:rt    set    tasks with pending jobs
--   P:sch   zset   scheduled jobs by due ms
--   P:run   zset   running jobs by lease deadline ms
--   P:res   zset   jobs reserved by a claim in progress, by reservation deadline
--   P:dead  zset   dead jobs by id
--   P:keys  hash   idempotency key -> the unfinished job holding it
--   P:kept  hash   key -> the done job still holding it (unique_for; job field uf: its ms)
--   P:keptx zset   kept keys by the ms they are forgotten
--   P:sched hash   schedule name -> its last tick enqueued (seconds); P:schspec: its spec
--   P:tomb  hash   id -> c (cancelled) | p (purged); other ids <= P:seq not live are done
--   P:n     hash   counts by state, live bytes, and counters
--   P:tn    hash   "state:task" -> count
--   P:paused set   paused tasks: claims leave their pending jobs (q.pause, q.resume)
--   P:events       pub/sub channel: "r" (a job is ready), "c ID ORIGIN" (cancelled while running)
--   P:out:ID hash  a done job's result: k kind (1 JSON, 2 bytes), v value; expires after
--                  keep_results (walq.core.events.RESULT_*)
--   P:held:ID set  waiting jobs enqueued after job ID
--   P:cause hash   id -> why a job was cancelled with the job it was enqueued after
-- A waiting job's hash also has af (its parents, comma-separated), ap (policy: 0 cancel,
-- 1 always), w (parents not yet settled) and wd (the ms its delay ends, 0: none).
local P = KEYS[1]
local t0 = redis.call('TIME')
local NOW = tonumber(t0[1]) * 1000 + math.floor(tonumber(t0[2]) / 1000)
local N, TN = P .. ':n', P .. ':tn'
local function jk(id) return P .. ':j:' .. id end
local function norm(s) if s == 'reserved' then return 'pending' end return s end
-- Counts change in memory and reach P:n and P:tn once, at the end of the script.
local DN, DTN = {}, {}
local function bump(name, d) DN[name] = (DN[name] or 0) + (d or 1) end
local function count(state, task, d)
  state = norm(state)
  DN[state] = (DN[state] or 0) + d
  local f = state .. ':' .. task
  DTN[f] = (DTN[f] or 0) + d
end
local function flush()
  for f, d in pairs(DN) do
    if d ~= 0 then redis.call('HINCRBY', N, f, d) end
    DN[f] = nil
  end
  for f, d in pairs(DTN) do
    if d ~= 0 then redis.call('HINCRBY', TN, f, d) end
    DTN[f] = nil
  end
end
local function counted(f)
  return (tonumber(redis.call('HGET', N, f)) or 0) + (DN[f] or 0)
end
local function move(id, task, from, to)
  redis.call('HSET', jk(id), 's', to)
  if norm(from) ~= norm(to) then count(from, task, -1); count(to, task, 1) end
end
local LISTED = {}  -- tasks known to be in P:rt during this script
local function push_ready(id, task, rs)
  redis.call('ZADD', P .. ':r:' .. task, rs, id)
  if not LISTED[task] then
    redis.call('SADD', P .. ':rt', task)
    LISTED[task] = true
  end
end
local function unready(id, task)
  local rk = P .. ':r:' .. task
  redis.call('ZREM', rk, id)
  if redis.call('ZCARD', rk) == 0 then
    redis.call('SREM', P .. ':rt', task)
    LISTED[task] = nil
  end
end
local function release_key(id)
  local key = redis.call('HGET', jk(id), 'key')
  if key and redis.call('HGET', P .. ':keys', key) == tostring(id) then
    redis.call('HDEL', P .. ':keys', key)
  end
end
local settled  -- defined below: a job's dependents move on when it is done, dead or cancelled
local function drop(id, task, state, tomb)
  local sz = tonumber(redis.call('HGET', jk(id), 'sz') or '0')
  release_key(id)
  redis.call('DEL', jk(id))
  count(state, task, -1)
  bump('bytes', -sz)
  if tomb then redis.call('HSET', P .. ':tomb', id, tomb) end
end
local function remove(id, task, state, tomb)
  drop(id, task, state, tomb)
  if tomb == nil then settled(id, true) elseif tomb == 'c' then settled(id, false) end
end
local function gone(id)
  local t = redis.call('HGET', P .. ':tomb', id)
  if t == 'c' then return 'cancelled' end
  if t == 'p' then return 'purged' end
  local n = tonumber(id)
  if n and n >= 1 and n <= tonumber(redis.call('GET', P .. ':seq') or '0') then return 'done' end
  return 'unknown'
end
local function unknown(id, st)
  if st == 'purged' then return {'err', 'unknown', 'job ' .. id .. ' was purged'} end
  return {'err', 'unknown', 'job ' .. id .. ' does not exist'}
end
-- The running job ID if ATTEMPT ('' any) and claim GEN ('' any; 'none': the caller
-- holds no claim on it) still hold it: nil and its fields (s, a, g, t), or an error reply.
local function holder(id, attempt, gen)
  local j = redis.call('HMGET', jk(id), 's', 'a', 'g', 't')
  local s = j[1]
  if not s then
    local st = gone(id)
    if st == 'unknown' or st == 'purged' then return unknown(id, st) end
    if attempt ~= '' then
      return {'err', 'lease', 'job ' .. id .. ' is ' .. st .. ': attempt ' .. attempt ..
              ' no longer holds it'}
    end
    return {'err', 'state', 'job ' .. id .. ' is ' .. st .. ', not running'}
  end
  if s ~= 'running' then
    if attempt ~= '' then
      return {'err', 'lease', 'job ' .. id .. ' is ' .. norm(s) .. ': attempt ' .. attempt ..
              "'s lease has expired"}
    end
    return {'err', 'state', 'job ' .. id .. ' is ' .. norm(s) .. ', not running'}
  end
  if attempt ~= '' and j[2] ~= attempt then
    return {'err', 'lease', 'job ' .. id .. ' is running attempt ' .. j[2] .. ', not ' .. attempt}
  end
  if gen == 'none' then
    return {'err', 'lease', 'job ' .. id .. ' is running attempt ' .. j[2] ..
            ', which this handle did not claim'}
  end
  if gen ~= '' and j[3] ~= gen then
    return {'err', 'lease', 'job ' .. id .. ' was claimed again (attempt ' .. j[2] ..
            '): this claim no longer holds it'}
  end
  return nil, j
end
-- Jobs in index K (P:sch, P:run or P:res) whose time has come, and that are
-- still in STATE by their hash (not only by the index they came from), back
-- to pending, their FIELD (due, dl or rv) dropped. How many.
local function back_to_pending(k, state, field, limit)
  local n = 0
  k = P .. k
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', k, id)
    local j = redis.call('HMGET', jk(id), 's', 't', 'rs')
    if j[1] == state then
      move(id, j[2], state, 'pending')
      redis.call('HDEL', jk(id), field)
      push_ready(id, j[2], j[3])
      n = n + 1
    end
  end
  return n
end
-- Due scheduled jobs to pending; expired leases and reservations back to pending
-- (an expired lease keeps its attempt counted).
local function tick(limit)
  back_to_pending(':sch', 'scheduled', 'due', limit)
  bump('expired', back_to_pending(':run', 'running', 'dl', limit))
  back_to_pending(':res', 'reserved', 'rv', limit)
end
-- Job ID of TASK, in state FROM, is scheduled MS milliseconds from now, or pending
-- now if MS is 0. True if it is pending.
local function schedule(id, task, from, ms)
  if ms > 0 then
    move(id, task, from, 'scheduled')
    redis.call('HSET', jk(id), 'due', NOW + ms)
    redis.call('ZADD', P .. ':sch', NOW + ms, id)
    return false
  end
  move(id, task, from, 'pending')
  push_ready(id, task, redis.call('HGET', jk(id), 'rs'))
  return true
end
-- What became of job ID, for a dependent's cause: its live state, or how it left.
local function fate(id)
  return redis.call('HGET', jk(id), 's') or gone(id)
end
-- Job ID is done (ok) or dead or cancelled: each waiting job enqueued after it
-- is cancelled with the cause (policy 0, when not ok), or counts one parent
-- fewer and, with none left, becomes pending (scheduled if its delay has not ended).
settled = function(id, ok)
  local work, woke = {{tostring(id), ok}}, false
  while #work > 0 do
    local item = table.remove(work)
    local hk = P .. ':held:' .. item[1]
    local kids = redis.call('SMEMBERS', hk)
    if #kids > 0 then redis.call('DEL', hk) end
    for _, c in ipairs(kids) do
      local j = redis.call('HMGET', jk(c), 's', 't', 'ap', 'wd')
      if j[1] == 'waiting' then
        if not item[2] and j[3] == '0' then
          drop(c, j[2], 'waiting', 'c')
          redis.call('HSET', P .. ':cause', c,
                     'job ' .. item[1] .. ' it was enqueued after is ' .. fate(item[1]))
          work[#work + 1] = {c, false}
        elseif redis.call('HINCRBY', jk(c), 'w', -1) <= 0 then
          local wd = tonumber(j[4]) or 0
          local delay = 0
          if wd > NOW then delay = wd - NOW end
          if schedule(c, j[2], 'waiting', delay) then woke = true end
        end
      end
    end
  end
  if woke then redis.call('PUBLISH', P .. ':events', 'r') end
end
local function bury(id, task, from, err, attempts)
  redis.call('HSET', jk(id), 'e', err, 'a', attempts)
  redis.call('HDEL', jk(id), 'dl', 'rv', 'due')
  move(id, task, from, 'dead')
  redis.call('ZADD', P .. ':dead', id, id)
  release_key(id)
  bump('dead_lettered')
  settled(id, false)
end
-- Jobs not yet finished (what max_pending caps).
local function unfinished()
  return counted('pending') + counted('scheduled') + counted('running') + counted('waiting')
end
-- A key is held by the unfinished job that has it (P:keys), or by a done job while
-- P:keptx says it is remembered (P:kept, unique_for); expired entries are dropped
-- as they are met, and a few at a time by forget_expired.
local function forget_expired(limit)
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. ':keptx', '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', P .. ':keptx', key)
    redis.call('HDEL', P .. ':kept', key)
  end
end
local function kept(key)
  local id = redis.call('HGET', P .. ':kept', key)
  if not id then return false end
  local until_ms = tonumber(redis.call('ZSCORE', P .. ':keptx', key) or '0')
  if until_ms > NOW then return id end
  redis.call('HDEL', P .. ':kept', key)
  redis.call('ZREM', P .. ':keptx', key)
  return false
end
-- Job ID is done: if it asked (unique_for: its field uf, ms), its key is remembered.
local function keep_key(id)
  local kf = redis.call('HMGET', jk(id), 'key', 'uf')
  if kf[1] and kf[2] then
    redis.call('HSET', P .. ':kept', kf[1], id)
    redis.call('ZADD', P .. ':keptx', NOW + tonumber(kf[2]), kf[1])
  end
end
-- Add M items from A[base..] (A: ARGV unless given; 8 entries each: task, kind, payload,
-- has key ('1'/'0'), key, delay ms, priority, max_attempts), coalescing keys (onto an
-- unfinished job or a remembered one); caps MAXP, MAXB ('' or nil: none); UF (nil or
-- 0: not): ms a new job's key is remembered once it is done. Their ids, or nil and an
-- error reply.
local function add_items(base, m, maxp, maxb, uf, A)
  A = A or ARGV
  uf = uf or 0
  local seq = tonumber(redis.call('GET', P .. ':seq') or '0')
  local ids, fresh, batch = {}, {}, {}
  for i = 0, m - 1 do
    local b = base + i * 8
    local owner = false
    if A[b + 3] == '1' then
      owner = batch[A[b + 4]] or redis.call('HGET', P .. ':keys', A[b + 4]) or kept(A[b + 4])
    end
    if owner then
      ids[i + 1] = tonumber(owner)
    else
      seq = seq + 1
      ids[i + 1] = seq
      fresh[#fresh + 1] = {b, seq}
      if A[b + 3] == '1' then batch[A[b + 4]] = seq end
    end
  end
  if #fresh > 0 then
    if maxp and maxp ~= '' and unfinished() + #fresh > tonumber(maxp) then
      return nil, {'err', 'full', 'max_pending (' .. maxp .. ') reached'}
    end
    if maxb and maxb ~= '' then
      local size = 0
      for _, f in ipairs(fresh) do size = size + #A[f[1] + 2] + 64 + #A[f[1]] end
      if counted('bytes') + size > tonumber(maxb) then
        return nil, {'err', 'full', 'max_bytes (' .. maxb .. ') reached'}
      end
    end
    redis.call('SET', P .. ':seq', seq)
  end
  local ready = false
  for _, f in ipairs(fresh) do
    local b, id = f[1], f[2]
    local task, payload, delay = A[b], A[b + 2], tonumber(A[b + 5])
    local rs = (32767 - tonumber(A[b + 6])) * 137438953472 + id
    local sz = #payload + 64 + #task
    local fields = {'t', task, 'k', A[b + 1], 'p', payload, 'pr', A[b + 6],
                    'ma', A[b + 7], 'a', 0, 'g', 0, 'rs', rs, 'c', NOW, 'sz', sz}
    if A[b + 3] == '1' then
      fields[#fields + 1] = 'key'
      fields[#fields + 1] = A[b + 4]
      redis.call('HSET', P .. ':keys', A[b + 4], id)
      if uf > 0 then
        fields[#fields + 1] = 'uf'
        fields[#fields + 1] = uf
      end
    end
    local state = 'pending'
    if delay > 0 then
      state = 'scheduled'
      fields[#fields + 1] = 'due'
      fields[#fields + 1] = NOW + delay
      redis.call('ZADD', P .. ':sch', NOW + delay, id)
    else
      push_ready(id, task, rs)
      ready = true
    end
    fields[#fields + 1] = 's'
    fields[#fields + 1] = state
    redis.call('HSET', jk(id), unpack(fields))
    count(state, task, 1)
    bump('bytes', sz)
  end
  bump('enqueued', #fresh)
  bump('coalesced', m - #fresh)
  if ready then redis.call('PUBLISH', P .. ':events', 'r') end
  return ids
end
-- Call fn(id, task) for the best pending jobs (highest priority, then oldest), each
-- taken out of its ready set first, until fn has returned true n times.
local function best_ready(n, tasks, excluded, fn)
  local heads = {}
  local function head(t)
    local h = redis.call('ZRANGE', P .. ':r:' .. t, 0, 0, 'WITHSCORES')
    if h[1] then heads[t] = {h[1], tonumber(h[2])} else heads[t] = nil end
  end
  for _, t in ipairs(tasks) do
    if not excluded[t] and redis.call('SISMEMBER', P .. ':paused', t) == 0 then head(t) end
  end
  local got, looked = 0, 0
  while got < n and looked < n + 1000 do
    local bt, best = nil, nil
    for t, h in pairs(heads) do
      if best == nil or h[2] < best[2] then bt, best = t, h end
    end
    if not bt then break end
    unready(best[1], bt)
    head(bt)
    looked = looked + 1
    if fn(best[1], bt) then got = got + 1 end
  end
end
