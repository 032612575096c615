//! MQTT ClientID balancing, persistence across restarts and protocol extensions, through the
//! real `nsemu` binary configured with the lab's commands, with real mosquitto brokers (TLS on
//! 127.6.N.11:8883 and 127.6.N.12:8883, self-signed by a test CA) and real clients (mosquitto
//! clients and a small MQTT 3.1.1 client written here). Each test has its own 127.6.N network.
//! Fails when mosquitto is not installed (./scripts/test.sh installs it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lab_dir, lab_script, mosquitto_broker, mosquitto_sub, Appliance, Proc, Sub};

/// Two TLS brokers on `net`.11 and `net`.12, a config directory with the lab's files (a VIP
/// certificate signed by the test CA) and the appliance once started.
struct Lab {
    net: String,
    dir: tempfile::TempDir,
    ca: PathBuf,
    _brokers: Vec<Proc>,
    /// One subscriber on `#` directly on each broker.
    watch: Vec<Sub>,
    app: Option<Appliance>,
}

impl Lab {
    /// Starts the brokers and their watchers, then the appliance with the lab script followed by
    /// `extra` (commands, one per line) and `save config`. `files` are written to the
    /// extensions directory first.
    fn start(net: &str, files: &[(&str, &str)], extra: &str) -> Lab {
        assert!(
            Command::new("mosquitto")
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "mosquitto is not installed (run ./scripts/test.sh)"
        );
        let dir = lab_dir();
        for (name, code) in files {
            std::fs::write(dir.path().join("extensions").join(name), code).expect("write lua");
        }
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nsemu test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).expect("write ca");
        let leaf = |ip: &str, cert: &Path, key: &Path| {
            let k = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(vec![ip.to_string()]).expect("params");
            p.distinguished_name.push(rcgen::DnType::CommonName, ip);
            let c = p.signed_by(&k, &ca_cert, &ca_key).expect("sign");
            std::fs::write(cert, c.pem()).expect("write cert");
            std::fs::write(key, k.serialize_pem()).expect("write key");
        };
        // The appliance's certkey `lab` (files ssl/lab.crt, ssl/lab.key) for the VIP.
        leaf(
            &format!("{net}.10"),
            &dir.path().join("ssl/lab.crt"),
            &dir.path().join("ssl/lab.key"),
        );
        let mut brokers = Vec::new();
        for n in [11, 12] {
            let ip = format!("{net}.{n}");
            let cert = dir.path().join(format!("b{n}.crt"));
            let key = dir.path().join(format!("b{n}.key"));
            leaf(&ip, &cert, &key);
            brokers.push(mosquitto_broker(
                dir.path(),
                &format!("b{n}"),
                &ip,
                &cert,
                &key,
            ));
        }
        let mut lab = Lab {
            net: net.to_string(),
            dir,
            ca,
            _brokers: brokers,
            watch: Vec::new(),
            app: None,
        };
        lab.watch = vec![
            lab.sub(&format!("{net}.11"), 8883, "watch11", "#"),
            lab.sub(&format!("{net}.12"), 8883, "watch12", "#"),
        ];
        let app = Appliance::start(lab.dir.path());
        let (out, ok) = app.cli(&format!("{}{extra}\nsave config\n", lab_script(net)));
        assert!(ok, "lab configuration failed:\n{out}");
        lab.app = Some(app);
        lab
    }

    fn app(&self) -> &Appliance {
        self.app.as_ref().expect("appliance running")
    }

    /// Runs one command; panics unless it succeeds.
    fn run(&self, cmd: &str) -> String {
        let (out, ok) = self.app().run(cmd);
        assert!(ok, "{cmd}:\n{out}");
        out
    }

    fn vip(&self, port: u16) -> SocketAddr {
        format!("{}.10:{port}", self.net).parse().expect("addr")
    }

    /// mosquitto_sub (MQTT 3.1.1) on host:port, TLS for 8883, waiting for its SUBACK.
    fn sub(&self, host: &str, port: u16, id: &str, topic: &str) -> Sub {
        let tls = if port == 8883 {
            vec!["--cafile".to_string(), self.ca.display().to_string()]
        } else {
            Vec::new()
        };
        mosquitto_sub(host, port, id, topic, &tls)
    }

    /// mosquitto_pub directly to a broker.
    fn publish_direct(&self, broker: usize, topic: &str, msg: &str) {
        let ok = Command::new("mosquitto_pub")
            .args([
                "-V",
                "mqttv311",
                "-h",
                &format!("{}.{}", self.net, 11 + broker),
            ])
            .args(["-p", "8883", "-q", "1", "-t", topic, "-m", msg])
            .arg("--cafile")
            .arg(&self.ca)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "direct publish to broker {broker} failed");
    }

    /// Which broker (0 or 1) received `topic`, waiting for it; panics if both or none did.
    fn broker_of(&self, topic: &str) -> usize {
        assert!(
            wait_until(|| self.watch.iter().any(|w| w.has_topic(topic))),
            "no broker received {topic}"
        );
        let on: Vec<usize> = (0..2).filter(|&i| self.watch[i].has_topic(topic)).collect();
        assert_eq!(on.len(), 1, "{topic} reached {on:?}");
        on[0]
    }

    /// `stat service` hits of the two lab services.
    fn hits(&self) -> [u64; 2] {
        let out = self.run("stat service");
        let mut h = [0; 2];
        for (i, name) in ["lb_service_azureiot1", "lb_service_azureiot2"]
            .iter()
            .enumerate()
        {
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{name} not in:\n{out}"));
            let cols: Vec<&str> = line.split_whitespace().collect();
            h[i] = cols[cols.len() - 3].parse().expect("hits");
        }
        h
    }

    /// The figure on the `stat user vserver NAME` line starting with `row`.
    fn user_stat(&self, vserver: &str, row: &str) -> u64 {
        let out = self.run(&format!("stat user vserver {vserver}"));
        out.lines()
            .find(|l| l.starts_with(row))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no '{row}' in:\n{out}"))
    }

    fn write_extension(&self, file: &str, code: &str) {
        std::fs::write(self.dir.path().join("extensions").join(file), code).expect("write lua");
    }
}

