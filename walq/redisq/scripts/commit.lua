-- ARGV: P, token, defaults, default max, lease ms, take [ids], defer [[id, ms]], back [ids]
local token = ARGV[2]
local function mine(id)
  local j = redis.call('HMGET', jk(id), 's', 'rv', 't')
  if j[1] == 'reserved' and j[2] == token then
    redis.call('ZREM', P .. ':res', id)
    redis.call('HDEL', jk(id), 'rv')
    return j[3]
  end
  return nil
end
local out, buried, lost = {}, 0, {}
for _, id in ipairs(cjson.decode(ARGV[6])) do
  local task = mine(id)
  if not task then lost[#lost + 1] = id
  elseif not take(id, task, out) then buried = buried + 1 end
end
for _, d in ipairs(cjson.decode(ARGV[7])) do
  local id, ms = d[1], d[2]
  local task = mine(id)
  if task then
    redis.call('HSET', jk(id), 'e',
      'deferred, not charged: the retry budget could not pay for this retry yet')
    schedule(id, task, 'reserved', ms)
  end
end
for _, id in ipairs(cjson.decode(ARGV[8])) do
  local task = mine(id)
  if task then
    move(id, task, 'reserved', 'pending')
    push_ready(id, task, redis.call('HGET', jk(id), 'rs'))
  end
end
return {out, buried, lost}
