-- ARGV: P, max_pending ('' none), max_bytes ('' none), unique_for ms (0: none), m,
-- then per item: task, kind, payload, has key ('1'/'0'), key, delay ms, priority, max_attempts
local m = math.min(tonumber(ARGV[5]), (#ARGV - 5) / 8)  -- never past the items passed
local ids, err = add_items(6, m, ARGV[2], ARGV[3], tonumber(ARGV[4]))
if not ids then return err end
return {'ok', ids}