/// Polls until `f` holds or 10 s pass.
fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// === a small MQTT 3.1.1 client ===

fn mqtt_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        v.push(b);
        if n == 0 {
            break;
        }
    }
    v.extend_from_slice(body);
    v
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([4, 0x02, 0, 60]); // level 4, clean session, keep-alive 60 s
    body.extend(mqtt_string(client_id));
    packet(0x10, &body)
}

/// PUBLISH QoS 1 with packet id 1.
fn publish_packet(topic: &str, msg: &str, id: u16) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend(id.to_be_bytes());
    body.extend_from_slice(msg.as_bytes());
    packet(0x32, &body)
}

fn read_exact(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0; n];
    s.read_exact(&mut b)?;
    Ok(b)
}

/// Connects with `client_id` and waits for a successful CONNACK.
fn mqtt_connect(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&connect_packet(client_id)).expect("CONNECT");
    let ack = read_exact(&mut s, 4).expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK for {client_id}");
    s
}

/// Publishes (QoS 1, PUBACK awaited) on `stream`.
fn mqtt_publish(s: &mut TcpStream, topic: &str, msg: &str, id: u16) {
    s.write_all(&publish_packet(topic, msg, id))
        .expect("PUBLISH");
    let ack = read_exact(s, 4).expect("PUBACK");
    assert_eq!(ack, [0x40, 2, (id >> 8) as u8, id as u8], "PUBACK");
}

/// One device session: CONNECT as `client_id`, PUBLISH `topic`, DISCONNECT.
fn device_publish(addr: SocketAddr, client_id: &str, topic: &str) {
    let mut s = mqtt_connect(addr, client_id);
    mqtt_publish(&mut s, topic, "hello", 1);
    let _ = s.write_all(&[0xE0, 0]);
}

/// True when the peer closed or reset the connection (read gives 0 or an error other than a
/// timeout).
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

const USER_TOKEN: &str = "set lb vserver lb_vserver_azureiot -lbMethod USER_TOKEN";

// === tests ===

