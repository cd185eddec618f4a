-- resty.limit.count: fixed-window request counting, keyed, with state in an
-- ngx.shared.DICT.
--
-- API (as documented for OpenResty's lua-resty-limit-traffic):
--   lim, err = count.new(dict_name, count, time_window)
--   delay, remaining = lim:incoming(key, commit)  -- delay is always 0;
--                                                  -- or nil, "rejected" / nil, err
--   remaining, err = lim:uncommit(key)
--
-- The dict holds the requests still allowed in the current window; the
-- first request of a window creates it with the window as its TTL, so the
-- window restarts once the item expires (needs incr with init_ttl).

local setmetatable = setmetatable
local type = type

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

function _M.new(dict_name, limit, window)
    local dict = ngx.shared[dict_name]
    if not dict then
        return nil, "shared dict not found"
    end
    if type(limit) ~= "number" or limit <= 0 then
        return nil, "count must be a positive number"
    end
    if type(window) ~= "number" or window <= 0 then
        return nil, "time_window must be a positive number"
    end
    return setmetatable({ dict = dict, limit = limit, window = window }, mt)
end

function _M.incoming(self, key, commit)
    local dict = self.dict
    local remaining, err

    if commit then
        remaining, err = dict:incr(key, -1, self.limit, self.window)
        if not remaining then
            return nil, err
        end
    else
        remaining = (dict:get(key) or self.limit) - 1
    end

    if remaining < 0 then
        return nil, "rejected"
    end
    return 0, remaining
end

function _M.uncommit(self, key)
    local remaining, err = self.dict:incr(key, 1)
    if not remaining then
        if err == "not found" then
            -- the window ended meanwhile: nothing left to give back
            return self.limit
        end
        return nil, err
    end
    return remaining
end

return _M
