-- One batch, all or nothing, exactly once.
-- KEYS: [1] the epoch; [2] the batch token (the answer of a batch already
-- applied, so a retry of a lost reply publishes nothing again); [3] the
-- live idempotency keys by expiry (ms), which bounds them; then per event
-- its seq, stream and idempotency key ('' for none).
-- ARGV: [1] a new epoch, if Redis has none; [2] --history-size; [3]
-- --history-ttl (ms); [4] now (ms); [5] the idempotency window (ms); [6]
-- --idempotency-keys; then per event its frame prefix, type, pub/sub
-- channel and channel name.
-- Every check that could make a write fail (a seq key that is not a count,
-- a stream whose last id is at or past the next seq, a full idempotency
-- table) runs before the first write: a script error part-way would leave
-- the first events published.
-- A batch token under 'hrrt:idem-batch:' is a batch's own idempotency key:
-- it takes a slot in KEYS[3], and its stored answers are duplicates.
local batch_keyed = string.sub(KEYS[2], 1, 16) == 'hrrt:idem-batch:'
local done = redis.call('GET', KEYS[2])
if done then
  local out = cjson.decode(done)
  if batch_keyed then
    for i = 2, #out do
      if string.sub(out[i], 1, 4) ~= 'dup|' then out[i] = 'dup|' .. out[i] end
    end
  end
  return out
end
local n = (#KEYS - 3) / 3
local planned, claimed, new_keys = {}, {}, 0
for i = 0, n - 1 do
  local seqk, streamk, idemk = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local prev = false
  if idemk ~= '' then prev = redis.call('GET', idemk) or claimed[idemk] end
  if not prev then
    if idemk ~= '' then
      claimed[idemk] = true
      new_keys = new_keys + 1
    end
    local cur = planned[seqk]
    if cur == nil then
      local kind = redis.call('TYPE', seqk)['ok']
      if kind ~= 'none' and kind ~= 'string' then
        return redis.error_reply('HRRT ' .. seqk .. ' is a ' .. kind .. ', not a seq')
      end
      cur = tonumber(redis.call('GET', seqk) or '0')
      if not cur or cur < 0 or cur ~= math.floor(cur) then
        return redis.error_reply('HRRT ' .. seqk .. ' does not hold a seq')
      end
      local skind = redis.call('TYPE', streamk)['ok']
      if skind == 'stream' then
        local info = redis.call('XINFO', 'STREAM', streamk)
        for j = 1, #info, 2 do
          if info[j] == 'last-generated-id' then
            local last = tonumber(string.match(info[j + 1], '^(%d+)-'))
            if last and last > cur then
              return redis.error_reply('HRRT ' .. streamk .. ' is ahead of ' .. seqk .. ' (' .. last .. ' > ' .. cur .. ')')
            end
          end
        end
      elseif skind ~= 'none' then
        return redis.error_reply('HRRT ' .. streamk .. ' is a ' .. skind .. ', not a stream')
      end
    end
    planned[seqk] = cur + 1
  end
end
if batch_keyed then new_keys = new_keys + 1 end
if new_keys > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
  if redis.call('ZCARD', KEYS[3]) + new_keys > tonumber(ARGV[6]) then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local wait = tonumber(ARGV[5])
    if oldest[2] then wait = tonumber(oldest[2]) - tonumber(ARGV[4]) end
    return {'!full', string.format('%d', wait)}
  end
end
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local out = {epoch}
for i = 0, n - 1 do
  local seqk, streamk, idemk = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local prefix, typ, pubch, chname = ARGV[7 + 4 * i], ARGV[8 + 4 * i], ARGV[9 + 4 * i], ARGV[10 + 4 * i]
  local prev = false
  if idemk ~= '' then prev = redis.call('GET', idemk) end
  if prev then
    table.insert(out, 'dup|' .. prev)
  else
    local seq = redis.call('INCR', seqk)
    local frame = prefix .. seq .. '}'
    redis.call('XADD', streamk, 'MAXLEN', ARGV[2], seq .. '-0', 'f', frame, 'y', typ, 't', ARGV[4])
    redis.call('PEXPIRE', streamk, ARGV[3])
    local nodes = redis.call('PUBLISH', pubch, epoch .. '|' .. seq .. '|' .. typ .. '|' .. frame)
    local answer = chname .. '|' .. seq .. '|' .. nodes
    if idemk ~= '' then
      redis.call('SET', idemk, answer, 'PX', ARGV[5])
      redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + tonumber(ARGV[5]), idemk)
    end
    table.insert(out, answer)
  end
end
redis.call('SET', KEYS[2], cjson.encode(out), 'PX', ARGV[5])
if batch_keyed then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + tonumber(ARGV[5]), KEYS[2])
end
return out