#[test]
fn user_token_keeps_each_client_id_on_its_broker() {
    let lab = Lab::start("127.6.1", &[], USER_TOKEN);
    let plain = lab.vip(1883);

    // 20 sequential connections with one ClientID: all on one broker.
    let before = lab.hits();
    for i in 0..20 {
        device_publish(plain, "device-same", &format!("same/{i}"));
    }
    let after = lab.hits();
    let delta = [after[0] - before[0], after[1] - before[1]];
    assert!(
        delta == [20, 0] || delta == [0, 20],
        "hits moved by {delta:?}"
    );
    let same = lab.broker_of("same/0");
    for i in 1..20 {
        assert_eq!(lab.broker_of(&format!("same/{i}")), same);
    }

    // 200 ClientIDs spread over both brokers.
    let ids: Vec<String> = (0..200).map(|i| format!("dev-{i}")).collect();
    for id in &ids {
        device_publish(plain, id, &format!("r1/{id}"));
    }
    let first: Vec<usize> = ids
        .iter()
        .map(|id| lab.broker_of(&format!("r1/{id}")))
        .collect();
    let on0 = first.iter().filter(|&&b| b == 0).count();
    assert!((60..=140).contains(&on0), "{on0} of 200 on broker 1");

    // Broker 1's service leaves the pool and comes back: the ClientIDs go home.
    lab.run("disable service lb_service_azureiot1");
    for id in ids.iter().take(20) {
        device_publish(plain, id, &format!("off/{id}"));
        assert_eq!(
            lab.broker_of(&format!("off/{id}")),
            1,
            "{id} while disabled"
        );
    }
    lab.run("enable service lb_service_azureiot1");
    for id in &ids {
        device_publish(plain, id, &format!("r2/{id}"));
    }
    let kept = ids
        .iter()
        .zip(&first)
        .filter(|(id, &b)| lab.broker_of(&format!("r2/{id}")) == b)
        .count();
    assert!(
        kept >= 180,
        "only {kept} of 200 ClientIDs kept their broker"
    );

    // The extension's work is visible per user vserver.
    let out = lab.run("show user vserver u_vserver_azureiot");
    assert!(
        out.contains("Extension messages: ") && out.contains("Extension errors: 0"),
        "{out}"
    );
    assert!(lab.user_stat("u_vserver_azureiot", "Extension messages") >= 440);
    assert!(lab.user_stat("u_vserver_azureiot", "Extension bytes") >= 440 * 14);
    assert_eq!(lab.user_stat("u_vserver_azureiot", "Extension errors"), 0);
}

#[test]
fn a_device_keeps_its_broker_across_the_tls_and_plain_fronts() {
    let lab = Lab::start("127.6.2", &[], USER_TOKEN);
    let net = lab.net.clone();
    for n in 0..3 {
        let id = format!("MosquittoDevice{n}");
        // Subscribe through 8883 (TLS offload), find which broker holds the subscription.
        let sub = lab.sub(&format!("{net}.10"), 8883, &id, &format!("devices/{id}/#"));
        lab.publish_direct(0, &format!("devices/{id}/probe"), "b0");
        lab.publish_direct(1, &format!("devices/{id}/probe"), "b1");
        assert!(wait_until(|| !sub.messages().is_empty()));
        std::thread::sleep(Duration::from_millis(300));
        let got = sub.messages();
        assert_eq!(got.len(), 1, "{got:?}");
        let sub_broker = usize::from(got[0].ends_with("b1"));
        drop(sub);
        // Then publish as the same device through 1883 (plain MQTT translated to TLS).
        device_publish(lab.vip(1883), &id, &format!("up/{id}"));
        assert_eq!(lab.broker_of(&format!("up/{id}")), sub_broker, "{id}");
    }
}

#[test]
fn framing_and_lua_failures_reset_only_their_connection() {
    let lab = Lab::start(
        "127.6.3",
        &[
            (
                "loop.lua",
                "function client.on_data(ctxt, payload)\n  while true do end\nend\n",
            ),
            (
                "raise.lua",
                "function client.on_data(ctxt, payload)\n  error('no thanks')\nend\n",
            ),
        ],
        &format!(
            "{USER_TOKEN}
import ns extension local:loop.lua loop_code
add user protocol LOOPY -transport TCP -extension loop_code
add user vs u_loop LOOPY 127.6.3.10 2883 -defaultlb lb_vserver_azureiot
import ns extension local:raise.lua raise_code
add user protocol RAISER -transport TCP -extension raise_code
add user vs u_raise RAISER 127.6.3.10 3883 -defaultlb lb_vserver_azureiot"
        ),
    );
    let plain = lab.vip(1883);

    // A CONNECT written one byte at a time (one TCP segment each) is framed and answered.
    let mut s = TcpStream::connect(plain).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for b in connect_packet("tiny-segments-device") {
        s.write_all(&[b]).expect("write");
        s.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_exact(&mut s, 4).expect("CONNACK"), [0x20, 2, 0, 0]);
    mqtt_publish(&mut s, "tiny/1", "ok", 7);
    lab.broker_of("tiny/1");
    drop(s);

    // A first packet that is not MQTT is refused and counted.
    let errors = lab.user_stat("u_vserver_azureiot", "Extension errors");
    let mut s = TcpStream::connect(plain).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(closed_by_peer(&mut s), "non-MQTT first packet not refused");
    assert_eq!(
        lab.user_stat("u_vserver_azureiot", "Extension errors"),
        errors + 1
    );

    // A script that loops forever, and one that raises, reset their own connection while
    // another client is served.
    for (port, vserver) in [(2883, "u_loop"), (3883, "u_raise")] {
        let mut bad = TcpStream::connect(lab.vip(port)).expect("connect");
        let mut good = TcpStream::connect(plain).expect("connect");
        good.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        bad.write_all(&connect_packet("victim")).expect("write");
        good.write_all(&connect_packet(&format!("bystander-{port}")))
            .expect("write");
        assert_eq!(read_exact(&mut good, 4).expect("CONNACK"), [0x20, 2, 0, 0]);
        assert!(closed_by_peer(&mut bad), "{vserver} kept its connection");
        mqtt_publish(&mut good, &format!("bystander/{port}"), "still here", 1);
        lab.broker_of(&format!("bystander/{port}"));
        assert_eq!(lab.user_stat(vserver, "Extension errors"), 1, "{vserver}");
    }
    // The failures left the appliance serving.
    device_publish(plain, "after-failures", "after/1");
    lab.broker_of("after/1");
}

