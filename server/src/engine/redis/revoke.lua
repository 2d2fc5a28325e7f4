-- Records one revocation, keeping the later of an earlier one's bounds,
-- and tells the nodes listening now. KEYS[1] the hash (user -> 'at|until
-- ms'), KEYS[2] the sorted set of users by until ms. ARGV: user, at,
-- until ms, now ms, the control channel, the message it gets.
local at, until_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local pa, pu = string.match(prev, '^(%d+)|(%d+)$')
  if pa and tonumber(pa) > at then at = tonumber(pa) end
  if pu and tonumber(pu) > until_ms then until_ms = tonumber(pu) end
end
local at_s, until_s = string.format('%d', at), string.format('%d', until_ms)
redis.call('HSET', KEYS[1], ARGV[1], at_s .. '|' .. until_s)
redis.call('ZADD', KEYS[2], until_s, ARGV[1])
-- What expired goes, a bounded number at a time, so the hash holds only
-- live revocations plus what a hundred revokes did not yet clear.
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 100)
for _, user in ipairs(gone) do
  redis.call('HDEL', KEYS[1], user)
  redis.call('ZREM', KEYS[2], user)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {at_s, until_s}
