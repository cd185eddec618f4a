-- claim.lua — the order writer takes an attempt before writing its order.
--
-- KEYS[1] attempt hash; ARGV: now_ms
-- A `queued` attempt becomes `writing`, after which a publisher's release can
-- no longer cancel it. Replies: 'claimed' (was queued), the current status
-- ('writing' or 'ordered': a redelivery, write idempotently; 'cancelled':
-- skip), or 'missing'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'writing', 'updated_ms', ARGV[1])
  return 'claimed'
end
return status