#[test]
fn extension_import_is_checked_and_update_reloads() {
    let lab = Lab::start("127.6.4", &[], USER_TOKEN);
    let mqtt = std::fs::read_to_string(lab.dir.path().join("extensions/mqtt.lua")).expect("read");

    // A syntax error is refused at import with the Lua error and its line; nothing changes.
    lab.write_extension(
        "broken.lua",
        "function client.on_data(ctxt, payload)\n  local x = = 1\nend\n",
    );
    let before = lab.app().running_config();
    let (out, ok) = lab
        .app()
        .run("import ns extension local:broken.lua broken_code");
    assert!(!ok);
    assert!(
        out.starts_with("ERROR: Extension compilation error. [broken_code, broken_code:2:"),
        "{out}"
    );
    assert_eq!(lab.app().running_config(), before);
    let (out, ok) = lab.app().run("show ns extension broken_code");
    assert!(!ok && out.contains("No such resource"), "{out}");

    // A second MQTT front with its own copy of the code.
    lab.write_extension("mqtt2.lua", &mqtt);
    let (out, ok) = lab.app().cli(
        "import ns extension local:mqtt2.lua mqtt2
add user protocol MQTT2 -transport TCP -extension mqtt2
add user vs u_mqtt2 MQTT2 127.6.4.10 2883 -defaultlb lb_vserver_azureiot
",
    );
    assert!(ok, "{out}");
    let second = lab.vip(2883);
    device_publish(second, "v1-device", "v1/1");
    lab.broker_of("v1/1");

    // -overwrite with a syntax error is refused too; the running code is untouched.
    lab.write_extension("mqtt2.lua", "client = {\n");
    let (out, ok) = lab
        .app()
        .run("import ns extension local:mqtt2.lua mqtt2 -overwrite");
    assert!(
        !ok && out.contains("Extension compilation error. [mqtt2, mqtt2:"),
        "{out}"
    );

    // -overwrite with valid code (that refuses every device) is stored, but the running code
    // changes only at `update`, which is refused while a user vserver uses it.
    lab.write_extension(
        "mqtt2.lua",
        "function client.on_data(ctxt, payload)\n  error('version 2 refuses everyone')\nend\n",
    );
    lab.run("import ns extension local:mqtt2.lua mqtt2 -overwrite");
    device_publish(second, "v1-device", "v1/2");
    lab.broker_of("v1/2");
    let (out, ok) = lab.app().run("update ns extension mqtt2");
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "ERROR: Cant update the extension as the user protocol using this extension is in use"
        ),
        "{out}"
    );
    let (out, ok) = lab.app().cli(
        "rm user vs u_mqtt2
update ns extension mqtt2
add user vs u_mqtt2 MQTT2 127.6.4.10 2883 -defaultlb lb_vserver_azureiot
",
    );
    assert!(ok, "{out}");
    let mut s = TcpStream::connect(second).expect("connect");
    s.write_all(&connect_packet("v2-device")).expect("write");
    assert!(closed_by_peer(&mut s), "version 2 did not run");
    assert_eq!(lab.user_stat("u_mqtt2", "Extension errors"), 1);
    // The lab's own fronts still run mqtt.lua.
    device_publish(lab.vip(1883), "lab-device", "lab/1");
    lab.broker_of("lab/1");
}

