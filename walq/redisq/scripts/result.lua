-- ARGV: P, then job ids. Per job: {'live', state}, {'dead', error},
-- {'cancelled', cause}, {'done', result kind ('0': none kept), result}, or an error reply.
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local j = redis.call('HMGET', jk(id), 's', 'e')
  if j[1] == 'dead' then
    out[#out + 1] = {'dead', j[2] or ''}
  elseif j[1] then
    out[#out + 1] = {'live', norm(j[1])}
  else
    local st = gone(id)
    if st == 'unknown' or st == 'purged' then return unknown(id, st) end
    if st == 'cancelled' then
      out[#out + 1] = {'cancelled', redis.call('HGET', P .. ':cause', id) or ''}
    else
      local r = redis.call('HMGET', P .. ':out:' .. id, 'k', 'v')
      out[#out + 1] = {'done', r[1] or '0', r[2] or ''}
    end
  end
end
return {'ok', out}
