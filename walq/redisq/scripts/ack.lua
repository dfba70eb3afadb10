-- ARGV: P, strict ('1'/'0'), then per job: id, attempt ('' any), claim ('' any)
local strict = ARGV[2] == '1'
local held, refused, seen = {}, {}, {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if not seen[id] then
    seen[id] = true
    local e, j = holder(id, ARGV[i + 1], ARGV[i + 2])
    if e then
      if strict or e[2] == 'unknown' then return e end
      refused[#refused + 1] = {tonumber(id), e[2], e[3]}
    else
      held[#held + 1] = {id, j[4]}
    end
  end
end
for _, h in ipairs(held) do
  local kf = redis.call('HMGET', jk(h[1]), 'key', 'uf')
  if kf[1] and kf[2] then  -- unique_for: the key is remembered after the job is done
    redis.call('HSET', P .. ':kept', kf[1], h[1])
    redis.call('ZADD', P .. ':keptx', NOW + tonumber(kf[2]), kf[1])
  end
  redis.call('ZREM', P .. ':run', h[1])
  remove(h[1], h[2], 'running', nil)
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. ':keptx', '-inf', NOW, 'LIMIT', 0, 100)) do
  redis.call('ZREM', P .. ':keptx', key)  -- forgotten keys, a few at a time
  redis.call('HDEL', P .. ':kept', key)
end
bump('acked', #held)
bump('done', #held)
return {'ok', refused}
