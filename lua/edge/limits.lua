-- limits.lua — the numbers of the edge's access policy. Edit and save: the
-- edge reloads it within a second, without a restart. A file that fails to
-- load or to pass check.lua is refused and the previous limits stay.
return {
  -- Which requests are buy requests: POST to this pattern (ngx.re syntax),
  -- captures are the round id and the item id.
  buy_path = [[^/api/rounds/(\d+)/items/(\d+)/buy$]],

  -- Token bucket over all buy requests of this node: `rate` per second,
  -- up to `burst` more at once.
  node = { rate = 5000, burst = 2000 },

  -- Buy requests one buyer (verified user id) may make per window.
  user = { count = 5, window = 1 },

  -- Buy requests per client network per window: IPv4 addresses count by
  -- their /v4_prefix, IPv6 by their /v6_prefix, so a script rotating
  -- through the addresses (or accounts) of one network is one client. Off
  -- here because the demo's and the tests' crowds all come from
  -- 127.0.0.1; turn it on where buyers' own addresses reach the edge
  -- (directly, or through http.trusted_proxies).
  -- net = { count = 100, window = 1, v4_prefix = 24, v6_prefix = 64 },

  -- Other API requests (polling, round lists) per client per window; keyed
  -- by user id when a token is present, else by the client address.
  api = { count = 50, window = 1 },

  -- Most units one buy may ask for (10 when absent; at most the backend's
  -- sale.max_qty); a buy
  -- asking for more is passed on with a permit for one unit and refused
  -- by the backend.
  max_qty = 10,

  -- Buy requests must carry a valid bearer token (answered 401 otherwise).
  require_token = true,
}
