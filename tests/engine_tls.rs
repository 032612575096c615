//! TLS on both sides: offload with the bound certkey, protocol versions, RSA and ECDSA keys,
//! backend verification, certificate replacement. Addresses: 127.3.30.x - 127.3.39.x.

mod engine_support;

use std::sync::Arc;

use engine_support::*;
use nsemu::config::snapshot::*;
use nsemu::engine::{Engine, EngineOptions, State};
use rustls::pki_types::CertificateDer;

fn engine() -> Engine {
    Engine::new(EngineOptions::default())
}

/// One SSL user vserver at `vip:port` with certkey `ck` in front of `backend` (a TLS echo).
fn ssl_snapshot(
    vip: &str,
    port: u16,
    cert: &TestCert,
    tls: TlsVersions,
    backend: &Echo,
) -> Snapshot {
    let mut u = user_vs("u", vip, port, Transport::Ssl, "lb");
    u.certkey = Some(cert.spec.name.clone());
    u.tls = tls;
    snapshot(
        vec![u],
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![service("s1", backend.addr, ServiceType::UserSslTcp)],
        vec![cert.spec.clone()],
    )
}

async fn tls_roundtrip(
    addr: &str,
    name: &str,
    root: Option<&CertificateDer<'static>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let tcp = connect(addr).await?;
    let mut c = tls_client(root, versions)
        .connect(server_name(name), tcp)
        .await?;
    roundtrip(&mut c, b"over tls").await?;
    let certs = c
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    Ok(certs)
}

