-- preheat.lua — load one item's counters, window and data before its sale.
-- (Prepended with guard.lua.)
--
-- KEYS[1] stock hash, KEYS[2] item info hash
-- ARGV: total, starts_ms, ends_ms, per_user_limit, price_cents,
--       admission_window_ms (the round's; 0: off; the edge reads it with
--       its permit lease), then alternating info field names and values.
-- Live counters are never overwritten: preheating an item that already has
-- counters only refreshes the window and the item data. Replies 1 when the
-- counters were created, 0 when they already existed.
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'total', ARGV[1], 'available', ARGV[1],
    'reserved', 0, 'sold', 0, 'verified', server_run_id())
  created = 1
end
redis.call('HSET', KEYS[1], 'starts_ms', ARGV[2], 'ends_ms', ARGV[3],
  'per_user_limit', ARGV[4], 'price_cents', ARGV[5],
  'admission_window_ms', ARGV[6])
if #ARGV > 6 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 7))
end
return created
