-- lease.lua — lease buy permits of one item to an edge node, atomically.
--
-- KEYS[1] stock hash   (available, reserved, sold; written by preheat)
-- KEYS[2] permits hash (pool, base, consumed, returned)
-- KEYS[3] leases hash  (node -> permits it holds, as last reported)
-- KEYS[4] expiry hash  (node -> lease expiry, ms on Redis' clock)
-- ARGV: node, want, unused (permits the node still holds), spent (permits
--       turned into reservations since its last call), give_back (permits
--       refunded after the node's lease was void), void_back (permits the
--       node dropped because it thought its lease had expired), ttl_ms,
--       release ('1': the node leaves and hands everything back)
--
-- The pool starts at `available` on the first lease. Units that come back
-- to `available` later (cancelled orders) are added to the pool: the item
-- has used `reserved + sold` units; permits spent by nodes account for
-- `consumed + base` of them, so `consumed + base - used - returned` units
-- came back. Reports lag reality only in the safe direction (spent not yet
-- reported means fewer permits come back, never more).
--
-- A lease whose expiry passed returns what it held to the pool, less what
-- the node evidently spent without reporting; a node whose lease was
-- reclaimed is told so (`void`) and drops what it held.
-- Every check happens before the first write (no rollback in scripts).
-- Reply: {'unknown'} or
--   {'ok', granted, pool, available, void (0/1), held_by_other_nodes}
local stock, permits, leases, exps = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node = ARGV[1]
local want, unused = tonumber(ARGV[2]), tonumber(ARGV[3])
local spent, give_back, void_back = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, release = tonumber(ARGV[7]), ARGV[8] == '1'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local s = redis.call('HMGET', stock, 'available', 'reserved', 'sold')
if not s[1] then
  return {'unknown'}
end
local available = tonumber(s[1])
local used = (tonumber(s[2]) or 0) + (tonumber(s[3]) or 0)

local p = redis.call('HMGET', permits, 'pool', 'base', 'consumed', 'returned')
local pool, base, consumed, returned
if not p[1] then
  pool, base, consumed, returned = available, used, 0, 0
else
  pool, base = tonumber(p[1]), tonumber(p[2])
  consumed, returned = tonumber(p[3]), tonumber(p[4])
end
consumed = consumed + spent
pool = pool + give_back

-- Units reserved that no report accounts for yet: spends not reported
-- (by live nodes, or by a dead node that never will), or reservations made
-- without the edge.
local unaccounted = used - (consumed + base - returned)

-- Reclaim expired leases (this node's included); note whether ours lives.
-- A dead node's holding may include permits it spent without reporting:
-- credit it with up to `unaccounted` of them, so they do not come back as
-- free permits. If the guess was wrong (a live node's unreported spends),
-- that node's next report makes `back` below positive and refills the pool.
local mine_live = false
local others = 0
local all = redis.call('HGETALL', exps)
local expired = {}
for i = 1, #all, 2 do
  local n, exp = all[i], tonumber(all[i + 1])
  if exp <= now then
    local held = tonumber(redis.call('HGET', leases, n)) or 0
    local credit = math.max(0, math.min(held, unaccounted))
    consumed = consumed + credit
    unaccounted = unaccounted - credit
    pool = pool + held - credit
    expired[#expired + 1] = n
  elseif n == node then
    mine_live = true
  else
    others = others + (tonumber(redis.call('HGET', leases, n)) or 0)
  end
end

-- Units that came back to `available` (cancelled orders) become permits.
local back = consumed + base - used - returned
if back > 0 then
  pool = pool + back
  returned = returned + back
end

local void = 0
local holding = 0
if mine_live then
  -- What we dropped ourselves was still ours in Redis: back to the pool.
  pool = pool + void_back
  holding = unused
else
  -- Our lease was reclaimed (or we never had one): what we hold is void.
  if unused > 0 then
    void = 1
  end
end

local granted = 0
if release then
  pool = pool + holding
  holding = 0
else
  granted = math.min(want, pool)
  if granted < 0 then
    granted = 0
  end
  pool = pool - granted
  holding = holding + granted
end

-- Writes.
for _, n in ipairs(expired) do
  redis.call('HDEL', leases, n)
  redis.call('HDEL', exps, n)
end
if holding > 0 then
  redis.call('HSET', leases, node, holding)
  redis.call('HSET', exps, node, now + ttl)
else
  redis.call('HDEL', leases, node)
  redis.call('HDEL', exps, node)
end
redis.call('HSET', permits, 'pool', pool, 'base', base, 'consumed', consumed,
  'returned', returned)
return {'ok', granted, pool, available, void, others}
