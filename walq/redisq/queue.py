"""RedisQueue: the Queue API on a Redis server, for workers on many hosts.

Every state change is one Lua script, so it is one atomic step on the
server, and each checks the job's current state (and, for a result, the
attempt and claim that hold it) before it changes anything: a worker whose
lease expired cannot ack a job that was rescued and handed to another, and a
rescue can never flip a finished job back. Time is the server's (TIME inside
the scripts), so the hosts' clocks do not matter. docs/REDIS.md has the data
model, the steps and what differs from the file queue.

redis-py is an optional extra (`pip install 'walq[redis]'`), imported only here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from walq import forks
from walq.backends import is_url
from walq.core.events import PAYLOAD_BYTES, PAYLOAD_JSON
from walq.core.job import COUNTERS, DeadJob, Job, build_job
from walq.core.jobspec import (
    DEFAULT_MAX_PAYLOAD,
    MAX_ATTEMPTS,
    JobSpec,
    check_delay,
    check_seconds,
    check_task,
    decode_payload,
    make_spec,
    spec_from,
)
from walq.core.state import PENDING, JobInfo, Loc
from walq.core.text import excerpt, shown
from walq.errors import (
    ArgumentError,
    BackendError,
    ClosedError,
    DurabilityError,
    DurabilityWarning,
    LeaseLost,
    MissingDependency,
    NotAQueueError,
    QueueFull,
    StateError,
    UnknownJobError,
    WalqError,
)

if TYPE_CHECKING:
    import redis

    from walq.ops.inspect import DeadInfo

log = logging.getLogger("walq.redisq")

DEFAULT_PREFIX = "walq"
FORMAT_VERSION = "1"
MIN_SERVER = (6, 2)
# How long claim_many's reservation of candidates lasts if its claimer dies
# between asking `accept` and recording the outcome (the reaper returns them).
RESERVATION = 30.0
# Options of the file queue that mean nothing here (accepted, so that
# Queue.open can pass its arguments through unchanged).
FILE_ONLY_OPTIONS = frozenset(
    {
        "sync",
        "sync_interval",
        "segment_size",
        "min_free_bytes",
        "lock_timeout",
        "recovery",
        "compaction",
        "fs",
        "clock",
    }
)
_NOWHERE = Loc(0, 0, 0)
_HELD_CAP = 100_000
_T = TypeVar("_T")


def _redis() -> Any:
    try:
        import redis  # noqa: PLC0415 - an optional extra, imported when first used
    except ImportError:
        raise MissingDependency(
            "walq's Redis backend needs redis-py: pip install 'walq[redis]'"
        ) from None
    return redis


# -- the scripts ----------------------------------------------------------------------------
#
# Keys, all under the prefix P (docs/REDIS.md draws them):
#   P:meta  hash   format version
#   P:seq   string the last job id issued (INCR-like; ids never repeat)
#   P:j:ID  hash   one live job: t task, p payload, k kind, key, pr priority, ma own
#                  max_attempts (0: default), a attempts, g claims so far (the lease
#                  token), s state, rs ready score, c created ms, due ms, dl lease
#                  deadline ms, rv reservation token, e last error, sz accounted bytes
#   P:r:TASK zset  pending jobs of TASK by rs = (32767 - priority) * 2^37 + id
#   P:rt    set    tasks with pending jobs
#   P:sch   zset   scheduled jobs by due ms
#   P:run   zset   running jobs by lease deadline ms
#   P:res   zset   jobs reserved by a claim in progress, by reservation deadline
#   P:dead  zset   dead jobs by id
#   P:keys  hash   idempotency key -> the unfinished job holding it
#   P:tomb  hash   id -> c (cancelled) | p (purged); other ids <= P:seq not live are done
#   P:n     hash   counts by state, live bytes, and counters
#   P:tn    hash   "state:task" -> count
#   P:events       pub/sub channel: "r" (a job is ready), "c ID ORIGIN" (cancelled while running)

_PRELUDE = r"""
local P = ARGV[1]
local t0 = redis.call('TIME')
local NOW = tonumber(t0[1]) * 1000 + math.floor(tonumber(t0[2]) / 1000)
local N, TN = P .. ':n', P .. ':tn'
local function jk(id) return P .. ':j:' .. id end
local function norm(s) if s == 'reserved' then return 'pending' end return s end
-- Counts change in memory and reach P:n and P:tn once, at the end of the script.
local DN, DTN = {}, {}
local function bump(name, d) DN[name] = (DN[name] or 0) + (d or 1) end
local function count(state, task, d)
  state = norm(state)
  DN[state] = (DN[state] or 0) + d
  local f = state .. ':' .. task
  DTN[f] = (DTN[f] or 0) + d
end
local function flush()
  for f, d in pairs(DN) do
    if d ~= 0 then redis.call('HINCRBY', N, f, d) end
    DN[f] = nil
  end
  for f, d in pairs(DTN) do
    if d ~= 0 then redis.call('HINCRBY', TN, f, d) end
    DTN[f] = nil
  end
end
local function counted(f)
  return (tonumber(redis.call('HGET', N, f)) or 0) + (DN[f] or 0)
end
local function move(id, task, from, to)
  redis.call('HSET', jk(id), 's', to)
  if norm(from) ~= norm(to) then count(from, task, -1); count(to, task, 1) end
end
local LISTED = {}  -- tasks known to be in P:rt during this script
local function push_ready(id, task, rs)
  redis.call('ZADD', P .. ':r:' .. task, rs, id)
  if not LISTED[task] then
    redis.call('SADD', P .. ':rt', task)
    LISTED[task] = true
  end
end
local function unready(id, task)
  local rk = P .. ':r:' .. task
  redis.call('ZREM', rk, id)
  if redis.call('ZCARD', rk) == 0 then
    redis.call('SREM', P .. ':rt', task)
    LISTED[task] = nil
  end
end
local function release_key(id)
  local key = redis.call('HGET', jk(id), 'key')
  if key and redis.call('HGET', P .. ':keys', key) == tostring(id) then
    redis.call('HDEL', P .. ':keys', key)
  end
end
local function remove(id, task, state, tomb)
  local sz = tonumber(redis.call('HGET', jk(id), 'sz') or '0')
  release_key(id)
  redis.call('DEL', jk(id))
  count(state, task, -1)
  bump('bytes', -sz)
  if tomb then redis.call('HSET', P .. ':tomb', id, tomb) end
end
local function gone(id)
  local t = redis.call('HGET', P .. ':tomb', id)
  if t == 'c' then return 'cancelled' end
  if t == 'p' then return 'purged' end
  local n = tonumber(id)
  if n and n >= 1 and n <= tonumber(redis.call('GET', P .. ':seq') or '0') then return 'done' end
  return 'unknown'
end
local function unknown(id, st)
  if st == 'purged' then return {'err', 'unknown', 'job ' .. id .. ' was purged'} end
  return {'err', 'unknown', 'job ' .. id .. ' does not exist'}
