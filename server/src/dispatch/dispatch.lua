-- Switchboard dispatch engine on Redis: every operation is one call of this
-- script, so it is atomic across nodes and costs one round trip. The rules
-- are the same as `engine::pick` and `local.rs`; the same tests run on both.
--
-- ARGV[1] = operation, ARGV[2] = key prefix, the rest per operation.
-- Keys (P = prefix), computed here (single Redis, not Redis Cluster):
--   P:ready                 set once the state was rebuilt from the database
--   P:agents, P:teams, P:tickets   sets of ids, so a rebuild can clear them
--   P:agent:<id>            hash status, since, seen, load, cap, last, skills
--   P:online                set of agents whose declared status is online
--                           (a drain reads only those of a team's members:
--                           agents off shift cost nothing per consult)
--   P:team:<id>:members     set of agent ids
--   P:team:<id>:q           sorted set conv -> score (priority, then time)
--   P:team:<id>:rr          last agent of the round-robin rotation
--   P:team:<id>:sw          hash agent -> smooth-weighted current weight
--   P:ticket:<conv>         hash team, score, queued, skills, tried, agent
--   P:offers                sorted set conv -> offer expiry
local op = ARGV[1]
local P = ARGV[2]
local SCAN = 200

local function key(...)
  return P .. ':' .. table.concat({...}, ':')
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

local function decode(s, default)
  -- Most tickets have no skills and no tried agents: no decoder call.
  if not s or s == '' or s == '[]' or s == '{}' then return default end
  return cjson.decode(s)
end

