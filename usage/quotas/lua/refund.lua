-- Give back everything a reservation consumed and forget its request id, so a retry is admitted.
--
-- KEYS[1]      the request-id key
-- KEYS[2..n]   the counters the reservation incremented
-- ARGV[i-1]    what the reservation added to KEYS[i]
--
-- Counters never go below zero; a counter that has expired meanwhile is left missing.

for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
        if redis.call('DECRBY', KEYS[i], ARGV[i - 1]) < 0 then
            redis.call('SET', KEYS[i], 0, 'KEEPTTL')
        end
    end
end
redis.call('DEL', KEYS[1])
return 1
