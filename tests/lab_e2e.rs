//! The lab end to end through the real binary: two mosquitto brokers with TLS, `nsemu` started
//! empty and configured by piping the lab's commands into `nsemu cli`, then real mosquitto and
//! openssl clients. Addresses: VIP 127.5.1.10 (1883, 8883), gateways 127.5.1.11/.12:8883.
//! Fails when mosquitto is not installed (scripts/test.sh installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const NET: &str = "127.5.1";
const VIP: &str = "127.5.1.10";

/// A CA and the paths of what it signed.
struct Pki {
    ca_key: rcgen::KeyPair,
    ca: rcgen::Certificate,
    ca_path: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "nsemu e2e lab CA");
        let ca = p.self_signed(&ca_key).expect("ca");
        let ca_path = dir.join("lab-ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        Pki {
            ca_key,
            ca,
            ca_path,
        }
    }

    /// Writes a leaf certificate for the VIP with common name `cn`, signed by the CA.
    fn leaf(&self, cn: &str, cert: &Path, key: &Path) {
        let k = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![VIP.to_string()]).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let c = p.signed_by(&k, &self.ca, &self.ca_key).expect("sign");
        std::fs::write(cert, c.pem()).expect("write cert");
        std::fs::write(key, k.serialize_pem()).expect("write key");
    }
}

/// A self-signed gateway certificate (the lab's gateways are not verified by the appliance).
fn gateway_cert(dir: &Path, name: &str, ip: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()]).expect("rcgen");
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, ck.cert.pem()).expect("write");
    std::fs::write(&k, ck.key_pair.serialize_pem()).expect("write");
    (c, k)
}

/// mosquitto client TLS options toward the VIP (8883: trust the lab CA, nothing else).
fn vip_tls(port: u16, ca: &Path) -> Vec<String> {
    if port == 8883 {
        vec!["--cafile".into(), ca.display().to_string()]
    } else {
        Vec::new()
    }
}

/// mosquitto client TLS options toward a gateway (its own self-signed certificate).
fn gateway_tls(cert: &Path) -> Vec<String> {
    vec![
        "--cafile".into(),
        cert.display().to_string(),
        "--insecure".into(),
    ]
}

fn publish(host: &str, port: u16, id: &str, msg: &str, tls: &[String]) -> bool {
    Command::new("mosquitto_pub")
        .args(["-V", "mqttv311", "-h", host, "-p", &port.to_string()])
        .args(["-i", id, "-q", "1", "-m", msg])
        .args(["-t", &format!("devices/{id}/messages/events/readpipe/")])
        .args(tls)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `openssl s_client` against the VIP's TLS port with extra options: (handshake ok, output).
fn s_client(extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("{VIP}:8883")])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("BEGIN CERTIFICATE"),
        text,
    )
}

