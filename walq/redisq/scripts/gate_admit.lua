-- May attempt ATTEMPT of TASK start now, by the gates every host shares? All
-- or none of their tokens are taken. ARGV: task, attempt, breaker failures
-- ('' none), cooldown ms, rate per second ('' none), burst, budget ratio ('' none),
-- floor, window ms, concurrency cap ('' none), holder, lease ms.
-- Reply: {1, 'ok', 0} or {0, reason, ms until it may}.
local task, attempt = ARGV[2], tonumber(ARGV[3])
local b
if ARGV[4] ~= '' then b = breaker(task) end
if ARGV[11] ~= '' then
  if running(task) >= tonumber(ARGV[11]) then return {0, 'concurrency', 0} end
end
local gates = {}
if b then gates[#gates + 1] = {'breaker', breaker_at(b) - NOW} end
if ARGV[6] ~= '' then
  gates[#gates + 1] = {'rate', bucket(P .. ':gr:' .. task, nil, tonumber(ARGV[6]), tonumber(ARGV[7]), false)}
end
local retry = attempt > 1
if ARGV[8] ~= '' and retry then
  gates[#gates + 1] = {'budget', budget(tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), false)}
end
local reason, wait = 'ok', 0
for _, g in ipairs(gates) do
  if g[2] > wait then reason, wait = g[1], g[2] end
end
if wait > 0 then return {0, reason, math.ceil(wait)} end
if b and b.st == 'half' then
  b.probe = NOW + tonumber(ARGV[5])
  save_breaker(task, b)
end
if ARGV[6] ~= '' then bucket(P .. ':gr:' .. task, nil, tonumber(ARGV[6]), tonumber(ARGV[7]), true) end
if ARGV[8] ~= '' then
  if retry then budget(tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), true)
  else ledger('f', tonumber(ARGV[10])) end
end
if ARGV[11] ~= '' then
  redis.call('HINCRBY', P .. ':gc:' .. task, ARGV[12], 1)
  redis.call('ZADD', P .. ':gl:' .. task, NOW + tonumber(ARGV[13]), ARGV[12])
end
return {1, 'ok', 0}
