-- The front door's one script: hold a request while no center can take it.
--
-- A one-node stack replaces its center stop-first (deploy/swarm/stack.yml says why), so between the
-- old center's leaving and the new one's first successful health check the backend has no usable
-- server, and HAProxy would answer 503 at once. Instead the request waits here, nothing yet sent
-- anywhere, until a center is usable again or the limit is reached (then the backend answers 503).
-- Sleeping does not count against tune.lua.session-timeout, and yields to HAProxy's other work.

local STEP_MS = 100

core.register_action("hold_until_a_center_is_up", { "http-req" }, function(txn, backend, seconds)
    local limit_ms = (tonumber(seconds) or 0) * 1000
    local waited_ms = 0
    while txn.f:nbsrv(backend) == 0 and waited_ms < limit_ms do
        core.msleep(STEP_MS)
        waited_ms = waited_ms + STEP_MS
    end
end, 2)
