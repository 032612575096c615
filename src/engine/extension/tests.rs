//! Tests of the Lua runtime with the real mlua: the NetScaler API, the sandbox, the limits, and
//! the example scripts.

use super::*;
use std::time::{Duration, Instant};

const MQTT_LUA: &str = include_str!("../../../examples/extensions/mqtt.lua");
const MQTT_MBLB_LUA: &str = include_str!("../../../examples/extensions/mqtt_mblb.lua");

fn context() -> SessionContext {
    SessionContext {
        vserver_name: "u_vserver_azureiot".into(),
        client_addr: "127.0.0.1:50000".parse().unwrap(),
        vserver_addr: "127.0.0.10:1883".parse().unwrap(),
        params: vec![("region".into(), "eu".into())],
    }
}

fn compile(code: &str) -> Extension {
    Extension::compile("test_code", code).unwrap()
}

fn compile_error(code: &str) -> String {
    match Extension::compile("test_code", code) {
        Err(EngineError::ExtensionCompile { name, message }) => {
            assert_eq!(name, "test_code");
            message
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

fn to_server(data: &[u8], eom: bool) -> Action {
    Action::ToServer {
        data: data.to_vec(),
        eom,
        token: None,
        session: None,
    }
}

fn to_client(data: &[u8], eom: bool) -> Action {
    Action::ToClient {
        data: data.to_vec(),
        eom,
    }
}

fn with_token(data: &[u8], id: &str) -> Action {
    Action::ToServer {
        data: data.to_vec(),
        eom: false,
        token: Some(id.into()),
        session: Some(id.into()),
    }
}

// === MQTT packets ===

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

fn mqtt_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A CONNECT of MQTT 3.1 (level 3), 3.1.1 (4) or 5.0 (5), with a user name and password.
fn connect(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = mqtt_string(if level == 3 { "MQIsdp" } else { "MQTT" });
    body.push(level);
    body.push(0xC2); // user name, password, clean session
    body.extend([0, 60]); // keep-alive
    if level == 5 {
        // Session expiry interval 10, receive maximum 20.
        let properties = [0x11, 0, 0, 0, 10, 0x21, 0, 20];
        body.extend(varint(properties.len()));
        body.extend(properties);
    }
    body.extend(mqtt_string(client_id));
    body.extend(mqtt_string("hub/device/?api-version=2021-04-12"));
    body.extend(mqtt_string("SharedAccessSignature sr=hub&sig=abc"));
    packet(0x10, &body)
}

fn publish(topic: &str, message: &str) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend_from_slice(message.as_bytes());
    packet(0x30, &body)
}

// === mqtt.lua ===

#[test]
fn mqtt_connect_of_every_version_sends_the_client_id_then_pipes() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    assert!(ext.has_client_on_data());
    assert!(!ext.has_server_on_data());
    for level in [3, 4, 5] {
        let id = format!("device-{level}");
        let packet = connect(level, &id);
        let mut session = ext.new_session(context()).unwrap();
        let actions = session.on_client_data(&packet).unwrap();
        assert_eq!(
            actions,
            vec![with_token(&packet, &id), Action::PipeClient],
            "level {level}"
        );
        assert!(session.is_released(), "nothing left in Lua once piped");
    }
    let counters = ext.counters();
    assert_eq!(counters.messages, 3);
    assert_eq!(counters.errors, 0);
}

#[test]
fn mqtt_connect_arriving_one_byte_at_a_time_is_framed() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    // A long ClientID makes the remaining length a two-byte varint.
    let long_id = "x".repeat(300);
    for (level, id) in [
        (3, "a"),
        (4, "MosquittoDevice"),
        (5, "dev5"),
        (4, long_id.as_str()),
    ] {
        let packet = connect(level, id);
        let mut session = ext.new_session(context()).unwrap();
        let (last, head) = packet.split_last().unwrap();
        for byte in head {
            assert_eq!(session.on_client_data(&[*byte]).unwrap(), vec![]);
        }
        let actions = session.on_client_data(&[*last]).unwrap();
        assert_eq!(actions, vec![with_token(&packet, id), Action::PipeClient]);
    }
}

