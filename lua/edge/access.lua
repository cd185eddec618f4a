-- access.lua — the edge's default access policy, run for every API request
-- (OpenResty's access_by_lua). In order, for buy requests:
--   1. the node's token bucket        (limits.node,  429 rate_limited)
--   2. the client network's limit     (limits.net,   429 rate_limited)
--   3. the buyer's limit per window   (limits.user,  429 rate_limited)
--   4. permits for the units bought   (410 sold_out, 429 while permits are
--      in flight elsewhere, 503 when Redis cannot be asked)
-- Other API requests get a per-client limit (limits.api).
--
-- Seen from here: ngx.var.user_id / ngx.var.user_role (verified by the edge
-- from the bearer token; empty when there is none), ngx.var.remote_addr
-- (the client, trusted proxies resolved), seckill.token_bucket(key, rate,
-- burst) -> true | false, retry_ms, seckill.network(addr, v4_prefix,
-- v6_prefix) -> "a.b.c.0/24" | nil, and seckill.permit(round, item, qty) ->
-- "ok" | "off" | "sold_out" | "insufficient", units_left | "wait", retry_ms
-- | "unknown" | "unavailable", retry_ms | "gone" (the client left while the
-- item's admission window held the buy: whatever is answered goes nowhere).
-- Within an item's admission window seckill.permit first waits for the
-- buy's random moment (the edge's rule, not policy). The buy's `qty` is
-- read from its JSON body (1 when absent); a body the backend would refuse
-- is passed on with a permit for one unit, and the backend answers it.
-- Setting ngx.var.seckill_reason names the rejection in the edge's metrics.
local P = _EDGE_POLICY
if not P then
  -- Built once per VM (a reload builds new VMs, so new limits apply).
  local limits = require "edge.limits"
  local limit_count = require "resty.limit.count"
  P = {
    limits = limits,
    user = assert(limit_count.new("limit_user", limits.user.count, limits.user.window)),
    api = assert(limit_count.new("limit_user", limits.api.count, limits.api.window)),
    net = limits.net and assert(limit_count.new("limit_user", limits.net.count, limits.net.window)),
    cjson = require "cjson",
  }
  _EDGE_POLICY = P
end

local function reject(status, code, reason, message, extra)
  ngx.var.seckill_reason = reason
  local body = { error = code, message = message }
  if extra then
    for k, v in pairs(extra) do
      body[k] = v
    end
  end
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if extra and extra.retry_after_ms then
    ngx.header["Retry-After"] = tostring(math.ceil(extra.retry_after_ms / 1000))
  end
  ngx.print(P.cjson.encode(body))
  return ngx.exit(status)
end

local limits = P.limits
local var = ngx.var
local user = var.user_id
local client = (user ~= nil and user ~= "") and ("u:" .. user) or ("a:" .. var.remote_addr)
local uri = var.uri

local m = ngx.re.match(uri, limits.buy_path, "jo")
if not m then
  local ok = P.api:incoming("api:" .. client, true)
  if not ok then
    local ttl = ngx.shared.limit_user:ttl("api:" .. client) or limits.api.window
    return reject(429, "rate_limited", "client_limit", "too many requests",
      { retry_after_ms = math.max(1, math.ceil(ttl * 1000)) })
  end
  return
end

if var.request_method ~= "POST" then
  return
end
if limits.require_token and (user == nil or user == "") then
  return reject(401, "unauthorized", "unauthorized", "missing bearer token")
end

-- 1. the node's token bucket (atomic across the node's worker threads)
local admitted, wait_ms = seckill.token_bucket("node", limits.node.rate, limits.node.burst)
if not admitted then
  return reject(429, "rate_limited", "node_rate", "the sale is busy, try again",
    { retry_after_ms = wait_ms })
end

-- 2. the client's network: many accounts (or addresses) of one network
-- count as one client
if P.net then
  local net = seckill.network(var.remote_addr, limits.net.v4_prefix or 24,
    limits.net.v6_prefix or 64) or var.remote_addr
  if not P.net:incoming("net:" .. net, true) then
    local ttl = ngx.shared.limit_user:ttl("net:" .. net) or limits.net.window
    return reject(429, "rate_limited", "network_limit", "too many requests from your network",
      { retry_after_ms = math.max(1, math.ceil(ttl * 1000)) })
  end
end

-- 3. the buyer's (or client's) limit
local ok = P.user:incoming("buy:" .. client, true)
if not ok then
  local ttl = ngx.shared.limit_user:ttl("buy:" .. client) or limits.user.window
  return reject(429, "rate_limited", "user_limit", "too many requests from you",
    { retry_after_ms = math.max(1, math.ceil(ttl * 1000)) })
end

-- 4. permits for the units bought
local qty = 1
ngx.req.read_body()
local data = ngx.req.get_body_data()
if data and data ~= "" then
  local ok, body = pcall(P.cjson.decode, data)
  if ok and type(body) == "table" and type(body.qty) == "number"
      and body.qty == math.floor(body.qty) and body.qty >= 1
      and body.qty <= (limits.max_qty or 10) then
    qty = body.qty
  end
end
local verdict, retry_ms = seckill.permit(tonumber(m[1]), tonumber(m[2]), qty)
if verdict == "ok" or verdict == "off" then
  return
elseif verdict == "sold_out" then
  return reject(410, "sold_out", "sold_out", "sold out")
elseif verdict == "insufficient" then
  return reject(410, "sold_out", "insufficient", "only " .. retry_ms .. " unit(s) left",
    { available = retry_ms })
elseif verdict == "wait" then
  return reject(429, "rate_limited", "permit_wait", "all remaining units are being bought, try again",
    { retry_after_ms = retry_ms })
elseif verdict == "unknown" then
  return reject(404, "not_found", "unknown_item", "no such item on sale")
end
return reject(503, "unavailable", "permits_unavailable", "try again shortly",
  { retry_after_ms = retry_ms or 1000 })