end
-- The running job ID if ATTEMPT ('' any) and claim GEN ('' any; 'none': the caller
-- holds no claim on it) still hold it: nil and its fields (s, a, g, t), or an error reply.
local function holder(id, attempt, gen)
  local j = redis.call('HMGET', jk(id), 's', 'a', 'g', 't')
  local s = j[1]
  if not s then
    local st = gone(id)
    if st == 'unknown' or st == 'purged' then return unknown(id, st) end
    if attempt ~= '' then
      return {'err', 'lease', 'job ' .. id .. ' is ' .. st .. ': attempt ' .. attempt ..
              ' no longer holds it'}
    end
    return {'err', 'state', 'job ' .. id .. ' is ' .. st .. ', not running'}
  end
  if s ~= 'running' then
    if attempt ~= '' then
      return {'err', 'lease', 'job ' .. id .. ' is ' .. norm(s) .. ': attempt ' .. attempt ..
              "'s lease has expired"}
    end
    return {'err', 'state', 'job ' .. id .. ' is ' .. norm(s) .. ', not running'}
  end
  if attempt ~= '' and j[2] ~= attempt then
    return {'err', 'lease', 'job ' .. id .. ' is running attempt ' .. j[2] .. ', not ' .. attempt}
  end
  if gen == 'none' then
    return {'err', 'lease', 'job ' .. id .. ' is running attempt ' .. j[2] ..
            ', which this handle did not claim'}
  end
  if gen ~= '' and j[3] ~= gen then
    return {'err', 'lease', 'job ' .. id .. ' was claimed again (attempt ' .. j[2] ..
            '): this claim no longer holds it'}
  end
  return nil, j
end
-- Due scheduled jobs to pending; expired leases and reservations back to pending
-- (an expired lease keeps its attempt counted). Each checks the job's state in
-- its hash, not only the index it came from.
local function tick(limit)
  local k = P .. ':sch'
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', k, id)
    local j = redis.call('HMGET', jk(id), 's', 't', 'rs')
    if j[1] == 'scheduled' then
      move(id, j[2], 'scheduled', 'pending')
      redis.call('HDEL', jk(id), 'due')
      push_ready(id, j[2], j[3])
    end
  end
  k = P .. ':run'
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', k, id)
    local j = redis.call('HMGET', jk(id), 's', 't', 'rs')
    if j[1] == 'running' then
      move(id, j[2], 'running', 'pending')
      redis.call('HDEL', jk(id), 'dl')
      push_ready(id, j[2], j[3])
      bump('expired')
    end
  end
  k = P .. ':res'
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', k, '-inf', NOW, 'LIMIT', 0, limit)) do
    redis.call('ZREM', k, id)
    local j = redis.call('HMGET', jk(id), 's', 't', 'rs')
    if j[1] == 'reserved' then
      move(id, j[2], 'reserved', 'pending')
      redis.call('HDEL', jk(id), 'rv')
      push_ready(id, j[2], j[3])
    end
  end
end
local function bury(id, task, from, err, attempts)
  redis.call('HSET', jk(id), 'e', err, 'a', attempts)
  redis.call('HDEL', jk(id), 'dl', 'rv', 'due')
  move(id, task, from, 'dead')
  redis.call('ZADD', P .. ':dead', id, id)
  release_key(id)
  bump('dead_lettered')
end
-- Call fn(id, task) for the best pending jobs (highest priority, then oldest), each
-- taken out of its ready set first, until fn has returned true n times.
local function best_ready(n, tasks, excluded, fn)
  local heads = {}
  local function head(t)
    local h = redis.call('ZRANGE', P .. ':r:' .. t, 0, 0, 'WITHSCORES')
    if h[1] then heads[t] = {h[1], tonumber(h[2])} else heads[t] = nil end
  end
  for _, t in ipairs(tasks) do if not excluded[t] then head(t) end end
  local got, looked = 0, 0
  while got < n and looked < n + 1000 do
    local bt, best = nil, nil
    for t, h in pairs(heads) do
      if best == nil or h[2] < best[2] then bt, best = t, h end
    end
    if not bt then break end
    unready(best[1], bt)
    head(bt)
    looked = looked + 1
    if fn(best[1], bt) then got = got + 1 end
  end
end
"""

_CLAIM_COMMON = r"""
local DEFAULTS = cjson.decode(ARGV[3])
local DEFMAX = tonumber(ARGV[4])
local LEASE = tonumber(ARGV[5])
local function maxa_of(task, own)
  own = tonumber(own) or 0
  if own > 0 then return own end
  return DEFAULTS[task] or DEFMAX
end
local function start(id, task, attempt, maxa)
  local g = redis.call('HINCRBY', jk(id), 'g', 1)
  redis.call('HSET', jk(id), 's', 'running', 'a', attempt, 'dl', NOW + LEASE)
  redis.call('HDEL', jk(id), 'rv')
  count('pending', task, -1)
  count('running', task, 1)
  redis.call('ZADD', P .. ':run', NOW + LEASE, id)
  bump('claimed')
  local j = redis.call('HMGET', jk(id), 'k', 'p', 'key', 'pr', 'c')
  return {tonumber(id), task, j[1], j[2], attempt, j[3], tonumber(j[4]), tonumber(j[5]), g, maxa}
