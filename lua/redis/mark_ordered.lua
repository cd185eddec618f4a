-- mark_ordered.lua — record that attempts' orders are durable.
-- (Prepended with guard.lua.)
--
-- KEYS[1] the item's in-flight set, KEYS[2] its rebuild lock, KEYS[3..]
-- attempt hashes of that item; ARGV[1] now_ms, then per attempt (in KEYS
-- order) its order_id and pay_by_ms.
-- A cancelled or paid attempt keeps its status (a redelivered message must
-- not move a paid attempt back). While a rebuild holds the item the reply
-- is {'held'} and nothing changes (try again): the rebuild may have read
-- the database before these orders were committed.
-- Replies, one per attempt: 'ordered' | 'missing' | status.
if held(KEYS[2]) then
  return { 'held' }
end
local out = {}
for i = 3, #KEYS do
  local order_id = ARGV[2 * (i - 2)]
  local status = redis.call('HGET', KEYS[i], 'status')
  if not status then
    out[i - 2] = 'missing'
  else
    redis.call('ZREM', KEYS[1], order_id)
    if status == 'cancelled' or status == 'paid' then
      out[i - 2] = status
    else
      redis.call('HSET', KEYS[i], 'status', 'ordered', 'order_id', order_id,
        'pay_by_ms', ARGV[2 * (i - 2) + 1], 'updated_ms', ARGV[1])
      out[i - 2] = 'ordered'
    end
  end
end
return out
