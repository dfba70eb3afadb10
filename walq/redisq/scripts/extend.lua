-- ARGV: P, id, attempt, claim, lease ms
local id = ARGV[2]
local e = holder(id, ARGV[3], ARGV[4])
if e then return e end
redis.call('HSET', jk(id), 'dl', NOW + tonumber(ARGV[5]))
redis.call('ZADD', P .. ':run', NOW + tonumber(ARGV[5]), id)
return {'ok'}
