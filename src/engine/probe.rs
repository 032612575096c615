//! One health probe: what a monitor sends to a service and how the answer is judged.
//!
//! Owns the wire side of monitoring (TCP connect, TCP-ECV send/expect, the MQTT 3.1.1
//! CONNECT/CONNACK exchange, TLS when asked) and the NetScaler-style "last response" texts. It
//! knows nothing of timing, retries or states: `monitor.rs` runs probes on a schedule, bounds each
//! one by the monitor's response timeout and turns outcomes into states.
//!
//! Types that need raw sockets (PING, ARP, ND6) or UDP are accepted and reported UP with a last
//! response saying they are not probed (nsemu runs unprivileged, on loopback). Types nsemu has no
//! protocol probe for (HTTP, DNS, ...) are probed as a TCP connect, and the response says so.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The result of one probe: UP or not, and the text `show service` prints as "Last response".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub up: bool,
    pub response: String,
}

/// What a probe does once connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    /// Connect (and TLS handshake when `tls`) succeeds.
    Tcp,
    /// Send `send`, then expect `recv` somewhere in the answer (TCP-ECV).
    TcpEcv {
        send: Option<String>,
        recv: Option<String>,
    },
    /// MQTT 3.1.1 CONNECT, expect CONNACK return code 0, then DISCONNECT.
    Mqtt {
        user: Option<String>,
        password: Option<String>,
    },
    /// Not probed; always UP with this explanation as the last response.
    NotProbed(String),
}

/// Everything one probe needs; compared between commits to tell whether a monitor's task can
/// keep running unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    pub kind: ProbeKind,
    /// Host (IP or domain name) and port to probe.
    pub host: String,
    pub port: u16,
    /// Probe over TLS (monitor `-secure YES`, or the default monitor of a TLS service).
    pub tls: bool,
}

/// Something that can be probed: the real `Prober`, or a fake in unit tests.
pub(crate) trait Probe: Send + Sync + 'static {
    fn probe(&self) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>>;
}

/// The real probe of one (service, monitor) binding.
pub(crate) struct Prober {
    spec: ProbeSpec,
    /// Accept-any client config (monitors do not verify certificates, like NetScaler's).
    tls: Option<Arc<ClientConfig>>,
}

/// Generates distinct MQTT client ids within a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

// === impl Outcome ===

impl Outcome {
    pub fn up(response: impl Into<String>) -> Outcome {
        Outcome {
            up: true,
            response: response.into(),
        }
    }

    pub fn down(response: impl Into<String>) -> Outcome {
        Outcome {
            up: false,
            response: response.into(),
        }
    }

    /// What a probe that did not finish within the response timeout reports.
    pub fn timed_out() -> Outcome {
        Outcome::down("Failure - Probe timed out.")
    }
}

// === impl ProbeKind ===

impl ProbeKind {
    /// The probe for a NetScaler monitor type (upper case) with its options.
    pub fn for_type(
        kind: &str,
        send: &Option<String>,
        recv: &Option<String>,
        user: &Option<String>,
        password: &Option<String>,
    ) -> ProbeKind {
        match kind {
            "TCP" => ProbeKind::Tcp,
            "TCP-ECV" => ProbeKind::TcpEcv {
                send: send.clone(),
                recv: recv.clone(),
            },
            "MQTT" => ProbeKind::Mqtt {
                user: user.clone(),
                password: password.clone(),
            },
            "PING" | "ARP" | "ND6" => ProbeKind::NotProbed(format!(
                "Success - {kind} is not probed: nsemu has no raw sockets; service assumed UP."
            )),
            t if t.starts_with("UDP") || t == "DNS" || t == "RADIUS" || t == "SNMP" => {
                ProbeKind::NotProbed(format!(
                    "Success - {t} monitors are not probed by nsemu (no UDP probes); service assumed UP."
                ))
            }
            // HTTP, HTTP-ECV, FTP, LDAP, ...: reachability only.
            _ => ProbeKind::Tcp,
        }
    }
}

// === impl Prober ===

impl Prober {
    pub fn new(spec: ProbeSpec, tls: Option<Arc<ClientConfig>>) -> Prober {
        Prober { spec, tls }
    }

    async fn run(&self) -> Outcome {
        if let ProbeKind::NotProbed(why) = &self.spec.kind {
            return Outcome::up(why.clone());
        }
        let addr = match resolve(&self.spec.host, self.spec.port).await {
            Ok(a) => a,
            Err(e) => {
                return Outcome::down(format!("Failure - Cannot resolve {}: {e}.", self.spec.host))
            }
        };
        let tcp = match TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Outcome::down("Failure - TCP connection refused.")
            }
            Err(e) => return Outcome::down(format!("Failure - TCP connection failed: {e}.")),
        };
        let _ = tcp.set_nodelay(true);
        match (&self.tls, self.spec.tls) {
            (Some(cfg), true) => {
                let name = match self.spec.host.parse::<std::net::IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => match ServerName::try_from(self.spec.host.clone()) {
                        Ok(n) => n,
                        Err(_) => ServerName::IpAddress(addr.ip().into()),
                    },
                };
                match tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                {
                    Ok(s) => self.converse(s, true).await,
                    Err(e) => Outcome::down(format!("Failure - TLS handshake failed: {e}.")),
                }
            }
            _ => self.converse(tcp, false).await,
        }
    }

    /// The exchange after connecting (and the TLS handshake when `tls`).
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(&self, mut s: S, tls: bool) -> Outcome {
        match &self.spec.kind {
            ProbeKind::Tcp => {
                let what = if tls {
                    "Success - TLS handshake completed."
                } else {
                    "Success - TCP syn+ack received."
                };
                Outcome::up(what)
            }
            ProbeKind::TcpEcv { send, recv } => tcp_ecv(&mut s, send, recv).await,
            ProbeKind::Mqtt { user, password } => {
                mqtt(&mut s, user.as_deref(), password.as_deref()).await
            }
            ProbeKind::NotProbed(why) => Outcome::up(why.clone()),
        }
    }
}

