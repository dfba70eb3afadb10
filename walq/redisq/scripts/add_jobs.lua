-- add_jobs(maxp, maxb, uf, items): add jobs, coalescing keys; {'ok', ids} or an error reply.
-- maxp, maxb: the caps ('' none); uf: ms a done job's key is remembered (0: not);
-- items: {task, kind, payload, has key ('1'/'0'), key, delay ms, priority, max_attempts}.
-- A key is held by the unfinished job that has it (P:keys), or by a done job while
-- P:keptx says it is remembered (P:kept; expired entries are dropped as they are met).
local function forget_expired(limit)
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. ':keptx', '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', P .. ':keptx', key)
    redis.call('HDEL', P .. ':kept', key)
  end
end
local function kept(key)
  local id = redis.call('HGET', P .. ':kept', key)
  if not id then return false end
  local until_ms = tonumber(redis.call('ZSCORE', P .. ':keptx', key) or '0')
  if until_ms > NOW then return id end
  redis.call('HDEL', P .. ':kept', key)
  redis.call('ZREM', P .. ':keptx', key)
  return false
end
local function add_jobs(maxp, maxb, uf, items)
  local seq = tonumber(redis.call('GET', P .. ':seq') or '0')
  local ids, fresh, batch = {}, {}, {}
  for i, it in ipairs(items) do
    local owner = false
    if it[4] == '1' then
      owner = batch[it[5]] or redis.call('HGET', P .. ':keys', it[5]) or kept(it[5])
    end
    if owner then
      ids[i] = tonumber(owner)
    else
      seq = seq + 1
      ids[i] = seq
      fresh[#fresh + 1] = {it, seq}
      if it[4] == '1' then batch[it[5]] = seq end
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
      for _, f in ipairs(fresh) do size = size + #f[1][3] + 64 + #f[1][1] end
      if counted('bytes') + size > tonumber(maxb) then
        return {'err', 'full', 'max_bytes (' .. maxb .. ') reached'}
      end
    end
    redis.call('SET', P .. ':seq', seq)
  end
  local ready = false
  for _, f in ipairs(fresh) do
    local it, id = f[1], f[2]
    local task, payload, delay = it[1], it[3], tonumber(it[6])
    local rs = (32767 - tonumber(it[7])) * 137438953472 + id
    local sz = #payload + 64 + #task
    local fields = {'t', task, 'k', it[2], 'p', payload, 'pr', it[7],
                    'ma', it[8], 'a', 0, 'g', 0, 'rs', rs, 'c', NOW, 'sz', sz}
    if it[4] == '1' then
      fields[#fields + 1] = 'key'
      fields[#fields + 1] = it[5]
      redis.call('HSET', P .. ':keys', it[5], id)
      if uf > 0 then
        fields[#fields + 1] = 'uf'
        fields[#fields + 1] = uf
      end
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
  bump('coalesced', #items - #fresh)
  if ready then redis.call('PUBLISH', P .. ':events', 'r') end
  return {'ok', ids}
end
