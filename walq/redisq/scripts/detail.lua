-- ARGV: P, id. A live job's fields and the server's time, or how it ended.
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't', 'a', 'ma', 'pr', 'key', 'e', 'due', 'dl')
if not j[1] then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'gone', st, redis.call('HGET', P .. ':cause', id)}
end
j[1] = norm(j[1])
return {'ok', j, NOW}