#[tokio::test]
async fn tls_client_gets_the_bound_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cert = make_cert(dir.path(), "ck", &["127.3.30.10"]);
    let b = echo_tls("127.3.30.11").await;
    let e = engine();
    e.commit(Arc::new(ssl_snapshot(
        "127.3.30.10",
        7030,
        &cert,
        TlsVersions::default(),
        &b,
    )))
    .await?;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let certs = tls_roundtrip(
            "127.3.30.10:7030",
            "127.3.30.10",
            Some(&cert.cert_der),
            &[v],
        )
        .await?;
        assert_eq!(certs.first(), Some(&cert.cert_der));
    }
    assert_eq!(e.status().user_vservers["u"].state, State::Up);
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn tls12_only_client_fails_when_tls12_disabled() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cert = make_cert(dir.path(), "ck", &["127.3.31.10"]);
    let b = echo_tls("127.3.31.11").await;
    let e = engine();
    let tls = TlsVersions {
        tls12: false,
        ..TlsVersions::default()
    };
    e.commit(Arc::new(ssl_snapshot("127.3.31.10", 7031, &cert, tls, &b)))
        .await?;
    let r = tls_roundtrip(
        "127.3.31.10:7031",
        "127.3.31.10",
        Some(&cert.cert_der),
        &[&rustls::version::TLS12],
    )
    .await;
    assert!(r.is_err(), "TLS 1.2 handshake must fail");
    tls_roundtrip(
        "127.3.31.10:7031",
        "127.3.31.10",
        Some(&cert.cert_der),
        &[&rustls::version::TLS13],
    )
    .await?;
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ssl_vserver_without_usable_certkey_or_version_stays_down() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cert = make_cert(dir.path(), "ck", &["127.3.32.10"]);
    let b = echo_tls("127.3.32.11").await;
    let e = engine();
    let mut snap = ssl_snapshot("127.3.32.10", 7032, &cert, TlsVersions::default(), &b);
    if let Some(u) = snap.user_vservers.get_mut("u") {
        u.certkey = None;
    }
    let warnings = e.commit(Arc::new(snap)).await?;
    assert!(warnings.is_empty());
    let st = e.status();
    assert_eq!(st.user_vservers["u"].state, State::Down);
    assert_eq!(
        st.user_vservers["u"].reason.as_deref(),
        Some("Certkey not bound")
    );
    assert!(connect("127.3.32.10:7032").await.is_err());

    let none = TlsVersions {
        tls12: false,
        tls13: false,
        ..TlsVersions::default()
    };
    let warnings = e
        .commit(Arc::new(ssl_snapshot("127.3.32.10", 7032, &cert, none, &b)))
        .await?;
    assert_eq!(warnings.len(), 1);
    let st = e.status();
    assert_eq!(st.user_vservers["u"].state, State::Down);
    assert!(st.user_vservers["u"].reason.is_some());
    assert!(connect("127.3.32.10:7032").await.is_err());

    // Binding the cert brings it up.
    e.commit(Arc::new(ssl_snapshot(
        "127.3.32.10",
        7032,
        &cert,
        TlsVersions::default(),
        &b,
    )))
    .await?;
    assert_eq!(e.status().user_vservers["u"].state, State::Up);
    tls_roundtrip(
        "127.3.32.10:7032",
        "127.3.32.10",
        Some(&cert.cert_der),
        &[&rustls::version::TLS13],
    )
    .await?;
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rsa_certkey_from_openssl_is_served() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("rsa.cert");
    let key = dir.path().join("rsa.key");
    let st = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=nsemu-rsa",
            "-addext",
            "subjectAltName=IP:127.3.33.10",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!("openssl unavailable; skipping");
        return Ok(());
    }
    let pem = std::fs::read(&cert)?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or("no cert")??;
    let tc = TestCert {
        spec: CertKeySpec {
            name: "rsa".into(),
            cert,
            key: Some(key),
        },
        cert_der: der.clone(),
        key_der: rustls::pki_types::PrivateKeyDer::Pkcs8(Vec::new().into()),
    };
    let b = echo_tls("127.3.33.11").await;
    let e = engine();
    e.commit(Arc::new(ssl_snapshot(
        "127.3.33.10",
        7033,
        &tc,
        TlsVersions::default(),
        &b,
    )))
    .await?;
    let certs = tls_roundtrip(
        "127.3.33.10:7033",
        "127.3.33.10",
        None, // openssl marks it CA:TRUE, which webpki refuses as a leaf
        &[&rustls::version::TLS12],
    )
    .await?;
    assert_eq!(certs.first(), Some(&der));
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn server_auth_verifies_backend_against_bound_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The backend's own certificate: for "backend.test".
    let backend_cert = make_cert(dir.path(), "backend", &["backend.test"]);
    let other = make_cert(dir.path(), "other", &["backend.test"]);
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![backend_cert.cert_der.clone()],
            backend_cert.key_der.clone_key(),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.3.34.11:0").await?;
    let baddr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut t) = acceptor.accept(s).await {
                    let mut buf = [0u8; 1024];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    while let Ok(n) = t.read(&mut buf).await {
                        if n == 0 || t.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });

    let e = engine();
    let make = |ca: &str, cn: &str| {
        let mut s = service("s1", baddr, ServiceType::SslTcp);
        s.server_auth = true;
        s.common_name = Some(cn.into());
        s.ca_certkeys = vec![ca.into()];
        let mut ca_spec = if ca == "backend" {
            backend_cert.spec.clone()
        } else {
            other.spec.clone()
        };
        ca_spec.key = None;
        snapshot(
            vec![user_vs("u", "127.3.34.10", 7034, Transport::Tcp, "lb")],
            vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
            vec![s],
            vec![ca_spec],
        )
    };
    // Right CA and name: works.
    e.commit(Arc::new(make("backend", "backend.test"))).await?;
    let mut c = connect("127.3.34.10:7034").await?;
    roundtrip(&mut c, b"verified").await?;
    // Wrong CA: the backend handshake fails, the client is closed.
    e.commit(Arc::new(make("other", "backend.test"))).await?;
    let mut c = connect("127.3.34.10:7034").await?;
    assert!(expect_closed(&mut c).await);
    // Wrong name: fails as well.
    e.commit(Arc::new(make("backend", "wrong.test"))).await?;
    let mut c = connect("127.3.34.10:7034").await?;
    assert!(expect_closed(&mut c).await);
    assert!(eventually(|| e.status().user_vservers["u"].counters.rejected == 2).await);
    task.abort();
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn replaced_certificate_applies_to_new_handshakes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = make_cert(dir.path(), "ck", &["127.3.35.10"]);
    let b = echo_tls("127.3.35.11").await;
    let e = engine();
    e.commit(Arc::new(ssl_snapshot(
        "127.3.35.10",
        7035,
        &first,
        TlsVersions::default(),
        &b,
    )))
    .await?;
    let tcp = connect("127.3.35.10:7035").await?;
    let mut old = tls_client(None, &[&rustls::version::TLS13])
        .connect(server_name("127.3.35.10"), tcp)
        .await?;
    roundtrip(&mut old, b"first cert").await?;
    // `update ssl certKey`: same certkey name and paths, new content.
    let second = make_cert(dir.path(), "ck", &["127.3.35.10"]);
    assert_ne!(first.cert_der, second.cert_der);
    e.commit(Arc::new(ssl_snapshot(
        "127.3.35.10",
        7035,
        &second,
        TlsVersions::default(),
        &b,
    )))
    .await?;
    let certs = tls_roundtrip(
        "127.3.35.10:7035",
        "127.3.35.10",
        None,
        &[&rustls::version::TLS13],
    )
    .await?;
    assert_eq!(certs.first(), Some(&second.cert_der));
    roundtrip(&mut old, b"old session continues").await?;
    e.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn backend_tls_sessions_are_resumed() -> TestResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let resumed = Arc::new(AtomicUsize::new(0));
    let r2 = resumed.clone();
    let (baddr, task) = tls_backend("127.3.36.11", move |c| {
        if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            r2.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await?;
    let e = engine();
    e.commit(Arc::new(snapshot(
        vec![user_vs("u", "127.3.36.10", 7036, Transport::Tcp, "lb")],
        vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
        vec![service("s1", baddr, ServiceType::UserSslTcp)],
        vec![],
    )))
    .await?;
    for i in 0..3 {
        let mut c = connect("127.3.36.10:7036").await?;
        roundtrip(&mut c, format!("conn {i}").as_bytes()).await?;
    }
    // The first connection is a full handshake; the later ones resume.
    assert_eq!(resumed.load(Ordering::SeqCst), 2);
    task.abort();
    e.shutdown().await;
    Ok(())
}

/// `set ssl service -tls13 DISABLED` reaches the wire: the backend negotiates TLS 1.2 with the
/// service so configured, TLS 1.3 otherwise; with both disabled the commit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_versions_follow_the_ssl_service_settings() -> TestResult {
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<rustls::ProtocolVersion>>> = Arc::default();
    let s2 = seen.clone();
    let (baddr, task) = tls_backend("127.3.37.11", move |c| {
        if let (Some(v), Ok(mut seen)) = (c.protocol_version(), s2.lock()) {
            seen.push(v);
        }
    })
    .await?;
    let e = engine();
    let snap_with = |tls: TlsVersions| {
        let mut svc = service("s1", baddr, ServiceType::UserSslTcp);
        svc.tls = tls;
        Arc::new(snapshot(
            vec![user_vs("u", "127.3.37.10", 7037, Transport::Tcp, "lb")],
            vec![lb_vs("lb", LbMethod::LeastConnection, &["s1"])],
            vec![svc],
            vec![],
        ))
    };
    e.commit(snap_with(TlsVersions::default())).await?;
    roundtrip(&mut connect("127.3.37.10:7037").await?, b"default").await?;
    e.commit(snap_with(TlsVersions {
        tls13: false,
        ..TlsVersions::default()
    }))
    .await?;
    roundtrip(&mut connect("127.3.37.10:7037").await?, b"tls12 only").await?;
    let none = TlsVersions {
        tls12: false,
        tls13: false,
        ..TlsVersions::default()
    };
    assert!(
        e.commit(snap_with(none)).await.is_err(),
        "no version left: refused"
    );
    let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        [
            rustls::ProtocolVersion::TLSv1_3,
            rustls::ProtocolVersion::TLSv1_2
        ]
    );
    task.abort();
    e.shutdown().await;
    Ok(())
}

/// A TLS echo backend on `ip:0` with a fresh self-signed certificate; `on_accept` sees each
/// completed handshake (to record its kind or version).
async fn tls_backend(
    ip: &str,
    on_accept: impl Fn(&rustls::ServerConnection) + Send + Sync + 'static,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()])?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = l.local_addr()?;
    let on_accept = Arc::new(on_accept);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, on_accept) = (acceptor.clone(), on_accept.clone());
            tokio::spawn(async move {
                if let Ok(mut t) = acceptor.accept(s).await {
                    on_accept(t.get_ref().1);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = t.read(&mut buf).await {
                        if n == 0 || t.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    Ok((addr, task))
}
