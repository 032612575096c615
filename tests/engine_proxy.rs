//! The data path through the engine: proxying, load balancing, failover, counters, timeouts, and
//! clients that misbehave. Addresses: 127.3.1.x - 127.3.12.x.

mod engine_support;

use std::sync::Arc;
use std::time::Duration;

use engine_support::*;
use nsemu::config::snapshot::*;
use nsemu::engine::{Engine, EngineOptions, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn engine() -> Engine {
    Engine::new(EngineOptions::default())
}

#[tokio::test]
async fn plain_client_reaches_tls_backend_through_user_vserver() -> TestResult {
    let b = echo_tls("127.3.1.11").await;
    let e = engine();
    let snap = plain_front(
        "127.3.1.10",
        7001,
        LbMethod::LeastConnection,
        vec![service("s1", b.addr, ServiceType::UserSslTcp)],
    );
    e.commit(Arc::new(snap)).await?;
    let mut c = connect("127.3.1.10:7001").await?;
    roundtrip(&mut c, b"hello through nsemu").await?;
    roundtrip(&mut c, &vec![7u8; 200_000]).await?;
    let st = e.status();
    assert_eq!(st.user_vservers["u"].state, State::Up);
    assert_eq!(st.lb_vservers["lb"].state, State::Up);
    assert_eq!(st.lb_vservers["lb"].health, 100);
    assert_eq!(st.services["s1"].state, State::Up);
    assert_eq!(b.accepted(), 1);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn round_robin_spreads_20_connections_over_two_backends() -> TestResult {
    let b1 = echo_tcp("127.3.2.11").await;
    let b2 = echo_tcp("127.3.2.12").await;
    let e = engine();
    let snap = plain_front(
        "127.3.2.10",
        7002,
        LbMethod::RoundRobin,
        vec![
            service("s1", b1.addr, ServiceType::UserTcp),
            service("s2", b2.addr, ServiceType::UserTcp),
        ],
    );
    e.commit(Arc::new(snap)).await?;
    for i in 0..20 {
        let mut c = connect("127.3.2.10:7002").await?;
        roundtrip(&mut c, format!("conn {i}").as_bytes()).await?;
    }
    assert_eq!((b1.accepted(), b2.accepted()), (10, 10));
    assert!(
        eventually(|| {
            let st = e.status();
            st.services["s1"].counters.hits == 10 && st.user_vservers["u"].counters.hits == 20
        })
        .await
    );
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn refused_backend_fails_over_to_the_other() -> TestResult {
    let dead = dead_addr("127.3.3.11").await;
    let live = echo_tcp("127.3.3.12").await;
    let e = engine();
    let snap = plain_front(
        "127.3.3.10",
        7003,
        LbMethod::RoundRobin,
        vec![
            service("dead", dead, ServiceType::UserTcp),
            service("live", live.addr, ServiceType::UserTcp),
        ],
    );
    e.commit(Arc::new(snap)).await?;
    for _ in 0..6 {
        let mut c = connect("127.3.3.10:7003").await?;
        roundtrip(&mut c, b"still served").await?;
    }
    assert_eq!(live.accepted(), 6);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn no_usable_service_closes_client_and_counts_rejected() -> TestResult {
    let b = echo_tcp("127.3.4.11").await;
    let e = engine();
    let mut s1 = service("s1", b.addr, ServiceType::UserTcp);
    s1.enabled = false;
    let snap = snapshot(
        vec![user_vs("u", "127.3.4.10", 7004, Transport::Tcp, "lb")],
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![s1],
        vec![],
    );
    e.commit(Arc::new(snap)).await?;
    let st = e.status();
    assert_eq!(st.services["s1"].state, State::OutOfService);
    assert_eq!(st.lb_vservers["lb"].state, State::Down);
    assert_eq!(st.user_vservers["u"].state, State::Down);
    let mut c = connect("127.3.4.10:7004").await?;
    assert!(expect_closed(&mut c).await);
    assert!(eventually(|| e.status().user_vservers["u"].counters.rejected == 1).await);
    assert_eq!(b.accepted(), 0);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn down_service_is_skipped_until_it_comes_back() -> TestResult {
    let b1 = echo_tcp("127.3.5.11").await;
    let b2 = echo_tcp("127.3.5.12").await;
    let e = engine();
    let snap = plain_front(
        "127.3.5.10",
        7005,
        LbMethod::RoundRobin,
        vec![
            service("s1", b1.addr, ServiceType::UserTcp),
            service("s2", b2.addr, ServiceType::UserTcp),
        ],
    );
    e.commit(Arc::new(snap)).await?;
    e.set_service_health("s1", State::Down, "Failure - TCP connection refused");
    let st = e.status();
    assert_eq!(st.services["s1"].state, State::Down);
    assert_eq!(st.lb_vservers["lb"].health, 50);
    assert_eq!(st.lb_vservers["lb"].active_services, 1);
    for _ in 0..4 {
        let mut c = connect("127.3.5.10:7005").await?;
        roundtrip(&mut c, b"x").await?;
    }
    assert_eq!((b1.accepted(), b2.accepted()), (0, 4));
    e.set_service_health("s1", State::Up, "Success");
    for _ in 0..4 {
        let mut c = connect("127.3.5.10:7005").await?;
        roundtrip(&mut c, b"x").await?;
    }
    assert!(b1.accepted() >= 1);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn half_close_lets_the_response_finish() -> TestResult {
    let b = echo_tls("127.3.6.11").await;
    let e = engine();
    let snap = plain_front(
        "127.3.6.10",
        7006,
        LbMethod::LeastConnection,
        vec![service("s1", b.addr, ServiceType::SslTcp)],
    );
    e.commit(Arc::new(snap)).await?;
    let mut c = connect("127.3.6.10:7006").await?;
    let msg = vec![42u8; 100_000];
    c.write_all(&msg).await?;
    c.shutdown().await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await??;
    assert_eq!(got.len(), msg.len());
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn counters_follow_connections_and_bytes() -> TestResult {
    let b = echo_tcp("127.3.7.11").await;
    let e = engine();
    let snap = plain_front(
        "127.3.7.10",
        7007,
        LbMethod::LeastConnection,
        vec![service("s1", b.addr, ServiceType::UserTcp)],
    );
    e.commit(Arc::new(snap)).await?;
    let mut c = connect("127.3.7.10:7007").await?;
    roundtrip(&mut c, &[1u8; 1000]).await?;
    let st = e.status();
    let u = &st.user_vservers["u"].counters;
    assert_eq!((u.hits, u.cur_client_conns, u.cur_server_conns), (1, 1, 1));
    assert_eq!((u.request_bytes, u.response_bytes), (1000, 1000));
    let s = &st.services["s1"].counters;
    assert_eq!((s.hits, s.cur_server_conns, s.request_bytes), (1, 1, 1000));
    assert_eq!(st.lb_vservers["lb"].counters.cur_client_conns, 1);
    drop(c);
    assert!(
        eventually(|| {
            let st = e.status();
            st.user_vservers["u"].counters.cur_client_conns == 0
                && st.services["s1"].counters.cur_server_conns == 0
                && st.lb_vservers["lb"].counters.cur_client_conns == 0
        })
        .await
    );
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn addressable_lb_vserver_listens_and_balances() -> TestResult {
    let b1 = echo_tcp("127.3.8.11").await;
    let b2 = echo_tcp("127.3.8.12").await;
    let e = engine();
    let mut lb = lb_vs("lb", LbMethod::RoundRobin, &["s1", "s2"]);
    lb.service_type = ServiceType::Tcp;
    lb.listen = Some((ip("127.3.8.10"), 7008));
    let snap = snapshot(
        vec![],
        vec![lb],
        vec![
            service("s1", b1.addr, ServiceType::Tcp),
            service("s2", b2.addr, ServiceType::Tcp),
        ],
        vec![],
    );
    e.commit(Arc::new(snap)).await?;
    for _ in 0..4 {
        let mut c = connect("127.3.8.10:7008").await?;
        roundtrip(&mut c, b"lb").await?;
    }
    assert_eq!((b1.accepted(), b2.accepted()), (2, 2));
    assert!(eventually(|| e.status().lb_vservers["lb"].counters.hits == 4).await);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn idle_client_is_closed_after_clt_timeout() -> TestResult {
    let b = echo_tcp("127.3.9.11").await;
    let e = engine();
    let mut u = user_vs("u", "127.3.9.10", 7009, Transport::Tcp, "lb");
    u.clt_timeout = 1;
    let snap = snapshot(
        vec![u],
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![service("s1", b.addr, ServiceType::UserTcp)],
        vec![],
    );
    e.commit(Arc::new(snap)).await?;
    let mut c = connect("127.3.9.10:7009").await?;
    roundtrip(&mut c, b"then silence").await?;
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await?;
    assert!(matches!(r, Ok(0) | Err(_)));
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn draining_a_service_closes_its_connections() -> TestResult {
    let b = echo_tcp("127.3.10.11").await;
    let e = engine();
    let snap = plain_front(
        "127.3.10.10",
        7010,
        LbMethod::LeastConnection,
        vec![service("s1", b.addr, ServiceType::UserTcp)],
    );
    e.commit(Arc::new(snap)).await?;
    let mut c = connect("127.3.10.10:7010").await?;
    roundtrip(&mut c, b"x").await?;
    assert!(e.close_service_connections("s1"));
    assert!(expect_closed(&mut c).await);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn garbage_stalled_and_churning_clients_do_not_affect_others() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cert = make_cert(dir.path(), "ck", &["127.3.11.10"]);
    let b = echo_tls("127.3.11.11").await;
    let e = engine();
    let mut u = user_vs("u", "127.3.11.10", 7011, Transport::Ssl, "lb");
    u.certkey = Some("ck".into());
    let mut plain = user_vs("p", "127.3.11.10", 7111, Transport::Tcp, "lb");
    plain.clt_timeout = 0;
    let snap = snapshot(
        vec![u, plain],
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![service("s1", b.addr, ServiceType::UserSslTcp)],
        vec![cert.spec.clone()],
    );
    e.commit(Arc::new(snap)).await?;

    // Stalled mid-handshake: connects and sends half a ClientHello, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = connect("127.3.11.10:7011").await?;
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await?;
        stalled.push(s);
    }
    // Garbage on the TLS port is closed.
    let mut g = connect("127.3.11.10:7011").await?;
    g.write_all(&[b'x'; 20_000]).await?;
    assert!(expect_closed(&mut g).await);
    // Open and close 1,000 times, on both ports.
    for i in 0..1000 {
        let port = if i % 2 == 0 { 7011 } else { 7111 };
        drop(connect(&format!("127.3.11.10:{port}")).await?);
    }
    // A well-behaved TLS client is still served.
    let tls = tls_client(Some(&cert.cert_der), &[&rustls::version::TLS13]);
    let tcp = connect("127.3.11.10:7011").await?;
    let mut c = tls.connect(server_name("127.3.11.10"), tcp).await?;
    roundtrip(&mut c, b"still fine").await?;
    let mut p = connect("127.3.11.10:7111").await?;
    roundtrip(&mut p, b"plain too").await?;
    drop(stalled);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn source_ip_persistence_keeps_a_client_on_one_service() -> TestResult {
    let b1 = echo_tcp("127.3.12.11").await;
    let b2 = echo_tcp("127.3.12.12").await;
    let e = engine();
    let mut lb = lb_vs("lb", LbMethod::RoundRobin, &["s1", "s2"]);
    lb.persistence = Persistence::SourceIp;
    let snap = snapshot(
        vec![user_vs("u", "127.3.12.10", 7012, Transport::Tcp, "lb")],
        vec![lb],
        vec![
            service("s1", b1.addr, ServiceType::UserTcp),
            service("s2", b2.addr, ServiceType::UserTcp),
        ],
        vec![],
    );
    e.commit(Arc::new(snap)).await?;
    for _ in 0..6 {
        let mut c = connect("127.3.12.10:7012").await?;
        roundtrip(&mut c, b"sticky").await?;
    }
    assert!(b1.accepted() == 6 || b2.accepted() == 6);
    let sessions = e.status().persistent_sessions;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].vserver, "lb");
    assert_eq!(sessions[0].key, "127.0.0.1");
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn domain_server_is_resolved() -> TestResult {
    // `localhost` resolves to 127.0.0.1 here; the echo takes a free port there.
    let b = echo_tcp("127.0.0.1").await;
    let e = engine();
    let mut s = service("s1", b.addr, ServiceType::UserTcp);
    s.target = Target::Domain {
        name: "localhost".into(),
        resolve_retry_secs: 5,
    };
    let snap = snapshot(
        vec![user_vs("u", "127.3.13.10", 7013, Transport::Tcp, "lb")],
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![s],
        vec![],
    );
    e.commit(Arc::new(snap)).await?;
    let mut c = connect("127.3.13.10:7013").await?;
    roundtrip(&mut c, b"by name").await?;
    assert_eq!(b.accepted(), 1);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn resetting_backend_closes_only_its_own_clients() -> TestResult {
    // A TLS "backend" that resets every connection during the handshake, next to a good one.
    let l = tokio::net::TcpListener::bind("127.3.14.11:0").await?;
    let bad = l.local_addr()?;
    let resetter = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let good = echo_tls("127.3.14.12").await;
    let e = engine();
    let snap = snapshot(
        vec![
            user_vs("u", "127.3.14.10", 7014, Transport::Tcp, "lb"),
            user_vs("only_bad", "127.3.14.10", 7114, Transport::Tcp, "lb_bad"),
        ],
        vec![
            lb_vs("lb", LbMethod::RoundRobin, &["bad", "good"]),
            lb_vs("lb_bad", LbMethod::RoundRobin, &["bad"]),
        ],
        vec![
            service("bad", bad, ServiceType::UserSslTcp),
            service("good", good.addr, ServiceType::UserSslTcp),
        ],
        vec![],
    );
    e.commit(Arc::new(snap)).await?;
    // With a good service in the pool, the failed handshake fails over.
    let mut held = connect("127.3.14.10:7014").await?;
    roundtrip(&mut held, b"held").await?;
    for _ in 0..4 {
        let mut c = connect("127.3.14.10:7014").await?;
        roundtrip(&mut c, b"fails over").await?;
        // Only the reset backend behind it: closed at once.
        let mut b = connect("127.3.14.10:7114").await?;
        assert!(expect_closed(&mut b).await);
    }
    roundtrip(&mut held, b"unaffected").await?;
    assert!(eventually(|| e.status().user_vservers["only_bad"].counters.rejected == 4).await);
    resetter.abort();
    e.shutdown().await;
    Ok(())
}

/// A monitor probing a port that closes marks the service DOWN while its backend still serves:
/// with `-downStateFlush ENABLED` (the default) the established connection is closed, with
/// DISABLED it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_state_flush_decides_whether_established_connections_close() -> TestResult {
    for (n, flush) in [(1u8, true), (2u8, false)] {
        let net = format!("127.3.41.{}", n * 10);
        let backend_ip = format!("127.3.41.{}", n * 10 + 1);
        let b = echo_tcp(&backend_ip).await;
        // The monitor's port accepts until the client's connection is established, then closes.
        let probed = std::net::TcpListener::bind((backend_ip.as_str(), 0))?;
        let probed_port = probed.local_addr()?.port();
        let e = engine();
        let mut svc = service("s1", b.addr, ServiceType::UserTcp);
        svc.down_state_flush = flush;
        svc.monitors = vec![MonitorBinding {
            monitor: "probe".into(),
            weight: 1,
            enabled: true,
        }];
        let mut snap = plain_front(&net, 7041, LbMethod::RoundRobin, vec![svc]);
        snap.monitors.insert(
            "probe".into(),
            MonitorSpec {
                name: "probe".into(),
                kind: "TCP".into(),
                interval_ms: 200,
                resp_timeout_ms: 100,
                retries: 1,
                success_retries: 1,
                down_time_ms: 200,
                dest_ip: None,
                dest_port: Some(probed_port),
                secure: false,
                send: None,
                recv: None,
                user_name: None,
                password: None,
                enabled: true,
            },
        );
        e.commit(Arc::new(snap)).await?;
        let mut c = connect(&format!("{net}:7041")).await?;
        roundtrip(&mut c, b"before").await?;
        drop(probed);
        assert!(eventually(|| e.status().services["s1"].state == State::Down).await);
        if flush {
            assert!(expect_closed(&mut c).await, "flushed when DOWN");
        } else {
            roundtrip(&mut c, b"still flowing").await?;
        }
        e.shutdown().await;
    }
    Ok(())
}