end
-- Start job ID (out of the ready set already), or dead-letter it if its
-- attempts ran out while it was interrupted. True if it started.
local function take(id, task, out)
  local j = redis.call('HMGET', jk(id), 'a', 'ma', 's')
  local a, m = tonumber(j[1]), maxa_of(task, j[2])
  if a >= m then
    bury(id, task, j[3], 'attempt ' .. a .. ' was interrupted (its worker stopped or its ' ..
         'lease expired) and no attempts remain', a)
    return false
  end
  out[#out + 1] = start(id, task, a + 1, m)
  return true
end
"""

_CLAIM = (
    _PRELUDE
    + _CLAIM_COMMON
    + r"""
-- ARGV: P, n, defaults, default max, lease ms, tasks filter ('' all)
tick(1000)
local n = tonumber(ARGV[2])
local tasks
if ARGV[6] ~= '' then tasks = cjson.decode(ARGV[6])
else tasks = redis.call('SMEMBERS', P .. ':rt') end
local out, buried = {}, 0
best_ready(n, tasks, {}, function(id, task)
  if take(id, task, out) then return true end
  buried = buried + 1
  return false
end)
return {out, buried}
"""
)

_RESERVE = (
    _PRELUDE
    + r"""
-- ARGV: P, n, token, reservation ms, excluded tasks (JSON list), tasks filter ('' all)
tick(1000)
local n, token, rms = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local excluded = {}
for _, t in ipairs(cjson.decode(ARGV[5])) do excluded[t] = true end
local tasks
if ARGV[6] ~= '' then tasks = cjson.decode(ARGV[6])
else tasks = redis.call('SMEMBERS', P .. ':rt') end
local out = {}
best_ready(n, tasks, excluded, function(id, task)
  move(id, task, 'pending', 'reserved')
  redis.call('HSET', jk(id), 'rv', token)
  redis.call('ZADD', P .. ':res', NOW + rms, id)
  local j = redis.call('HMGET', jk(id), 'a', 'pr', 'ma')
  out[#out + 1] = {tonumber(id), task, tonumber(j[1]), tonumber(j[2]), tonumber(j[3]) or 0}
  return true
end)
return out
"""
)

_COMMIT = (
    _PRELUDE
    + _CLAIM_COMMON
    + r"""
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
    if ms > 0 then
      move(id, task, 'reserved', 'scheduled')
      redis.call('HSET', jk(id), 'due', NOW + ms)
      redis.call('ZADD', P .. ':sch', NOW + ms, id)
    else
      move(id, task, 'reserved', 'pending')
      push_ready(id, task, redis.call('HGET', jk(id), 'rs'))
    end
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
"""
)

_ENQUEUE = (
    _PRELUDE
    + r"""
-- ARGV: P, max_pending ('' none), max_bytes ('' none), m, then per item:
--   task, kind, payload, has key ('1'/'0'), key, delay ms, priority, max_attempts
local maxp, maxb, m = ARGV[2], ARGV[3], tonumber(ARGV[4])
local seq = tonumber(redis.call('GET', P .. ':seq') or '0')
local ids, fresh, batch = {}, {}, {}
for i = 0, m - 1 do
  local b = 5 + i * 8
  local holder = false
  if ARGV[b + 3] == '1' then
    holder = batch[ARGV[b + 4]] or redis.call('HGET', P .. ':keys', ARGV[b + 4])
  end
  if holder then
    ids[i + 1] = tonumber(holder)
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
"""
)

_ACK = (
    _PRELUDE
    + r"""
-- ARGV: P, strict ('1'/'0'), then per job: id, attempt ('' any), claim ('' any)
local strict = ARGV[2] == '1'
local held, refused, seen = {}, {}, {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if not seen[id] then
    seen[id] = true
    local e, j = holder(id, ARGV[i + 1], ARGV[i + 2])
    if e then
      if strict or e[2] == 'unknown' then return e end
      refused[#refused + 1] = {tonumber(id), e[2], e[3]}
    else
      held[#held + 1] = {id, j[4]}
    end
  end
end
for _, h in ipairs(held) do
  redis.call('ZREM', P .. ':run', h[1])
  remove(h[1], h[2], 'running', nil)
end
bump('acked', #held)
bump('done', #held)
return {'ok', refused}
"""
)

_FAIL = (
    _PRELUDE
    + r"""
-- ARGV: P, id, attempt, claim, error, permanent, delay ms ('' backoff), u in [0,1),
--   defaults, default max
local id = ARGV[2]
local e, j = holder(id, ARGV[3], ARGV[4])
if e then return e end
local task, a = j[4], tonumber(j[2])
local own = tonumber(redis.call('HGET', jk(id), 'ma')) or 0
local m = own
if m == 0 then m = cjson.decode(ARGV[9])[task] or tonumber(ARGV[10]) end
redis.call('ZREM', P .. ':run', id)
redis.call('HDEL', jk(id), 'dl')
bump('failed')
if ARGV[6] == '1' or a >= m then
  bury(id, task, 'running', ARGV[5], a)
  return {'ok', 'dead'}
end
local delay
if ARGV[7] ~= '' then delay = tonumber(ARGV[7])
else delay = math.floor(tonumber(ARGV[8]) * math.min(300, 2 ^ math.min(a, 30)) * 1000) end
redis.call('HSET', jk(id), 'e', ARGV[5])
if delay > 0 then
  move(id, task, 'running', 'scheduled')
  redis.call('HSET', jk(id), 'due', NOW + delay)
  redis.call('ZADD', P .. ':sch', NOW + delay, id)
else
  move(id, task, 'running', 'pending')
  push_ready(id, task, redis.call('HGET', jk(id), 'rs'))
  redis.call('PUBLISH', P .. ':events', 'r')
end
bump('retried')
return {'ok', 'scheduled'}
"""
)

_RELEASE = (
    _PRELUDE
    + r"""
-- ARGV: P, id, attempt, claim
local id = ARGV[2]
local e, j = holder(id, ARGV[3], ARGV[4])
if e then return e end
redis.call('ZREM', P .. ':run', id)
redis.call('HDEL', jk(id), 'dl')
redis.call('HSET', jk(id), 'a', tonumber(j[2]) - 1)
move(id, j[4], 'running', 'pending')
push_ready(id, j[4], redis.call('HGET', jk(id), 'rs'))
redis.call('PUBLISH', P .. ':events', 'r')
return {'ok'}
"""
)

_EXTEND = (
    _PRELUDE
    + r"""
-- ARGV: P, id, attempt, claim, lease ms
local id = ARGV[2]
local e, j = holder(id, ARGV[3], ARGV[4])
if e then return e end
redis.call('HSET', jk(id), 'dl', NOW + tonumber(ARGV[5]))
redis.call('ZADD', P .. ':run', NOW + tonumber(ARGV[5]), id)
return {'ok'}
"""
)

_EXTEND_MANY = (
    _PRELUDE
    + r"""
-- ARGV: P, lease ms, then per job: id, attempt ('' any), claim ('' any, 'none')
local ms = tonumber(ARGV[2])
local refused = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local e = holder(id, ARGV[i + 1], ARGV[i + 2])
  if e then
    refused[#refused + 1] = {tonumber(id), e[2], e[3]}
  else
    redis.call('HSET', jk(id), 'dl', NOW + ms)
    redis.call('ZADD', P .. ':run', NOW + ms, id)
  end
end
return refused
"""
)

_CANCEL = (
    _PRELUDE
    + r"""
-- ARGV: P, id, origin
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't')
local s, task = j[1], j[2]
if not s then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'ok', 0, 0}
end
if s == 'dead' then return {'err', 'state', 'job ' .. id .. ' is dead: purge or requeue it'} end
if s == 'reserved' then return {'busy'} end
if s == 'pending' then unready(id, task)
elseif s == 'scheduled' then redis.call('ZREM', P .. ':sch', id)
elseif s == 'running' then redis.call('ZREM', P .. ':run', id) end
remove(id, task, s, 'c')
if s == 'running' then
  redis.call('PUBLISH', P .. ':events', 'c ' .. id .. ' ' .. ARGV[3])
  return {'ok', 1, 1}
end
return {'ok', 1, 0}
"""
)

_REQUEUE = (
    _PRELUDE
    + r"""
-- ARGV: P, id
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't', 'key', 'rs')
if not j[1] then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'err', 'state', 'job ' .. id .. ' is ' .. st .. ', not dead'}
end
if j[1] ~= 'dead' then
  return {'err', 'state', 'job ' .. id .. ' is ' .. norm(j[1]) .. ', not dead'}
end
redis.call('ZREM', P .. ':dead', id)
redis.call('HSET', jk(id), 'a', 0)
redis.call('HDEL', jk(id), 'e')
move(id, j[2], 'dead', 'pending')
if j[3] then redis.call('HSETNX', P .. ':keys', j[3], id) end
push_ready(id, j[2], j[4])
redis.call('PUBLISH', P .. ':events', 'r')
return {'ok'}
"""
)

_PURGE = (
    _PRELUDE
    + r"""
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
"""
)

_STATUS = (
    _PRELUDE
    + r"""
-- ARGV: P, id. A due job or an expired lease is settled first, as a claim would.
local id = ARGV[2]
local j = redis.call('HMGET', jk(id), 's', 't', 'rs', 'due', 'dl')
local s = j[1]
if not s then
  local st = gone(id)
  if st == 'unknown' or st == 'purged' then return unknown(id, st) end
  return {'ok', st}
end
if s == 'scheduled' and tonumber(j[4]) <= NOW then
  redis.call('ZREM', P .. ':sch', id)
  redis.call('HDEL', jk(id), 'due')
  move(id, j[2], s, 'pending')
  push_ready(id, j[2], j[3])
  s = 'pending'
elseif s == 'running' and tonumber(j[5]) <= NOW then
  redis.call('ZREM', P .. ':run', id)
  redis.call('HDEL', jk(id), 'dl')
  move(id, j[2], s, 'pending')
  push_ready(id, j[2], j[3])
  bump('expired')
  s = 'pending'
end
return {'ok', norm(s)}
"""
)

_STATS = (
    _PRELUDE
    + r"""
-- ARGV: P
tick(1000)
flush()
return {redis.call('HGETALL', N), redis.call('HGETALL', TN), redis.call('GET', P .. ':seq') or '0'}
"""
)

_NEXT_DUE = (
    _PRELUDE
    + r"""
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
"""
)

_SCRIPTS_BODIES = {
    "claim": _CLAIM,
    "reserve": _RESERVE,
    "commit": _COMMIT,
    "enqueue": _ENQUEUE,
    "ack": _ACK,
    "fail": _FAIL,
    "release": _RELEASE,
    "extend": _EXTEND,
    "extend_many": _EXTEND_MANY,
    "cancel": _CANCEL,
    "requeue": _REQUEUE,
    "purge": _PURGE,
    "status": _STATUS,
    "stats": _STATS,
    "next_due": _NEXT_DUE,
}
# Each body runs as a function, so that whichever `return` it takes, the counts
# it changed are written before the script ends.
_SCRIPTS = {
    name: src.replace(_PRELUDE, _PRELUDE + "local function main()\n", 1)
    + "\nend\nlocal reply = main()\nflush()\nreturn reply\n"
    for name, src in _SCRIPTS_BODIES.items()
}

_STATE_ERRORS: dict[bytes, type[StateError]] = {b"state": StateError, b"lease": LeaseLost}
_ERRORS: dict[bytes, type[WalqError]] = {b"unknown": UnknownJobError, **_STATE_ERRORS}


# -- helpers ---------------------------------------------------------------------------------


class _Listeners(list[_T]):
    """A list of callbacks that starts the queue's pub/sub listener when one is added."""

    def __init__(self, on_add: Callable[[], None]) -> None:
        super().__init__()
        self._on_add = on_add

    def append(self, item: _T) -> None:
        super().append(item)
        self._on_add()


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_url(url: str) -> tuple[str, str, bool, str]:
    """(redis-py URL, prefix, require_durable, display URL) from a walq Redis URL.

    walq's own query parameters (prefix, require_durable) are taken out; the
    rest go to redis-py. The display URL has no password.
    """
    if not is_url(url):
        raise ArgumentError(f"not a Redis URL (redis://, rediss:// or unix://): {url!r}")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix, durable, rest = DEFAULT_PREFIX, False, []
    for name, value in query:
        if name == "prefix":
            prefix = value
        elif name == "require_durable":
            durable = value.lower() in ("1", "true", "yes", "on")
        else:
            rest.append((name, value))
    if not prefix or any(c.isspace() for c in prefix):
        raise ArgumentError(f"prefix must be a non-empty string without spaces, not {prefix!r}")
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    shown = urlunsplit(parts._replace(netloc=netloc, query=urlencode([("prefix", prefix)])))
    return client_url, prefix, durable, shown


# -- the queue -------------------------------------------------------------------------------


class RedisQueue:
    """The Queue API on a Redis server: many processes on many hosts share one queue."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        path: str,
        max_pending: int | None,
        max_bytes: int | None,
        max_payload: int,
        max_attempts: int,
        rng: random.Random,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.path = path
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.max_payload = max_payload
        self.default_max_attempts = max_attempts
        self._rng = rng
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        self._task_max: dict[str, int] = {}
        self._defaults_json = "{}"
        self._held: dict[int, tuple[int, int]] = {}  # job -> (attempt, claim) taken here
        self._held_lock = threading.Lock()
        self._origin = uuid.uuid4().hex[:12]
        self._channel = f"{prefix}:events"
        self._closed = False
        self._ready = threading.Condition()
        self._ready_seq = 0
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self.server_version = ""
        self.durable: bool | None = None
        self.persistence: dict[str, str] = {}
        self.ready_listeners: list[Callable[[], None]] = _Listeners(self._need_listener)
        self.cancel_listeners: list[Callable[[int], None]] = _Listeners(self._need_listener)
        # redis-py's connections and this object's leases and listener are the
        # opening process's: a fork() child refuses (walq.forks).
        self._forked = False
        self._pid = forks.track(self)

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._held_lock = threading.Lock()
        self._listener_lock = threading.Lock()
        self._ready = threading.Condition()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_pending: int | None = None,
        max_bytes: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_attempts: int = 20,
        require_durable: bool | None = None,
        rng: random.Random | None = None,
        socket_timeout: float = 30.0,
        create: bool = True,
        **file_options: Any,
    ) -> RedisQueue:
        """Connect to the queue at `url` (redis://[:password@]host:port/db?prefix=NAME).

        The server's persistence is read (CONFIG GET): weaker than `appendonly
        yes` and `appendfsync always` warns (DurabilityWarning), or raises
        DurabilityError if `require_durable` (or `?require_durable=1`).
        create=False: NotAQueueError if no queue lives under the prefix yet
        (the CLI's read-only commands change nothing).
        The file queue's options (sync, segment_size, ...) are accepted and
        have no effect: durability is the server's configuration.
        """
        unknown = set(file_options) - FILE_ONLY_OPTIONS
        if unknown:
            raise ArgumentError(f"unknown options for a Redis queue: {', '.join(sorted(unknown))}")
        for name, cap in (("max_pending", max_pending), ("max_bytes", max_bytes)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ArgumentError(f"{name} must be a positive integer or None")
        if not 1 <= max_payload <= 512 << 20:
            raise ArgumentError("max_payload must be 1 byte .. 512 MiB")
        if isinstance(max_attempts, bool) or not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ArgumentError(f"max_attempts must be 1..{MAX_ATTEMPTS}")
        client_url, prefix, url_durable, shown = parse_url(url)
        lib = _redis()
        from redis.backoff import NoBackoff  # noqa: PLC0415 - optional extra
        from redis.retry import Retry  # noqa: PLC0415

        client = lib.Redis.from_url(
            client_url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 10.0),
            retry=Retry(NoBackoff(), 0),  # a write is never resent: its outcome may be unknown
            health_check_interval=30,
        )
        q = cls(
            client,
            prefix=prefix,
            path=shown,
            max_pending=max_pending,
            max_bytes=max_bytes,
            max_payload=max_payload,
            max_attempts=max_attempts,
            rng=rng or random.Random(),
        )
        try:
            q._check_server(url_durable if require_durable is None else require_durable, create)
        except BaseException:
            client.close()
            raise
        return q

    def _check_server(self, require_durable: bool, create: bool) -> None:
        """Server version, format marker, and whether its persistence meets the guarantees."""
        info = self._read(lambda c: c.info("server"))
        self.server_version = str(info.get("redis_version", "?"))
        version = tuple(int(x) for x in self.server_version.split(".")[:2] if x.isdigit())
        if version < MIN_SERVER:
            raise BackendError(
                f"{self.path}: Redis {self.server_version} is too old "
                f"(walq needs {MIN_SERVER[0]}.{MIN_SERVER[1]} or newer)"
            )
        meta = f"{self.prefix}:meta"
        if create:
            self._write(lambda c: c.hsetnx(meta, "format", FORMAT_VERSION))
        found_raw = self._read(lambda c: c.hget(meta, "format"))
        if found_raw is None:
            raise NotAQueueError(f"{self.path}: no walq queue under prefix {self.prefix!r}")
        found = _text(found_raw)
        if found != FORMAT_VERSION:
            raise WalqError(
                f"{self.path}: data under prefix {self.prefix!r} has format {found}, "
                f"this walq reads format {FORMAT_VERSION}"
            )
        problem = self._persistence_problem()
        self.durable = problem is None
        if problem is None:
            return
        message = (
            f"{self.path}: {problem}; guarantees 1-3 (a returned enqueue or ack survives "
            "a crash of the server) need `appendonly yes` and `appendfsync always`"
        )
        if require_durable:
            raise DurabilityError(message)
        log.warning("%s", message)
        warnings.warn(message, DurabilityWarning, stacklevel=3)

    def _persistence_problem(self) -> str | None:
        """What about the server's persistence falls short, or None."""
        redis = _redis()
        try:
            conf: dict[Any, Any] = {}
            for name in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy"):
                conf.update(self._client.config_get(name))
        except redis.ResponseError as exc:
            return f"cannot read the server's persistence settings (CONFIG GET: {exc})"
        except redis.RedisError as exc:
            raise BackendError(f"{self.path}: {exc}") from None
        got = {_text(k): _text(v) for k, v in conf.items()}
        self.persistence = got
        problems = []
        if got.get("appendonly") != "yes":
            problems.append(f"appendonly is {got.get('appendonly')!r}")
        if got.get("appendfsync") != "always":
            problems.append(f"appendfsync is {got.get('appendfsync')!r}")
        if got.get("maxmemory", "0") != "0" and got.get("maxmemory-policy") != "noeviction":
            problems.append(
                f"maxmemory-policy is {got.get('maxmemory-policy')!r} (jobs may be evicted)"
            )
        return "; ".join(problems) or None

    # -- calling the server ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._forked:
            raise forks.error(self.path, self._pid)
        if self._closed:
            raise ClosedError(f"{self.path}: the queue is closed")

    def _run(self, name: str, *args: Any, write: bool = True) -> Any:
        """Run one script (a write is never retried: its outcome may be unknown)."""
        self._check_open()
        script = self._scripts[name]
        argv = [self.prefix, *args]
        return (
            self._write(lambda c: script(args=argv))
            if write
            else self._read(lambda c: script(args=argv))
        )

    def _write(self, step: Callable[[Any], _T]) -> _T:
        if self._forked:  # every server call: a child never uses the parent's connections
            raise forks.error(self.path, self._pid)
        redis = _redis()
        try:
            return step(self._client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendError(
                f"{self.path}: {exc} (whether the last write took effect is unknown)"
            ) from None
        except redis.RedisError as exc:
            raise BackendError(f"{self.path}: {exc}") from None

    def _read(self, step: Callable[[Any], _T]) -> _T:
        if self._forked:  # every server call: a child never uses the parent's connections
            raise forks.error(self.path, self._pid)
        redis = _redis()
        for wait in (0.05, 0.2, 0.5, None):
            try:
                return step(self._client)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if wait is None:
                    raise BackendError(f"{self.path}: {exc}") from None
                time.sleep(wait)
            except redis.RedisError as exc:
                raise BackendError(f"{self.path}: {exc}") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _raise(reply: Sequence[Any], prefix: str = "") -> None:
        """Raise the error a script replied with: [b'err', kind, message]."""
        kind, message = reply[1], _text(reply[2])
        if kind == b"full":
            raise QueueFull(f"{prefix}{message}")
        raise _ERRORS[kind](message)

    # -- producing ---------------------------------------------------------------------------

    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        sync: bool | None = None,
        timeout: float = 0.0,
    ) -> int:
        """Add a job; return its id once the server has it (durable per its appendfsync).

        With `key`, an unfinished job holding the same key is returned instead
        of a new one. A full queue raises QueueFull, after waiting up to `timeout`.
        """
        item = self._item(task, payload, key, delay, priority, max_attempts)
        return self._add([item], timeout)[0]

    def enqueue_many(
        self,
        items: Iterable[tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]],
        *,
        sync: bool | None = None,
        timeout: float = 0.0,
    ) -> list[int]:
        """Add many jobs in one atomic step; items are (task, payload[, options])."""
        return self._add([self._item_from(raw) for raw in items], timeout)

    def _item_from(self, raw: Any) -> JobSpec:
        return spec_from(raw, self.max_payload)

    def _item(
        self, task: Any, payload: Any, key: Any, delay: Any, priority: Any, max_attempts: Any
    ) -> JobSpec:
        """Validate one job's arguments (as the file queue does) and encode its payload."""
        return make_spec(task, payload, key=key, delay=delay, priority=priority,
                         max_attempts=max_attempts, max_payload=self.max_payload)  # fmt: skip

    def _add(self, items: list[JobSpec], timeout: float) -> list[int]:
        timeout = check_seconds("timeout", timeout)
        if not items:
            self._check_open()
            return []
        args: list[Any] = [
            "" if self.max_pending is None else self.max_pending,
            "" if self.max_bytes is None else self.max_bytes,
            len(items),
        ]
        for it in items:
            args += [it.task, it.kind, it.data, "1" if it.key is not None else "0", it.key or ""]
            args += [_ms(it.delay), it.priority, it.max_attempts]
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            reply = self._run("enqueue", *args)
            if reply[0] == b"ok":
                return [int(i) for i in reply[1]]
            left = deadline - time.monotonic()
            if reply[1] != b"full" or left <= 0:
                self._raise(reply, f"{self.path}: ")
            time.sleep(min(pause, left))  # room comes from another host: poll, gently
            pause = min(pause * 2, 0.25)

    # -- consuming -------------------------------------------------------------------------------

    def claim(
        self, lease: float = 60.0, timeout: float = 0.0, *, tasks: Iterable[str] | None = None
    ) -> Job | None:
        """Take the next ready job for `lease` seconds, waiting up to `timeout` for one.

        The attempt is counted on the server before the job is returned.
        """
        jobs = self.claim_many(1, lease=lease, timeout=timeout, tasks=tasks)
        return jobs[0] if jobs else None

    def claim_many(
        self,
        n: int,
        *,
        lease: float = 60.0,
        timeout: float = 0.0,
        accept: Callable[[JobInfo], bool | float] | None = None,
        tasks: Iterable[str] | None = None,
    ) -> list[Job]:
        """Take up to `n` ready jobs (highest priority, then oldest) in one atomic step.

        `accept(info)` is asked about each candidate, as by the file queue:
        True takes it, False leaves its task's jobs pending for the rest of
        this call, a number (a time.monotonic() instant) defers the job,
        uncharged, until then. Candidates are reserved on the server while it
        is asked, so no other claimer takes them meanwhile.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArgumentError(f"n must be a positive integer, not {excerpt(n)}")
        lease_ms = max(1, _ms(check_seconds("lease", lease, positive=True)))
        timeout = check_seconds("timeout", timeout)
        only = None if tasks is None else json.dumps(sorted({check_task(t) for t in tasks}))
        self._check_open()
        deadline = time.monotonic() + timeout
        while True:
            seen = self._ready_seq
            if accept is None:
                rows, moved = self._claim_plain(n, lease_ms, only)
            else:
                rows, moved = self._claim_accepted(n, lease_ms, accept, only)
            if rows:
                jobs = [job for job in map(self._job, rows) if job is not None]
                if jobs:
                    return jobs
                continue
            if moved:
                continue  # some were dead-lettered or deferred: look again
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wait_ready(seen, left)

    def _claim_plain(self, n: int, lease_ms: int, only: str | None) -> tuple[list[Any], int]:
        reply = self._run(
            "claim", n, self._defaults_json, self.default_max_attempts, lease_ms, only or ""
        )
        return list(reply[0]), int(reply[1])

    def _claim_accepted(
        self, n: int, lease_ms: int, accept: Callable[[JobInfo], bool | float], only: str | None
    ) -> tuple[list[Any], int]:
        """Reserve candidates, ask `accept` about each, then start, defer or put back."""
        token = uuid.uuid4().hex
        refused: set[str] = set()
        take: list[int] = []
        defer: list[list[float | int]] = []
        back: list[int] = []
        reserved: list[int] = []
        try:
            for _ in range(64):
                want = n - len(take)
                if want <= 0:
                    break
                found = self._run(
                    "reserve",
                    want,
                    token,
                    _ms(RESERVATION),
                    json.dumps(sorted(refused)),
                    only or "",
                )
                if not found:
                    break
                reserved += [int(row[0]) for row in found]
                for jid, task_b, attempts, priority, own in found:
                    task = _text(task_b)
                    if task in refused or len(take) >= n:
                        back.append(int(jid))
                        continue
                    info = JobInfo(
                        id=int(jid),
                        task=task,
                        state=PENDING,
                        attempts=int(attempts),
                        max_attempts=int(own) or self._max_for(task),
                        priority=int(priority),
                        loc=_NOWHERE,
                    )
                    verdict = accept(info)
                    if verdict is True:
                        take.append(info.id)
                    elif verdict is False:
                        refused.add(task)
                        back.append(info.id)
                    else:
                        wait = max(0.0, float(verdict) - time.monotonic())
                        defer.append([info.id, _ms(wait)])
                if len(found) < want:
                    break  # nothing more is pending (but the refused tasks' jobs)
        except BaseException:
            # accept raised, or the server failed: hand every reserved job back.
            with contextlib.suppress(WalqError):
                self._commit(token, [], [], reserved, 1)
            raise
        if not (take or defer or back):
            return [], 0
        rows, buried = self._commit(token, take, defer, back, lease_ms)
        return rows, buried + len(defer)

    def _commit(
        self,
        token: str,
        take: list[int],
        defer: list[list[float | int]],
        back: list[int],
        lease_ms: int,
    ) -> tuple[list[Any], int]:
        reply = self._run(
            "commit",
            token,
            self._defaults_json,
            self.default_max_attempts,
            lease_ms,
            json.dumps(take),
            json.dumps(defer),
            json.dumps(back),
        )
        rows, buried, lost = list(reply[0]), int(reply[1]), list(reply[2])
        if lost:
            # Only if this process stalled for longer than the reservation.
            log.warning(
                "claim: jobs %s were reserved for over %.0f s and went back to pending",
                [int(x) for x in lost],
                RESERVATION,
            )
        return rows, buried

    def _job(self, row: Sequence[Any]) -> Job | None:
        """The claimed job; None if its payload cannot be decoded (then it is dead)."""
        jid, task, kind, data, attempt, key, priority, created, gen, maxa = row
        with self._held_lock:
            self._held[int(jid)] = (int(attempt), int(gen))
            if len(self._held) > _HELD_CAP:
                self._held.pop(next(iter(self._held)))
        try:
            return build_job(
                id=int(jid),
                task=_text(task),
                kind=int(kind),
                data=bytes(data),
                attempt=int(attempt),
                key=None if key is None else _text(key),
                priority=int(priority),
                max_attempts=int(maxa),
                enqueued_at=int(created) / 1000.0,
            )
        except ValueError as exc:  # written by something other than walq
            why = f"payload is not valid JSON ({exc}): damage is never delivered as data"
            log.error("job %s: %s", jid, why)
            self.fail(int(jid), why, permanent=True, attempt=int(attempt))
            return None

    def _claims_args(
        self, head: list[Any], job_ids: Sequence[int], attempts: Sequence[int] | None
    ) -> list[Any]:
        """A many-job script's arguments: `head`, then each job with the claim it names."""
        held: Sequence[int | None] = attempts if attempts is not None else [None] * len(job_ids)
        args = list(head)
        for jid, attempt in zip(job_ids, held, strict=True):
            jid = _job_id(jid)  # noqa: PLW2901
            args += [jid, *self._claim(jid, attempt)]
        return args

    def _claim(self, job_id: int, attempt: int | None) -> tuple[str, str]:
        """(attempt, claim token) for a script: whose result or heartbeat this is.

        With `attempt`, that attempt (and this handle's token for it, if it
        claimed it). Without, this handle's own newest claim on the job; if it
        holds none, 'none', which the scripts refuse for a running job
        (LeaseLost): only cancel and requeue act without a claim.
        """
        with self._held_lock:
            held = self._held.get(job_id)
        if attempt is None:
            if held is None:
                return "", "none"
            return str(held[0]), str(held[1])
        if held is None or held[0] != attempt:
            return str(int(attempt)), ""
        return str(int(attempt)), str(held[1])

    def _forget(self, job_ids: Iterable[int]) -> None:
        with self._held_lock:
            for jid in job_ids:
                self._held.pop(jid, None)

    def ack(self, job_id: int, *, attempt: int | None = None, sync: bool | None = None) -> None:
        """Finish a running job held by `attempt`, or by this handle's own claim.

        Without `attempt`, the claim this handle made last on the job decides:
        LeaseLost if it no longer holds the job (its lease expired, the job was
        claimed again or cancelled). Only cancel and requeue act without a claim.
        """
        self.ack_many([job_id], attempts=None if attempt is None else [attempt], sync=sync)

    def ack_many(
        self,
        job_ids: Sequence[int],
        *,
        attempts: Sequence[int] | None = None,
        sync: bool | None = None,
        strict: bool = True,
    ) -> list[tuple[int, StateError]]:
        """Finish many running jobs in one atomic step.

        strict: if one job is not held (by its attempt), raise and ack none.
        Otherwise ack those that are held and return the others with why.
        """
        args = self._claims_args(["1" if strict else "0"], job_ids, attempts)
        if len(args) == 1:
            self._check_open()
            return []
        reply = self._run("ack", *args)
        if reply[0] != b"ok":
            self._raise(reply)
        self._forget(job_ids)
        return [(int(jid), _STATE_ERRORS[kind](_text(msg))) for jid, kind, msg in reply[1]]

    def fail(
        self,
        job_id: int,
        error: str = "",
        permanent: bool = False,
        *,
        attempt: int | None = None,
        delay: float | None = None,
        sync: bool | None = None,
    ) -> str:
        """Record a failed attempt: retry after `delay` (default: backoff), or dead.

        Returns the job's new status, "scheduled" or "dead".
        """
        if delay is not None:
            delay = check_delay(delay)
        jid = _job_id(job_id)
        reply = self._run(
            "fail",
            jid,
            *self._claim(jid, attempt),
            str(error),
            "1" if permanent else "0",
            "" if delay is None else _ms(delay),
            repr(self._rng.random()),
            self._defaults_json,
            self.default_max_attempts,
        )
        if reply[0] != b"ok":
            self._raise(reply)
        self._forget([jid])
        return _text(reply[1])

    def release(self, job_id: int, *, attempt: int | None = None, sync: bool | None = None) -> None:
        """Hand a running job back to pending without charging its attempt."""
        jid = _job_id(job_id)
        reply = self._run("release", jid, *self._claim(jid, attempt))
        if reply[0] != b"ok":
            self._raise(reply)
        self._forget([jid])

    def extend(self, job_id: int, lease: float, *, attempt: int | None = None) -> None:
        """Push a running job's lease to `lease` seconds from now (a heartbeat)."""
        lease_ms = max(1, _ms(check_seconds("lease", lease, positive=True)))
        jid = _job_id(job_id)
        reply = self._run("extend", jid, *self._claim(jid, attempt), lease_ms)
        if reply[0] != b"ok":
            self._raise(reply)

    def extend_many(
        self, job_ids: Sequence[int], lease: float, *, attempts: Sequence[int] | None = None
    ) -> list[tuple[int, WalqError]]:
        """Extend many running jobs' leases in one atomic step (a worker's heartbeat).

        Each job's attempt (or this handle's claim) is checked as by `extend`;
        the jobs no longer held are returned with why (LeaseLost, StateError,
        UnknownJobError), the others extended.
        """
        lease_ms = max(1, _ms(check_seconds("lease", lease, positive=True)))
        args = self._claims_args([lease_ms], job_ids, attempts)
        if len(args) == 1:
            self._check_open()
            return []
        reply = self._run("extend_many", *args)
        return [(int(jid), _ERRORS[kind](_text(msg))) for jid, kind, msg in reply]

    # -- administration ------------------------------------------------------------------------

    def status(self, job_id: int) -> str:
        """pending | scheduled | running | done | dead | cancelled (UnknownJobError if none)."""
        reply = self._run("status", _job_id(job_id))
        if reply[0] != b"ok":
            self._raise(reply)
        return _text(reply[1])

    def cancel(self, job_id: int, *, sync: bool | None = None) -> bool:
        """Cancel an unfinished job; False if it had already finished. A dead job: StateError.

        A running job's worker hears of it (cancel_listeners, on every host).
        """
        jid = _job_id(job_id)
        deadline = time.monotonic() + RESERVATION + 1.0
        while True:
            reply = self._run("cancel", jid, self._origin)
            if reply[0] != b"busy" or time.monotonic() > deadline:
                break
            time.sleep(0.005)  # a claim is deciding about it right now: a moment
        if reply[0] == b"busy":
            raise StateError(f"job {jid} stayed reserved by a claim; try again")
        if reply[0] != b"ok":
            self._raise(reply)
        if int(reply[2]):
            self._forget([jid])
            for listener in list(self.cancel_listeners):
                listener(jid)
        return bool(int(reply[1]))

    def dead_jobs(self) -> list[DeadJob]:
        """Every dead-lettered job with its last error."""
        return [
            DeadJob(
                id=d["id"],
                task=d["task"],
                payload=_decode_or_raw(d["kind"], d["payload"]),
                attempts=d["attempts"],
                error=d["error"],
                key=d["key"],
            )
            for d in self._dead_rows(None)
        ]

    def _dead_rows(self, ids: Iterable[int] | None) -> list[dict[str, Any]]:
        self._check_open()
        p = self.prefix
        if ids is None:
            wanted = [int(x) for x in self._read(lambda c: c.zrange(f"{p}:dead", 0, -1))]
        else:
            wanted = [_job_id(i) for i in ids]
        out = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]

            def fetch(c: Any, chunk: list[int] = chunk) -> list[Any]:
                pipe = c.pipeline(transaction=False)
                for jid in chunk:
                    pipe.hmget(f"{p}:j:{jid}", "s", "t", "k", "p", "a", "e", "key", "c")
                return list(pipe.execute())

            for jid, row in zip(chunk, self._read(fetch), strict=True):
                state, task, kind, data, attempts, error, key, created = row
                if state != b"dead":
                    if ids is None:
                        continue  # requeued or purged since the listing
                    status = self.status(jid)  # UnknownJobError if it never existed
                    raise StateError(f"job {jid} is {status}, not dead")
                out.append(
                    {
                        "id": jid,
                        "task": _text(task),
                        "kind": int(kind),
                        "payload": bytes(data),
                        "attempts": int(attempts),
                        "error": _text(error or b""),
                        "key": None if key is None else _text(key),
                        "created": int(created) / 1000.0,
                    }
                )
        return out

    def requeue(self, job_id: int, *, sync: bool | None = None) -> None:
        """Give a dead job a fresh start (its attempts reset)."""
        reply = self._run("requeue", _job_id(job_id))
        if reply[0] != b"ok":
            self._raise(reply)

    def purge(self, job_ids: Iterable[int] | None = None, *, sync: bool | None = None) -> int:
        """Delete dead jobs (all of them by default); return how many."""
        if job_ids is not None:
            ids = [_job_id(j) for j in job_ids]
            if not ids:
                self._check_open()
                return 0
            reply = self._run("purge", "ids", *ids)
            if reply[0] != b"ok":
                self._raise(reply)
            return int(reply[1])
        total = 0
        while True:  # in chunks: one script must stay short
            n = int(self._run("purge", "all", 1000)[1])
            total += n
            if n < 1000:
                return total

    def set_task_defaults(self, task: str, *, max_attempts: int) -> None:
        """Attempts allowed for jobs of `task` that did not set max_attempts (this process)."""
        check_task(task)
        if isinstance(max_attempts, bool) or not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ArgumentError(f"max_attempts must be 1..{MAX_ATTEMPTS}, not {max_attempts}")
        self._task_max[task] = max_attempts
        self._defaults_json = json.dumps(self._task_max)

    def _max_for(self, task: str) -> int:
        return self._task_max.get(task, self.default_max_attempts)

    def stats(self) -> dict[str, Any]:
        """Counts by state and per task, live bytes and the server-wide counters."""
        counts, per_task, seq = self._run("stats", write=True)
        return _shape_stats(_pairs(counts), _pairs(per_task), int(seq)) | {
            "backend": "redis",
            "url": self.path,
            "server_version": self.server_version,
            "durable": self.durable,
        }

    def next_due_in(self) -> float | None:
        """Seconds until the next scheduled job falls due or a lease expires (None: none)."""
        reply = self._run("next_due")
        if reply is None:
            return None
        return max(0.0, int(reply[0]) / 1000.0)

    def sync(self) -> None:
        """Nothing to do: the server made every write durable per its appendfsync."""
        self._check_open()

    def record_worker_status(self, status: Mapping[str, Any], ttl: float = 30.0) -> None:
        """Publish a worker's status for `walq stats URL` (kept `ttl` seconds)."""
        name = f"{self.prefix}:w:{socket.gethostname()}:{os.getpid()}"
        body = json.dumps({"host": socket.gethostname(), **status}, default=str)
        self._write(lambda c: c.set(name, body, px=_ms(ttl)))

    def close(self) -> None:
        """Stop listening and disconnect (idempotent; in a fork() child, only forget)."""
        if self._forked or os.getpid() != self._pid:
            self._forked = self._closed = True  # the connections are the parent's
            return
        if self._closed:
            return
        self._closed = True
        with self._ready:
            self._ready.notify_all()
        listener = self._listener
        if listener is not None:
            listener.join(timeout=3.0)
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> RedisQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisQueue {self.path}>"

    # -- notifications ------------------------------------------------------------------------

    def _need_listener(self) -> None:
        """Start the pub/sub listener (once): ready and cancel news from every host."""
        with self._listener_lock:
            if self._listener is not None or self._closed:
                return
            subscribed = threading.Event()
            self._listener = threading.Thread(
                target=self._listen, args=(subscribed,), name="walq-redis-listener", daemon=True
            )
            self._listener.start()
        subscribed.wait(2.0)

    def _listen(self, subscribed: threading.Event) -> None:
        redis = _redis()
        pause = 0.1
        down_since: float | None = None  # an outage is logged once, and its end
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                subscribed.set()
                if down_since is not None:
                    log.info(
                        "%s: event listener back after %.1f s",
                        self.path,
                        time.monotonic() - down_since,
                    )
                    down_since = None
                self._on_ready()  # whatever was published while no one listened
                pause = 0.1
                while not self._closed:
                    message = pubsub.get_message(timeout=0.25)
                    if message is not None:
                        self._on_message(message.get("data"))
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._closed:
                    break
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("%s: event listener: %s; reconnecting", self.path, exc)
                else:
                    log.debug("%s: event listener: %s; reconnecting", self.path, exc)
                time.sleep(pause * (0.5 + self._rng.random() / 2))
                pause = min(pause * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _on_message(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        if data == b"r":
            self._on_ready()
        elif data.startswith(b"c "):
            parts = data.split()
            if len(parts) == 3 and parts[2].decode() != self._origin:
                jid = int(parts[1])
                self._forget([jid])
                for listener in list(self.cancel_listeners):
                    try:
                        listener(jid)
                    except Exception:
                        log.exception("cancel listener failed")

    def _on_ready(self) -> None:
        with self._ready:
            self._ready_seq += 1
            self._ready.notify_all()
        for listener in list(self.ready_listeners):
            try:
                listener()
            except Exception:
                log.exception("ready listener failed")

    def _wait_ready(self, seen: int, left: float) -> None:
        """Sleep until a job may be ready: news from the server, a due time, or 1 s."""
        self._need_listener()
        due = self.next_due_in()
        wait = min(left, 1.0 if due is None else max(due, 0.001), 1.0)
        with self._ready:
            if self._ready_seq == seen and not self._closed:
                self._ready.wait(wait)
        self._check_open()


def _decode_or_raw(kind: int, data: bytes) -> Any:
    """The payload, or its raw bytes if it does not decode (a dead job is shown, not run)."""
    try:
        return decode_payload(kind, data)
    except ValueError:
        return data


def _job_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"a job id is an int, not {excerpt(value)}")
    return value


def _pairs(flat: Sequence[Any]) -> dict[str, int]:
    it = iter(flat)
    return {_text(k): int(v) for k, v in zip(it, it, strict=True)}


_COUNTERS = COUNTERS


def _shape_stats(counts: dict[str, int], per_task: dict[str, int], seq: int) -> dict[str, Any]:
    states = ("pending", "scheduled", "running", "dead")
    tasks: dict[str, dict[str, int]] = {}
    for field, n in per_task.items():
        state, _, task = field.partition(":")
        if n and state in states:
            tasks.setdefault(task, dict.fromkeys(states, 0))[state] = n
    out: dict[str, Any] = {s: counts.get(s, 0) for s in states}
    out["done"] = counts.get("done", 0)
    out["unfinished"] = out["pending"] + out["scheduled"] + out["running"]
    out["bytes"] = counts.get("bytes", 0)
    out["next_id"] = seq + 1
    out["tasks"] = dict(sorted(tasks.items()))
    out.update({c: counts.get(c, 0) for c in _COUNTERS})
    return out


# -- the CLI's read commands on a Redis URL -------------------------------------------------------


def _open_quiet(url: str) -> RedisQueue:
    """Open for the CLI: a weak durability setting is reported by `stats`, not warned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DurabilityWarning)
        return RedisQueue.open(url, create=False)


def inspect_stats(url: str) -> dict[str, Any]:
    """`walq stats URL`: counts, due work and workers, read without changing anything.

    Unlike RedisQueue.stats, nothing is moved: jobs due or leases expired are
    counted as such (the next claim moves them).
    """
    with _open_quiet(url) as q:
        p = q.prefix

        def snapshot(c: Any) -> list[Any]:
            now_s, now_us = c.time()
            now = now_s * 1000 + now_us // 1000
            pipe = c.pipeline(transaction=True)
            pipe.hgetall(f"{p}:n")
            pipe.hgetall(f"{p}:tn")
            pipe.get(f"{p}:seq")
            pipe.zcount(f"{p}:sch", "-inf", now)
            pipe.zcount(f"{p}:run", "-inf", now)
            pipe.zrange(f"{p}:sch", 0, 0, withscores=True)
            pipe.zrange(f"{p}:run", 0, 0, withscores=True)
            return [now, *pipe.execute()]

        now, counts, per_task, seq, due, expired, sch, run = q._read(snapshot)

        def flat(d: dict[Any, Any]) -> list[Any]:
            return [x for kv in d.items() for x in kv]

        st = _shape_stats(_pairs(flat(counts)), _pairs(flat(per_task)), int(seq or 0))
        nexts = [int(s) for _, s in sch + run]

        def reports(c: Any) -> list[Any]:
            names = list(c.scan_iter(match=f"{p}:w:*", count=500))
            return list(c.mget(names)) if names else []

        workers = []
        for body in q._read(reports):
            if body:
                with contextlib.suppress(ValueError):
                    workers.append(json.loads(body))
        st.update(
            backend="redis",
            url=q.path,
            server_version=q.server_version,
            durable=q.durable,
            persistence=q.persistence,
            due_now=int(due),
            expired_leases=int(expired),
            next_due_in=max(0.0, (min(nexts) - now) / 1000.0) if nexts else None,
            workers=workers,
        )
        return st


def stats_lines(st: Mapping[str, Any]) -> list[str]:
    """`walq stats URL` as text."""
    persistence = st.get("persistence") or {}
    durable = (
        "yes (appendonly yes, appendfsync always)"
        if st["durable"]
        else f"NO (appendonly {persistence.get('appendonly', '?')}, "
        f"appendfsync {persistence.get('appendfsync', '?')})"
    )
    lines = [
        f"queue     {st['url']} (Redis {st['server_version']})",
        f"durable   {durable}",
        f"jobs      {st['pending']} pending, {st['scheduled']} scheduled, {st['running']} "
        f"running, {st['dead']} dead ({st['unfinished']} unfinished)",
    ]
    if st["due_now"] or st["expired_leases"]:
        lines.append(
            f"          ({st['due_now']} scheduled are due and {st['expired_leases']} leases "
            "have expired: the next claim moves them to pending)"
        )
    if st["next_due_in"] is not None:
        lines.append(f"next due  in {st['next_due_in']:.1f} s")
    lines.append(f"done      {st['done']} acked; next id {st['next_id']}")
    if st["tasks"]:
        head = f"{'TASK':<20} {'PENDING':>8} {'SCHEDULED':>9} {'RUNNING':>8} {'DEAD':>6}"
        lines.append(f"tasks     {head}")
        for name, c in st["tasks"].items():
            lines.append(
                f"          {shown(name):<20} {c['pending']:>8} {c['scheduled']:>9} "
                f"{c['running']:>8} {c['dead']:>6}"
            )
    lines.append("counters  " + ", ".join(f"{c} {st[c]}" for c in _COUNTERS))
    if not st["workers"]:
        lines.append("workers   none reported in the last 30 s")
    for w in st["workers"]:
        counters = w.get("counters") or {}
        summary = ", ".join(f"{k} {v}" for k, v in counters.items() if v)
        lines.append(
            f"worker    {w.get('host', '?')} pid {w.get('pid')}, {w.get('processes')} processes"
            + (f"; {summary}" if summary else "")
        )
    return lines


def dead_jobs(url: str, ids: Iterable[int] | None = None) -> list[DeadInfo]:
    """`walq dead list|show URL`: dead jobs as the CLI shows them (read-only)."""
    from walq.ops.inspect import DeadInfo  # noqa: PLC0415 - the CLI's record type

    with _open_quiet(url) as q:
        return [
            DeadInfo(
                id=d["id"],
                task=d["task"],
                attempts=d["attempts"],
                error=d["error"],
                key=d["key"],
                payload_kind="bytes" if d["kind"] == PAYLOAD_BYTES else "json",
                payload=d["payload"],
                created=d["created"],
            )
            for d in q._dead_rows(ids)
        ]


def requeue(url: str, ids: Iterable[int]) -> list[int]:
    """`walq dead requeue URL ID...`: no lock to take; every id must be dead."""
    done = []
    with _open_quiet(url) as q:
        for jid in ids:
            q.requeue(jid)
            done.append(jid)
    return done


def purge(url: str, ids: Iterable[int] | None = None) -> int:
    """`walq dead purge URL [ID...]`: delete dead jobs (all of them by default)."""
    with _open_quiet(url) as q:
        return q.purge(ids)


def enqueue(
    url: str,
    task: str,
    payload: Any = None,
    *,
    key: str | None = None,
    delay: float = 0.0,
    priority: int = 0,
) -> int:
    """`walq enqueue URL TASK ...`: add one job; return its id."""
    with RedisQueue.open(url) as q:
        return q.enqueue(task, payload, key=key, delay=delay, priority=priority)


__all__ = [
    "BackendError",
    "DurabilityError",
    "DurabilityWarning",
    "MissingDependency",
    "RedisQueue",
    "dead_jobs",
    "enqueue",
    "inspect_stats",
    "parse_url",
    "purge",
    "requeue",
    "stats_lines",
]

assert PAYLOAD_JSON == 0 and PAYLOAD_BYTES == 1  # the kinds stored in P:j:ID's k field
