-- Check every limit of one request and, only if all have room, consume them all (Sentry's
-- is_rate_limited.lua, plus the request-id key that makes a retried request id a duplicate).
--
-- KEYS[1]      the request-id key (tl:q:<team>:rid:<request id>)
-- KEYS[2..n]   one counter per limit (tl:q:<team>:<limit>:<window start epoch>)
-- ARGV[1]      TTL of the request-id key, seconds
-- then 4 per counter: cost, capacity, TTL (seconds), must-exist (1: the monthly counter,
--              which the caller initialises from the database when it is missing; 0: starts at 0)
--
-- Returns {status, count_1, ..., count_n}: the counts after the decision.
--   "ok"        admitted: every counter was incremented by its cost
--   "deny"      refused: nothing changed (the caller names the refusing limit from the counts)
--   "duplicate" the request id was seen within the TTL: nothing changed
--   "init"      a must-exist counter is missing: nothing changed; count_1 is its position (1-based)

local counts = {}
for i = 2, #KEYS do
    local base = 2 + (i - 2) * 4
    local value = redis.call('GET', KEYS[i])
    if not value then
        if ARGV[base + 3] == '1' then
            return {'init', i - 1}
        end
        value = 0
    end
    counts[i - 1] = tonumber(value)
end

if redis.call('EXISTS', KEYS[1]) == 1 then
    return {'duplicate', unpack(counts)}
end

for i = 2, #KEYS do
    local base = 2 + (i - 2) * 4
    if counts[i - 1] + tonumber(ARGV[base]) > tonumber(ARGV[base + 1]) then
        return {'deny', unpack(counts)}
    end
end

for i = 2, #KEYS do
    local base = 2 + (i - 2) * 4
    counts[i - 1] = redis.call('INCRBY', KEYS[i], ARGV[base])
    redis.call('EXPIRE', KEYS[i], ARGV[base + 2])
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return {'ok', unpack(counts)}
