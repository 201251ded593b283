-- Give back everything a reservation consumed. The request id stays free (only settle binds it), so
-- a retry is admitted.
--
-- KEYS[1..n]   the counters the reservation incremented
-- ARGV[i]      what the reservation added to KEYS[i]
--
-- Counters never go below zero; a counter that has expired meanwhile is left missing.

for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
        if redis.call('DECRBY', KEYS[i], ARGV[i]) < 0 then
            redis.call('SET', KEYS[i], 0, 'KEEPTTL')
        end
    end
end
return 1
