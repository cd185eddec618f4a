-- lease.lua — lease an item's buy permits to an edge node, atomically.
-- (Prepended with permits.lua; the layout and the invariant are there.)
--
-- KEYS[1] stock hash (available; written by preheat, changed by reserve,
--         release, settle, restore)
-- KEYS[2] leases, KEYS[3] lease_exp, KEYS[4] lease_gen
-- ARGV: node, generation (of the lease the node believes it holds; '0' for
--       none), want (permits to add), ttl_ms, mode:
--         'lease'   renew the node's lease and add up to `want` permits
--         'resync'  the node lost track of some of its permits (a buy it
--                   forwarded got no answer): end its lease, whatever it
--                   still holds goes back to the pool, start a new one
--         'release' the node leaves: end its lease
--
-- A node's lease continues only while the generation it names is the one
-- Redis holds for it; otherwise (the lease expired and was reclaimed, or
-- the node restarted) the old lease's units go back to the pool and a new
-- lease starts: the node drops whatever it held under the old generation.
-- A pure renewal (`lease` with want 0) never ends or starts a lease: one
-- naming another generation only tells the node it holds none.
-- Every unit a buy takes from a lease is taken by reserve.lua in the same
-- step that reserves it, so a lease always holds exactly the node's unused
-- permits: what a reclaimed lease gives back is exact, with no guesses.
--
-- Reply: {'unknown'} (no counters: not on sale) or
--   {'ok', granted, pool (after granting), available, generation ('0':
--    none), held (the node's lease now), held_by_other_nodes, starts_ms,
--    admission_window_ms} — the last two from the stock hash (preheat), so
--   the node learns the item's admission window with its lease, without a
--   call of its own ('0' when absent: no window).
local stock, leases, exps, gens = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node, gen = ARGV[1], ARGV[2]
local want, ttl, mode = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]

local s = redis.call('HMGET', stock, 'available', 'starts_ms',
  'admission_window_ms')
if not s[1] then
  return {'unknown'}
end
local available = tonumber(s[1])
local starts, window = s[2] or '0', s[3] or '0'

local now = redis_now()
local total, mine = live_leases(leases, exps, gens, now, node)
local current = redis.call('HGET', gens, node)
if current and not (mode == 'lease' and current == gen) then
  if mode == 'lease' and want == 0 then
    -- A renewal naming another generation changes nothing (it may have
    -- crossed a newer lease on its way): the node learns it holds none.
    return {'ok', 0, math.max(0, available - total), available, '0', 0,
      total - mine, starts, window}
  end
  drop_lease(leases, exps, gens, node)
  total = total - mine
  mine = 0
  current = false
end

local others = total - mine
local pool = available - total
local granted = 0
if mode ~= 'release' and pool > 0 then
  granted = math.min(want, pool)
end
local held = mine + granted
local g = '0'
if held > 0 then
  if current then
    g = current
  else
    local seq = tonumber(redis.call('HGET', gens, '#seq')) or 0
    g = string.format('%.0f', math.max(seq + 1, now))
    redis.call('HSET', gens, '#seq', g)
  end
  redis.call('HSET', leases, node, held)
  redis.call('HSET', exps, node, now + ttl)
  redis.call('HSET', gens, node, g)
elseif current then
  -- Nothing left in it: the lease ends (the next one is a new generation).
  drop_lease(leases, exps, gens, node)
end
return {'ok', granted, math.max(0, pool - granted), available, g, held, others,
  starts, window}
