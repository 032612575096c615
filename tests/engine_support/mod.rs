//! Helpers for the engine integration tests: snapshots built in code, echo backends (plain and
//! TLS), certificates generated with rcgen, and TLS clients. Every test uses its own 127.3.N.x
//! addresses; backends bind port 0.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nsemu::config::snapshot::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

pub fn user_vs(
    name: &str,
    addr: &str,
    port: u16,
    transport: Transport,
    lb: &str,
) -> UserVserverSpec {
    UserVserverSpec {
        name: name.into(),
        ip: ip(addr),
        port,
        transport,
        extension: None,
        default_lb: lb.into(),
        params: Vec::new(),
        enabled: true,
        certkey: None,
        tls: TlsVersions::default(),
        clt_timeout: 0,
    }
}

pub fn lb_vs(name: &str, method: LbMethod, members: &[&str]) -> LbVserverSpec {
    LbVserverSpec {
        name: name.into(),
        service_type: ServiceType::UserSslTcp,
        listen: None,
        method,
        persistence: Persistence::None,
        persistence_timeout_min: 2,
        clt_timeout: 0,
        enabled: true,
        members: members
            .iter()
            .map(|s| Member {
                service: s.to_string(),
                weight: 1,
            })
            .collect(),
        certkey: None,
        tls: TlsVersions::default(),
    }
}

pub fn service(name: &str, addr: SocketAddr, ty: ServiceType) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        server: format!("srv_{name}"),
        target: Target::Ip(addr.ip()),
        port: addr.port(),
        service_type: ty,
        enabled: true,
        max_client: 0,
        clt_timeout: 0,
        svr_timeout: 0,
        health_monitor: true,
        monitors: Vec::new(),
        server_auth: false,
        common_name: None,
        ca_certkeys: Vec::new(),
        tls: Default::default(),
        down_state_flush: true,
        drain_delay_secs: None,
    }
}

/// A snapshot from parts.
pub fn snapshot(
    users: Vec<UserVserverSpec>,
    lbs: Vec<LbVserverSpec>,
    services: Vec<ServiceSpec>,
    certkeys: Vec<CertKeySpec>,
) -> Snapshot {
    Snapshot {
        generation: 1,
        user_vservers: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        lb_vservers: lbs.into_iter().map(|l| (l.name.clone(), l)).collect(),
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
        certkeys: certkeys.into_iter().map(|c| (c.name.clone(), c)).collect(),
        extensions: imbl::OrdMap::new(),
        monitors: imbl::OrdMap::new(),
    }
}

/// The usual test front: plain user vserver `u` on `ip:port` in front of lb vserver `lb`
/// (`method`) with every service of `services` bound, in order, weight 1.
pub fn plain_front(ip: &str, port: u16, method: LbMethod, services: Vec<ServiceSpec>) -> Snapshot {
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let lb = lb_vs("lb", method, &names);
    snapshot(
        vec![user_vs("u", ip, port, Transport::Tcp, "lb")],
        vec![lb],
        services,
        vec![],
    )
}

// --- certificates ---

/// A self-signed certificate for `names`, written as PEM files in `dir`.
pub struct TestCert {
    pub spec: CertKeySpec,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

pub fn make_cert(dir: &Path, certkey: &str, names: &[&str]) -> TestCert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let cert: PathBuf = dir.join(format!("{certkey}.cert"));
    let key: PathBuf = dir.join(format!("{certkey}.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    TestCert {
        spec: CertKeySpec {
            name: certkey.into(),
            cert,
            key: Some(key),
        },
        cert_der: ck.cert.der().clone(),
        key_der: PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// --- backends ---

/// An echo backend; counts the connections it accepted.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 16384];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = s.shutdown().await;
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Plain TCP echo on `ip:0`.
pub async fn echo_tcp(ip_s: &str) -> Echo {
    let l = TcpListener::bind((ip(ip_s), 0)).await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(echo_conn(s));
        }
    });
    Echo {
        addr,
        accepted,
        task,
    }
}

/// TLS echo on `ip:0` with a fresh self-signed certificate.
pub async fn echo_tls(ip_s: &str) -> Echo {
    let ck = rcgen::generate_simple_self_signed(vec![ip_s.to_string()]).expect("rcgen");
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind((ip(ip_s), 0)).await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(t) = acceptor.accept(s).await {
                    echo_conn(t).await;
                }
            });
        }
    });
    Echo {
        addr,
        accepted,
        task,
    }
}

/// An address on which nothing listens (bound then closed).
pub async fn dead_addr(ip_s: &str) -> SocketAddr {
    let l = TcpListener::bind((ip(ip_s), 0)).await.expect("bind");
    l.local_addr().expect("addr")
}

// --- clients ---

/// Sends `msg` and expects it echoed back, within 5 s.
pub async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    msg: &[u8],
) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        if got != msg {
            return Err(std::io::Error::other("echo mismatch"));
        }
        Ok(())
    })
    .await
    .map_err(|_| std::io::Error::other("roundtrip timed out"))?
}

pub async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect(addr).await
}

/// Expects the peer to close the connection (EOF or reset) within 5 s, skipping whatever it
/// sends first (a TLS alert, for instance).
pub async fn expect_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    let until_closed = async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), until_closed)
        .await
        .is_ok()
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client trusting `root` (or anything, when `None`), offering only `versions`.
pub fn tls_client(
    root: Option<&CertificateDer<'static>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions");
    let cfg = match root {
        Some(r) => {
            let mut store = rustls::RootCertStore::empty();
            store.add(r.clone()).expect("root");
            b.with_root_certificates(store).with_no_client_auth()
        }
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

pub fn server_name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_string()).expect("server name")
}

/// Polls `f` every 10 ms until it is true or 5 s pass (for counters updated asynchronously).
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
