//! The lab with real mosquitto brokers and clients, at engine level (snapshots built in code):
//! two TLS brokers, nsemu in front on 1883 (plain -> TLS) and 8883 (TLS -> TLS) with a cert
//! signed by a lab CA. Fails when mosquitto is not installed. Addresses: 127.3.50.x.

mod common;
mod engine_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{have_mosquitto, mosquitto_broker, mosquitto_sub, wait_until, Proc, Sub};
use engine_support::*;
use nsemu::config::snapshot::*;
use nsemu::engine::{Engine, EngineOptions};

struct Lab {
    dir: tempfile::TempDir,
    ca: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nsemu lab CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        // Leaf certificates for the brokers and for nsemu, all signed by the lab CA.
        for (name, ip) in [
            ("b1", "127.3.50.11"),
            ("b2", "127.3.50.12"),
            ("vip", "127.3.50.10"),
        ] {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p =
                rcgen::CertificateParams::new(vec![ip.to_string(), "localhost".to_string()])
                    .expect("params");
            p.distinguished_name.push(rcgen::DnType::CommonName, ip);
            let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
            std::fs::write(dir.path().join(format!("{name}.cert")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                .expect("write");
        }
        Lab { dir, ca: ca_path }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn broker(&self, name: &str, ip: &str) -> Proc {
        mosquitto_broker(
            self.dir.path(),
            name,
            ip,
            &self.path(&format!("{name}.cert")),
            &self.path(&format!("{name}.key")),
        )
    }

    fn tls_args(&self, port: u16) -> Vec<String> {
        if port == 8883 {
            vec![
                "--cafile".into(),
                self.ca.display().to_string(),
                "--tls-version".into(),
                "tlsv1.2".into(),
            ]
        } else {
            Vec::new()
        }
    }

    fn sub(&self, host: &str, port: u16, id: &str) -> Sub {
        mosquitto_sub(host, port, id, "t/#", &self.tls_args(port))
    }

    fn publish(&self, host: &str, port: u16, id: &str, msg: &str) -> bool {
        Command::new("mosquitto_pub")
            .args(["-V", "mqttv311", "-h", host, "-p", &port.to_string()])
            .args(["-i", id, "-q", "1", "-t", &format!("t/{id}"), "-m", msg])
            .args(self.tls_args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

fn lab_snapshot(lab: &Lab, method: LbMethod) -> Snapshot {
    let mut plain = user_vs(
        "u_vserver_azureiot",
        "127.3.50.10",
        1883,
        Transport::Tcp,
        "lb",
    );
    plain.certkey = None;
    let mut tls = user_vs(
        "u_vserver_azureiot_ssl",
        "127.3.50.10",
        8883,
        Transport::Ssl,
        "lb",
    );
    tls.certkey = Some("lab".into());
    let mut lb = lb_vs("lb", method, &["svc1", "svc2"]);
    lb.certkey = Some("lab".into());
    let svc = |name: &str, ip_s: &str| {
        service(
            name,
            format!("{ip_s}:8883").parse().expect("addr"),
            ServiceType::UserSslTcp,
        )
    };
    snapshot(
        vec![plain, tls],
        vec![lb],
        vec![svc("svc1", "127.3.50.11"), svc("svc2", "127.3.50.12")],
        vec![CertKeySpec {
            name: "lab".into(),
            cert: lab.path("vip.cert"),
            key: Some(lab.path("vip.key")),
        }],
    )
}

fn count(subs: &[&Sub]) -> usize {
    subs.iter().map(|s| s.messages().len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_lab_through_plain_and_tls_fronts() -> TestResult {
    // scripts/test.sh installs mosquitto; a missing broker is a failed test, not a skip.
    assert!(
        have_mosquitto(),
        "mosquitto is not installed (run ./scripts/test.sh)"
    );
    let lab = Lab::new();
    let _b1 = lab.broker("b1", "127.3.50.11");
    let _b2 = lab.broker("b2", "127.3.50.12");
    let e = Engine::new(EngineOptions::default());
    e.commit(Arc::new(lab_snapshot(&lab, LbMethod::RoundRobin)))
        .await?;
    // Watch each broker directly.
    let s1 = lab.sub("127.3.50.11", 8883, "watch1");
    let s2 = lab.sub("127.3.50.12", 8883, "watch2");

    // 20 publishers, alternating fronts: each lands on exactly one broker, 10 on each.
    for i in 0..20 {
        let port = if i % 2 == 0 { 1883 } else { 8883 };
        assert!(
            lab.publish("127.3.50.10", port, &format!("dev{i}"), "Hello World!"),
            "publish {i} via {port} failed"
        );
    }
    assert!(wait_until(|| count(&[&s1, &s2]) >= 20));
    assert_eq!(s1.messages().len(), 10, "{:?}", s1.messages());
    assert_eq!(s2.messages().len(), 10);

    // A subscriber through each front receives what is published on its broker.
    let via_plain = lab.sub("127.3.50.10", 1883, "viaplain");
    let via_tls = lab.sub("127.3.50.10", 8883, "viatls");
    assert!(lab.publish("127.3.50.11", 8883, "direct1", "to b1"));
    assert!(lab.publish("127.3.50.12", 8883, "direct2", "to b2"));
    assert!(wait_until(|| count(&[&via_plain, &via_tls]) >= 2));
    // Round robin put the two subscribers on different brokers: one message each.
    assert_eq!(via_plain.messages().len(), 1);
    assert_eq!(via_tls.messages().len(), 1);

    // Live changes while both subscribers stay connected.
    let mut snap = lab_snapshot(&lab, LbMethod::RoundRobin);
    let mut extra = user_vs("u_extra", "127.3.50.10", 9883, Transport::Tcp, "lb");
    extra.clt_timeout = 0;
    snap.user_vservers.insert("u_extra".into(), extra);
    e.commit(Arc::new(snap.clone())).await?;
    assert!(lab.publish("127.3.50.10", 9883, "extra", "via the second vserver"));
    // Unbind svc2, then disable svc1, then bind another certificate, then drop u_extra.
    if let Some(lb) = snap.lb_vservers.get_mut("lb") {
        lb.members.retain(|m| m.service == "svc1");
    }
    e.commit(Arc::new(snap.clone())).await?;
    if let Some(s) = snap.services.get_mut("svc1") {
        // `disable service svc1 -graceFul YES`: a plain disable flushes established
        // connections, as NetScaler's Down State Flush does (docs/engine.md).
        s.enabled = false;
        s.drain_delay_secs = Some(0);
    }
    e.commit(Arc::new(snap.clone())).await?;
    snap.certkeys.insert(
        "lab2".into(),
        CertKeySpec {
            name: "lab2".into(),
            cert: lab.path("b1.cert"),
            key: Some(lab.path("b1.key")),
        },
    );
    if let Some(u) = snap.user_vservers.get_mut("u_vserver_azureiot_ssl") {
        u.certkey = Some("lab2".into());
    }
    e.commit(Arc::new(snap.clone())).await?;
    snap.user_vservers.remove("u_extra");
    e.commit(Arc::new(snap)).await?;
    // Both long-lived subscribers still receive.
    assert!(lab.publish("127.3.50.11", 8883, "direct3", "again b1"));
    assert!(lab.publish("127.3.50.12", 8883, "direct4", "again b2"));
    // 2 before, "extra" (on one of the brokers), and one more each now.
    assert!(wait_until(|| count(&[&via_plain, &via_tls]) >= 5));
    for sub in [&via_plain, &via_tls] {
        let m = sub.messages();
        assert!(
            m.iter()
                .any(|l| l.starts_with("t/direct3") || l.starts_with("t/direct4")),
            "{m:?}"
        );
    }

    let st = e.status();
    assert!(st.user_vservers["u_vserver_azureiot"].counters.hits >= 11);
    assert!(st.user_vservers["u_vserver_azureiot_ssl"].counters.hits >= 11);
    assert_eq!(st.lb_vservers["lb"].counters.cur_client_conns, 2);
    e.shutdown().await;
    Ok(())
}

/// Python client holding `n` MQTT-over-TLS connections (CONNECT sent, CONNACK received) until
/// its stdin closes. Prints "held N" once all are up.
const HOLDER: &str = r#"
import resource, socket, ssl, sys
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = []
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection((host, port)))
    cid = b"hold%d" % i
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = s.recv(4)
    assert ack[:1] == b"\x20", ack
    conns.append(s)
print("held", len(conns), flush=True)
sys.stdin.read()
"#;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory per held TLS connection (TLS from the client, TLS to the broker). Not a timed test:
/// run with `cargo test --release --test engine_mqtt -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn memory_per_held_tls_connection() -> TestResult {
    if !have_mosquitto() {
        return Ok(());
    }
    let n: usize = std::env::var("NSEMU_HOLD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let lab = Lab::new();
    let _b1 = lab.broker("b1", "127.3.50.11");
    let _b2 = lab.broker("b2", "127.3.50.12");
    let e = Engine::new(EngineOptions::default());
    e.commit(Arc::new(lab_snapshot(&lab, LbMethod::RoundRobin)))
        .await?;
    // Warm up allocator and TLS paths with a few connections first.
    assert!(lab.publish("127.3.50.10", 8883, "warm", "x"));
    let before = rss_kb();
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER, &n.to_string(), "127.3.50.10", "8883"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = holder.stdout.take().ok_or("stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    assert!(line.starts_with("held"), "{line}");
    let after = rss_kb();
    let held = e.status().user_vservers["u_vserver_azureiot_ssl"]
        .counters
        .cur_client_conns;
    println!(
        "held {held} TLS connections: RSS {before} kB -> {after} kB, {:.1} kB per connection",
        (after.saturating_sub(before)) as f64 / held.max(1) as f64
    );
    drop(holder.stdin.take());
    let _ = holder.wait();
    e.shutdown().await;
    Ok(())
}
