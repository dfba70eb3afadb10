-- ARGV: P. Every schedule recorded: {name, last, spec} triples.
local out = {}
local all = redis.call('HGETALL', P .. ':sched')
for i = 1, #all, 2 do
  out[#out + 1] = {all[i], all[i + 1], redis.call('HGET', P .. ':schspec', all[i]) or ''}
end
return out
