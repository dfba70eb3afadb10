-- ARGV: P, n, token, reservation ms, excluded tasks (JSON list), tasks filter ('' all)
tick(1000)
local n, token, rms = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local excluded = {}
for _, t in ipairs(cjson.decode(ARGV[5])) do excluded[t] = true end
local tasks
if ARGV[6] ~= '' then tasks = cjson.decode(ARGV[6])
else tasks = redis.call('SMEMBERS', P .. ':rt') end
local out = {}
best_ready(n, tasks, excluded, function(id, task)
  move(id, task, 'pending', 'reserved')
  redis.call('HSET', jk(id), 'rv', token)
  redis.call('ZADD', P .. ':res', NOW + rms, id)
  local j = redis.call('HMGET', jk(id), 'a', 'pr', 'ma')
  out[#out + 1] = {tonumber(id), task, tonumber(j[1]), tonumber(j[2]), tonumber(j[3]) or 0}
  return true
end)
return out
