-- resty.limit.req: request rate limiting with a leaky bucket, keyed, with
-- state in an ngx.shared.DICT so every worker of a node shares it.
--
-- API (as documented for OpenResty's lua-resty-limit-traffic):
--   lim, err = req.new(dict_name, rate, burst)
--   delay, excess = lim:incoming(key, commit)   -- or nil, "rejected" / nil, err
--   ok, err = lim:uncommit(key)
--   lim:set_rate(rate); lim:set_burst(burst)
--
-- State per key is a 16-byte binary record {excess, last} of doubles (read
-- without boxing, unlike 64-bit integers in LuaJIT): the excess
-- requests in thousandths and the time of the last committed request in
-- milliseconds. Each request adds 1000 to the excess and the bucket drains
-- at `rate` per second; a request whose excess would pass the burst is
-- rejected and not recorded.

local ffi = require "ffi"

local ffi_cast = ffi.cast
local ffi_string = ffi.string
local math_abs = math.abs
local math_floor = math.floor
local setmetatable = setmetatable
local type = type

local STATE = "struct seckill_limit_req_state"
if not pcall(ffi.typeof, STATE) then
    ffi.cdef [[
        struct seckill_limit_req_state {
            double excess;   /* excess requests x 1000 */
            double last;     /* ms since the epoch */
        };
    ]]
end
local state_ptr_t = ffi.typeof(STATE .. " const *")
local state_size = ffi.sizeof(STATE)
local scratch = ffi.new(STATE)

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

function _M.new(dict_name, rate, burst)
    local dict = ngx.shared[dict_name]
    if not dict then
        return nil, "shared dict not found"
    end
    if type(rate) ~= "number" or rate <= 0 then
        return nil, "rate must be a positive number"
    end
    if type(burst) ~= "number" or burst < 0 then
        return nil, "burst must be a non-negative number"
    end
    return setmetatable({
        dict = dict,
        rate = rate * 1000,
        burst = burst * 1000,
    }, mt)
end

local function read(dict, key)
    local v, err = dict:get(key)
    if v == nil then
        return nil, err
    end
    if type(v) ~= "string" or #v ~= state_size then
        return nil, "shdict abused by other users"
    end
    local rec = ffi_cast(state_ptr_t, v)
    return rec.excess, rec.last
end

local function write(dict, key, excess, last)
    scratch.excess = excess
    scratch.last = last
    return dict:set(key, ffi_string(scratch, state_size))
end

function _M.incoming(self, key, commit)
    local dict = self.dict
    local rate = self.rate
    local now = math_floor(ngx.now() * 1000 + 0.5)

    local excess = 0
    local prev_excess, last = read(dict, key)
    if prev_excess then
        -- drain what leaked since the last request, then add this one
        excess = prev_excess - rate * math_abs(now - last) / 1000 + 1000
        if excess < 0 then
            excess = 0
        end
        if excess > self.burst then
            return nil, "rejected"
        end
    elseif last then
        -- read() returned nil plus an error message
        return nil, last
    end

    if commit then
        local ok, err = write(dict, key, excess, now)
        if not ok then
            return nil, err
        end
    end

    -- the delay makes this request conform to the rate as if it came later
    return excess / rate, excess / 1000
end

function _M.uncommit(self, key)
    local dict = self.dict
    local excess, last = read(dict, key)
    if not excess then
        return nil, last or "not found"
    end
    excess = excess - 1000
    if excess < 0 then
        excess = 0
    end
    local ok, err = write(dict, key, excess, last)
    if not ok then
        return nil, err
    end
    return true
end

function _M.set_rate(self, rate)
    self.rate = rate * 1000
end

function _M.set_burst(self, burst)
    self.burst = burst * 1000
end

return _M
