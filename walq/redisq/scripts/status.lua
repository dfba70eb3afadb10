-- ARGV: P, id. A due job or an expired lease is settled first, as a claim would.
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't', 'rs', 'due', 'dl')
local s = j[1]
if not s then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'ok', st}
end
if s == 'scheduled' and tonumber(j[4]) <= NOW then
  redis.call('ZREM', P .. ':sch', id)
  redis.call('HDEL', jk(id), 'due')
  move(id, j[2], s, 'pending')
  push_ready(id, j[2], j[3])
  s = 'pending'
elseif s == 'running' and tonumber(j[5]) <= NOW then
  redis.call('ZREM', P .. ':run', id)
  redis.call('HDEL', jk(id), 'dl')
  move(id, j[2], s, 'pending')
  push_ready(id, j[2], j[3])
  bump('expired')
  s = 'pending'
end
return {'ok', norm(s)}