#[test]
fn message_based_mode_balances_every_publish() {
    let lab = Lab::start(
        "127.6.5",
        &[("mqtt_mblb.lua", MQTT_MBLB)],
        "import ns extension local:mqtt_mblb.lua mblb_code
add user protocol MQTT_MB -transport TCP -extension mblb_code
add lb vs lb_rr USER_SSL_TCP -lbMethod ROUNDROBIN
bind lb vs lb_rr lb_service_azureiot1
bind lb vs lb_rr lb_service_azureiot2
add user vs u_mb MQTT_MB 127.6.5.10 2883 -defaultlb lb_rr",
    );
    // One device connection, consecutive PUBLISH packets: they alternate brokers.
    let mut s = mqtt_connect(lab.vip(2883), "mb-device");
    for i in 0..6u16 {
        mqtt_publish(&mut s, &format!("mb/{i}"), "one message", i + 1);
        // Let the broker take the message before the next decision closes its connection.
        std::thread::sleep(Duration::from_millis(50));
    }
    s.write_all(&[0xC0, 0]).expect("PINGREQ");
    assert_eq!(read_exact(&mut s, 2).expect("PINGRESP"), [0xD0, 0]);
    let brokers: Vec<usize> = (0..6).map(|i| lab.broker_of(&format!("mb/{i}"))).collect();
    for w in brokers.windows(2) {
        assert_ne!(
            w[0], w[1],
            "consecutive messages on one broker: {brokers:?}"
        );
    }
    assert_eq!(
        lab.user_stat("u_mb", "Extension messages"),
        1 + 6 * 2 + 1,
        "CONNACK, six PUBLISH and their PUBACK, PINGRESP"
    );
    let _ = s.write_all(&[0xE0, 0]);
}

#[test]
fn usersession_persistence_survives_an_appliance_restart() {
    let mut lab = Lab::start(
        "127.6.6",
        &[],
        &format!("{USER_TOKEN} -persistenceType USERSESSION -timeout 5"),
    );
    let plain = lab.vip(1883);
    let ids: Vec<String> = (0..8).map(|i| format!("sticky-{i}")).collect();
    for id in &ids {
        device_publish(plain, id, &format!("before/{id}"));
    }
    let home: Vec<usize> = ids
        .iter()
        .map(|id| lab.broker_of(&format!("before/{id}")))
        .collect();
    let out = lab.run("show lb persistentSessions lb_vserver_azureiot");
    for (id, b) in ids.iter().zip(&home) {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{out}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[2], format!("lb_service_azureiot{}", b + 1));
        let left: u64 = cols[3].parse().expect("timeout");
        assert!((290..=300).contains(&left), "{line}");
    }

    // Stop the appliance (SIGTERM): the sessions are in the file beside ns.conf.
    lab.app.take().expect("running").stop();
    let file = lab.dir.path().join("nsemu.persistence.json");
    let text = std::fs::read_to_string(&file).expect("persistence file");
    let mut saved: serde_json::Value = serde_json::from_str(&text).expect("json");
    let sessions = saved["sessions"].as_array_mut().expect("sessions");
    assert_eq!(sessions.len(), ids.len(), "{text}");
    // Edit the file while the appliance is down: move sticky-0 to the other service (only the
    // file can send it there), add an expired session and one of an lb vserver that is gone.
    let moved = 1 - home[0];
    for s in sessions.iter_mut() {
        if s["key"] == "sticky-0" {
            s["service"] = format!("lb_service_azureiot{}", moved + 1).into();
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    sessions.push(
        serde_json::json!({"vserver": "lb_vserver_azureiot", "key": "expired",
        "service": "lb_service_azureiot1", "expires_unix": now - 1}),
    );
    sessions.push(serde_json::json!({"vserver": "lb_gone", "key": "orphan",
        "service": "lb_service_azureiot1", "expires_unix": now + 300}));
    std::fs::write(&file, serde_json::to_string(&saved).expect("json")).expect("write");

    // Start again on the same directory: the devices keep their brokers.
    lab.app = Some(Appliance::start(lab.dir.path()));
    let out = lab.run("show lb persistentSessions");
    assert!(out.contains("sticky-3"), "{out}");
    assert!(!out.contains("expired") && !out.contains("orphan"), "{out}");
    for (i, id) in ids.iter().enumerate() {
        device_publish(plain, id, &format!("after/{id}"));
        let want = if i == 0 { moved } else { home[i] };
        assert_eq!(lab.broker_of(&format!("after/{id}")), want, "{id}");
    }
    let out = lab.run("show lb persistentSessions lb_vserver_azureiot");
    assert!(out.contains("sticky-0"), "{out}");
}

const MQTT_MBLB: &str = include_str!("../examples/extensions/mqtt_mblb.lua");
