-- mqtt.lua: MQTT ClientID load balancing for nsemu (written for nsemu, NetScaler's extension API).
--
-- Reads the first packet of each client connection, which must be an MQTT CONNECT (MQTT 3.1,
-- 3.1.1 or 5.0), gives its ClientID to the load balancer as user token and user session, then
-- hands the rest of the connection to the native path. Bytes are held until the whole CONNECT
-- has arrived, so it works however the packet is split into TCP segments.
--
--   import ns extension local:mqtt.lua mqtt_code
--   add user protocol MQTT -transport TCP -extension mqtt_code

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

-- Parses a complete CONNECT whose variable header starts at `pos` and which ends at `last`.
-- Returns the ClientID.
local function connect_client_id(data, pos, last)
  local function need(n)
    if pos + n - 1 > last then
      error("malformed MQTT CONNECT: truncated")
    end
  end
  local function u16()
    need(2)
    local hi, lo = data:byte(pos, pos + 1)
    pos = pos + 2
    return hi * 256 + lo
  end
  local function utf8_string()
    local n = u16()
    need(n)
    local s = data:sub(pos, pos + n - 1)
    pos = pos + n
    return s
  end

  local protocol = utf8_string()
  need(2)
  local level, flags = data:byte(pos, pos + 1)
  pos = pos + 2
  if protocol == "MQIsdp" then
    if level ~= 3 then
      error("unsupported MQTT protocol level " .. level .. " for MQIsdp")
    end
  elseif protocol == "MQTT" then
    if level ~= 4 and level ~= 5 then
      error("unsupported MQTT protocol level " .. level)
    end
  else
    error("not MQTT: protocol name '" .. protocol .. "'")
  end
  if bit32.band(flags, 0x01) ~= 0 then
    error("malformed MQTT CONNECT: reserved flag set")
  end
  u16() -- keep-alive

  if level == 5 then
    local properties, after = varint(data, pos)
    if properties == nil or after - 1 > last then
      error("malformed MQTT CONNECT: truncated properties")
    end
    pos = after
    need(properties)
    pos = pos + properties
  end
  return utf8_string()
end

function client.on_data(ctxt, payload)
  local data = payload.data
  if data:len() < 2 then
    ctxt:hold(data)
    return
  end
  local first = data:byte(1)
  local packet_type = bit32.rshift(first, 4)
  if packet_type ~= 1 then
    error("first packet is not an MQTT CONNECT (packet type " .. packet_type .. ")")
  end
  if bit32.band(first, 0x0F) ~= 0 then
    error("malformed MQTT CONNECT: fixed header flags")
  end
  local remaining, header_end = varint(data, 2)
  if remaining == nil or data:len() < header_end - 1 + remaining then
    ctxt:hold(data) -- wait for the whole CONNECT
    return
  end

  local client_id = connect_client_id(data, header_end, header_end - 1 + remaining)
  if client_id == "" then
    -- MQTT allows an empty ClientID (the broker assigns one): nothing to balance on.
    ns.send(ctxt.output, "DATA", { data = data })
  else
    ns.send(ctxt.output, "DATA", { data = data, user_token = client_id, user_session = client_id })
  end
  ns.pipe(ctxt.input, ctxt.output)
end
