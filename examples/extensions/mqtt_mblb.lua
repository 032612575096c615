-- mqtt_mblb.lua: message-based load balancing of MQTT for nsemu (NetScaler's extension API).
--
-- Frames every MQTT packet the client sends and passes each one on as a complete message
-- ("EOM"), so the load balancer takes a new decision for every packet. Partial packets are held
-- until they are complete. The server side keeps the native path.

-- Reads the MQTT variable byte integer starting at `pos`.
-- Returns the value and the position after it, or nil when more bytes are needed.
local function varint(data, pos)
  local value, multiplier = 0, 1
  for i = 0, 3 do
    local b = data:byte(pos + i)
    if b == nil then
      return nil
    end
    value = value + bit32.band(b, 0x7F) * multiplier
    if bit32.band(b, 0x80) == 0 then
      return value, pos + i + 1
    end
    multiplier = multiplier * 128
  end
  error("malformed MQTT packet: remaining length longer than 4 bytes")
end

function client.on_data(ctxt, payload)
  local data = payload.data
  while data:len() >= 2 do
    local remaining, header_end = varint(data, 2)
    if remaining == nil then
      break
    end
    local size = header_end - 1 + remaining
    if data:len() < size then
      break
    end
    local packet, rest = data:split(size)
    ns.logger:debug("MQTT packet type %d, %d bytes", bit32.rshift(packet:byte(1), 4), size)
    ns.send(ctxt.output, "EOM", { data = packet })
    data = rest
  end
  if data:len() > 0 then
    ctxt:hold(data)
  end
end
