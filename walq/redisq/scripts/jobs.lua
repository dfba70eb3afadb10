-- ARGV: P, state ('' all), task ('' all), after id, limit.
-- Live jobs above `after` in id order: read from the sets of the states asked for.
local state, task, after, limit = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = {}
local function from(k)
  for _, id in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    local n = tonumber(id)
    if n > after then ids[#ids + 1] = n end
  end
end
if state == '' or state == 'pending' then
  local tasks = (task ~= '') and {task} or redis.call('SMEMBERS', P .. ':rt')
  for _, t in ipairs(tasks) do from(P .. ':r:' .. t) end
  from(P .. ':res')
end
if state == '' or state == 'scheduled' then from(P .. ':sch') end
if state == '' or state == 'running' then from(P .. ':run') end
if state == '' or state == 'dead' then from(P .. ':dead') end
table.sort(ids)
local out, last = {}, nil
for _, id in ipairs(ids) do
  if #out >= limit then break end
  if id ~= last then
    last = id
    local j = redis.call('HMGET', jk(id), 's', 't', 'a', 'pr', 'key')
    if j[1] and (state == '' or norm(j[1]) == state) and (task == '' or j[2] == task) then
      out[#out + 1] = {id, norm(j[1]), j[2], j[3], j[4], j[5] or false}
    end
  end
end
return out
