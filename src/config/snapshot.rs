//! The engine-ready view of a configuration.
//!
//! A `Snapshot` is immutable and shared behind an `Arc`: the engine publishes each new one on a
//! `tokio::sync::watch` channel and every connection keeps the snapshot it was accepted under, so
//! an admin's edit never changes a connection's path mid-stream. It holds only what the data path
//! needs, already typed and resolved (the certkey a listener serves, the members of an lb vserver
//! with service groups expanded, effective enabled flags). Runtime state (health, counters) lives
//! in the engine, never here. Built by `Snapshot::compile` from a `Config` (see `compile.rs`).

use std::net::IpAddr;
use std::path::PathBuf;

/// The snapshot's maps: ordered by name, and persistent (structurally shared), so that the next
/// snapshot is the previous one with the changed entries replaced, at O(log n) per change,
/// instead of a rebuild of the whole graph for every admin command.
pub type Map<V> = imbl::OrdMap<String, V>;

/// Everything the engine runs, as of one committed configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Monotonic; each commit gets the next number.
    pub generation: u64,
    /// User vservers by name (listeners with a user protocol and a default lb vserver).
    pub user_vservers: Map<UserVserverSpec>,
    /// LB vservers by name; addressable TCP/SSL_TCP ones listen themselves.
    pub lb_vservers: Map<LbVserverSpec>,
    /// Services by name, including one synthetic service per service group member
    /// (named `GROUP/SERVER:PORT`).
    pub services: Map<ServiceSpec>,
    /// Certificate/key pairs by certkey name, paths already resolved to absolute ones.
    pub certkeys: Map<CertKeySpec>,
    /// Protocol extensions (Lua source) by extension name.
    pub extensions: Map<ExtensionSpec>,
    /// Monitors by name (built-ins included: `tcp-default`, `ping-default`, ...).
    pub monitors: Map<MonitorSpec>,
}

/// How a listener talks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS terminated by nsemu with the listener's certkey.
    Ssl,
}

/// Which TLS protocol versions an SSL entity has enabled (`set ssl vserver -tls12 ...`).
/// The engine offers only what rustls can do (TLS 1.2 and 1.3); the others are recorded so the
/// config round-trips, and the shell warns when they are enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsVersions {
    pub ssl3: bool,
    pub tls1: bool,
    pub tls11: bool,
    pub tls12: bool,
    pub tls13: bool,
}

impl Default for TlsVersions {
    fn default() -> Self {
        // nsemu's default is what it can honour: TLS 1.2 and 1.3 (see docs/decisions.md).
        TlsVersions {
            ssl3: false,
            tls1: false,
            tls11: false,
            tls12: true,
            tls13: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserVserverSpec {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    /// From the user protocol.
    pub transport: Transport,
    /// Extension name from the user protocol, if any (a key of `Snapshot::extensions`).
    pub extension: Option<String>,
    /// Key of `Snapshot::lb_vservers`; always present (validated by config).
    pub default_lb: String,
    /// `-params` as name/value pairs, in the order given.
    pub params: Vec<(String, String)>,
    /// Admin state (enable/disable user vserver).
    pub enabled: bool,
    /// The certkey served on TLS handshakes: the one bound to this user vserver, else the one bound
    /// to its default lb vserver. `None` for an SSL transport means the listener stays DOWN.
    pub certkey: Option<String>,
    /// TLS versions of this user vserver's ssl settings.
    pub tls: TlsVersions,
    /// Client idle timeout in seconds (0 = none).
    pub clt_timeout: u32,
}

/// Service types the engine distinguishes; others are carried as `Other` and not proxied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceType {
    Tcp,
    SslTcp,
    Ssl,
    UserTcp,
    UserSslTcp,
    SslBridge,
    Http,
    Any,
    Other(String),
}

impl ServiceType {
    /// True when nsemu opens TLS toward the backend (or terminates it, for a vserver).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            ServiceType::SslTcp | ServiceType::Ssl | ServiceType::UserSslTcp
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMethod {
    RoundRobin,
    LeastConnection,
    SourceIpHash,
    /// Consistent hash of the token supplied by the protocol extension.
    UserToken,
    /// Any other NetScaler method: accepted in config, balanced as LEASTCONNECTION.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    None,
    SourceIp,
    /// Keyed by the extension's `user_session`.
    UserSession,
    /// Any other NetScaler persistence type: accepted in config, not enforced.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LbVserverSpec {
    pub name: String,
    pub service_type: ServiceType,
    /// `Some` for an addressable vserver (listens itself), `None` for a non-addressable one.
    pub listen: Option<(IpAddr, u16)>,
    pub method: LbMethod,
    pub persistence: Persistence,
    /// Persistence timeout in minutes (`-timeout`).
    pub persistence_timeout_min: u32,
    pub clt_timeout: u32,
    pub enabled: bool,
    /// Bound services (and expanded service group members), in binding order.
    pub members: Vec<Member>,
    /// Certkey bound to this lb vserver (served when it listens itself with an SSL type, and the
    /// fallback for user vservers that name it as `-defaultLB`).
    pub certkey: Option<String>,
    pub tls: TlsVersions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Key of `Snapshot::services`.
    pub service: String,
    /// 1-100, default 1.
    pub weight: u32,
}

/// Where a service's server is.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Ip(IpAddr),
    /// Resolved by the engine every `resolve_retry_secs`.
    Domain {
        name: String,
        resolve_retry_secs: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub server: String,
    pub target: Target,
    pub port: u16,
    pub service_type: ServiceType,
    /// Service and its server are both enabled.
    pub enabled: bool,
    /// 0 = no limit.
    pub max_client: u32,
    pub clt_timeout: u32,
    pub svr_timeout: u32,
    /// `-healthMonitor NO` means always UP.
    pub health_monitor: bool,
    /// Bound monitors (keys of `Snapshot::monitors`); empty means the built-in default.
    pub monitors: Vec<MonitorBinding>,
    /// `set ssl service -serverAuth ENABLED`: verify the backend certificate against `ca_certkeys`.
    pub server_auth: bool,
    /// `set ssl service -commonName`: the name to verify (and the SNI) when server auth is on.
    pub common_name: Option<String>,
    /// Certkeys bound to the ssl service with `-CA`.
    pub ca_certkeys: Vec<String>,
    /// TLS versions offered to the backend (`set ssl service -tls12/-tls13`).
    pub tls: TlsVersions,
    /// `-downStateFlush`: close established connections when the service goes DOWN.
    pub down_state_flush: bool,
    /// Graceful disable: stop new connections, let existing ones finish within this many seconds.
    pub drain_delay_secs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorBinding {
    pub monitor: String,
    pub weight: u32,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertKeySpec {
    pub name: String,
    pub cert: PathBuf,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionSpec {
    pub name: String,
    /// The Lua source as imported.
    pub code: String,
    /// Where it came from (for messages).
    pub src: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSpec {
    pub name: String,
    /// Upper-case NetScaler type: TCP, TCP-ECV, MQTT, PING, HTTP, ...
    pub kind: String,
    pub interval_ms: u64,
    pub resp_timeout_ms: u64,
    pub retries: u32,
    pub success_retries: u32,
    pub down_time_ms: u64,
    pub dest_ip: Option<IpAddr>,
    pub dest_port: Option<u16>,
    pub secure: bool,
    pub send: Option<String>,
    pub recv: Option<String>,
    pub user_name: Option<String>,
    pub password: Option<String>,
    pub enabled: bool,
}