impl Probe for Prober {
    fn probe(&self) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(self.run())
    }
}

async fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}

/// TCP-ECV: send the string (if any), then read until the expected string shows up (any answer
/// counts when none is expected).
async fn tcp_ecv<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    send: &Option<String>,
    recv: &Option<String>,
) -> Outcome {
    if let Some(data) = send.as_deref().filter(|d| !d.is_empty()) {
        if let Err(e) = s.write_all(data.as_bytes()).await {
            return Outcome::down(format!("Failure - Send failed: {e}."));
        }
        let _ = s.flush().await;
    }
    let Some(want) = recv.as_deref().filter(|r| !r.is_empty()) else {
        return Outcome::up("Success - TCP syn+ack received.");
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return Outcome::down("Failure - Pattern not found in response."),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&got).contains(want) {
                    return Outcome::up("Success - Pattern found in response.");
                }
                if got.len() > 64 * 1024 {
                    return Outcome::down("Failure - Pattern not found in response.");
                }
            }
            Err(e) => return Outcome::down(format!("Failure - Receive failed: {e}.")),
        }
    }
}

/// MQTT 3.1.1: CONNECT (clean session, keepalive 10 s, a generated client id, optional
/// credentials), expect CONNACK 0, then DISCONNECT.
async fn mqtt<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: Option<&str>,
    password: Option<&str>,
) -> Outcome {
    let id = format!(
        "nsemu-mon-{:x}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = s.write_all(&connect_packet(&id, user, password)).await {
        return Outcome::down(format!("Failure - Send failed: {e}."));
    }
    let _ = s.flush().await;
    let mut ack = [0u8; 4];
    if let Err(e) = s.read_exact(&mut ack).await {
        let why = if e.kind() == io::ErrorKind::UnexpectedEof {
            "connection closed before CONNACK".to_string()
        } else {
            e.to_string()
        };
        return Outcome::down(format!("Failure - MQTT: {why}."));
    }
    if ack[0] != 0x20 || ack[1] != 0x02 {
        return Outcome::down(format!(
            "Failure - MQTT: unexpected answer (0x{:02x}), not a CONNACK.",
            ack[0]
        ));
    }
    let code = ack[3];
    if code != 0 {
        return Outcome::down(format!(
            "Failure - CONNACK return code {code} ({}).",
            connack_reason(code)
        ));
    }
    // DISCONNECT; the broker closes, and errors no longer matter.
    let _ = s.write_all(&[0xE0, 0x00]).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
    Outcome::up("Success - CONNACK return code 0 (connection accepted).")
}

/// The MQTT 3.1.1 return codes of CONNACK.
pub(crate) fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "connection accepted",
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// Encodes an MQTT 3.1.1 CONNECT packet.
pub(crate) fn connect_packet(id: &str, user: Option<&str>, password: Option<&str>) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        let n = s.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&s[..n]);
    }
    let mut flags = 0x02; // clean session
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    let flags_at = body.len();
    body.push(0);
    body.extend_from_slice(&10u16.to_be_bytes()); // keepalive
    string(&mut body, id.as_bytes());
    if let Some(u) = user {
        flags |= 0x80;
        string(&mut body, u.as_bytes());
        if let Some(p) = password {
            flags |= 0x40;
            string(&mut body, p.as_bytes());
        }
    }
    body[flags_at] = flags;
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_carries_id_and_credentials() {
        let p = connect_packet("id1", Some("u"), Some("pw"));
        assert_eq!(p[0], 0x10);
        assert_eq!(usize::from(p[1]), p.len() - 2);
        assert_eq!(&p[2..8], b"\x00\x04MQTT");
        assert_eq!(p[8], 4);
        assert_eq!(p[9], 0x80 | 0x40 | 0x02);
        assert!(p.ends_with(b"\x00\x03id1\x00\x01u\x00\x02pw"));
        let anon = connect_packet("x", None, Some("ignored"));
        assert_eq!(anon[9], 0x02);
    }

    #[test]
    fn types_without_a_probe_are_explained() {
        let k = ProbeKind::for_type("PING", &None, &None, &None, &None);
        assert!(matches!(k, ProbeKind::NotProbed(ref w) if w.contains("raw sockets")));
        assert_eq!(
            ProbeKind::for_type("HTTP", &None, &None, &None, &None),
            ProbeKind::Tcp
        );
    }
}
