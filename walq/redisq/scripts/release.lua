-- ARGV: P, id, attempt, claim
local id = ARGV[2]
local e, j = holder(id, ARGV[3], ARGV[4])
if e then return e end
redis.call('ZREM', P .. ':run', id)
redis.call('HDEL', jk(id), 'dl')
redis.call('HSET', jk(id), 'a', tonumber(j[2]) - 1)
move(id, j[4], 'running', 'pending')
push_ready(id, j[4], redis.call('HGET', jk(id), 'rs'))
redis.call('PUBLISH', P .. ':events', 'r')
return {'ok'}
