-- restore.lua — rebuild an item's counters, buyers and attempts from the
-- database (after Redis lost its data or restarted with older data, after
-- the database refused an order for lack of stock, or on
-- `reconcile --repair`). (Prepended with guard.lua.)
--
-- KEYS[1] stock hash, KEYS[2] buyers hash, KEYS[3] in-flight set,
-- KEYS[4] the item's rebuild lock, KEYS[5..7] the edge leases, lease_exp
-- and lease_gen hashes (permits.lua), KEYS[8..] one attempt hash per order
-- (same hash tag)
-- ARGV[1] mode: 'verify' (only when the counters are missing or were not
--         verified by this server) or 'overwrite' (always)
-- ARGV[2] the rebuild lock's token: the caller holds the lock, so the
--         scripts that follow a database decision wait meanwhile; the
--         lock is released here
-- ARGV[3] the attempt key prefix
-- ARGV[4..10] total, units held by unpaid orders (pending or paying),
--         sold, starts_ms, ends_ms, per_user_limit, price_cents
-- ARGV[11..] per order, 9 values: attempt_id, user, qty, status, order_id,
--         pay_by_ms, created_ms, reason ('' if none), price_cents
--
-- Units of attempts still on their way (in the in-flight set, `queued` or
-- `writing`, without an order) are counted here, in the same atomic step
-- that writes the counters, so reservations made while the caller read the
-- database are never lost.
-- Edge leases are ended with the counters they were leased from (a server
-- restarted from a snapshot brings back leases that no longer match what
-- the nodes hold): nodes see their permits void and lease anew.
-- Replies {written (1|0), available, reserved, sold, in_flight, over}:
-- `over` > 0 when the database holds more units than the stock.
local stock, buyers, inflight, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('GET', lock) ~= ARGV[2] then
  return redis.error_reply('restore: the rebuild lock is not held')
end
local run = server_run_id()
if ARGV[1] == 'verify' and redis.call('HGET', stock, 'verified') == run then
  redis.call('DEL', lock)
  return {0, 0, 0, 0, 0, 0}
end
local prefix = ARGV[3]
local total, unpaid, sold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local ordered = {}
local n = (#ARGV - 10) / 9
for i = 0, n - 1 do
  local b = 11 + i * 9
  local key = KEYS[8 + i]
  ordered[ARGV[b]] = true
  redis.call('DEL', key)
  redis.call('HSET', key, 'user', ARGV[b + 1], 'qty', ARGV[b + 2],
    'status', ARGV[b + 3], 'order_id', ARGV[b + 4], 'pay_by_ms', ARGV[b + 5],
    'created_ms', ARGV[b + 6], 'price_cents', ARGV[b + 8], 'idem', '')
  if ARGV[b + 7] ~= '' then
    redis.call('HSET', key, 'reason', ARGV[b + 7])
  end
  redis.call('HSET', buyers, ARGV[b + 1], ARGV[b])
  redis.call('ZREM', inflight, ARGV[b])
end

local in_flight = 0
for _, id in ipairs(redis.call('ZRANGE', inflight, 0, -1)) do
  local a = redis.call('HMGET', prefix .. id, 'status', 'qty', 'user')
  if a[1] == 'queued' or a[1] == 'writing' then
    in_flight = in_flight + tonumber(a[2])
    redis.call('HSET', buyers, a[3], id)
  else
    redis.call('ZREM', inflight, id)
  end
end

local reserved = unpaid + in_flight
local available = total - reserved - sold
local over = 0
if available < 0 then
  over = -available
  available = 0
end
-- The round's admission window is preheat's to write; it survives here.
local admission = redis.call('HGET', stock, 'admission_window_ms')
redis.call('DEL', stock)
redis.call('HSET', stock, 'total', total, 'available', available,
  'reserved', reserved, 'sold', sold, 'starts_ms', ARGV[7],
  'ends_ms', ARGV[8], 'per_user_limit', ARGV[9], 'price_cents', ARGV[10],
  'verified', run)
if admission then
  redis.call('HSET', stock, 'admission_window_ms', admission)
end
-- The lease generation counter stays, so new leases never reuse one.
local seq = redis.call('HGET', KEYS[7], '#seq')
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
if seq then
  redis.call('HSET', KEYS[7], '#seq', seq)
end
redis.call('DEL', lock)
return {1, available, reserved, sold, in_flight, over}
