-- A schedule's due ticks enqueued and its last tick recorded, in one step: each tick
-- is one job however many hosts fire it (ticks at or before the last recorded are skipped).
-- ARGV: P, max_pending, max_bytes, name, last (the newest tick, seconds), spec (JSON),
-- task, kind, payload, priority, max_attempts, then per tick: tick (seconds), key.
-- P:sched hash name -> last tick; P:schspec hash name -> spec.
local name, last = ARGV[4], ARGV[5]
local stored = tonumber(redis.call('HGET', P .. ':sched', name) or '-1e308')
local items = {}
for i = 12, #ARGV, 2 do
  if tonumber(ARGV[i]) > stored then
    items[#items + 1] = {ARGV[7], ARGV[8], ARGV[9], '1', ARGV[i + 1], '0', ARGV[10], ARGV[11]}
  end
end
local reply = {'ok', {}}
if #items > 0 then
  reply = add_jobs(ARGV[2], ARGV[3], 0, items)
  if reply[1] ~= 'ok' then return reply end
end
if tonumber(last) > stored then redis.call('HSET', P .. ':sched', name, last) end
redis.call('HSET', P .. ':schspec', name, ARGV[6])
return reply
