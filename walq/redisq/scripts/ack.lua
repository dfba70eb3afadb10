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
  keep_key(h[1])  -- unique_for: the key is remembered after the job is done
  redis.call('ZREM', P .. ':run', h[1])
  remove(h[1], h[2], 'running', nil)
end
forget_expired(100)  -- forgotten keys, a few at a time
bump('acked', #held)
bump('done', #held)
return {'ok', refused}
