-- ARGV: P, id, origin
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't')
local s, task = j[1], j[2]
if not s then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'ok', 0, 0}
end
if s == 'dead' then return {'err', 'state', 'job ' .. id .. ' is dead: purge or requeue it'} end
if s == 'reserved' then return {'busy'} end
if s == 'pending' then unready(id, task)
elseif s == 'scheduled' then redis.call('ZREM', P .. ':sch', id)
elseif s == 'running' then redis.call('ZREM', P .. ':run', id) end
remove(id, task, s, 'c')
if s == 'running' then
  redis.call('PUBLISH', P .. ':events', 'c ' .. id .. ' ' .. ARGV[3])
  return {'ok', 1, 1}
end
return {'ok', 1, 0}
