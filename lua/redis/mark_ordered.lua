-- mark_ordered.lua — record that an attempt's order is durable.
-- (Prepended with guard.lua.)
--
-- KEYS[1] attempt hash, KEYS[2] in-flight set, KEYS[3] the item's rebuild
-- lock; ARGV: order_id, pay_by_ms, now_ms
-- A cancelled or paid attempt keeps its status (a redelivered message must
-- not move a paid attempt back). While a rebuild holds the item the reply
-- is 'held' (try again): the rebuild may have read the database before
-- this order was committed.
-- Replies: 'ordered' | 'missing' | 'held' | status.
if held(KEYS[3]) then
  return 'held'
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
redis.call('ZREM', KEYS[2], ARGV[1])
if status == 'cancelled' or status == 'paid' then
  return status
end
redis.call('HSET', KEYS[1], 'status', 'ordered', 'order_id', ARGV[1],
  'pay_by_ms', ARGV[2], 'updated_ms', ARGV[3])
return 'ordered'
