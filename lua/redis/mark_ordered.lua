-- mark_ordered.lua — record that an attempt's order is durable.
--
-- KEYS[1] attempt hash; ARGV: order_id, pay_by_ms, now_ms
-- A cancelled or paid attempt keeps its status (a redelivered message must
-- not move a paid attempt back). Replies: 'ordered' | 'missing' | status.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'cancelled' or status == 'paid' then
  return status
end
redis.call('HSET', KEYS[1], 'status', 'ordered', 'order_id', ARGV[1],
  'pay_by_ms', ARGV[2], 'updated_ms', ARGV[3])
return 'ordered'
