-- revive.lua — replaying a dead letter: reserve the attempt's units again
-- so the order writer can write its order.
--
-- (Prepended with guard.lua.)
--
-- KEYS[1] stock hash, KEYS[2] buyers hash, KEYS[3] attempt hash,
-- KEYS[4] in-flight set
-- ARGV: attempt_id, user, qty, now_ms, price_cents, created_ms
-- Only an attempt cancelled as a dead letter (or one Redis lost) is
-- revived, and only from units that are available now: a replay never
-- sells a unit twice.
-- Replies: 'revived' | 'live' (still holds its units: just requeue) |
--   'done' (its order exists) | 'cancelled' (cancelled for another reason) |
--   'no_counters' | 'buyer_has_another' | 'sold_out'
local id, user, qty, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local a = redis.call('HMGET', KEYS[3], 'status', 'reason')
local status, reason = a[1], a[2]
if status == 'queued' or status == 'writing' then
  return 'live'
end
if status == 'ordered' or status == 'paid' then
  return 'done'
end
if status and not (status == 'cancelled' and reason == 'dead_letter') then
  return 'cancelled'
end
-- Counters this server has not verified count as none: rebuild first.
if redis.call('HGET', KEYS[1], 'verified') ~= server_run_id() then
  return 'no_counters'
end
local held = redis.call('HGET', KEYS[2], user)
if held and held ~= id then
  return 'buyer_has_another'
end
local available = tonumber(redis.call('HGET', KEYS[1], 'available'))
if available < qty then
  return 'sold_out'
end
redis.call('HINCRBY', KEYS[1], 'available', -qty)
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HSET', KEYS[2], user, id)
redis.call('HDEL', KEYS[3], 'reason')
redis.call('HSET', KEYS[3], 'user', user, 'qty', qty, 'status', 'queued',
  'created_ms', ARGV[6], 'price_cents', ARGV[5], 'idem', '', 'updated_ms', now)
redis.call('ZADD', KEYS[4], now, id)
return 'revived'
