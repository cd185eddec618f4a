-- reserve.lua — check and reserve units for one buyer, atomically.
-- (Prepended with guard.lua and permits.lua.)
--
-- KEYS[1] stock hash   (total, available, reserved, sold, starts_ms, ends_ms,
--                       per_user_limit, price_cents, verified)
-- KEYS[2] buyers hash  (user id -> attempt id)
-- KEYS[3] the new attempt's hash
-- KEYS[4] in-flight set (attempt id -> created_ms, attempts without an order)
-- KEYS[5] leases, KEYS[6] lease_exp, KEYS[7] lease_gen (see permits.lua)
-- ARGV: user, qty, now_ms, attempt_id, idempotency_key ('' if none),
--       attempt_key_prefix (a buyer's earlier attempt lives at prefix..id),
--       then the edge permit the buy carries: node ('' for none),
--       generation, units
--
-- Units come out of the permit's lease when it is live and covers them,
-- otherwise out of the pool (units no lease holds); with neither, the buy
-- is refused with `held` (every free unit is leased to edge nodes whose
-- buyers are on their way). This keeps permits.lua's invariant.
--
-- Every check happens before the first write: Redis scripts have no rollback
-- (deleting expired leases, which is right whatever follows, excepted).
-- Replies: the outcome's elements, then what happened to the permit (''
-- without one: 'spent', 'dropped', 'kept' or 'void', see seckill_proto):
--   {'reserved', attempt_id, price_cents, p}
--   {'duplicate', attempt_id, status, p}     same buyer retrying
--   {'limit', held_attempt_id, held_qty, per_user_limit, p}
--   {'unknown', p} {'not_started', starts_ms, p} {'ended', p} {'sold_out', p}
--   {'insufficient', available, p}
--   {'held', free_units, p}
--   {'stale', p}  counters not verified by this server: rebuild the item first
local stock, buyers, attempt, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local leases, exps, gens = KEYS[5], KEYS[6], KEYS[7]
local user, qty, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local id, idem, prefix = ARGV[4], ARGV[5], ARGV[6]
local pnode, pgen, punits = ARGV[7], ARGV[8], tonumber(ARGV[9])

-- What happens to the permit: unchanged unless a unit moves.
local effect = ''
if pnode ~= '' then
  effect = 'kept'
end
local function reply(t)
  t[#t + 1] = effect
  return t
end

-- The permit covers this buy: its lease lives and holds its units.
local function permit_valid()
  if pnode == '' or punits ~= qty or redis.call('HGET', gens, pnode) ~= pgen then
    return false
  end
  return (tonumber(redis.call('HGET', leases, pnode)) or 0) >= qty
end

local s = redis.call('HMGET', stock, 'available', 'starts_ms', 'ends_ms',
  'per_user_limit', 'price_cents', 'verified')
if not s[1] then
  return reply({'unknown'})
end
if s[6] ~= server_run_id() then
  return reply({'stale'})
end
local available, starts, ends = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local limit = tonumber(s[4])

local held_id = redis.call('HGET', buyers, user)
if held_id then
  local a = redis.call('HMGET', prefix .. held_id, 'qty', 'idem', 'status')
  local held_qty = tonumber(a[1]) or 0
  local held_key = a[2] or ''
  local same_key = idem ~= '' and idem == held_key
  -- Without a key on either side, the same quantity counts as a retry.
  local plain_retry = (idem == '' or held_key == '') and held_qty == qty
  if same_key or plain_retry then
    return reply({'duplicate', held_id, a[3] or 'queued'})
  end
  return reply({'limit', held_id, tostring(held_qty), tostring(limit)})
end

if now < starts then
  return reply({'not_started', tostring(starts)})
end
if now >= ends then
  return reply({'ended'})
end
if qty > limit then
  return reply({'limit', '', '0', tostring(limit)})
end
local valid = permit_valid()
if pnode ~= '' and not valid then
  effect = 'void'
end
if available < qty then
  if available <= 0 then
    if valid then
      -- Nothing left to sell: a lease holding units is more than the stock
      -- (a repair reserved units without a permit); shrink it.
      redis.call('HINCRBY', leases, pnode, -qty)
      effect = 'dropped'
    end
    return reply({'sold_out'})
  end
  return reply({'insufficient', tostring(available)})
end
if valid then
  redis.call('HINCRBY', leases, pnode, -qty)
  effect = 'spent'
else
  local leased = live_leases(leases, exps, gens, redis_now(), '')
  if available - leased < qty then
    return reply({'held', tostring(math.max(0, available - leased))})
  end
end

redis.call('HINCRBY', stock, 'available', -qty)
redis.call('HINCRBY', stock, 'reserved', qty)
redis.call('HSET', buyers, user, id)
redis.call('HSET', attempt, 'user', user, 'qty', qty, 'status', 'queued',
  'created_ms', now, 'idem', idem, 'price_cents', s[5])
redis.call('ZADD', inflight, now, id)
return reply({'reserved', id, s[5]})
