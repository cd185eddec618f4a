-- release.lua — give a live attempt's units back to `available` and cancel it.
--
-- KEYS[1] stock hash, KEYS[2] buyers hash, KEYS[3] attempt hash,
-- KEYS[4] in-flight set
-- ARGV: attempt_id, reason, now_ms, allow_writing ('1' lets the order writer
--       release an attempt it has claimed but could not turn into an order),
--       distrust ('1': the database refused the order for lack of stock, so
--       the counters are wrong; the attempt is cancelled but its units are
--       not made available: the item is marked unverified and the next
--       reservation rebuilds it from the database)
--
-- Only an attempt still `queued` (or `writing` with allow_writing) is
-- released; any other status is returned unchanged so the caller learns the
-- attempt already moved on (e.g. the order writer claimed it).
-- Replies: 'released' | 'missing' | the attempt's current status.
local a = redis.call('HMGET', KEYS[3], 'status', 'qty', 'user')
local status = a[1]
if not status then
  return 'missing'
end
if not (status == 'queued' or (status == 'writing' and ARGV[4] == '1')) then
  return status
end
local qty = tonumber(a[2])
if ARGV[5] == '1' then
  redis.call('HDEL', KEYS[1], 'verified')
else
  redis.call('HINCRBY', KEYS[1], 'available', qty)
  redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
end
if redis.call('HGET', KEYS[2], a[3]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], a[3])
end
redis.call('HSET', KEYS[3], 'status', 'cancelled', 'reason', ARGV[2],
  'updated_ms', ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 'released'
