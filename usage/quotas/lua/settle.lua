-- Settle a reservation: correct its token counters to the actual tokens, append the usage event to the
-- stream and bind the request id to the request's hash, atomically, once. The reservation leaves the
-- reservations set here; if it is not there (swept as abandoned, or refunded), nothing happens: its
-- counts were given back, and the request stays unrecorded.
--
-- No deadline (unlike reserve.lua): a settle that Redis runs late records a request that was served.
--
-- KEYS[1]      the usage-event stream
-- KEYS[2]      the reservations sorted set
-- KEYS[3]      the request-id key (tl:q:<team>:rid:<request id>)
-- KEYS[4..]    the counters the reservation incremented (c of them)
-- ARGV[1]      the reservation (its member in the set)
-- ARGV[2]      the request-id key's pending value ('': the id was generated for the request, no key)
-- ARGV[3]      TTL of the recorded request id, seconds (the retention)
-- ARGV[4]      the request's hash
-- ARGV[5]      actual - reserved tokens (may be negative)
-- ARGV[6]      c, the number of counters
-- then 1 per counter: unit ("r" or "t")
-- then the event's field/value pairs
--
-- A counter that has expired meanwhile is left missing: recreating it would leave a key with no TTL.
-- The request id is bound only if this reservation still holds it.
-- Returns 1 if the event was recorded, 0 if the reservation was gone.

if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
    return 0
end
local delta = tonumber(ARGV[5])
local c = tonumber(ARGV[6])
if delta ~= 0 then
    for i = 1, c do
        if ARGV[6 + i] == 't' and redis.call('EXISTS', KEYS[3 + i]) == 1 then
            if redis.call('INCRBY', KEYS[3 + i], delta) < 0 then
                redis.call('SET', KEYS[3 + i], 0, 'KEEPTTL')
            end
        end
    end
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then
    redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 7 + c))
return 1
