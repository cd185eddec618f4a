-- adopt.lua — the order writer meets an order message whose attempt Redis
-- no longer has (Redis lost its data after the reservation). The units are
-- reserved again from the rebuilt counters if they allow it; otherwise the
-- attempt is recorded as cancelled so its buyer gets a final answer.
--
-- (Prepended with guard.lua.)
--
-- KEYS[1] stock hash, KEYS[2] buyers hash, KEYS[3] attempt hash,
-- KEYS[4] in-flight set
-- ARGV: user, qty, attempt_id, now_ms, price_cents, created_ms
-- Replies: 'adopted' (attempt now `writing`), 'refused' (cancelled with a
-- reason), 'no_counters' (rebuild the item first), or the attempt's status
-- when it exists after all.
local user, qty, id, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local status = redis.call('HGET', KEYS[3], 'status')
if status then
  return status
end
-- Counters this server has not verified count as none: rebuild first.
if redis.call('HGET', KEYS[1], 'verified') ~= server_run_id() then
  return 'no_counters'
end
local function refuse(reason)
  redis.call('HSET', KEYS[3], 'user', user, 'qty', qty, 'status', 'cancelled',
    'reason', reason, 'created_ms', ARGV[6], 'price_cents', ARGV[5],
    'updated_ms', now)
  return 'refused'
end
local held = redis.call('HGET', KEYS[2], user)
if held and held ~= id then
  return refuse('duplicate_order')
end
local available = tonumber(redis.call('HGET', KEYS[1], 'available'))
if available < qty then
  return refuse('sold_out')
end
redis.call('HINCRBY', KEYS[1], 'available', -qty)
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HSET', KEYS[2], user, id)
redis.call('HSET', KEYS[3], 'user', user, 'qty', qty, 'status', 'writing',
  'created_ms', ARGV[6], 'price_cents', ARGV[5], 'idem', '', 'updated_ms', now)
redis.call('ZADD', KEYS[4], ARGV[6], id)
return 'adopted'
