-- Check every limit of one request and, only if all have room, consume them all (Sentry's
-- is_rate_limited.lua, plus the request-id key that makes a retried request id a duplicate).
-- With a stream key and event fields it also records the request: check with the reserved cost,
-- consume the actual cost and append the usage event, all in this one call (reserve + settle at once,
-- for a request whose actual tokens are known before it is admitted).
--
-- KEYS[1]      the request-id key (tl:q:<team>:rid:<request id>)
-- KEYS[2..n+1] one counter per limit (tl:q:<team>:<limit>:<window start epoch>)
-- KEYS[n+2]    optional: the usage-event stream
-- ARGV[1]      TTL of the request-id key, seconds
-- ARGV[2]      n, the number of counters
-- then 5 per counter: cost to check, cost to consume, capacity, TTL (seconds), must-exist (1: the
--              monthly counter, which the caller initialises from the database when it is missing)
-- then, with a stream key: the event's field/value pairs
--
-- Returns {status, count_1, ..., count_n}: the counts after the decision.
--   "ok"        admitted: every counter was incremented by its cost to consume
--   "deny"      refused: nothing changed (the caller names the refusing limit from the counts)
--   "duplicate" the request id was seen within the TTL: nothing changed
--   "init"      a must-exist counter is missing: nothing changed; count_1 is its position (1-based)

local n = tonumber(ARGV[2])
local counts = {}
for i = 1, n do
    local base = 3 + (i - 1) * 5
    local value = redis.call('GET', KEYS[i + 1])
    if not value then
        if ARGV[base + 4] == '1' then
            return {'init', i}
        end
        value = 0
    end
    counts[i] = tonumber(value)
end

if redis.call('EXISTS', KEYS[1]) == 1 then
    return {'duplicate', unpack(counts)}
end

for i = 1, n do
    local base = 3 + (i - 1) * 5
    if counts[i] + tonumber(ARGV[base]) > tonumber(ARGV[base + 2]) then
        return {'deny', unpack(counts)}
    end
end

for i = 1, n do
    local base = 3 + (i - 1) * 5
    local after = redis.call('INCRBY', KEYS[i + 1], ARGV[base + 1])
    if after == tonumber(ARGV[base + 1]) then
        -- A new counter (or one at zero): give it its TTL. Existing ones keep theirs.
        redis.call('EXPIRE', KEYS[i + 1], ARGV[base + 3])
    end
    counts[i] = after
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
if #KEYS == n + 2 then
    redis.call('XADD', KEYS[n + 2], '*', unpack(ARGV, 3 + n * 5))
end
return {'ok', unpack(counts)}
