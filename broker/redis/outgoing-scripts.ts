// Lua scripts of the Redis persistence's outgoing queues: one queue per client, one entry per copy of a message, so
// nothing one subscriber's delivery does (its packet identifier, its PUBREL) touches another subscriber's copy.
// Each script runs atomically in Redis; KEYS[1] is the client's list of entry numbers, KEYS[2] its hash of entries
// (fields seq, bytes, and per entry n: d:n the packet as stored, k:n "brokerId\nbrokerCounter", m:n the packet
// identifier once assigned, b:n its payload bytes). Lua formats a negative zero as "-0", which HINCRBY refuses:
// a zero is never added.

/**
 * Stores `copies` copies of one packet unless the client's queue would pass its bound (ARGV: data, identity, bytes,
 * maxMessages, maxBytes, copies; 0 = no bound). Returns 'ok', or which bound would be crossed: 'messages', 'bytes'.
 */
export const ENQUEUE = `
local b = tonumber(ARGV[3]); local maxm = tonumber(ARGV[4]); local maxb = tonumber(ARGV[5]); local k = tonumber(ARGV[6])
if maxm > 0 and redis.call('LLEN', KEYS[1]) + k > maxm then return 'messages' end
if maxb > 0 and tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0') + b * k > maxb then return 'bytes' end
for i = 1, k do
  local n = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  redis.call('HSET', KEYS[2], 'd:' .. n, ARGV[1], 'k:' .. n, ARGV[2], 'b:' .. n, b)
  if b > 0 then redis.call('HINCRBY', KEYS[2], 'bytes', b) end
  redis.call('RPUSH', KEYS[1], n)
end
return 'ok'`;

/**
 * ARGV[1] 'publish': the copy with identity ARGV[2] gets packet identifier ARGV[3] (the copy that has it already, else
 * the first without one); only the identifier is written, never the delivered packet (a device's copy goes out
 * sealed, the stored one stays plaintext). ARGV[1] 'pubrel': the copy with identifier ARGV[3] becomes the PUBREL
 * ARGV[4] [MQTT-4.3.3-1]. Returns 1 when a copy was updated, 0 when there is none.
 */
export const UPDATE = `
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if ARGV[1] == 'publish' then
  local first
  for _, n in ipairs(ids) do
    if redis.call('HGET', KEYS[2], 'k:' .. n) == ARGV[2] then
      local m = redis.call('HGET', KEYS[2], 'm:' .. n)
      if m == ARGV[3] then return 1 end
      if not m and not first then first = n end
    end
  end
  if not first then return 0 end
  redis.call('HSET', KEYS[2], 'm:' .. first, ARGV[3])
  return 1
end
for _, n in ipairs(ids) do
  if redis.call('HGET', KEYS[2], 'm:' .. n) == ARGV[3] then
    local b = tonumber(redis.call('HGET', KEYS[2], 'b:' .. n) or '0')
    redis.call('HSET', KEYS[2], 'd:' .. n, ARGV[4], 'k:' .. n, '', 'b:' .. n, 0)
    if b > 0 then redis.call('HINCRBY', KEYS[2], 'bytes', 0 - b) end
    return 1
  end
end
return 0`;

/**
 * Removes one copy and returns {stored packet, its identifier or ''}: the copy with packet identifier ARGV[1], or
 * when ARGV[1] is '' (a delivery Aedes did not send) the first copy of identity ARGV[2] that has no identifier yet.
 */
export const CLEAR = `
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, n in ipairs(ids) do
  local m = redis.call('HGET', KEYS[2], 'm:' .. n)
  local hit
  if ARGV[1] ~= '' then hit = (m == ARGV[1]) else hit = (not m) and redis.call('HGET', KEYS[2], 'k:' .. n) == ARGV[2] end
  if hit then
    local d = redis.call('HGET', KEYS[2], 'd:' .. n)
    local b = tonumber(redis.call('HGET', KEYS[2], 'b:' .. n) or '0')
    redis.call('HDEL', KEYS[2], 'd:' .. n, 'k:' .. n, 'm:' .. n, 'b:' .. n)
    if b > 0 then redis.call('HINCRBY', KEYS[2], 'bytes', 0 - b) end
    redis.call('LREM', KEYS[1], 1, n)
    if redis.call('LLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
    return {d, m or ''}
  end
end
return false`;

/** The client's copies in order, flat: stored packet, identifier or '', stored packet, ... */
export const LIST = `
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local out = {}
for _, n in ipairs(ids) do
  out[#out + 1] = redis.call('HGET', KEYS[2], 'd:' .. n) or ''
  out[#out + 1] = redis.call('HGET', KEYS[2], 'm:' .. n) or ''
end
return out`;