#[test]
fn mqtt_connect_followed_by_more_packets_passes_everything_on() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    let mut data = connect(4, "dev");
    data.extend(publish("t", "hello"));
    let mut session = ext.new_session(context()).unwrap();
    let actions = session.on_client_data(&data).unwrap();
    assert_eq!(actions, vec![with_token(&data, "dev"), Action::PipeClient]);
}

#[test]
fn mqtt_empty_client_id_is_sent_without_token() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    let packet = connect(4, "");
    let mut session = ext.new_session(context()).unwrap();
    let actions = session.on_client_data(&packet).unwrap();
    assert_eq!(actions, vec![to_server(&packet, false), Action::PipeClient]);
}

#[test]
fn mqtt_refuses_a_first_packet_that_is_not_connect() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    let mut session = ext.new_session(context()).unwrap();
    let err = session
        .on_client_data(&publish("devices/x", "hi"))
        .unwrap_err();
    assert!(err.message.contains("not an MQTT CONNECT"), "{err}");
    assert!(err.message.starts_with("mqtt_code:"), "{err}");
    // The connection is reset: later data gets the same error.
    assert_eq!(session.on_client_data(&connect(4, "x")), Err(err));

    let mut http = ext.new_session(context()).unwrap();
    assert!(http.on_client_data(b"GET / HTTP/1.1\r\n\r\n").is_err());
    let mut bad_protocol = ext.new_session(context()).unwrap();
    let mut body = mqtt_string("HTTP");
    body.extend([4, 2, 0, 60]);
    body.extend(mqtt_string("id"));
    let err = bad_protocol
        .on_client_data(&packet(0x10, &body))
        .unwrap_err();
    assert!(err.message.contains("protocol name 'HTTP'"), "{err}");
    let mut bad_varint = ext.new_session(context()).unwrap();
    let err = bad_varint
        .on_client_data(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01])
        .unwrap_err();
    assert!(err.message.contains("remaining length"), "{err}");
    assert_eq!(ext.counters().errors, 4);

    // Other connections are unaffected.
    let mut good = ext.new_session(context()).unwrap();
    assert_eq!(good.on_client_data(&connect(4, "ok")).unwrap().len(), 2);
}

#[test]
fn mqtt_mblb_sends_every_publish_as_a_message() {
    let ext = Extension::compile("mqtt_mblb", MQTT_MBLB_LUA).unwrap();
    let c = connect(4, "dev");
    let p1 = publish("a", "one");
    let p2 = publish("b", &"two".repeat(100));
    let mut stream = c.clone();
    stream.extend(&p1);
    stream.extend(&p2);
    let mut session = ext.new_session(context()).unwrap();
    // Split at awkward places: inside the CONNECT, then across p1/p2 and inside p2's varint.
    let cut1 = 5;
    let cut2 = c.len() + p1.len() + 2;
    assert_eq!(session.on_client_data(&stream[..cut1]).unwrap(), vec![]);
    let with_connect = |p: &[u8]| [c.as_slice(), p].concat();
    assert_eq!(
        session.on_client_data(&stream[cut1..cut2]).unwrap(),
        vec![
            to_client(&[0x20, 2, 0, 0], true),
            to_server(&with_connect(&p1), true)
        ]
    );
    assert_eq!(
        session.on_client_data(&stream[cut2..]).unwrap(),
        vec![to_server(&with_connect(&p2), true)]
    );
    // QoS 1: the extension acknowledges; PINGREQ is answered; the brokers' answers are dropped.
    let mut q1 = mqtt_string("t");
    q1.extend([0x12, 0x34]);
    q1.extend(b"x");
    let q1 = packet(0x32, &q1);
    assert_eq!(
        session.on_client_data(&q1).unwrap(),
        vec![
            to_server(&with_connect(&q1), true),
            to_client(&[0x40, 2, 0x12, 0x34], true)
        ]
    );
    assert_eq!(
        session.on_client_data(&[0xC0, 0]).unwrap(),
        vec![to_client(&[0xD0, 0], true)]
    );
    assert_eq!(session.on_server_data(&[0x20, 2, 0, 0]).unwrap(), vec![]);
    assert!(!session.is_released(), "message mode never pipes");
    // A SUBSCRIBE has no meaning per message: the connection is reset.
    let sub = packet(0x82, &[0, 1, 0, 1, b't', 0]);
    assert!(session.on_client_data(&sub).is_err());
    // MQTT 5 gets a CONNACK with an empty property list.
    let mut v5 = ext.new_session(context()).unwrap();
    assert_eq!(
        v5.on_client_data(&connect(5, "dev5")).unwrap(),
        vec![to_client(&[0x20, 3, 0, 0, 0], true)]
    );
}

