-- Check every limit of one request and, only if all have room, consume them all (Sentry's
-- is_rate_limited.lua, plus the request id's key). Two modes:
--   reserve (ARGV[8] is the reservation): consume the reserved tokens, hold the request id pending (its
--     key holds ARGV[9]) and add the reservation to the reservations set (KEYS[n+2]), where settle,
--     refund or the sweeper find it;
--   consume (ARGV[8] == ''): check with the reserved tokens, consume the actual ones, append the usage
--     event to the stream (KEYS[n+2]) and bind the request id to the request's hash: reserve and settle
--     in this one call, for a request whose actual tokens are known before it is admitted.
--
-- A script that Redis runs after its caller gave up (queued behind a stall: the caller timed out and
-- answered 503) must not count anything: ARGV[7] is the last moment, by Redis's own clock, at which
-- the caller still waits for the answer. Later than that the script changes nothing and says "late".
--
-- KEYS[1]      the request-id key (tl:q:<team>:rid:<request id>): absent (free), "p:<token>:<hash>"
--              (pending), "<hash>" (recorded), or "1" (recorded by an earlier version, without the hash)
-- KEYS[2..n+1] one counter per limit (tl:q:<team>:<limit>:<window start epoch>)
-- KEYS[n+2]    the reservations sorted set (reserve) or the usage-event stream (consume)
-- ARGV[1]      TTL of the request-id key, seconds (the request-id retention); 0: the id was generated
--              for this request and cannot repeat, so there is no check and no key
-- ARGV[2]      n, the number of counters
-- ARGV[3]      now, epoch seconds of the request's clock (TTLs and the reservation's score are relative
--              to it, not to Redis's clock, so simulated and test times behave as real ones)
-- ARGV[4]      tokens to check (the reservation: prompt + maximum completion)
-- ARGV[5]      tokens to consume (the same, or the actual tokens when the event is recorded here)
-- ARGV[6]      the request's hash (SHA-256 hex of the endpoint and the canonical body)
-- ARGV[7]      deadline: epoch seconds by Redis's clock (TIME) after which the caller no longer waits;
--              0: none
-- ARGV[8]      reserve: the reservation (its member in the set, which the sweeper reads); consume: ''
-- ARGV[9]      reserve: the request-id key's pending value; consume: ''
-- then 5 per counter: unit ("r": one per request, "t": tokens), capacity, window end (epoch s),
--              grace (s: how long the counter outlives its window), must-exist (1: the monthly
--              counter, which the caller initialises from the database when it is missing)
-- then, consume: the event's field/value pairs
--
-- Returns {status, Redis time ("<s>.<us>", for the caller's view of Redis's clock), count_1, ..., count_n}:
-- the counts after the decision.
--   "ok"        admitted: every counter was incremented by its cost to consume
--   "deny"      refused: nothing changed (the caller names the refusing limit from the counts)
--   "duplicate" the same request was recorded with this id within the TTL: nothing changed
--   "reused"    a different request holds this id (pending or recorded): nothing changed
--   "pending"   the same request holds this id pending (still in progress): nothing changed
--   "legacy"    the id was recorded by an earlier version ("1"): nothing changed; the caller resolves it
--   "init"      a must-exist counter is missing: nothing changed; count_1 is its position (1-based)
--   "late"      run after the deadline: nothing changed, no counts

local HEAD = 9
local time = redis.call('TIME')
local clock = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local deadline = tonumber(ARGV[7])
if deadline > 0 and tonumber(time[1]) + tonumber(time[2]) / 1000000 > deadline then
    return {'late', clock}
end

local n = tonumber(ARGV[2])
local counts = {}
for i = 1, n do
    local value = redis.call('GET', KEYS[i + 1])
    if not value then
        if ARGV[HEAD + (i - 1) * 5 + 5] == '1' then
            return {'init', clock, i}
        end
        value = 0
    end
    counts[i] = tonumber(value)
end

local rid_ttl = tonumber(ARGV[1])
if rid_ttl > 0 then
    local held = redis.call('GET', KEYS[1])
    if held then
        if held == '1' then
            return {'legacy', clock, unpack(counts)}
        end
        local status = 'reused'
        if string.sub(held, 1, 2) == 'p:' then
            -- "p:" .. 32 hex .. ":" .. hash: the hash starts at 36
            if string.sub(held, 36) == ARGV[6] then
                status = 'pending'
            end
        elseif held == ARGV[6] then
            status = 'duplicate'
        end
        return {status, clock, unpack(counts)}
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
        return {'deny', clock, unpack(counts)}
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
if ARGV[8] == '' then
    if rid_ttl > 0 then
        redis.call('SET', KEYS[1], ARGV[6], 'EX', rid_ttl)
    end
    redis.call('XADD', KEYS[n + 2], '*', unpack(ARGV, HEAD + 1 + n * 5))
else
    if rid_ttl > 0 then
        redis.call('SET', KEYS[1], ARGV[9], 'EX', rid_ttl)
    end
    redis.call('ZADD', KEYS[n + 2], now, ARGV[8])
end
return {'ok', clock, unpack(counts)}
