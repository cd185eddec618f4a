-- guard.lua — shared helpers, prepended to the scripts that need them
-- (the backend concatenates this file with the script before loading it).
--
-- `verified` in an item's stock hash is the run id of the Redis server
-- process whose counters were last checked against the database (preheat
-- or rebuild). A restarted server has a new run id: counters it brought
-- back from a snapshot (or a promoted replica's) no longer match, so the
-- scripts that take units refuse to sell from them until the item is
-- rebuilt. The check is in the script, so it holds from the first command
-- after a restart, on every backend at once.
--
-- `lock` is the item's rebuild lock: while a rebuild holds it, the scripts
-- that follow a database decision (mark_ordered, settle) wait, so a
-- rebuild that read the database a moment ago cannot overwrite what they
-- apply.
local function server_run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end

local function held(lock)
  return redis.call('EXISTS', lock) == 1
end
