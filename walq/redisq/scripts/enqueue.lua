-- ARGV: P, max_pending ('' none), max_bytes ('' none), m, then per item:
--   task, kind, payload, has key ('1'/'0'), key, delay ms, priority, max_attempts
local maxp, maxb, m = ARGV[2], ARGV[3], tonumber(ARGV[4])
local seq = tonumber(redis.call('GET', P .. ':seq') or '0')
local ids, fresh, batch = {}, {}, {}
for i = 0, m - 1 do
  local b = 5 + i * 8
  local owner = false
  if ARGV[b + 3] == '1' then
    owner = batch[ARGV[b + 4]] or redis.call('HGET', P .. ':keys', ARGV[b + 4])
  end
  if owner then
    ids[i + 1] = tonumber(owner)
  else
    seq = seq + 1
    ids[i + 1] = seq
    fresh[#fresh + 1] = {b, seq}
    if ARGV[b + 3] == '1' then batch[ARGV[b + 4]] = seq end
  end
end
if #fresh > 0 then
  if maxp ~= '' then
    local unfinished = counted('pending') + counted('scheduled') + counted('running')
    if unfinished + #fresh > tonumber(maxp) then
      return {'err', 'full', 'max_pending (' .. maxp .. ') reached'}
    end
  end
  if maxb ~= '' then
    local size = 0
    for _, f in ipairs(fresh) do size = size + #ARGV[f[1] + 2] + 64 + #ARGV[f[1]] end
    if counted('bytes') + size > tonumber(maxb) then
      return {'err', 'full', 'max_bytes (' .. maxb .. ') reached'}
    end
  end
  redis.call('SET', P .. ':seq', seq)
end
local ready = false
for _, f in ipairs(fresh) do
  local b, id = f[1], f[2]
  local task, payload, delay = ARGV[b], ARGV[b + 2], tonumber(ARGV[b + 5])
  local rs = (32767 - tonumber(ARGV[b + 6])) * 137438953472 + id
  local sz = #payload + 64 + #task
  local fields = {'t', task, 'k', ARGV[b + 1], 'p', payload, 'pr', ARGV[b + 6],
                  'ma', ARGV[b + 7], 'a', 0, 'g', 0, 'rs', rs, 'c', NOW, 'sz', sz}
  if ARGV[b + 3] == '1' then
    fields[#fields + 1] = 'key'
    fields[#fields + 1] = ARGV[b + 4]
    redis.call('HSET', P .. ':keys', ARGV[b + 4], id)
  end
  local state = 'pending'
  if delay > 0 then
    state = 'scheduled'
    fields[#fields + 1] = 'due'
    fields[#fields + 1] = NOW + delay
    redis.call('ZADD', P .. ':sch', NOW + delay, id)
  else
    push_ready(id, task, rs)
    ready = true
  end
  fields[#fields + 1] = 's'
  fields[#fields + 1] = state
  redis.call('HSET', jk(id), unpack(fields))
  count(state, task, 1)
  bump('bytes', sz)
end
bump('enqueued', #fresh)
bump('coalesced', m - #fresh)
if ready then redis.call('PUBLISH', P .. ':events', 'r') end
return {'ok', ids}
