-- A job enqueued after others: waiting until each is settled (walq.core.transitions).
-- ARGV: P, max_pending ('' none), max_bytes ('' none), policy ('0' cancel, '1' always),
--   one item as for enqueue.lua (8 entries), unique_for ms ('0': none), then the parents' ids
for i = 14, #ARGV do
  if not redis.call('HGET', jk(ARGV[i]), 's') then
    local st = gone(ARGV[i])
    if st == 'unknown' or st == 'purged' then return unknown(ARGV[i], st) end
  end
end
if ARGV[8] == '1' then
  local owner = redis.call('HGET', P .. ':keys', ARGV[9]) or kept(ARGV[9])
  if owner then return {'ok', tonumber(owner)} end
end
local maxp, maxb = ARGV[2], ARGV[3]
if maxp ~= '' and unfinished() + 1 > tonumber(maxp) then
  return {'err', 'full', 'max_pending (' .. maxp .. ') reached'}
end
local task, payload, delay = ARGV[5], ARGV[7], tonumber(ARGV[10])
local sz = #payload + 64 + #task
if maxb ~= '' and counted('bytes') + sz > tonumber(maxb) then
  return {'err', 'full', 'max_bytes (' .. maxb .. ') reached'}
end
local id = tonumber(redis.call('GET', P .. ':seq') or '0') + 1
redis.call('SET', P .. ':seq', id)
local parents = {}
for i = 14, #ARGV do parents[#parents + 1] = ARGV[i] end
local wd = 0
if delay > 0 then wd = NOW + delay end
local rs = (32767 - tonumber(ARGV[11])) * 137438953472 + id
redis.call('HSET', jk(id), 't', task, 'k', ARGV[6], 'p', payload, 'pr', ARGV[11],
           'ma', ARGV[12], 'a', 0, 'g', 0, 'rs', rs, 'c', NOW, 'sz', sz, 's', 'waiting',
           'af', table.concat(parents, ','), 'ap', ARGV[4], 'wd', wd)
if ARGV[8] == '1' then
  redis.call('HSET', jk(id), 'key', ARGV[9])
  redis.call('HSET', P .. ':keys', ARGV[9], id)
  if tonumber(ARGV[13]) > 0 then redis.call('HSET', jk(id), 'uf', ARGV[13]) end
end
count('waiting', task, 1)
bump('bytes', sz)
bump('enqueued')
local w, cause = 0, nil
for _, p in ipairs(parents) do
  local s = redis.call('HGET', jk(p), 's')
  if s and s ~= 'dead' then
    redis.call('SADD', P .. ':held:' .. p, id)
    w = w + 1
  elseif not cause and (s == 'dead' or gone(p) ~= 'done') then
    cause = 'job ' .. p .. ' it was enqueued after is ' .. (s or gone(p))
  end
end
redis.call('HSET', jk(id), 'w', w)
if cause and ARGV[4] == '0' then
  remove(id, task, 'waiting', 'c')
  redis.call('HSET', P .. ':cause', id, cause)
elseif w == 0 and schedule(id, task, 'waiting', delay) then
  redis.call('PUBLISH', P .. ':events', 'r')
end
return {'ok', id}
