-- permits.lua — shared helpers for edge permits, prepended to lease.lua and
-- reserve.lua (after guard.lua where both are needed).
--
-- Each item's permits live beside its stock, under the same hash tag:
--   leases     hash: node -> units its lease holds (in the node's hand or
--              in flight in buys it forwarded)
--   lease_exp  hash: node -> when that lease expires (ms, Redis' clock)
--   lease_gen  hash: node -> the lease's generation; `seq` -> the last one
--              issued. A node's new lease always gets a new generation, so
--              permits of an older one are recognised wherever they turn up.
--
-- The invariant every script keeps, for each item:
--   sum(leases) <= available
-- so `pool = available - sum(leases)` is the number of units no node holds,
-- and pool + sum(leases) + reserved + sold = total. The pool is not stored:
-- it is computed, so units that come back to `available` (a cancelled or
-- expired order) are free for leasing the moment they come back, and a
-- reclaimed lease's units the moment it is deleted.
--
-- reserve.lua keeps the invariant by taking a buy's units out of its node's
-- lease (when the buy names a live one) or out of the pool (when it names
-- none, or a void one): a buy finding neither is refused with `held`.

local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Deletes one node's lease.
local function drop_lease(leases, exps, gens, node)
  redis.call('HDEL', leases, node)
  redis.call('HDEL', exps, node)
  redis.call('HDEL', gens, node)
end

-- Reclaims the leases whose expiry has passed (their nodes stopped
-- renewing them: dead, or cut off from Redis) and returns the units the
-- remaining leases hold, in total and for `node` alone.
local function live_leases(leases, exps, gens, now, node)
  local total, mine = 0, 0
  local all = redis.call('HGETALL', exps)
  for i = 1, #all, 2 do
    local n = all[i]
    if tonumber(all[i + 1]) <= now then
      drop_lease(leases, exps, gens, n)
    else
      local held = tonumber(redis.call('HGET', leases, n)) or 0
      total = total + held
      if n == node then
        mine = held
      end
    end
  end
  return total, mine
end
