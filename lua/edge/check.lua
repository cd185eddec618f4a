-- check.lua — validates limits.lua when the edge (re)loads the Lua files.
-- Raising an error here refuses the new files; the old policy keeps serving.
local limits = require "edge.limits"

local function positive(v, what)
  if type(v) ~= "number" or v <= 0 or v ~= v then
    error(what .. " must be a positive number, got " .. tostring(v), 0)
  end
end

if type(limits) ~= "table" then
  error("limits.lua must return a table", 0)
end
if type(limits.buy_path) ~= "string" then
  error("limits.buy_path must be a pattern string", 0)
end
local ok, err = pcall(ngx.re.match, "/", limits.buy_path, "jo")
if not ok or err then
  error("limits.buy_path does not compile: " .. tostring(err), 0)
end
for _, name in ipairs({ "node", "user", "api" }) do
  if type(limits[name]) ~= "table" then
    error("limits." .. name .. " must be a table", 0)
  end
end
positive(limits.node.rate, "limits.node.rate")
if type(limits.node.burst) ~= "number" or limits.node.burst < 0 then
  error("limits.node.burst must be a non-negative number", 0)
end
positive(limits.user.count, "limits.user.count")
positive(limits.user.window, "limits.user.window")
positive(limits.api.count, "limits.api.count")
positive(limits.api.window, "limits.api.window")
if limits.net ~= nil then
  if type(limits.net) ~= "table" then
    error("limits.net must be a table", 0)
  end
  positive(limits.net.count, "limits.net.count")
  positive(limits.net.window, "limits.net.window")
  for name, top in pairs({ v4_prefix = 32, v6_prefix = 128 }) do
    local v = limits.net[name]
    if v ~= nil and (type(v) ~= "number" or v < 0 or v > top or v ~= math.floor(v)) then
      error("limits.net." .. name .. " must be a whole number in 0.." .. top, 0)
    end
  end
end
local max_qty = limits.max_qty
if max_qty ~= nil and (type(max_qty) ~= "number" or max_qty < 1 or max_qty > 1000
    or max_qty ~= math.floor(max_qty)) then
  error("limits.max_qty must be a whole number in 1..1000", 0)
end
return true
