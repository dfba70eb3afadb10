-- An ack with its result and follow-up jobs, in one script (so one AOF entry).
-- ARGV: P, id, attempt ('' any), claim ('' any), keep ms, result kind ('0' none),
--   result, then per follow-up job the 8 entries of an enqueue.lua item
local id = ARGV[2]
local e, j = holder(id, ARGV[3], ARGV[4])
if e then return e end
redis.call('ZREM', P .. ':run', id)
if ARGV[6] ~= '0' then
  local ok = P .. ':out:' .. id
  redis.call('HSET', ok, 'k', ARGV[6], 'v', ARGV[7])
  redis.call('PEXPIRE', ok, math.max(1, tonumber(ARGV[5])))
end
keep_key(id)  -- unique_for: the key is remembered after the job is done
remove(id, j[4], 'running', nil)
forget_expired(100)
bump('acked')
bump('done')
-- Follow-up jobs are not refused for room: the work they stand for is already done.
local ids = add_items(8, (#ARGV - 7) / 8, nil, nil)
return {'ok', ids}
