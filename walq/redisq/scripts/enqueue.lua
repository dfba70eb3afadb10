-- ARGV: P, max_pending ('' none), max_bytes ('' none), unique_for ms (0: none), m,
-- then per item: task, kind, payload, has key ('1'/'0'), key, delay ms, priority, max_attempts
local items = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local b = 6 + i * 8
  items[i + 1] = {ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5],
                  ARGV[b + 6], ARGV[b + 7]}
end
return add_jobs(ARGV[2], ARGV[3], tonumber(ARGV[4]), items)
