//! Health monitors, failover and draining end to end (issue #4): the real `nsemu` binary driven
//! through `nsemu cli`, real mosquitto brokers with TLS, and raw TCP backends. Addresses
//! 127.4.N.x, one N per test.

mod common;
mod engine_support;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{lab_dir, lab_script, mosquitto_broker_with, Appliance, Proc};
use engine_support::{connect, echo_tcp, expect_closed, roundtrip, server_name, tls_client};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A mosquitto broker with a TLS listener on `ip:8883` (a self-signed certificate made on the
/// first start, kept for restarts).
fn broker(dir: &Path, name: &str, ip: &str, anonymous: bool) -> Proc {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if !cert.exists() {
        let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()]).expect("rcgen");
        std::fs::write(&cert, ck.cert.pem()).expect("cert");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
    }
    mosquitto_broker_with(dir, name, ip, &cert, &key, anonymous)
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `show service NAME` output.
fn show_service(app: &Appliance, name: &str) -> String {
    app.run(&format!("show service {name}")).0
}

fn script_ok(app: &Appliance, script: &str) {
    let (out, ok) = app.cli(script);
    assert!(ok, "{out}");
}

/// One MQTT 3.1.1 session through the appliance: CONNECT, CONNACK 0, DISCONNECT.
async fn mqtt_session(addr: &str, tls: bool, id: &str) -> Result<(), String> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if tls {
        let c = tls_client(None, &[&rustls::version::TLS13, &rustls::version::TLS12]);
        let s = c
            .connect(server_name("lab.nsemu.test"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        converse(s, id).await
    } else {
        converse(tcp, id).await
    }
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, id: &str) -> Result<(), String> {
    let mut body = b"\x00\x04MQTT\x04\x02\x00\x3c".to_vec();
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    s.write_all(&pkt).await.map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut ack))
        .await
        .map_err(|_| "no CONNACK".to_string())?
        .map_err(|e| e.to_string())?;
    if ack != [0x20, 0x02, 0x00, 0x00] {
        return Err(format!("bad CONNACK {ack:?}"));
    }
    let _ = s.write_all(&[0xE0, 0x00]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_fails_over_and_comes_back() -> TestResult {
    let dir = lab_dir();
    let (b1_ip, b2_ip) = ("127.4.1.11", "127.4.1.12");
    let b1 = broker(dir.path(), "b1", b1_ip, true);
    let _b2 = broker(dir.path(), "b2", b2_ip, true);
    let mut app = Appliance::start(dir.path());
    // interval 1 s, 2 retries, 500 ms response timeout: DOWN within 2.5 s of the kill.
    script_ok(
        &app,
        &format!(
            "{}add lb monitor mq MQTT -secure YES -interval 1 -resptimeout 500 MSEC -retries 2 -downTime 1\n\
             bind service lb_service_azureiot1 -monitorName mq\n\
             bind service lb_service_azureiot2 -monitorName mq\n",
            lab_script("127.4.1")
        ),
    );
    for s in ["lb_service_azureiot1", "lb_service_azureiot2"] {
        assert!(
            wait_for(Duration::from_secs(5), || show_service(&app, s)
                .contains("Last response: Success - CONNACK return code 0")),
            "{}",
            show_service(&app, s)
        );
    }

    // 50 clients reconnecting in a loop, half through 1883, half through 8883.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let mut clients = Vec::new();
    for i in 0..50 {
        let (stop, log) = (stop.clone(), log.clone());
        clients.push(tokio::spawn(async move {
            let (addr, tls) = if i % 2 == 0 {
                ("127.4.1.10:1883", false)
            } else {
                ("127.4.1.10:8883", true)
            };
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let ok = mqtt_session(addr, tls, &format!("dev{i}-{n}"))
                    .await
                    .is_ok();
                log.lock().expect("log").push((start, ok));
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    drop(b1); // SIGKILL by PID
    app.wait_log("service lb_service_azureiot1 DOWN", Duration::from_secs(10));
    let down_after = killed.elapsed();
    // interval x retries + resptimeout, + slack for a loaded machine.
    let bound = Duration::from_millis(1000 * 2 + 500 + 500);
    tokio::time::sleep_until((killed + bound + Duration::from_secs(2)).into()).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    assert!(down_after <= bound, "DOWN after {down_after:?}");
    let log = log.lock().expect("log").clone();
    let failed: Vec<_> = log.iter().filter(|(_, ok)| !ok).collect();
    let late_failures = failed.iter().filter(|(t, _)| *t > killed + bound).count();
    eprintln!(
        "{} sessions, {} failed, DOWN {:?} after the kill",
        log.len(),
        failed.len(),
        down_after
    );
    assert_eq!(late_failures, 0, "sessions failed after the monitor period");
    assert!(failed.len() <= 50, "failures bounded: {}", failed.len());
    assert!(
        log.iter()
            .filter(|(t, ok)| *ok && *t > killed + bound)
            .count()
            > 20
    );
    let svc1 = show_service(&app, "lb_service_azureiot1");
    assert!(svc1.contains("State: DOWN"), "{svc1}");
    assert!(svc1.contains("Failure - TCP connection refused."), "{svc1}");
    let lb = app.run("show lb vserver lb_vserver_azureiot").0;
    assert!(lb.contains("Vserver Health: 50%"), "{lb}");

    // Back: UP within downTime + a probe, and it receives new connections again.
    let _b1 = broker(dir.path(), "b1", b1_ip, true);
    app.wait_log("service lb_service_azureiot1 UP", Duration::from_secs(5));
    assert!(show_service(&app, "lb_service_azureiot1").contains("State: UP"));
    let hits = |app: &Appliance| -> u64 {
        let out = app.run("stat service lb_service_azureiot1").0;
        out.lines()
            .find(|l| l.contains("Service hits"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = hits(&app);
    for n in 0..10 {
        mqtt_session("127.4.1.10:1883", false, &format!("back{n}")).await?;
    }
    assert!(hits(&app) > before, "the restarted broker gets connections");
    Ok(())
}

#[tokio::test]
async fn refusing_broker_is_down_under_mqtt_and_up_under_tcp() -> TestResult {
    let dir = lab_dir();
    let _b = broker(dir.path(), "closed", "127.4.2.11", false);
    let app = Appliance::start(dir.path());
    script_ok(
        &app,
        "add server gw 127.4.2.11\n\
         add service gw_svc gw USER_SSL_TCP 8883\n\
         add lb monitor mq MQTT -secure YES -interval 1 -resptimeout 500 MSEC\n\
         add lb monitor t TCP -interval 1 -resptimeout 500 MSEC\n\
         bind service gw_svc -monitorName mq\n",
    );
    assert!(wait_for(Duration::from_secs(5), || show_service(
        &app, "gw_svc"
    )
    .contains("State: DOWN")));
    let out = show_service(&app, "gw_svc");
    assert!(
        out.contains("Last response: Failure - CONNACK return code 5 (not authorized)."),
        "{out}"
    );
    // An unrelated commit keeps the monitor's task and counters.
    let probes = |out: &str| -> u64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Probes: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = probes(&out);
    assert!(before >= 1, "{out}");
    script_ok(&app, "add server other 127.4.2.99\n");
    assert!(probes(&show_service(&app, "gw_svc")) >= before);
    script_ok(
        &app,
        "unbind service gw_svc -monitorName mq\nbind service gw_svc -monitorName t\n",
    );
    assert!(wait_for(Duration::from_secs(5), || show_service(
        &app, "gw_svc"
    )
    .contains("State: UP")));
    let out = show_service(&app, "gw_svc");
    assert!(out.contains("Success - TCP syn+ack received."), "{out}");
    // No monitor bound: tcp-default, a TLS handshake for USER_SSL_TCP.
    script_ok(&app, "unbind service gw_svc -monitorName t\n");
    assert!(wait_for(Duration::from_secs(3), || show_service(
        &app, "gw_svc"
    )
    .contains("Success - TLS handshake completed.")));
    Ok(())
}

#[tokio::test]
async fn hanging_backend_is_down_after_resptimeout_and_appliance_responds() -> TestResult {
    // Accepts, never answers.
    let hang = StdListener::bind("127.4.3.11:0")?;
    let port = hang.local_addr()?.port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for s in hang.incoming().map_while(Result::ok) {
            h2.lock().expect("held").push(s);
        }
    });
    let dir = tempfile::tempdir()?;
    let app = Appliance::start(dir.path());
    script_ok(
        &app,
        &format!(
            "add server h 127.4.3.11\n\
             add service h_svc h USER_TCP {port}\n\
             add lb monitor mq MQTT -interval 3 -resptimeout 1 -retries 1\n\
             bind service h_svc -monitorName mq\n"
        ),
    );
    let start = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || show_service(
        &app, "h_svc"
    )
    .contains("State: DOWN")));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(show_service(&app, "h_svc").contains("Failure - Probe timed out."));
    // The appliance answers at once while probes hang.
    let t = Instant::now();
    let (out, ok) = app.run("show lb monitor mq");
    assert!(ok, "{out}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(!held.lock().expect("held").is_empty());
    Ok(())
}

/// Reads until the peer closes or `limit` passes; true if it closed.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn graceful_disable_drains_within_the_delay_and_plain_disable_flushes() -> TestResult {
    let b = echo_tcp("127.4.4.11").await;
    let dir = tempfile::tempdir()?;
    let app = Appliance::start(dir.path());
    script_ok(
        &app,
        &format!(
            "add server e 127.4.4.11\n\
             add service s1 e TCP {} -healthMonitor NO\n\
             add lb vserver lbt TCP 127.4.4.10 7400\n\
             bind lb vserver lbt s1\n",
            b.addr.port()
        ),
    );
    let mut c = connect("127.4.4.10:7400").await?;
    roundtrip(&mut c, b"before").await?;
    let t = Instant::now();
    script_ok(&app, "disable service s1 2 -graceFul YES\n");
    // No new connections...
    let mut n = connect("127.4.4.10:7400").await?;
    assert!(expect_closed(&mut n).await);
    // ...the established one keeps working within the delay, then is closed.
    roundtrip(&mut c, b"during the delay").await?;
    assert!(closed_within(&mut c, Duration::from_secs(4)).await);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    assert!(show_service(&app, "s1").contains("OUT OF SERVICE"));

    // A plain disable flushes at once.
    script_ok(&app, "enable service s1\n");
    let mut c = connect("127.4.4.10:7400").await?;
    roundtrip(&mut c, b"again").await?;
    script_ok(&app, "disable service s1\n");
    assert!(closed_within(&mut c, Duration::from_millis(500)).await);

    // Disabling the server drains its services the same way.
    script_ok(&app, "enable service s1\n");
    let mut c = connect("127.4.4.10:7400").await?;
    roundtrip(&mut c, b"server").await?;
    script_ok(&app, "disable server e 1 -graceFul YES\n");
    roundtrip(&mut c, b"server draining").await?;
    assert!(closed_within(&mut c, Duration::from_secs(3)).await);
    Ok(())
}

#[tokio::test]
async fn max_client_caps_connections_per_service() -> TestResult {
    let b1 = echo_tcp("127.4.5.11").await;
    let b2 = echo_tcp("127.4.5.12").await;
    let dir = tempfile::tempdir()?;
    let app = Appliance::start(dir.path());
    script_ok(
        &app,
        &format!(
            "add server e1 127.4.5.11\nadd server e2 127.4.5.12\n\
             add service s1 e1 TCP {} -healthMonitor NO -maxClient 2\n\
             add service s2 e2 TCP {} -healthMonitor NO -maxClient 1\n\
             add lb vserver lbt TCP 127.4.5.10 7500\n\
             bind lb vserver lbt s1\nbind lb vserver lbt s2\n",
            b1.addr.port(),
            b2.addr.port()
        ),
    );
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = connect("127.4.5.10:7500").await?;
        roundtrip(&mut c, format!("c{i}").as_bytes()).await?;
        held.push(c);
    }
    assert_eq!((b1.accepted(), b2.accepted()), (2, 1));
    // Every service is full: the next client is closed and counted.
    let mut over = connect("127.4.5.10:7500").await?;
    assert!(expect_closed(&mut over).await);
    let stat = app.run("stat lb vserver lbt").0;
    assert!(
        stat.lines()
            .any(|l| l.contains("Clients rejected") && l.trim_end().ends_with('1')),
        "{stat}"
    );
    // One leaves: its place is free again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect("127.4.5.10:7500").await?;
    roundtrip(&mut again, b"room again").await?;
    Ok(())
}
