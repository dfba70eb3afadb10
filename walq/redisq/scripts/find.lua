-- ARGV: P, key. The unfinished job holding the idempotency key, or false.
return redis.call('HGET', P .. ':keys', ARGV[2])
