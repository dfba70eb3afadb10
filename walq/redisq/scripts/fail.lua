-- ARGV: P, id, attempt, claim, error, permanent, delay ms ('' backoff), u in [0,1),
--   defaults, default max, backoff base s, backoff cap s
-- The default delay is walq.core.retry.Backoff's: u * min(cap, base * 2^a) seconds,
-- a the attempt that failed.
local id = ARGV[2]
local e, j = holder(id, ARGV[3], ARGV[4])
if e then return e end
local task, a = j[4], tonumber(j[2])
local own = tonumber(redis.call('HGET', jk(id), 'ma')) or 0
local m = own
if m == 0 then m = cjson.decode(ARGV[9])[task] or tonumber(ARGV[10]) end
redis.call('ZREM', P .. ':run', id)
redis.call('HDEL', jk(id), 'dl')
bump('failed')
if ARGV[6] == '1' or a >= m then
  bury(id, task, 'running', ARGV[5], a)
  return {'ok', 'dead'}
end
local delay
if ARGV[7] ~= '' then delay = tonumber(ARGV[7])
else
  local ceiling = math.min(tonumber(ARGV[12]), tonumber(ARGV[11]) * 2 ^ math.min(a, 1023))
  delay = math.floor(tonumber(ARGV[8]) * ceiling * 1000)
end
redis.call('HSET', jk(id), 'e', ARGV[5])
if schedule(id, task, 'running', delay) then redis.call('PUBLISH', P .. ':events', 'r') end
bump('retried')
return {'ok', 'scheduled'}
