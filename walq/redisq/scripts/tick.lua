-- A schedule's due ticks enqueued and its last tick recorded, in one step: each tick
-- is one job however many hosts fire it (ticks at or before the last recorded are skipped).
-- ARGV: P, max_pending, max_bytes, name, last (the newest tick, seconds), spec (JSON),
-- task, kind, payload, priority, max_attempts, then per tick: tick (seconds), key.
-- P:sched hash name -> last tick; P:schspec hash name -> spec.
local name, last = ARGV[4], ARGV[5]
local stored = tonumber(redis.call('HGET', P .. ':sched', name) or '-1e308')
local items, m = {}, 0  -- the due ticks as add_items' 8-entry items
for i = 12, #ARGV, 2 do
  if tonumber(ARGV[i]) > stored then
    local b = m * 8
    items[b + 1], items[b + 2], items[b + 3], items[b + 4] = ARGV[7], ARGV[8], ARGV[9], '1'
    items[b + 5], items[b + 6], items[b + 7], items[b + 8] = ARGV[i + 1], '0', ARGV[10], ARGV[11]
    m = m + 1
  end
end
local ids = {}
if m > 0 then
  local err
  ids, err = add_items(1, m, ARGV[2], ARGV[3], 0, items)
  if not ids then return err end
end
if tonumber(last) > stored then redis.call('HSET', P .. ':sched', name, last) end
redis.call('HSET', P .. ':schspec', name, ARGV[6])
return {'ok', ids}
