-- resty.limit.conn: concurrency limiting, keyed, with the number of
-- requests in flight in an ngx.shared.DICT.
--
-- API (as documented for OpenResty's lua-resty-limit-traffic):
--   lim, err = conn.new(dict_name, conn, burst, default_conn_delay)
--   delay, conn = lim:incoming(key, commit)     -- or nil, "rejected" / nil, err
--   committed = lim:is_committed()
--   conn, err = lim:leaving(key, req_latency)   -- in the log phase
--   conn, err = lim:uncommit(key)
--   lim:set_conn(conn); lim:set_burst(burst)
--
-- Requests above `conn` (up to `conn + burst`) are delayed by one delay
-- unit per started group of `conn` excess requests; the unit starts at
-- default_conn_delay and follows the latencies reported to leaving().

local math_ceil = math.ceil
local setmetatable = setmetatable
local type = type

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

function _M.new(dict_name, max, burst, default_conn_delay)
    local dict = ngx.shared[dict_name]
    if not dict then
        return nil, "shared dict not found"
    end
    if type(max) ~= "number" or max <= 0 then
        return nil, "conn must be a positive number"
    end
    if type(burst) ~= "number" or burst < 0 then
        return nil, "burst must be a non-negative number"
    end
    if type(default_conn_delay) ~= "number" or default_conn_delay <= 0 then
        return nil, "default_conn_delay must be a positive number"
    end
    return setmetatable({
        dict = dict,
        max = max,
        burst = burst,
        unit_delay = default_conn_delay,
        committed = false,
    }, mt)
end

function _M.incoming(self, key, commit)
    local dict = self.dict
    local max = self.max
    self.committed = false

    local conn, err
    if commit then
        conn, err = dict:incr(key, 1, 0)
        if not conn then
            return nil, err
        end
        if conn > max + self.burst then
            local ok, err2 = dict:incr(key, -1)
            if not ok then
                return nil, err2
            end
            return nil, "rejected"
        end
        self.committed = true
    else
        conn = (dict:get(key) or 0) + 1
        if conn > max + self.burst then
            return nil, "rejected"
        end
    end

    if conn > max then
        return self.unit_delay * math_ceil((conn - max) / max), conn
    end
    return 0, conn
end

function _M.is_committed(self)
    return self.committed
end

function _M.leaving(self, key, req_latency)
    local conn, err = self.dict:incr(key, -1)
    if not conn then
        return nil, err
    end
    if type(req_latency) == "number" and req_latency >= 0 then
        -- moving average of the observed latencies
        self.unit_delay = (self.unit_delay + req_latency) / 2
    end
    return conn
end

function _M.uncommit(self, key)
    self.committed = false
    return self.dict:incr(key, -1)
end

function _M.set_conn(self, conn)
    self.max = conn
end

function _M.set_burst(self, burst)
    self.burst = burst
end

return _M
