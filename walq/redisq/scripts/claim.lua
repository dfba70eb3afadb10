-- ARGV: P, n, defaults, default max, lease ms, tasks filter ('' all)
tick(1000)
local n = tonumber(ARGV[2])
local tasks
if ARGV[6] ~= '' then tasks = cjson.decode(ARGV[6])
else tasks = redis.call('SMEMBERS', P .. ':rt') end
local out, buried = {}, 0
best_ready(n, tasks, {}, function(id, task)
  if take(id, task, out) then return true end
  buried = buried + 1
  return false
end)
return {out, buried}
