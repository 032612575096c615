//! Live reconfiguration: commits change listeners without disturbing established connections,
//! and a commit that cannot be applied changes nothing. Addresses: 127.3.20.x - 127.3.29.x.

mod engine_support;

use std::sync::Arc;

use engine_support::*;
use nsemu::config::snapshot::*;
use nsemu::engine::{Engine, EngineError, EngineOptions, State};

fn engine() -> Engine {
    Engine::new(EngineOptions::default())
}

fn base(users: Vec<UserVserverSpec>, b: &Echo) -> Snapshot {
    snapshot(
        users,
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![service("s1", b.addr, ServiceType::UserTcp)],
        vec![],
    )
}

#[tokio::test]
async fn established_connection_keeps_flowing_while_listeners_change() -> TestResult {
    let b = echo_tcp("127.3.20.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.20.10", 7020, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![a], &b))).await?;
    let mut c = connect("127.3.20.10:7020").await?;
    roundtrip(&mut c, b"before").await?;

    // Remove `a`, add `b2` on another address.
    let b2 = user_vs("b2", "127.3.20.20", 7020, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![b2], &b))).await?;
    roundtrip(&mut c, b"after the commit").await?;
    assert!(
        connect("127.3.20.10:7020").await.is_err(),
        "a still accepts"
    );
    let mut n = connect("127.3.20.20:7020").await?;
    roundtrip(&mut n, b"new listener").await?;
    roundtrip(&mut c, b"still after").await?;
    let st = e.status();
    assert!(!st.user_vservers.contains_key("a"));
    assert_eq!(st.user_vservers["b2"].state, State::Up);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn failed_bind_keeps_running_config() -> TestResult {
    let b = echo_tcp("127.3.21.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.21.10", 7021, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![a.clone()], &b))).await?;
    let mut c = connect("127.3.21.10:7021").await?;
    roundtrip(&mut c, b"running").await?;

    // Someone else holds 127.3.21.20:7021.
    let squatter = std::net::TcpListener::bind("127.3.21.20:7021")?;
    let new = user_vs("n", "127.3.21.20", 7021, Transport::Tcp, "lb");
    let mut gone = a.clone();
    gone.enabled = false;
    let err = e
        .commit(Arc::new(base(vec![gone, new], &b)))
        .await
        .expect_err("bind must fail");
    assert!(matches!(err, EngineError::AddressInUse { .. }), "{err:?}");
    // Nothing changed: `a` still accepts and is UP, the old connection flows, no `n`.
    roundtrip(&mut c, b"unchanged").await?;
    let mut c2 = connect("127.3.21.10:7021").await?;
    roundtrip(&mut c2, b"still accepting").await?;
    let st = e.status();
    assert_eq!(st.user_vservers["a"].state, State::Up);
    assert!(!st.user_vservers.contains_key("n"));
    drop(squatter);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn moved_vserver_binds_new_address_and_releases_old() -> TestResult {
    let b = echo_tcp("127.3.22.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.22.10", 7022, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![a.clone()], &b))).await?;
    let mut c = connect("127.3.22.10:7022").await?;
    roundtrip(&mut c, b"old address").await?;
    let mut moved = a.clone();
    moved.ip = ip("127.3.22.20");
    e.commit(Arc::new(base(vec![moved], &b))).await?;
    let mut n = connect("127.3.22.20:7022").await?;
    roundtrip(&mut n, b"new address").await?;
    assert!(connect("127.3.22.10:7022").await.is_err());
    roundtrip(&mut c, b"old connection lives").await?;
    // Counters of the same name carry over the move.
    assert!(eventually(|| e.status().user_vservers["a"].counters.hits == 2).await);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn disabled_user_vserver_is_out_of_service_and_stops_accepting() -> TestResult {
    let b = echo_tcp("127.3.23.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.23.10", 7023, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![a.clone()], &b))).await?;
    let mut c = connect("127.3.23.10:7023").await?;
    roundtrip(&mut c, b"x").await?;
    let mut off = a.clone();
    off.enabled = false;
    e.commit(Arc::new(base(vec![off], &b))).await?;
    assert_eq!(e.status().user_vservers["a"].state, State::OutOfService);
    assert!(connect("127.3.23.10:7023").await.is_err());
    roundtrip(&mut c, b"established one continues").await?;
    e.commit(Arc::new(base(vec![a], &b))).await?;
    let mut again = connect("127.3.23.10:7023").await?;
    roundtrip(&mut again, b"re-enabled").await?;
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rebinding_services_affects_new_connections_only() -> TestResult {
    let b1 = echo_tcp("127.3.24.11").await;
    let b2 = echo_tcp("127.3.24.12").await;
    let e = engine();
    let users = vec![user_vs("u", "127.3.24.10", 7024, Transport::Tcp, "lb")];
    let services = vec![
        service("s1", b1.addr, ServiceType::UserTcp),
        service("s2", b2.addr, ServiceType::UserTcp),
    ];
    let s1_only = snapshot(
        users.clone(),
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        services.clone(),
        vec![],
    );
    e.commit(Arc::new(s1_only)).await?;
    let mut c = connect("127.3.24.10:7024").await?;
    roundtrip(&mut c, b"on s1").await?;
    let s2_only = snapshot(
        users,
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s2"])],
        services,
        vec![],
    );
    e.commit(Arc::new(s2_only)).await?;
    let mut n = connect("127.3.24.10:7024").await?;
    roundtrip(&mut n, b"on s2").await?;
    roundtrip(&mut c, b"still on s1").await?;
    assert_eq!((b1.accepted(), b2.accepted()), (1, 1));
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_certkey_fails_the_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = echo_tcp("127.3.25.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.25.10", 7025, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![a.clone()], &b))).await?;

    let c1 = make_cert(dir.path(), "c1", &["one"]);
    let c2 = make_cert(dir.path(), "c2", &["two"]);
    let mismatched = CertKeySpec {
        name: "mix".into(),
        cert: c1.spec.cert.clone(),
        key: c2.spec.key.clone(),
    };
    let mut snap = base(vec![a.clone()], &b);
    snap.certkeys.insert("mix".into(), mismatched);
    let err = e.commit(Arc::new(snap)).await.expect_err("mismatch");
    assert_eq!(
        err,
        EngineError::CertKeyMismatch {
            certkey: "mix".into()
        }
    );

    let missing = CertKeySpec {
        name: "missing".into(),
        cert: dir.path().join("nope.cert"),
        key: None,
    };
    let mut snap = base(vec![a.clone()], &b);
    snap.certkeys.insert("missing".into(), missing);
    let err = e.commit(Arc::new(snap)).await.expect_err("missing");
    assert!(matches!(err, EngineError::CertNotFound { .. }), "{err:?}");

    std::fs::write(dir.path().join("junk.cert"), "not a certificate")?;
    let junk = CertKeySpec {
        name: "junk".into(),
        cert: dir.path().join("junk.cert"),
        key: None,
    };
    let mut snap = base(vec![a], &b);
    snap.certkeys.insert("junk".into(), junk);
    let err = e.commit(Arc::new(snap)).await.expect_err("junk");
    assert!(matches!(err, EngineError::InvalidCert { .. }), "{err:?}");

    let mut c = connect("127.3.25.10:7025").await?;
    roundtrip(&mut c, b"config unchanged").await?;
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn duplicate_addresses_in_one_snapshot_are_refused() -> TestResult {
    let b = echo_tcp("127.3.26.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.26.10", 7026, Transport::Tcp, "lb");
    let d = user_vs("d", "127.3.26.10", 7026, Transport::Tcp, "lb");
    let err = e
        .commit(Arc::new(base(vec![a, d], &b)))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, EngineError::AddressInUse { .. }));
    assert!(connect("127.3.26.10:7026").await.is_err());
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn swapping_vservers_on_one_address_keeps_the_socket() -> TestResult {
    // Removing one user vserver and adding another on the same address in one commit reuses
    // the bound socket (no bind conflict with itself).
    let b = echo_tcp("127.3.27.11").await;
    let e = engine();
    e.commit(Arc::new(base(
        vec![user_vs("a", "127.3.27.10", 7027, Transport::Tcp, "lb")],
        &b,
    )))
    .await?;
    e.commit(Arc::new(base(
        vec![user_vs("z", "127.3.27.10", 7027, Transport::Tcp, "lb")],
        &b,
    )))
    .await?;
    let mut c = connect("127.3.27.10:7027").await?;
    roundtrip(&mut c, b"z serves").await?;
    assert!(eventually(|| e.status().user_vservers["z"].counters.hits == 1).await);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn removed_then_readded_vserver_rebinds_at_once() -> TestResult {
    let b = echo_tcp("127.3.28.11").await;
    let e = engine();
    let a = user_vs("a", "127.3.28.10", 7028, Transport::Tcp, "lb");
    e.commit(Arc::new(base(vec![a.clone()], &b))).await?;
    // Back to back, without giving the runtime a chance to reap the old accept task.
    e.commit(Arc::new(base(vec![], &b))).await?;
    e.commit(Arc::new(base(vec![a], &b))).await?;
    let mut c = connect("127.3.28.10:7028").await?;
    roundtrip(&mut c, b"rebound").await?;
    e.shutdown().await;
    Ok(())
}
