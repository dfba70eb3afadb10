-- Shared by claim.lua and commit.lua (after the prelude): starting a job.
-- ARGV[3..5]: per-task max_attempts defaults (JSON), the default max, lease ms
local DEFAULTS = cjson.decode(ARGV[3])
local DEFMAX = tonumber(ARGV[4])
local LEASE = tonumber(ARGV[5])
local function maxa_of(task, own)
  own = tonumber(own) or 0
  if own > 0 then return own end
  return DEFAULTS[task] or DEFMAX
end
local function start(id, task, attempt, maxa)
  local g = redis.call('HINCRBY', jk(id), 'g', 1)
  redis.call('HSET', jk(id), 's', 'running', 'a', attempt, 'dl', NOW + LEASE)
  redis.call('HDEL', jk(id), 'rv')
  count('pending', task, -1)
  count('running', task, 1)
  redis.call('ZADD', P .. ':run', NOW + LEASE, id)
  bump('claimed')
  local j = redis.call('HMGET', jk(id), 'k', 'p', 'key', 'pr', 'c', 'af')
  return {tonumber(id), task, j[1], j[2], attempt, j[3], tonumber(j[4]), tonumber(j[5]), g, maxa,
          j[6] or ''}
end
-- Start job ID (out of the ready set already), or dead-letter it if its
-- attempts ran out while it was interrupted. True if it started.
local function take(id, task, out)
  local j = redis.call('HMGET', jk(id), 'a', 'ma', 's')
  local a, m = tonumber(j[1]), maxa_of(task, j[2])
  if a >= m then
    bury(id, task, j[3], 'attempt ' .. a .. ' was interrupted (its worker stopped or its ' ..
         'lease expired) and no attempts remain', a)
    return false
  end
  out[#out + 1] = start(id, task, a + 1, m)
  return true
end
