-- ARGV: P, 'all' and a limit, or 'ids' and the ids (all must be dead)
local ids
if ARGV[2] == 'all' then
  ids = redis.call('ZRANGE', P .. ':dead', 0, tonumber(ARGV[3]) - 1)
else
  ids = {}
  for i = 3, #ARGV do
    local id = ARGV[i]
    local s = redis.call('HGET', jk(id), 's')
    if not s then
      local st = gone(id)
      if st == 'unknown' or st == 'purged' then return unknown(id, st) end
      return {'err', 'state', 'job ' .. id .. ' is ' .. st .. ', not dead'}
    end
    if s ~= 'dead' then
      return {'err', 'state', 'job ' .. id .. ' is ' .. norm(s) .. ', not dead'}
    end
    ids[#ids + 1] = id
  end
end
local n = 0
for _, id in ipairs(ids) do
  local task = redis.call('HGET', jk(id), 't')
  if task then
    redis.call('ZREM', P .. ':dead', id)
    remove(id, task, 'dead', 'p')
    n = n + 1
  end
end
return {'ok', n}
