-- ARGV: P
tick(1000)
flush()
return {redis.call('HGETALL', N), redis.call('HGETALL', TN), redis.call('GET', P .. ':seq') or '0'}
