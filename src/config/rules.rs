//! NetScaler's per-type facts: default timeouts, which service types an lb vserver accepts, which
//! types are SSL, the built-in monitors.

/// Built-in monitors (name, type): they exist on every appliance and cannot be removed.
pub const BUILTIN_MONITORS: &[(&str, &str)] = &[
    ("ping-default", "PING"),
    ("tcp-default", "TCP"),
    ("arp", "ARP"),
    ("nd6", "ND6"),
    ("ping", "PING"),
    ("tcp", "TCP"),
    ("http", "HTTP"),
    ("tcp-ecv", "TCP-ECV"),
    ("http-ecv", "HTTP-ECV"),
    ("udp-ecv", "UDP-ECV"),
    ("dns", "DNS"),
    ("ftp", "FTP"),
    ("mqtt", "MQTT"),
];

/// The monitors a service uses when none is bound; they cannot be bound explicitly.
pub const DEFAULT_MONITORS: &[&str] = &["ping-default", "tcp-default"];

pub fn builtin_monitor(name: &str) -> Option<&'static str> {
    BUILTIN_MONITORS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
}

fn is_udp_like(t: &str) -> bool {
    matches!(
        t,
        "UDP"
            | "DNS"
            | "ADNS"
            | "SNMP"
            | "DHCPRA"
            | "SIP_UDP"
            | "RADIUS"
            | "RADIUSListener"
            | "TFTP"
            | "SYSLOGUDP"
            | "DTLS"
    )
}

/// Client and server idle timeouts (seconds) a service of this type gets by default, as ns.conf
/// shows them (HTTP, SSL and USER_* 180/360, TCP-like 9000/9000, UDP-like 120/120).
pub fn service_timeouts(service_type: &str) -> (u32, u32) {
    match service_type {
        "TCP" | "SSL_TCP" | "ANY" | "MQTT" | "MQTT_TLS" | "MYSQL" | "MSSQL" | "ORACLE" | "RDP"
        | "DNS_TCP" | "ADNS_TCP" | "SYSLOGTCP" | "SMPP" | "FIX" | "SSL_FIX" => (9000, 9000),
        t if is_udp_like(t) => (120, 120),
        _ => (180, 360),
    }
}

/// `-useproxyport` default: NO for UDP-like services.
pub fn service_useproxyport(service_type: &str) -> &'static str {
    if is_udp_like(service_type) {
        "NO"
    } else {
        "YES"
    }
}

/// An lb vserver's default client idle timeout.
pub fn vserver_clt_timeout(service_type: &str) -> u32 {
    service_timeouts(service_type).0
}

pub fn is_user_type(t: &str) -> bool {
    matches!(t, "USER_TCP" | "USER_SSL_TCP")
}

/// Types whose vservers (or services) carry SSL settings and certkeys.
pub fn is_ssl_type(t: &str) -> bool {
    matches!(
        t,
        "SSL"
            | "SSL_TCP"
            | "SSL_BRIDGE"
            | "USER_SSL_TCP"
            | "SSL_DIAMETER"
            | "SSL_FIX"
            | "SIP_SSL"
            | "DTLS"
            | "SSL_PUSH"
            | "MQTT_TLS"
    )
}

/// Whether an lb vserver of type `vs` may have a service of type `svc` bound (NetScaler's 1304
/// rule; SSL front ends take their plain counterparts, user types take each other).
pub fn compatible(vs: &str, svc: &str) -> bool {
    if vs == svc || vs == "ANY" || svc == "ANY" {
        return true;
    }
    let family = |t: &str| match t {
        "HTTP" | "SSL" => "http",
        "TCP" | "SSL_TCP" => "tcp",
        "USER_TCP" | "USER_SSL_TCP" => "user",
        "MQTT" | "MQTT_TLS" => "mqtt",
        "DNS" | "DNS_TCP" => "dns",
        _ => "",
    };
    !family(vs).is_empty() && family(vs) == family(svc)
}
