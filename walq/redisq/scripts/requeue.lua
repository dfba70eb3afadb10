-- ARGV: P, id
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't', 'key', 'rs')
if not j[1] then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'err', 'state', 'job ' .. id .. ' is ' .. st .. ', not dead'}
end
if j[1] ~= 'dead' then
  return {'err', 'state', 'job ' .. id .. ' is ' .. norm(j[1]) .. ', not dead'}
end
redis.call('ZREM', P .. ':dead', id)
redis.call('HSET', jk(id), 'a', 0)
redis.call('HDEL', jk(id), 'e')
move(id, j[2], 'dead', 'pending')
if j[3] then redis.call('HSETNX', P .. ':keys', j[3], id) end
push_ready(id, j[2], j[4])
redis.call('PUBLISH', P .. ':events', 'r')
return {'ok'}
