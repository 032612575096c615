//! Services at run time: where a service's server is (resolved addresses), how to reach it
//! (plain TCP or TLS with a per-service client config), and the stream types of both sides.
//!
//! A `ServiceRuntime` is built by the supervisor for each snapshot and *reused* for the next one
//! when the service spec (and its CA material) is unchanged, so the TLS client config, and with it
//! the backend session-resumption cache, lives as long as the service does. Domain targets are
//! re-resolved by a task owned by the runtime (aborted when the runtime is dropped).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::snapshot::{ServiceSpec, ServiceType, Target};
use crate::engine::stats::ServiceShared;
use crate::engine::tls;

/// How long a backend TCP connect plus TLS handshake may take before failover.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One service as the data path sees it.
pub(crate) struct ServiceRuntime {
    pub spec: ServiceSpec,
    pub shared: Arc<ServiceShared>,
    /// `Some` for TLS service types; shared by all connections (session resumption).
    tls: Option<Arc<ClientConfig>>,
    /// The CA certificates the TLS config was built with, to tell if it must be rebuilt.
    pub ca_der: Vec<Vec<u8>>,
    /// Current addresses; written only by the resolver task, read on each connect.
    addrs: Arc<RwLock<Vec<SocketAddr>>>,
    resolver: Option<JoinHandle<()>>,
}

/// The client side of a connection: plain or TLS terminated here.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The server side of a connection: plain or TLS originated here.
pub(crate) enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Sets TCP_NODELAY (MQTT is small packets; latency matters more than coalescing) and
/// keepalive (to notice vanished peers of long idle sessions) on a connected socket.
pub(crate) fn tune_socket(s: &TcpStream) {
    // Failures here only cost latency or dead-peer detection; the connection still works.
    let _ = s.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_keepalive(true);
    let _ = sock.set_tcp_keepalive(&ka);
}

// === impl ServiceRuntime ===

impl ServiceRuntime {
    /// Builds the runtime of `spec`. Must run inside a tokio runtime (spawns the resolver).
    pub fn new(
        spec: ServiceSpec,
        shared: Arc<ServiceShared>,
        tls: Option<Arc<ClientConfig>>,
        ca_der: Vec<Vec<u8>>,
    ) -> ServiceRuntime {
        let addrs = Arc::new(RwLock::new(Vec::new()));
        let resolver = match &spec.target {
            Target::Ip(ip) => {
                if let Ok(mut a) = addrs.write() {
                    a.push(SocketAddr::new(*ip, spec.port));
                }
                None
            }
            Target::Domain {
                name,
                resolve_retry_secs,
            } => {
                let (name, port, every) = (
                    name.clone(),
                    spec.port,
                    Duration::from_secs(u64::from((*resolve_retry_secs).max(1))),
                );
                let addrs = addrs.clone();
                Some(tokio::spawn(async move {
                    loop {
                        if let Ok(found) = tokio::net::lookup_host((name.as_str(), port)).await {
                            let found: Vec<SocketAddr> = found.collect();
                            if !found.is_empty() {
                                if let Ok(mut a) = addrs.write() {
                                    *a = found;
                                }
                            }
                        }
                        tokio::time::sleep(every).await;
                    }
                }))
            }
        };
        ServiceRuntime {
            spec,
            shared,
            tls,
            ca_der,
            addrs,
            resolver,
        }
    }

    /// True when the engine opens TLS toward this service.
    pub fn wants_tls(spec: &ServiceSpec) -> bool {
        spec.service_type.is_tls()
    }

    /// True when the service type is one nsemu proxies.
    pub fn proxied(spec: &ServiceSpec) -> bool {
        matches!(
            spec.service_type,
            ServiceType::Tcp
                | ServiceType::SslTcp
                | ServiceType::Ssl
                | ServiceType::UserTcp
                | ServiceType::UserSslTcp
                | ServiceType::Any
        )
    }

    /// Whether the client TLS config can be kept for `spec` with CA material `ca_der`.
    pub fn same_backend(&self, spec: &ServiceSpec, ca_der: &[Vec<u8>]) -> bool {
        self.spec == *spec && self.ca_der == ca_der
    }

    /// Opens a connection to the service (TCP, then TLS if the type wants it), within
    /// `CONNECT_TIMEOUT`.
    pub async fn connect(&self) -> io::Result<BackendStream> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "backend connect timed out"))?
    }

    async fn connect_inner(&self) -> io::Result<BackendStream> {
        let mut addrs = self.addrs.read().map(|a| a.clone()).unwrap_or_default();
        if addrs.is_empty() {
            // First use before the resolver answered: resolve inline.
            if let Target::Domain { name, .. } = &self.spec.target {
                addrs = tokio::net::lookup_host((name.as_str(), self.spec.port))
                    .await?
                    .collect();
            }
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for service");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    tune_socket(&tcp);
                    return match &self.tls {
                        None => Ok(BackendStream::Plain(tcp)),
                        Some(cfg) => {
                            let name = tls::backend_server_name(&self.spec, addr.ip());
                            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                                .connect(name, tcp)
                                .await?;
                            Ok(BackendStream::Tls(Box::new(tls)))
                        }
                    };
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Drop for ServiceRuntime {
    fn drop(&mut self) {
        if let Some(r) = &self.resolver {
            r.abort();
        }
    }
}

// === AsyncRead/AsyncWrite delegation for the two stream enums ===

macro_rules! delegate_io {
    ($t:ident) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_flush(cx),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(ClientStream);
delegate_io!(BackendStream);
