-- ARGV: P, task, '1' (pause) or '0' (resume). Claims skip the tasks in P:paused.
local k = P .. ':paused'
if ARGV[3] == '1' then return {'ok', redis.call('SADD', k, ARGV[2])} end
local n = redis.call('SREM', k, ARGV[2])
if n == 1 then redis.call('PUBLISH', P .. ':events', 'r') end
return {'ok', n}
