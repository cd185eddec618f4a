-- settle.lua — apply a settlement the database already decided to the
-- counters: a paid order's units move `reserved → sold`, an expired order's
-- units move `reserved → available` (buyable again at once).
--
-- (Prepended with guard.lua.)
--
-- KEYS[1] stock hash, KEYS[2] attempt hash, KEYS[3] in-flight set,
-- KEYS[4] the item's rebuild lock
-- ARGV: outcome ('paid' | 'expired'), order_id, now_ms
--
-- The database's conditional update is the arbiter between payment and
-- expiry; this script only follows it, once: the attempt's status says
-- whether the units already moved. An expired buyer stays in the buyers
-- hash (the order row keeps their one order for the item).
-- While a rebuild holds the item the reply is 'held' (try again): the
-- rebuild may have read the order before this settlement.
-- Replies: 'applied' | 'already' | 'missing' | 'held' | the conflicting
-- status.
local outcome = ARGV[1]
-- The units' destination, and the status that means "already applied".
local to, final
if outcome == 'paid' then
  to, final = 'sold', 'paid'
elseif outcome == 'expired' then
  to, final = 'available', 'cancelled'
else
  return redis.error_reply('settle: unknown outcome ' .. tostring(outcome))
end
if held(KEYS[4]) then
  return 'held'
end
local a = redis.call('HMGET', KEYS[2], 'status', 'qty')
local status = a[1]
if not status then
  return 'missing'
end
if status == final then
  return 'already'
end
if not (status == 'queued' or status == 'writing' or status == 'ordered') then
  return status
end
local qty = tonumber(a[2])
redis.call('HINCRBY', KEYS[1], 'reserved', -qty)
redis.call('HINCRBY', KEYS[1], to, qty)
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[2], 'status', final, 'order_id', ARGV[2],
  'updated_ms', ARGV[3])
if outcome == 'paid' then
  redis.call('HSET', KEYS[2], 'paid_ms', ARGV[3])
else
  redis.call('HSET', KEYS[2], 'reason', 'expired')
end
return 'applied'
