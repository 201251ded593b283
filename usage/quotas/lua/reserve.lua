-- Check every limit of one request and, only if all have room, consume them all (Sentry's
-- is_rate_limited.lua, plus the request-id key that binds a client's request id to the request
-- recorded with it). With a stream key and event fields it also records the request: check with the
-- reserved cost, consume the actual cost, append the usage event and bind the request id, all in this
-- one call (reserve + settle at once, for a request whose actual tokens are known before it is
-- admitted). Without them the id is bound by settle.lua, when the request is recorded: an id whose
-- request was refused, refunded or never settled stays free.
--
-- KEYS[1]      the request-id key (tl:q:<team>:rid:<request id>); its value is the recorded request's hash
-- KEYS[2..n+1] one counter per limit (tl:q:<team>:<limit>:<window start epoch>)
-- KEYS[n+2]    optional: the usage-event stream
-- ARGV[1]      TTL of the request-id key, seconds (the request-id retention); 0: the id was generated
--              for this request and cannot repeat, so there is no check and no key to keep
-- ARGV[2]      n, the number of counters
-- ARGV[3]      now, epoch seconds of the request's clock (TTLs are relative to it, not to Redis's clock,
--              so simulated and test times behave as real ones)
-- ARGV[4]      tokens to check (the reservation: prompt + maximum completion)
-- ARGV[5]      tokens to consume (the same, or the actual tokens when the event is recorded here)
-- ARGV[6]      the request's hash (SHA-256 hex of the endpoint and the canonical body)
-- then 5 per counter: unit ("r": one per request, "t": tokens), capacity, window end (epoch s),
--              grace (s: how long the counter outlives its window), must-exist (1: the monthly
--              counter, which the caller initialises from the database when it is missing)
-- then, with a stream key: the event's field/value pairs
--
-- These per-counter values are the same for every request of a team within a minute, so the caller
-- keeps them ready; only ARGV[1], [3], [4], [5] and [6] change per request.
--
-- Returns {status, count_1, ..., count_n}: the counts after the decision.
--   "ok"        admitted: every counter was incremented by its cost to consume
--   "deny"      refused: nothing changed (the caller names the refusing limit from the counts)
--   "duplicate" the same request was recorded with this id within the TTL: nothing changed
--   "reused"    a different request was recorded with this id within the TTL: nothing changed
--   "init"      a must-exist counter is missing: nothing changed; count_1 is its position (1-based)

local HEAD = 6
local n = tonumber(ARGV[2])
local counts = {}
for i = 1, n do
    local value = redis.call('GET', KEYS[i + 1])
    if not value then
        if ARGV[HEAD + (i - 1) * 5 + 5] == '1' then
            return {'init', i}
        end
        value = 0
    end
    counts[i] = tonumber(value)
end

local rid_ttl = tonumber(ARGV[1])
if rid_ttl > 0 then
    local recorded = redis.call('GET', KEYS[1])
    if recorded then
        if recorded == ARGV[6] then
            return {'duplicate', unpack(counts)}
        end
        return {'reused', unpack(counts)}
    end
end

local check_tokens = tonumber(ARGV[4])
local consume_tokens = tonumber(ARGV[5])
for i = 1, n do
    local base = HEAD + (i - 1) * 5
    local cost = 1
    if ARGV[base + 1] == 't' then
        cost = check_tokens
    end
    if counts[i] + cost > tonumber(ARGV[base + 2]) then
        return {'deny', unpack(counts)}
    end
end

local now = tonumber(ARGV[3])
for i = 1, n do
    local base = HEAD + (i - 1) * 5
    local cost = 1
    if ARGV[base + 1] == 't' then
        cost = consume_tokens
    end
    local after = redis.call('INCRBY', KEYS[i + 1], cost)
    if after == cost then
        -- A new counter (or one at zero): give it its TTL. Existing ones keep theirs.
        local window_end = tonumber(ARGV[base + 3])
        local ttl = math.max(window_end - now, 0) + tonumber(ARGV[base + 4])
        redis.call('EXPIRE', KEYS[i + 1], math.max(1, math.ceil(ttl)))
    end
    counts[i] = after
end
if #KEYS == n + 2 then
    if rid_ttl > 0 then
        redis.call('SET', KEYS[1], ARGV[6], 'EX', rid_ttl)
    end
    redis.call('XADD', KEYS[n + 2], '*', unpack(ARGV, HEAD + 1 + n * 5))
end
return {'ok', unpack(counts)}
