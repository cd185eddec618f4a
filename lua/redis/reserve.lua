-- reserve.lua — check and reserve units for one buyer, atomically.
-- (Prepended with guard.lua.)
--
-- KEYS[1] stock hash   (total, available, reserved, sold, starts_ms, ends_ms,
--                       per_user_limit, price_cents, verified)
-- KEYS[2] buyers hash  (user id -> attempt id)
-- KEYS[3] the new attempt's hash
-- KEYS[4] in-flight set (attempt id -> created_ms, attempts without an order)
-- ARGV: user, qty, now_ms, attempt_id, idempotency_key ('' if none),
--       attempt_key_prefix (a buyer's earlier attempt lives at prefix..id)
--
-- Every check happens before the first write: Redis scripts have no rollback.
-- Replies (first element is the outcome):
--   {'reserved', attempt_id, price_cents}
--   {'duplicate', attempt_id, status}        same buyer retrying
--   {'limit', held_attempt_id, held_qty, per_user_limit}
--   {'unknown'} {'not_started', starts_ms} {'ended'} {'sold_out'}
--   {'insufficient', available}
--   {'stale'}    counters not verified by this server: rebuild the item first
local stock, buyers, attempt, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, qty, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local id, idem, prefix = ARGV[4], ARGV[5], ARGV[6]

local s = redis.call('HMGET', stock, 'available', 'starts_ms', 'ends_ms',
  'per_user_limit', 'price_cents', 'verified')
if not s[1] then
  return {'unknown'}
end
if s[6] ~= server_run_id() then
  return {'stale'}
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
    return {'duplicate', held_id, a[3] or 'queued'}
  end
  return {'limit', held_id, tostring(held_qty), tostring(limit)}
end

if now < starts then
  return {'not_started', tostring(starts)}
end
if now >= ends then
  return {'ended'}
end
if qty > limit then
  return {'limit', '', '0', tostring(limit)}
end
if available < qty then
  if available <= 0 then
    return {'sold_out'}
  end
  return {'insufficient', tostring(available)}
end

redis.call('HINCRBY', stock, 'available', -qty)
redis.call('HINCRBY', stock, 'reserved', qty)
redis.call('HSET', buyers, user, id)
redis.call('HSET', attempt, 'user', user, 'qty', qty, 'status', 'queued',
  'created_ms', now, 'idem', idem, 'price_cents', s[5])
redis.call('ZADD', inflight, now, id)
return {'reserved', id, s[5]}
