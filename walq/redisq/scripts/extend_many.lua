-- ARGV: P, lease ms, then per job: id, attempt ('' any), claim ('' any, 'none')
local ms = tonumber(ARGV[2])
local refused = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local e = holder(id, ARGV[i + 1], ARGV[i + 2])
  if e then
    refused[#refused + 1] = {tonumber(id), e[2], e[3]}
  else
    redis.call('HSET', jk(id), 'dl', NOW + ms)
    redis.call('ZADD', P .. ':run', NOW + ms, id)
  end
end
return refused