// === compile ===

#[test]
fn syntax_error_is_refused_with_the_line_number() {
    let message = compile_error("function client.on_data(ctxt, payload)\n  local x = = 1\nend\n");
    assert!(message.starts_with("test_code:2:"), "{message}");
    let shown = EngineError::ExtensionCompile {
        name: "x".into(),
        message: message.clone(),
    }
    .to_string();
    assert!(shown.contains("test_code:2:"), "{shown}");
}

#[test]
fn top_level_errors_and_missing_callbacks_are_refused() {
    let message = compile_error("local x = nil\nx.y = 1\n");
    assert!(message.starts_with("test_code:2:"), "{message}");
    let message = compile_error("local x = 1\n");
    assert!(message.contains("neither client.on_data nor server.on_data"));
    assert_eq!(
        compile_error("while true do end"),
        "instruction budget exceeded"
    );
}

#[test]
fn sandbox_keeps_only_the_safe_libraries() {
    compile(
        r##"
        assert(_VERSION == "Lua 5.2", _VERSION)
        assert(io == nil and require == nil and dofile == nil and loadfile == nil)
        assert(package == nil and debug == nil and coroutine == nil and module == nil)
        assert(os.execute == nil and os.exit == nil and os.getenv == nil and os.remove == nil)
        assert(os.rename == nil and os.tmpname == nil and os.setlocale == nil)
        assert(string.dump == nil)
        assert(type(os.time()) == "number" and type(os.clock()) == "number")
        assert(type(os.date("%Y-%m-%d")) == "string")
        assert(bit32.rshift(0x10, 4) == 1 and bit32.band(0xff, 0x0f) == 0x0f)
        do goto skip end
        error("goto is broken")
        ::skip::
        assert(load("return 1 + 1")() == 2)
        local env = {}
        load("x = 1", "chunk", "t", env)()
        assert(env.x == 1 and x == nil)
        assert(load(string.char(27) .. "LuaR") == nil, "bytecode must be refused")
        assert(not pcall(collectgarbage, "stop"))
        assert(type(collectgarbage("count")) == "number")
        print("printing is logging")
        function server.on_data(ctxt, payload) end
        "##,
    );
}

#[test]
fn api_misuse_at_top_level_raises() {
    let message = compile_error("ns.send(nil, 'DATA', {data = 'x'})");
    assert!(message.contains("bad argument"), "{message}");
    // Finalizers could run outside any callback (and its budget): refused.
    let message = compile_error("setmetatable({}, {__gc = function() end})");
    assert!(
        message.contains("__gc metamethods are not allowed"),
        "{message}"
    );
}

// === callbacks: limits and isolation ===

#[test]
fn runaway_callback_fails_within_the_budget_and_other_sessions_still_work() {
    let ext = compile(
        r##"
        function client.on_data(ctxt, payload)
          if payload.data:sub(1, 4) == "loop" then while true do end end
          if payload.data:sub(1, 5) == "catch" then
            while true do pcall(function() while true do end end) end
          end
          ns.send(ctxt.output, "DATA", {data = payload.data})
        end
        "##,
    );
    for trigger in [&b"loop"[..], b"catch"] {
        let mut runaway = ext.new_session(context()).unwrap();
        let start = Instant::now();
        let err = runaway.on_client_data(trigger).unwrap_err();
        assert_eq!(err.message, "instruction budget exceeded");
        eprintln!("runaway {trigger:?} stopped after {:?}", start.elapsed());
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }
    let mut other = ext.new_session(context()).unwrap();
    assert_eq!(
        other.on_client_data(b"hello").unwrap(),
        vec![to_server(b"hello", false)]
    );
    assert_eq!(ext.counters().errors, 2);
}

