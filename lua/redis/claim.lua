-- claim.lua — the order writer takes attempts before writing their orders.
--
-- KEYS: attempt hashes, one or more, all of one item (one hash tag); ARGV:
-- now_ms. A `queued` attempt becomes `writing`, after which a publisher's
-- release can no longer cancel it. Replies, one per key in order:
-- 'claimed' (was queued), the current status ('writing' or 'ordered': a
-- redelivery, write idempotently; 'cancelled': skip), or 'missing'.
local out = {}
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if not status then
    out[i] = 'missing'
  elseif status == 'queued' then
    redis.call('HSET', key, 'status', 'writing', 'updated_ms', ARGV[1])
    out[i] = 'claimed'
  else
    out[i] = status
  end
end
return out
