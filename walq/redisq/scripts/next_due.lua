-- ARGV: P. Milliseconds until the next due job, lease or reservation expiry; nil if none.
-- What is already due is moved first, so that the answer is in the future: a worker
-- with no room to claim would otherwise wake at once, again and again.
tick(1000)
local best = nil
for _, k in ipairs({':sch', ':run', ':res'}) do
  local h = redis.call('ZRANGE', P .. k, 0, 0, 'WITHSCORES')
  if h[2] then
    local v = tonumber(h[2])
    if best == nil or v < best then best = v end
  end
end
if best == nil then return false end
return {best - NOW}