#[test]
fn error_resets_only_its_session() {
    let ext = compile(
        r##"
        function client.on_data(ctxt, payload)
          if payload.data:find("boom", 1, true) then error("boom requested") end
          ctxt:hold(payload.data)
        end
        "##,
    );
    let mut a = ext.new_session(context()).unwrap();
    let mut b = ext.new_session(context()).unwrap();
    assert_eq!(a.on_client_data(b"abc").unwrap(), vec![]);
    assert_eq!(b.on_client_data(b"xyz").unwrap(), vec![]);
    let err = b.on_client_data(b"boom").unwrap_err();
    assert!(err.message.ends_with("boom requested"), "{err}");
    assert!(b.is_released());
    // `a` still has its held bytes: they come back with the next data.
    let err = a.on_client_data(b"def boom").unwrap_err();
    assert_eq!(err.message, "test_code:3: boom requested");
}

#[test]
fn memory_cap_fails_the_callback_and_the_state_stays_usable() {
    let limits = ExtensionLimits {
        instruction_budget: 1_000_000_000,
        memory_limit: 4 << 20,
        ..ExtensionLimits::default()
    };
    let ext = Extension::compile_with_limits(
        "hog",
        r##"
        function client.on_data(ctxt, payload)
          if payload.data:sub(1, 3) == "hog" then
            local t = {}
            for i = 1, 1e8 do t[i] = string.rep("x", 64) .. i end
          end
          ns.send(ctxt.output, "DATA", {data = payload.data})
        end
        "##,
        limits,
    )
    .unwrap();
    let mut hog = ext.new_session(context()).unwrap();
    assert_eq!(
        hog.on_client_data(b"hog").unwrap_err().message,
        "memory limit exceeded"
    );
    let mut other = ext.new_session(context()).unwrap();
    assert_eq!(
        other.on_client_data(b"fine").unwrap(),
        vec![to_server(b"fine", false)]
    );
    assert!(ext.lua_memory() <= 4 << 20);

    let top_level = Extension::compile_with_limits(
        "hog",
        "local s = string.rep('x', 8 * 1024 * 1024)\nfunction client.on_data() end",
        ExtensionLimits {
            memory_limit: 4 << 20,
            ..ExtensionLimits::default()
        },
    );
    match top_level {
        Err(EngineError::ExtensionCompile { message, .. }) => {
            assert_eq!(message, "memory limit exceeded")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hold_limit_fails_the_session() {
    let ext = Extension::compile_with_limits(
        "holder",
        "function client.on_data(ctxt, payload) ctxt:hold(payload.data) end",
        ExtensionLimits {
            hold_limit: 1000,
            ..ExtensionLimits::default()
        },
    )
    .unwrap();
    let mut session = ext.new_session(context()).unwrap();
    assert_eq!(session.on_client_data(&[0; 600]).unwrap(), vec![]);
    let err = session.on_client_data(&[0; 600]).unwrap_err();
    assert!(err.message.starts_with("hold limit exceeded"), "{err}");
}

// === the API ===

#[test]
fn stream_methods_follow_string_semantics() {
    let ext = compile(
        r##"
        function client.on_data(ctxt, payload)
          local d = payload.data
          local a, b = d:split(3)
          local empty, all = d:split(0)
          local whole, none = d:split(100)
          local out = {
            d:len(), #d, d:sub(2, 4), d:sub(-3), d:sub(-100, 2), d:sub(5, 2), d:sub(7),
            d:byte(1), table.concat({d:byte(1, 3)}, ","), d:byte(-1), select("#", d:byte(100)),
            d:find("lo"), select(2, d:find("l+")), d:find(".", 1, true), d:find("o", 6),
            tostring(d:find("xyz")), d:find("(w%a+)"),
            tostring(a), tostring(b), a:len(), b:sub(1, 2), #empty, #all, #whole, #none,
            d .. "!", "<" .. a, tostring(ctxt.output),
          }
          for i, v in ipairs(out) do out[i] = tostring(v) end
          assert(getmetatable(d) == false and getmetatable(ctxt) == false)
          assert(getmetatable(ctxt.client) == false)
          ns.logger:info("stream test %s %d", "ok", #out)
          ns.logger.debug("called with a dot")
          ns.send(ctxt.client, "EOM", {data = table.concat(out, "|")})
        end
        "##,
    );
    let mut session = ext.new_session(context()).unwrap();
    let actions = session.on_client_data(b"hello.world").unwrap();
    let expected = "11|11|ell|rld|he||world|104|104,101,108|100|0|4|4|6|8|nil|7|\
                    hel|lo.world|3|lo|0|11|11|0|hello.world!|<hel|ns context: lb vserver";
    assert_eq!(actions, vec![to_client(expected.as_bytes(), true)]);
}

#[test]
fn hold_prepends_to_the_next_payload_and_unsent_data_is_consumed() {
    let ext = compile(
        r##"
        function client.on_data(ctxt, payload)
          local d = payload.data
          local nl = d:find("\n", 1, true)
          if not nl then ctxt:hold(d) return end
          local line, rest = d:split(nl)
          if line:sub(1, 1) ~= "#" then  -- comment lines are dropped
            ns.send(ctxt.output, "EOM", {data = line})
          end
          if rest:len() > 0 then ctxt:hold(rest) end
        end
        "##,
    );
    let mut session = ext.new_session(context()).unwrap();
    assert_eq!(session.on_client_data(b"ab").unwrap(), vec![]);
    assert_eq!(
        session.on_client_data(b"c\nde").unwrap(),
        vec![to_server(b"abc\n", true)]
    );
    assert_eq!(
        session.on_client_data(b"f\n").unwrap(),
        vec![to_server(b"def\n", true)]
    );
    assert_eq!(session.on_client_data(b"# note\n").unwrap(), vec![]);
    assert_eq!(
        session.on_client_data(b"g\n").unwrap(),
        vec![to_server(b"g\n", true)]
    );
}

#[test]
fn context_exposes_vserver_params_and_addresses_and_can_answer_and_close() {
    let ext = compile(
        r##"
        function client.on_data(ctxt, payload)
          local c = ctxt.client
          ns.send(ctxt.client, "EOM", {data = table.concat({
            ctxt.vserver.name, ctxt.vserver.params.region, tostring(ctxt.vserver.params.none),
            c.ip, c.port, c.vserver_ip, c.vserver_port, tostring(ctxt.output.ip),
          }, " ")})
          ns.send(ctxt.output, "DATA", {data = "tok", user_token = 42, user_session = "s1"})
          ctxt:close()
        end
        "##,
    );
    let mut session = ext.new_session(context()).unwrap();
    let actions = session.on_client_data(b"x").unwrap();
    assert_eq!(
        actions,
        vec![
            to_client(
                b"u_vserver_azureiot eu nil 127.0.0.1 50000 127.0.0.10 1883 nil",
                true
            ),
            Action::ToServer {
                data: b"tok".to_vec(),
                eom: false,
                token: Some("42".into()),
                session: Some("s1".into()),
            },
            Action::Close,
        ]
    );
    assert!(session.is_released(), "closed sessions drop their contexts");
}

#[test]
fn server_callback_answers_through_output_and_pipes_its_direction() {
    let ext = compile(
        r##"
        function server.on_data(ctxt, payload)
          ns.send(ctxt.output, "DATA", {data = "[" .. tostring(payload.data) .. "]"})
          ns.pipe(ctxt.input, ctxt.output)
        end
        "##,
    );
    assert!(!ext.has_client_on_data());
    assert!(ext.has_server_on_data());
    let mut session = ext.new_session(context()).unwrap();
    assert_eq!(
        session.on_server_data(b"hi").unwrap(),
        vec![to_client(b"[hi]", false), Action::PipeServer]
    );
    assert!(session.is_released());
}

#[test]
fn bad_contexts_and_events_raise() {
    let ext = compile(
        r##"
        function client.on_data(ctxt, payload)
          local what = payload.data:sub(1)
          if what == "stash" then saved = ctxt; saved_out = ctxt.output; return end
          if what == "hold" then saved:hold("x") end
          if what == "send" then ns.send(saved_out, "DATA", {data = "x"}) end
          if what == "event" then ns.send(ctxt.output, "MESSAGE", {data = "x"}) end
          if what == "table" then ns.send(ctxt, "DATA", {data = "x"}) end
          if what == "pipe" then ns.pipe(ctxt.output, ctxt.input) end
        end
        "##,
    );
    let mut first = ext.new_session(context()).unwrap();
    first.on_client_data(b"stash").unwrap();
    for (what, expected) in [
        ("hold", "bad context"),
        ("send", "belongs to another connection"),
        ("event", "unknown event 'MESSAGE'"),
        ("table", "bad argument"),
        ("pipe", "ns.pipe: expected"),
    ] {
        let mut session = ext.new_session(context()).unwrap();
        let err = session.on_client_data(what.as_bytes()).unwrap_err();
        assert!(err.message.contains(expected), "{what}: {err}");
    }
}

// === memory ===

#[test]
fn per_session_lua_memory_is_small_and_released() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    let n = 1000;
    ext.collect_garbage();
    let base = ext.lua_memory();
    let mut sessions: Vec<Session> = (0..n)
        .map(|_| ext.new_session(context()).unwrap())
        .collect();
    ext.collect_garbage();
    let created = ext.lua_memory();
    // One byte of a CONNECT each: every session now holds data and has its ctxt in Lua.
    for s in &mut sessions {
        assert_eq!(s.on_client_data(&[0x10]).unwrap(), vec![]);
    }
    ext.collect_garbage();
    let holding = ext.lua_memory();
    let packet = connect(4, "dev");
    let start = Instant::now();
    for s in &mut sessions {
        assert_eq!(s.on_client_data(&packet[1..]).unwrap().len(), 2);
    }
    let per_connect = start.elapsed() / n as u32;
    ext.collect_garbage();
    let piped = ext.lua_memory();
    // Sessions dropped in the middle of a callback-driven exchange release too.
    let mut mid: Vec<Session> = (0..n)
        .map(|_| ext.new_session(context()).unwrap())
        .collect();
    for s in &mut mid {
        s.on_client_data(&[0x10]).unwrap();
    }
    drop(mid);
    ext.collect_garbage();
    let dropped = ext.lua_memory();

    let per = |bytes: usize| bytes.saturating_sub(base) as f64 / n as f64;
    eprintln!(
        "lua state {base} B; per session: created {:.0} B, with ctxt {:.0} B, piped {:.0} B, \
         dropped {:.0} B; Rust Session {} B + SessionContext {} B; CONNECT callback {:?}",
        per(created),
        per(holding),
        per(piped),
        per(dropped),
        std::mem::size_of::<Session>(),
        std::mem::size_of::<SessionContext>(),
        per_connect,
    );
    assert!(per(created) < 1.0);
    assert!(per(holding) < 2048.0, "{}", per(holding));
    assert!(per(piped) < 64.0, "{}", per(piped));
    assert!(per(dropped) < 64.0, "{}", per(dropped));
}

#[test]
fn extensions_and_sessions_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Extension>();
    send::<Session>();

    let ext = Arc::new(Extension::compile("mqtt_code", MQTT_LUA).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ext = ext.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = format!("dev-{t}-{i}");
                    let packet = connect(4, &id);
                    let mut s = ext.new_session(context()).unwrap();
                    let (a, b) = packet.split_at(7);
                    assert_eq!(s.on_client_data(a).unwrap(), vec![]);
                    assert_eq!(
                        s.on_client_data(b).unwrap(),
                        vec![with_token(&packet, &id), Action::PipeClient]
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ext.counters().messages, 200);
}

#[test]
fn session_dropped_while_the_state_is_busy_is_reclaimed_later() {
    let ext = Extension::compile("mqtt_code", MQTT_LUA).unwrap();
    // Warm up the registry so its array part does not grow during the measurement.
    let mut warm = ext.new_session(context()).unwrap();
    warm.on_client_data(&[0x10]).unwrap();
    drop(warm);
    ext.collect_garbage();
    let base = ext.lua_memory();

    let mut sessions: Vec<Session> = (0..100)
        .map(|_| ext.new_session(context()).unwrap())
        .collect();
    for s in &mut sessions {
        s.on_client_data(&[0x10]).unwrap();
    }
    {
        // Another connection's callback is running: drop must not block.
        let _busy = ext.shared.lock();
        drop(sessions);
    }
    ext.collect_garbage();
    assert!(ext.lua_memory() > base + 100 * 256, "still referenced");

    // The next session's first callback expires the dropped keys.
    let mut next = ext.new_session(context()).unwrap();
    next.on_client_data(&[0x10]).unwrap();
    next.release();
    ext.collect_garbage();
    assert!(
        ext.lua_memory() < base + 100 * 64,
        "{} vs {base}",
        ext.lua_memory()
    );
}
