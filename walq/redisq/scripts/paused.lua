-- ARGV: P. The paused tasks.
return redis.call('SMEMBERS', P .. ':paused')