local function contains(list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

-- The queued time within a queue score: Ticket::score is
-- (9 - priority) * 1e13 + queued (exact in a double).
local function queued_of(score)
  return string.format('%d', tonumber(score) % 10000000000000)
end

local function effective(status, seen, now, live)
  if seen == nil or now - seen > live then return 'offline' end
  return status or 'offline'
end

if op == 'needs_rebuild' then
  return 1 - redis.call('EXISTS', key('ready'))
end

if op == 'rebuild' then
  -- ARGV: now, snapshot JSON {agents:[[id,cap,skills,load]], members:[[team,[ids]]],
  --       waiting:[[conv,team,score,queued,skills]], offers:[[conv,team,score,queued,skills,agent,expires]]}
  -- Another node may have rebuilt meanwhile: its state is newer than ours.
  if redis.call('EXISTS', key('ready')) == 1 then return 0 end
  local snap = cjson.decode(ARGV[4])
  for _, t in ipairs(redis.call('SMEMBERS', key('teams'))) do
    redis.call('DEL', key('team', t, 'members'), key('team', t, 'q'), key('team', t, 'rr'), key('team', t, 'sw'))
  end
  for _, c in ipairs(redis.call('SMEMBERS', key('tickets'))) do
    redis.call('DEL', key('ticket', c))
  end
  redis.call('DEL', key('teams'), key('tickets'), key('offers'))
  for _, a in ipairs(redis.call('SMEMBERS', key('agents'))) do
    redis.call('HSET', key('agent', a), 'load', 0, 'cap', 0)
  end
  for _, a in ipairs(snap.agents) do
    redis.call('SADD', key('agents'), a[1])
    redis.call('HSET', key('agent', a[1]), 'cap', a[2], 'skills', a[3], 'load', a[4])
    redis.call('HSETNX', key('agent', a[1]), 'since', 0)
  end
  -- Declared presence is kept: the online set follows the agents' hashes.
  redis.call('DEL', key('online'))
  for _, a in ipairs(redis.call('SMEMBERS', key('agents'))) do
    if redis.call('HGET', key('agent', a), 'status') == 'online' then
      redis.call('SADD', key('online'), a)
    end
  end
  for _, m in ipairs(snap.members) do
    redis.call('SADD', key('teams'), m[1])
    for _, id in ipairs(m[2]) do
      redis.call('SADD', key('team', m[1], 'members'), id)
    end
  end
  for _, w in ipairs(snap.waiting) do
    redis.call('SADD', key('tickets'), w[1])
    redis.call('HSET', key('ticket', w[1]), 'team', w[2], 'score', w[3], 'queued', w[4], 'skills', w[5], 'tried', '[]')
    redis.call('ZADD', key('team', w[2], 'q'), w[3], w[1])
  end
  for _, o in ipairs(snap.offers) do
    redis.call('SADD', key('tickets'), o[1])
    redis.call('HSET', key('ticket', o[1]), 'team', o[2], 'score', o[3], 'queued', o[4], 'skills', o[5], 'tried', '[]', 'agent', o[6])
    redis.call('ZADD', key('offers'), o[7], o[1])
  end
  redis.call('SET', key('ready'), ARGV[3])
  return 1
end

if redis.call('EXISTS', key('ready')) == 0 then
  return redis.error_reply('NOTREADY dispatch state must be rebuilt')
end

if op == 'set_agent' then
  -- ARGV: id, cap, skills JSON
  local a = key('agent', ARGV[3])
  redis.call('SADD', key('agents'), ARGV[3])
  redis.call('HSET', a, 'cap', ARGV[4], 'skills', ARGV[5])
  redis.call('HSETNX', a, 'load', 0)
  redis.call('HSETNX', a, 'since', 0)
  return 1
end

if op == 'set_members' then
  -- ARGV: team, ids...
  local m = key('team', ARGV[3], 'members')
  redis.call('SADD', key('teams'), ARGV[3])
  redis.call('DEL', m)
  for i = 4, #ARGV do
    redis.call('SADD', m, ARGV[i])
  end
  return 1
end

if op == 'presence' then
  -- ARGV: agent, status, now, live_ms -> {status, since, load, cap}
  local a = key('agent', ARGV[3])
  local now, live = num(ARGV[5]), num(ARGV[6])
  local cur = redis.call('HMGET', a, 'status', 'seen', 'since')
  local since = num(cur[3], 0)
  if effective(cur[1], num(cur[2]), now, live) ~= ARGV[4] then since = now end
  redis.call('HSET', a, 'status', ARGV[4], 'seen', now, 'since', since)
  if ARGV[4] == 'online' then
    redis.call('SADD', key('online'), ARGV[3])
  else
    redis.call('SREM', key('online'), ARGV[3])
  end
  redis.call('HSETNX', a, 'load', 0)
  redis.call('HSETNX', a, 'cap', 0)
  local v = redis.call('HMGET', a, 'load', 'cap')
  return {ARGV[4], tostring(since), tostring(v[1]), tostring(v[2])}
end

if op == 'heartbeat' then
  -- ARGV: now, (agent, status)...
  local now = ARGV[3]
  for i = 4, #ARGV, 2 do
    local a = key('agent', ARGV[i])
    if redis.call('HEXISTS', a, 'cap') == 1 then
      redis.call('HSET', a, 'seen', now)
      local status = redis.call('HGET', a, 'status')
      if status == false then
        status = ARGV[i + 1]
        redis.call('HSET', a, 'status', status, 'since', now)
      end
      -- Also heals an online set that lost an agent (a state written by an
      -- earlier version, a key evicted): within one heartbeat.
      if status == 'online' then
        redis.call('SADD', key('online'), ARGV[i])
      end
    end
  end
  return 1
end

-- A team's round-robin position (the id of the agent picked last), read at
-- a drain's first pick and written back once at its end: nothing else runs
-- while a script does, so the copy cannot go stale.
local rr = {loaded = false, last = false, moved = false}

-- Picks an agent among `cands` (eligible, untried, in id order) for a
-- ticket; returns the index. Same rules as engine::pick.
local function pick(team, strategy, cands, need, widened)
  if #cands == 0 then return nil end
  local function least(filter)
    local best
    for i, c in ipairs(cands) do
      if filter(c) then
        if best == nil then
          best = i
        else
          local b = cands[best]
          if c.load < b.load or (c.load == b.load and c.last < b.last) then best = i end
        end
      end
    end
    return best
  end
  if strategy == 'round_robin' then
    if not rr.loaded then
      rr.last = redis.call('GET', key('team', team, 'rr'))
      rr.loaded = true
    end
    -- The first candidate after the last one picked, else the first: a
    -- binary search, as the candidates are in id order.
    local chosen = 1
    if rr.last then
      local lo, hi = 1, #cands + 1
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if cands[mid].id > rr.last then hi = mid else lo = mid + 1 end
      end
      if lo <= #cands then chosen = lo end
    end
    rr.last = cands[chosen].id
    rr.moved = true
    return chosen
  elseif strategy == 'least_load' then
    return least(function() return true end)
  elseif strategy == 'skill' then
    if widened then return least(function() return true end) end
    return least(function(c)
      local have = decode(c.skills, {})
      for name, level in pairs(need) do
        if num(have[name], 0) < level then return false end
      end
      return true
    end)
  elseif strategy == 'weighted' then
    local swkey = key('team', team, 'sw')
    local total, best, bestw = 0, nil, nil
    for i, c in ipairs(cands) do
      total = total + c.cap
      local w = num(redis.call('HGET', swkey, c.id), 0) + c.cap
      c.sw = w
      if best == nil or w > bestw then best, bestw = i, w end
    end
    for i, c in ipairs(cands) do
      local w = c.sw
      if i == best then w = w - total end
      redis.call('HSET', swkey, c.id, w)
    end
    return best
  end
  return nil
end

if op == 'drain' then
  -- ARGV: team, now, strategy, open, offer_ms, widen_ms, max, live_ms,
  --       [conv, score, queued, skills JSON] to enqueue first
  -- -> flat list conv, agent, queued per assignment
  local team, now, strategy = ARGV[3], num(ARGV[4]), ARGV[5]
  local open, offer_ms, widen_ms = ARGV[6] == '1', num(ARGV[7]), num(ARGV[8])
  local max, live = num(ARGV[9]), num(ARGV[10])
  local qkey = key('team', team, 'q')
  if ARGV[11] and redis.call('EXISTS', key('ticket', ARGV[11])) == 0 then
    local conv = ARGV[11]
    redis.call('SADD', key('tickets'), conv)
    redis.call('HSET', key('ticket', conv), 'team', team, 'score', ARGV[12], 'queued', ARGV[13], 'skills', ARGV[14], 'tried', '[]')
    redis.call('ZADD', qkey, ARGV[12], conv)
    redis.call('SADD', key('teams'), team)
  end
  local out = {}
  if not open then return out end
  -- Only members declared online can be eligible (SINTER walks the smaller
  -- of the two sets).
  local members = redis.call('SINTER', key('team', team, 'members'), key('online'))
  table.sort(members)
  local agents = {}
  for _, id in ipairs(members) do
    local v = redis.call('HMGET', key('agent', id), 'status', 'seen', 'load', 'cap', 'last', 'skills')
    local a = {id = id, status = v[1], seen = num(v[2]), load = num(v[3], 0), cap = num(v[4], 0), last = num(v[5], 0), skills = v[6]}
    table.insert(agents, a)
  end
  -- The eligible agents, in id order, kept up to date as picks fill them
  -- (eligibility only shrinks within one call), so a pick does not look at
  -- every member again.
  local elig = {}
  for _, a in ipairs(agents) do
    if effective(a.status, a.seen, now, live) == 'online' and a.load < a.cap then
      table.insert(elig, a)
    end
  end
  -- Nobody can take one: the queue is not read (a consult into a full
  -- team lands here, and reading the head of a long queue was most of it).
  if #elig == 0 then return out end
  local queue = redis.call('ZRANGE', qkey, 0, SCAN - 1)
  for _, conv in ipairs(queue) do
    if #out >= max * 3 or #elig == 0 then break end
    local tkey = key('ticket', conv)
    local t = redis.call('HMGET', tkey, 'queued', 'skills', 'tried')
    if not t[1] then
      redis.call('ZREM', qkey, conv)
    else
      local tried = decode(t[3], {})
      local cands = elig
      if #tried > 0 then
        cands = {}
        for _, a in ipairs(elig) do
          if not contains(tried, a.id) then table.insert(cands, a) end
        end
      end
      local queued = num(t[1])
      local need = {}
      if strategy == 'skill' then need = decode(t[2], {}) end
      local i = pick(team, strategy, cands, need, now - queued > widen_ms)
      if i then
        local a = cands[i]
        a.load = a.load + 1
        a.last = now
        if a.load >= a.cap then
          for j, e in ipairs(elig) do
            if e == a then table.remove(elig, j); break end
          end
        end
        redis.call('ZREM', qkey, conv)
        redis.call('HSET', key('agent', a.id), 'load', a.load, 'last', now)
        if offer_ms > 0 then
          redis.call('HSET', tkey, 'agent', a.id)
          redis.call('ZADD', key('offers'), now + offer_ms, conv)
        else
          redis.call('DEL', tkey)
          redis.call('SREM', key('tickets'), conv)
        end
        table.insert(out, conv)
        table.insert(out, a.id)
        table.insert(out, tostring(queued))
      end
    end
  end
  if rr.moved then redis.call('SET', key('team', team, 'rr'), rr.last) end
  return out
end

if op == 'dequeue' then
  -- ARGV: team, conv
  if redis.call('ZREM', key('team', ARGV[3], 'q'), ARGV[4]) == 1 then
    redis.call('DEL', key('ticket', ARGV[4]))
    redis.call('SREM', key('tickets'), ARGV[4])
    return 1
  end
  return 0
end

local function drop_offer_of(conv, agent)
  local tkey = key('ticket', conv)
  if agent ~= '' and redis.call('HGET', tkey, 'agent') == agent then
    redis.call('DEL', tkey)
    redis.call('SREM', key('tickets'), conv)
    redis.call('ZREM', key('offers'), conv)
    return true
  end
  return false
end

local function decrement(agent)
  local a = key('agent', agent)
  local load = num(redis.call('HGET', a, 'load'), 0)
  if load > 0 then redis.call('HSET', a, 'load', load - 1) end
end

if op == 'release' then
  -- ARGV: agent, conv
  decrement(ARGV[3])
  drop_offer_of(ARGV[4], ARGV[3])
  return 1
end

if op == 'assign' then
  -- ARGV: conv, agent, from_queue ('' = none), previous ('' = none),
  --       need_online ('1'/'0'), now, live_ms -> 'ok' or the refusal
  local conv, agent, from, prev = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local now, live = num(ARGV[8]), num(ARGV[9])
  local akey = key('agent', agent)
  local v = redis.call('HMGET', akey, 'status', 'seen', 'load', 'cap')
  if not v[4] then return 'unknown' end
  local load, cap = num(v[3], 0), num(v[4], 0)
  if load >= cap then return 'full' end
  if ARGV[7] == '1' and effective(v[1], num(v[2]), now, live) ~= 'online' then return 'offline' end
  local tkey = key('ticket', conv)
  if from ~= '' then
    local t = redis.call('HMGET', tkey, 'team', 'agent')
    if t[1] ~= from or t[2] then return 'not_waiting' end
    redis.call('ZREM', key('team', from, 'q'), conv)
    redis.call('DEL', tkey)
    redis.call('SREM', key('tickets'), conv)
  elseif redis.call('HEXISTS', tkey, 'agent') == 1 then
    redis.call('DEL', tkey)
    redis.call('SREM', key('tickets'), conv)
    redis.call('ZREM', key('offers'), conv)
  end
  if prev ~= '' then decrement(prev) end
  redis.call('HSET', akey, 'load', load + 1, 'last', now)
  return 'ok'
end

if op == 'accept' then
  -- ARGV: conv, agent
  if drop_offer_of(ARGV[3], ARGV[4]) then return 1 end
  return 0
end

if op == 'expire' then
  -- ARGV: now -> flat list conv, agent, team, queued
  local out = {}
  for _, conv in ipairs(redis.call('ZRANGEBYSCORE', key('offers'), '-inf', ARGV[3])) do
    local tkey = key('ticket', conv)
    local t = redis.call('HMGET', tkey, 'agent', 'team', 'score', 'queued', 'tried')
    redis.call('ZREM', key('offers'), conv)
    if t[1] then
      local tried = decode(t[5], {})
      table.insert(tried, t[1])
      redis.call('HSET', tkey, 'tried', cjson.encode(tried))
      redis.call('HDEL', tkey, 'agent')
      redis.call('ZADD', key('team', t[2], 'q'), t[3], conv)
      decrement(t[1])
      table.insert(out, conv)
      table.insert(out, t[1])
      table.insert(out, t[2])
      table.insert(out, t[4])
    end
  end
  return out
end

if op == 'overdue' then
  -- ARGV: team, cutoff -> flat list conv, queued
  local qkey = key('team', ARGV[3], 'q')
  local cutoff = num(ARGV[4])
  local out = {}
  local z = redis.call('ZRANGE', qkey, 0, -1, 'WITHSCORES')
  for i = 1, #z, 2 do
    local conv, queued = z[i], queued_of(z[i + 1])
    if num(queued, 0) < cutoff then
      redis.call('ZREM', qkey, conv)
      redis.call('DEL', key('ticket', conv))
      redis.call('SREM', key('tickets'), conv)
      table.insert(out, conv)
      table.insert(out, queued)
    end
  end
  return out
end

if op == 'intake' then
  -- ARGV: team, now, live_ms -> {1 if one of the team's members is online
  -- else 0, queue length}; looks only at the members declared online (as
  -- the drain does) and stops at the first whose heartbeat is recent.
  local now, live = num(ARGV[4]), num(ARGV[5])
  local online = 0
  for _, id in ipairs(redis.call('SINTER', key('team', ARGV[3], 'members'), key('online'))) do
    local v = redis.call('HMGET', key('agent', id), 'status', 'seen', 'cap')
    if v[3] and effective(v[1], num(v[2]), now, live) == 'online' then
      online = 1
      break
    end
  end
  return {online, redis.call('ZCARD', key('team', ARGV[3], 'q'))}
end

if op == 'agents' then
  -- ARGV: now, live_ms, ids... -> flat list id, status, since, load, cap
  local now, live = num(ARGV[3]), num(ARGV[4])
  local out = {}
  for i = 5, #ARGV do
    local v = redis.call('HMGET', key('agent', ARGV[i]), 'status', 'seen', 'since', 'load', 'cap')
    if v[5] then
      table.insert(out, ARGV[i])
      table.insert(out, effective(v[1], num(v[2]), now, live))
      table.insert(out, tostring(v[3] or 0))
      table.insert(out, tostring(v[4] or 0))
      table.insert(out, tostring(v[5]))
    end
  end
  return out
end

return redis.error_reply('unknown dispatch operation ' .. tostring(op))
