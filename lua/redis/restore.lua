-- restore.lua — rebuild an item's counters, buyers and attempts from the
-- database (after Redis lost its data, or on `reconcile --repair`).
--
-- KEYS[1] stock hash, KEYS[2] buyers hash, KEYS[3..] one attempt hash per
-- order (same hash tag)
-- ARGV[1] mode: 'missing' (only when the counters do not exist) or
--         'overwrite' (replace them)
-- ARGV[2..9] total, available, reserved, sold, starts_ms, ends_ms,
--         per_user_limit, price_cents
-- ARGV[10..] per order, 9 values: attempt_id, user, qty, status, order_id,
--         pay_by_ms, created_ms, reason ('' if none), price_cents
-- Replies 1 when it wrote the counters, 0 when they existed ('missing').
if ARGV[1] == 'missing' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'total', ARGV[2], 'available', ARGV[3],
  'reserved', ARGV[4], 'sold', ARGV[5], 'starts_ms', ARGV[6],
  'ends_ms', ARGV[7], 'per_user_limit', ARGV[8], 'price_cents', ARGV[9])
local n = (#ARGV - 9) / 9
for i = 0, n - 1 do
  local b = 10 + i * 9
  local key = KEYS[3 + i]
  redis.call('DEL', key)
  redis.call('HSET', key, 'user', ARGV[b + 1], 'qty', ARGV[b + 2],
    'status', ARGV[b + 3], 'order_id', ARGV[b + 4], 'pay_by_ms', ARGV[b + 5],
    'created_ms', ARGV[b + 6], 'price_cents', ARGV[b + 8], 'idem', '')
  if ARGV[b + 7] ~= '' then
    redis.call('HSET', key, 'reason', ARGV[b + 7])
  end
  redis.call('HSET', KEYS[2], ARGV[b + 1], ARGV[b])
end
return 1
