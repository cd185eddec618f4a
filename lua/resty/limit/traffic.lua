-- resty.limit.traffic: combines several limiters (req, conn, count, or any
-- object with incoming(key, commit) and uncommit(key)).
--
-- API (as documented for OpenResty's lua-resty-limit-traffic):
--   delay, err = traffic.combine(limiters, keys, states?)
--
-- Every limiter records the request in turn; if one rejects, the ones
-- already recorded are undone so a rejected request counts nowhere. The
-- delay is the largest of the limiters' delays; states[i] receives each
-- limiter's second return value.

local _M = { _VERSION = "0.1.0" }

function _M.combine(limiters, keys, states)
    local n = #limiters
    local max_delay = 0
    for i = 1, n do
        local lim = limiters[i]
        local delay, state = lim:incoming(keys[i], true)
        if not delay then
            for j = i - 1, 1, -1 do
                local ok, err = limiters[j]:uncommit(keys[j])
                if not ok then
                    ngx.log(ngx.WARN, "failed to uncommit limiter ", j, ": ", err)
                end
            end
            return nil, state
        end
        if states then
            states[i] = state
        end
        if delay > max_delay then
            max_delay = delay
        end
    end
    return max_delay
end

return _M
