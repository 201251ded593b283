-- Correct a reservation's token counters to the actual tokens, append the usage event to the stream
-- and bind the request id to the request's hash, atomically: the counters, the stream and the
-- request-id keys never disagree.
--
-- KEYS[1]      the usage-event stream
-- KEYS[2]      the request-id key (tl:q:<team>:rid:<request id>)
-- KEYS[3..]    the counters the reservation incremented
-- ARGV[1]      TTL of the request-id key, seconds; 0: the id was generated for the request (no check,
--              no key)
-- ARGV[2]      the request's hash
-- ARGV[3]      actual - reserved tokens (may be negative)
-- ARGV[4]      the number of counters, c (= #KEYS - 2)
-- then 2 per counter: unit ("r" or "t") and what the reservation added to it
-- then the event's field/value pairs
--
-- If a request with the same id was recorded while this one ran (a client retry racing its first
-- attempt), this one is not recorded: the same request (same hash) gives its whole reservation back,
-- so it is counted once; a different request was served too, so it keeps its actual cost counted.
-- A counter that has expired meanwhile is left missing: recreating it would leave a key with no TTL.
-- Returns 1 if the event was recorded, 0 if not.

local rid_ttl = tonumber(ARGV[1])
local delta = tonumber(ARGV[3])
local c = tonumber(ARGV[4])

local function add(i, amount)
    if amount ~= 0 and redis.call('EXISTS', KEYS[i + 2]) == 1 then
        if redis.call('INCRBY', KEYS[i + 2], amount) < 0 then
            redis.call('SET', KEYS[i + 2], 0, 'KEEPTTL')
        end
    end
end

if rid_ttl > 0 then
    local recorded = redis.call('GET', KEYS[2])
    if recorded then
        for i = 1, c do
            if recorded == ARGV[2] then
                add(i, -tonumber(ARGV[4 + (i - 1) * 2 + 2]))
            elseif ARGV[4 + (i - 1) * 2 + 1] == 't' then
                add(i, delta)
            end
        end
        return 0
    end
end

for i = 1, c do
    if ARGV[4 + (i - 1) * 2 + 1] == 't' then
        add(i, delta)
    end
end
if rid_ttl > 0 then
    redis.call('SET', KEYS[2], ARGV[2], 'EX', rid_ttl)
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5 + c * 2))
return 1
