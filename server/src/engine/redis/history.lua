local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local cutoff = tonumber(ARGV[3])
for _ = 1, 1000 do
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #first == 0 then break end
  local fields, t = first[1][2], nil
  for j = 1, #fields, 2 do
    if fields[j] == 't' then t = tonumber(fields[j + 1]) end
  end
  if t and t < cutoff then redis.call('XDEL', KEYS[2], first[1][1]) else break end
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {latest, first, entries}