/// The subject line s_client printed for the served certificate.
fn served_subject(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

fn count(subs: &[&Sub], needle: &str) -> usize {
    subs.iter()
        .map(|s| s.messages().iter().filter(|m| m.ends_with(needle)).count())
        .sum()
}

fn assert_done(out: &str, ok: bool) {
    let (_, errors) = tally(out);
    assert!(ok && errors == 0, "{out}");
}

#[test]
fn the_lab_end_to_end_through_the_cli_with_real_brokers_and_clients() {
    assert!(
        have_mosquitto(),
        "mosquitto is not installed (run ./scripts/test.sh)"
    );
    let dir = lab_dir();
    let d = dir.path();
    let pki = Pki::new(d);
    pki.leaf(
        "lab-vip-one",
        &d.join("ssl/lab.crt"),
        &d.join("ssl/lab.key"),
    );
    let (c1, k1) = gateway_cert(d, "edge1", &format!("{NET}.11"));
    let (c2, k2) = gateway_cert(d, "edge2", &format!("{NET}.12"));
    let _b1 = mosquitto_broker(d, "edge1", &format!("{NET}.11"), &c1, &k1);
    let _b2 = mosquitto_broker(d, "edge2", &format!("{NET}.12"), &c2, &k2);

    let app = Appliance::start(d);
    let (out, ok) = app.cli(&lab_script(NET));
    assert_done(&out, ok);
    assert!(wait_accepting(&format!("{VIP}:1883")));
    assert!(wait_accepting(&format!("{VIP}:8883")));
    let ca = pki.ca_path.clone();

    // Each gateway watched directly.
    let w1 = mosquitto_sub(
        &format!("{NET}.11"),
        8883,
        "watch1",
        "devices/#",
        &gateway_tls(&c1),
    );
    let w2 = mosquitto_sub(
        &format!("{NET}.12"),
        8883,
        "watch2",
        "devices/#",
        &gateway_tls(&c2),
    );

    // Plain -> TLS and TLS -> TLS: each message reaches exactly one gateway.
    assert!(publish(VIP, 1883, "MosquittoDevice", "via-1883", &[]));
    assert!(publish(
        VIP,
        8883,
        "MosquittoDevice",
        "via-8883",
        &vip_tls(8883, &ca)
    ));
    assert!(wait_until(
        || count(&[&w1, &w2], "via-1883") >= 1 && count(&[&w1, &w2], "via-8883") >= 1
    ));
    // Later messages prove the earlier ones had their chance to show up twice.
    assert!(publish(VIP, 1883, "Marker", "marker", &[]));
    assert!(wait_until(|| count(&[&w1, &w2], "marker") >= 1));
    assert_eq!(count(&[&w1, &w2], "via-1883"), 1);
    assert_eq!(count(&[&w1, &w2], "via-8883"), 1);

    // 20 connections under ROUNDROBIN: 10 on each gateway.
    let (out, ok) = app.run("set lb vserver lb_vserver_azureiot -lbMethod ROUNDROBIN");
    assert_done(&out, ok);
    let (b1, b2) = (w1.messages().len(), w2.messages().len());
    for i in 0..20 {
        let port = if i % 2 == 0 { 1883 } else { 8883 };
        let id = format!("dev{i}");
        assert!(
            publish(VIP, port, &id, "rr", &vip_tls(port, &ca)),
            "publish {i} via {port}"
        );
    }
    assert!(wait_until(
        || w1.messages().len() + w2.messages().len() >= b1 + b2 + 20
    ));
    assert_eq!(w1.messages().len() - b1, 10, "{:?}", w1.messages());
    assert_eq!(w2.messages().len() - b2, 10, "{:?}", w2.messages());

    // Subscribers through both ports receive what is published on their gateway.
    let via_plain = mosquitto_sub(VIP, 1883, "viaplain", "devices/#", &[]);
    let via_tls = mosquitto_sub(VIP, 8883, "viatls", "devices/#", &vip_tls(8883, &ca));
    assert!(publish(
        &format!("{NET}.11"),
        8883,
        "direct1",
        "d1",
        &gateway_tls(&c1)
    ));
    assert!(publish(
        &format!("{NET}.12"),
        8883,
        "direct2",
        "d2",
        &gateway_tls(&c2)
    ));
    assert!(wait_until(|| count(&[&via_plain, &via_tls], "d1")
        + count(&[&via_plain, &via_tls], "d2")
        >= 2));
    assert_eq!(via_plain.messages().len(), 1, "{:?}", via_plain.messages());
    assert_eq!(via_tls.messages().len(), 1, "{:?}", via_tls.messages());

    // The served certificate is the bound one.
    let (ok, text) = s_client(&["-CAfile", &ca.display().to_string()]);
    assert!(ok, "{text}");
    assert!(served_subject(&text).contains("lab-vip-one"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    // TLS 1.2 disabled: a client limited to TLS 1.2 fails, TLS 1.3 still works.
    let (out, ok) = app.run("set ssl vserver u_vserver_azureiot_ssl -tls12 DISABLED");
    assert_done(&out, ok);
    let (ok12, text) = s_client(&["-tls1_2"]);
    assert!(!ok12, "TLS 1.2 handshake succeeded: {text}");
    let (ok13, text) = s_client(&["-tls1_3"]);
    assert!(ok13, "{text}");
    let (out, ok) = app.run("set ssl vserver u_vserver_azureiot_ssl -tls12 ENABLED");
    assert_done(&out, ok);
    assert!(s_client(&["-tls1_2"]).0);

    // A new certificate for new handshakes; the established subscriber keeps receiving.
    pki.leaf(
        "lab-vip-two",
        &d.join("ssl/new.crt"),
        &d.join("ssl/new.key"),
    );
    let (out, ok) = app.run("update ssl certKey lab -cert new.crt -key new.key");
    assert_done(&out, ok);
    let (ok, text) = s_client(&["-CAfile", &ca.display().to_string()]);
    assert!(ok, "{text}");
    assert!(served_subject(&text).contains("lab-vip-two"), "{text}");
    assert!(publish(
        &format!("{NET}.11"),
        8883,
        "direct3",
        "d3",
        &gateway_tls(&c1)
    ));
    assert!(publish(
        &format!("{NET}.12"),
        8883,
        "direct4",
        "d4",
        &gateway_tls(&c2)
    ));
    assert!(
        wait_until(|| via_tls.messages().len() >= 2),
        "{:?}",
        via_tls.messages()
    );
    assert!(wait_until(|| via_plain.messages().len() >= 2));
    // And a new TLS client trusting the lab CA still gets through.
    assert!(publish(VIP, 8883, "after-update", "x", &vip_tls(8883, &ca)));

    // A failed change (the port is taken by another process) leaves everything as it was.
    let squatter = std::net::TcpListener::bind(format!("{VIP}:9883")).expect("bind 9883");
    let before = app.running_config();
    let (out, ok) = app.run(&format!(
        "add user vs x MQTT {VIP} 9883 -defaultlb lb_vserver_azureiot"
    ));
    assert!(!ok && out.contains("ERROR"), "{out}");
    assert_eq!(app.running_config(), before);
    let (out, ok) = app.run("show user vserver x");
    assert!(!ok, "{out}");
    assert!(publish(VIP, 1883, "after-fail", "y", &[]));
    assert!(publish(
        VIP,
        8883,
        "after-fail-tls",
        "z",
        &vip_tls(8883, &ca)
    ));
    assert!(wait_until(|| count(&[&w1, &w2], " y")
        + count(&[&w1, &w2], " z")
        >= 2));
    drop(squatter);

    drop((via_plain, via_tls, w1, w2));
    app.stop();
}
