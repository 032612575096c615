-- mqtt_mblb.lua: message-based load balancing of MQTT for nsemu (NetScaler's extension API).
--
-- Frames every MQTT packet the client sends and passes each PUBLISH on as a complete message
-- ("EOM"), so the load balancer takes a new decision for every PUBLISH: consecutive messages of
-- one device may land on different brokers. A broker needs a CONNECT on each connection, so the
-- extension keeps the device's CONNECT and sends it in front of each PUBLISH (one message =
-- CONNECT + PUBLISH); it answers the device itself (CONNACK, PUBACK for QoS 1, PINGRESP) and
-- drops what the brokers answer on their short-lived sessions. QoS 2, SUBSCRIBE and the other
-- packets have no meaning here and reset the connection. Partial packets are held until they
-- are complete.
--
-- Use it with a method that alternates (ROUNDROBIN, LEASTCONNECTION): when two consecutive
-- messages land on the same service the engine keeps the backend connection, and a broker
-- refuses a second CONNECT on it.

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

-- Per-connection state, by the connection's ctxt table (released with the connection's
-- contexts: the table is weak-keyed).
local sessions = setmetatable({}, { __mode = "k" })

-- One complete packet from the client.
local function on_packet(ctxt, packet, header_end)
  local state = sessions[ctxt]
  local packet_type = bit32.rshift(packet:byte(1), 4)
  if state == nil then
    if packet_type ~= 1 then
      error("first packet is not an MQTT CONNECT (packet type " .. packet_type .. ")")
    end
    -- Protocol level: after the protocol name (2-byte length + name).
    local name_len = packet:byte(header_end) * 256 + packet:byte(header_end + 1)
    local level = packet:byte(header_end + 2 + name_len)
    sessions[ctxt] = { connect = packet, level = level }
    if level == 5 then
      ns.send(ctxt.client, "EOM", { data = "\032\003\000\000\000" })
    else
      ns.send(ctxt.client, "EOM", { data = "\032\002\000\000" })
    end
    return
  end
  if packet_type == 3 then
    local qos = bit32.band(bit32.rshift(packet:byte(1), 1), 3)
    if qos == 2 then
      error("QoS 2 is not supported in message mode")
    end
    ns.logger:debug("MQTT PUBLISH, %d bytes", packet:len())
    ns.send(ctxt.output, "EOM", { data = state.connect .. packet })
    if qos == 1 then
      local topic_len = packet:byte(header_end) * 256 + packet:byte(header_end + 1)
      local id = packet:sub(header_end + 2 + topic_len, header_end + 3 + topic_len)
      ns.send(ctxt.client, "EOM", { data = "\064\002" .. id })
    end
  elseif packet_type == 12 then
    ns.send(ctxt.client, "EOM", { data = "\208\000" }) -- PINGRESP
  elseif packet_type == 14 then
    ctxt:close() -- DISCONNECT
  else
    error("MQTT packet type " .. packet_type .. " is not supported in message mode")
  end
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
    on_packet(ctxt, packet:sub(1, size), header_end)
    data = rest
  end
  if data:len() > 0 then
    ctxt:hold(data)
  end
end

-- The brokers' answers (CONNACK, PUBACK) belong to the per-message sessions: dropped.
function server.on_data(ctxt, payload)
end
