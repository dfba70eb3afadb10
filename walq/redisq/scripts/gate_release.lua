-- N admitted attempts of TASK ended: their holder's count of running ones drops.
-- ARGV: task, holder, n.
local c = P .. ':gc:' .. ARGV[2]
if tonumber(redis.call('HINCRBY', c, ARGV[3], -tonumber(ARGV[4]))) <= 0 then
  redis.call('HDEL', c, ARGV[3])
end
return 1
