-- Correct a reservation's token counters to the actual tokens and append the usage event to the
-- stream, atomically: the counters and the stream never disagree.
--
-- KEYS[1]      the usage-event stream
-- KEYS[2..n]   the token counters the reservation incremented
-- ARGV[1]      actual - reserved tokens (may be negative)
-- ARGV[2..]    the event's field/value pairs
--
-- A counter that has expired meanwhile is left missing: recreating it would leave a key with no TTL.
-- Returns the stream entry id.

local delta = tonumber(ARGV[1])
if delta ~= 0 then
    for i = 2, #KEYS do
        if redis.call('EXISTS', KEYS[i]) == 1 then
            if redis.call('INCRBY', KEYS[i], delta) < 0 then
                redis.call('SET', KEYS[i], 0, 'KEEPTTL')
            end
        end
    end
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
