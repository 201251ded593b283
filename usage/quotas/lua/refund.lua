-- Give back everything a reservation consumed and free its request id, once: the reservation leaves
-- the reservations set here, and a reservation that is not there (settled, refunded or swept before)
-- gives nothing back. Used by refund (a request that failed) and by the sweeper (abandoned ones).
--
-- KEYS[1]      the reservations sorted set
-- KEYS[2]      the request-id key
-- KEYS[3..]    the counters the reservation incremented
-- ARGV[1]      the reservation (its member in the set)
-- ARGV[2]      the request-id key's pending value ('': no key); the key is deleted only if it still
--              holds it
-- ARGV[3..]    what the reservation added to KEYS[3..]
--
-- Counters never go below zero; a counter that has expired meanwhile is left missing.
-- Returns 1 if it was given back, 0 if the reservation was gone.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
    return 0
end
for i = 3, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
        if redis.call('DECRBY', KEYS[i], ARGV[i]) < 0 then
            redis.call('SET', KEYS[i], 0, 'KEEPTTL')
        end
    end
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
    redis.call('DEL', KEYS[2])
end
return 1
