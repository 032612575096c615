//! `Snapshot::compile`: the typed, engine-ready view of a `Config`.
//!
//! Everything the engine needs is resolved here (certkey fallback, service group members as
//! services, effective enabled flags, timeouts and durations in numbers), so the engine never
//! interprets NetScaler strings.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::apply::{check_params, duration_ms};
use super::model::{CertBind, Config, Kind, Object};
use super::rules;
use super::snapshot::*;

/// Where relative file names resolve.
#[derive(Debug, Clone, Default)]
pub struct CompileEnv {
    /// NetScaler's /nsconfig/ssl: certkey files given relative resolve here.
    pub ssl_dir: PathBuf,
}

fn num(o: &Object, key: &str, default: u32) -> u32 {
    o.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn service_type(t: &str) -> ServiceType {
    match t {
        "TCP" => ServiceType::Tcp,
        "SSL_TCP" => ServiceType::SslTcp,
        "SSL" => ServiceType::Ssl,
        "USER_TCP" => ServiceType::UserTcp,
        "USER_SSL_TCP" => ServiceType::UserSslTcp,
        "SSL_BRIDGE" => ServiceType::SslBridge,
        "HTTP" => ServiceType::Http,
        "ANY" => ServiceType::Any,
        other => ServiceType::Other(other.to_string()),
    }
}

fn tls_versions(o: &Object) -> TlsVersions {
    let d = TlsVersions::default();
    let on = |k: &str, dflt: bool| o.ssl.get(k).map(|v| v == "ENABLED").unwrap_or(dflt);
    TlsVersions {
        ssl3: on("ssl3", d.ssl3),
        tls1: on("tls1", d.tls1),
        tls11: on("tls11", d.tls11),
        tls12: on("tls12", d.tls12),
        tls13: on("tls13", d.tls13),
    }
}

fn server_cert(certs: &[CertBind]) -> Option<String> {
    certs
        .iter()
        .find(|c| !c.ca && !c.sni)
        .map(|c| c.certkey.clone())
}

fn resolve(dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

impl Snapshot {
    /// Compiles the engine's view of `cfg`.
    pub fn compile(cfg: &Config, env: &CompileEnv, generation: u64) -> Snapshot {
        let mut s = Snapshot {
            generation,
            ..Snapshot::default()
        };

        for e in cfg.iter(Kind::Extension).filter(|e| e.loaded) {
            s.extensions.insert(
                e.name.clone(),
                ExtensionSpec {
                    name: e.name.clone(),
                    code: e.code.clone().unwrap_or_default(),
                    src: e.get("src").unwrap_or("").to_string(),
                },
            );
        }
        for c in cfg.iter(Kind::CertKey) {
            s.certkeys.insert(
                c.name.clone(),
                CertKeySpec {
                    name: c.name.clone(),
                    cert: resolve(&env.ssl_dir, c.get("cert").unwrap_or("")),
                    key: c.get("key").map(|k| resolve(&env.ssl_dir, k)),
                },
            );
        }
        for (name, kind) in rules::BUILTIN_MONITORS {
            s.monitors
                .insert(name.to_string(), builtin_monitor(name, kind));
        }
        for m in cfg.iter(Kind::Monitor) {
            s.monitors.insert(m.name.clone(), monitor(m));
        }

        let target = |server: &str| -> (Target, bool) {
            match cfg.get(Kind::Server, server) {
                Some(sv) => {
                    let addr = sv.get("IPAddress").unwrap_or("");
                    let t = match addr.parse::<IpAddr>() {
                        Ok(ip) => Target::Ip(ip),
                        Err(_) => Target::Domain {
                            name: addr.to_string(),
                            resolve_retry_secs: num(sv, "domainResolveRetry", 5),
                        },
                    };
                    (t, sv.enabled())
                }
                // A service always has its server (config rule); be total anyway.
                None => (
                    Target::Domain {
                        name: server.to_string(),
                        resolve_retry_secs: 5,
                    },
                    false,
                ),
            }
        };
        let binds = |o: &Object| -> Vec<MonitorBinding> {
            o.monitors
                .iter()
                .map(|m| MonitorBinding {
                    monitor: m.monitor.clone(),
                    weight: m.weight,
                    enabled: m.enabled,
                })
                .collect()
        };
        for o in cfg.iter(Kind::Service) {
            let server = o.get("serverName").unwrap_or("").to_string();
            let (t, server_on) = target(&server);
            let server_drain = (o.enabled() && !server_on)
                .then(|| cfg.get(Kind::Server, &server).and_then(|sv| sv.drain_delay))
                .flatten();
            let ca = o
                .certs
                .iter()
                .filter(|c| c.ca)
                .map(|c| c.certkey.clone())
                .collect();
            s.services.insert(
                o.name.clone(),
                ServiceSpec {
                    name: o.name.clone(),
                    server,
                    target: t,
                    port: num(o, "port", 0) as u16,
                    service_type: service_type(o.get("serviceType").unwrap_or("")),
                    enabled: o.enabled() && server_on,
                    max_client: num(o, "maxClient", 0),
                    clt_timeout: num(o, "cltTimeout", 0),
                    svr_timeout: num(o, "svrTimeout", 0),
                    health_monitor: o.get("healthMonitor") != Some("NO"),
                    monitors: binds(o),
                    server_auth: o.ssl.get("serverAuth").map(String::as_str) == Some("ENABLED"),
                    common_name: o.ssl.get("commonName").cloned(),
                    ca_certkeys: ca,
                    // A service disabled only through its server drains as the server was told.
                    drain_delay_secs: o.drain_delay.or(server_drain),
                },
            );
        }
        // Service group members become services named GROUP/SERVER:PORT.
        let mut group_members: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
        for g in cfg.iter(Kind::ServiceGroup) {
            for m in &g.group_members {
                let name = format!("{}/{}:{}", g.name, m.server, m.port);
                let (t, server_on) = target(&m.server);
                s.services.insert(
                    name.clone(),
                    ServiceSpec {
                        name: name.clone(),
                        server: m.server.clone(),
                        target: t,
                        port: m.port.parse().unwrap_or(0),
                        service_type: service_type(g.get("serviceType").unwrap_or("")),
                        enabled: g.enabled() && m.enabled && server_on,
                        max_client: num(g, "maxClient", 0),
                        clt_timeout: num(g, "cltTimeout", 0),
                        svr_timeout: num(g, "svrTimeout", 0),
                        health_monitor: g.get("healthMonitor") != Some("NO"),
                        monitors: binds(g),
                        server_auth: false,
                        common_name: None,
                        ca_certkeys: Vec::new(),
                        drain_delay_secs: None,
                    },
                );
                group_members
                    .entry(g.name.clone())
                    .or_default()
                    .push((name, m.weight));
            }
        }

        for v in cfg.iter(Kind::LbVserver) {
            let mut members = Vec::new();
            for m in &v.members {
                match group_members.get(&m.service) {
                    Some(gm) => members.extend(gm.iter().map(|(n, w)| Member {
                        service: n.clone(),
                        weight: *w,
                    })),
                    None => members.push(Member {
                        service: m.service.clone(),
                        weight: m.weight,
                    }),
                }
            }
            let listen = match (
                v.get("IPAddress").and_then(|a| a.parse().ok()),
                v.get("port"),
            ) {
                (Some(ip), Some(p)) => p.parse().ok().map(|p| (ip, p)),
                _ => None,
            };
            s.lb_vservers.insert(
                v.name.clone(),
                LbVserverSpec {
                    name: v.name.clone(),
                    service_type: service_type(v.get("serviceType").unwrap_or("")),
                    listen,
                    method: match v.get("lbMethod").unwrap_or("LEASTCONNECTION") {
                        "ROUNDROBIN" => LbMethod::RoundRobin,
                        "LEASTCONNECTION" => LbMethod::LeastConnection,
                        "SOURCEIPHASH" => LbMethod::SourceIpHash,
                        "USER_TOKEN" => LbMethod::UserToken,
                        _ => LbMethod::Other,
                    },
                    persistence: match v.get("persistenceType").unwrap_or("NONE") {
                        "NONE" => Persistence::None,
                        "SOURCEIP" => Persistence::SourceIp,
                        "USERSESSION" => Persistence::UserSession,
                        _ => Persistence::Other,
                    },
                    persistence_timeout_min: num(v, "timeout", 2),
                    clt_timeout: num(v, "cltTimeout", 0),
                    enabled: v.enabled(),
                    members,
                    certkey: server_cert(&v.certs),
                    tls: tls_versions(v),
                },
            );
        }

        for u in cfg.iter(Kind::UserVserver) {
            let proto = u
                .get("userProtocol")
                .and_then(|p| cfg.get(Kind::UserProtocol, p));
            let default_lb = u.get("defaultLB").unwrap_or("").to_string();
            let lb = cfg.get(Kind::LbVserver, &default_lb);
            let Some(ip) = u.get("IPAddress").and_then(|a| a.parse().ok()) else {
                continue;
            };
            s.user_vservers.insert(
                u.name.clone(),
                UserVserverSpec {
                    name: u.name.clone(),
                    ip,
                    port: num(u, "port", 0) as u16,
                    transport: if proto.and_then(|p| p.get("transport")) == Some("SSL") {
                        Transport::Ssl
                    } else {
                        Transport::Tcp
                    },
                    extension: proto.and_then(|p| p.get("extension")).map(str::to_string),
                    default_lb,
                    params: u
                        .get("params")
                        .and_then(|p| check_params(p).ok())
                        .unwrap_or_default(),
                    enabled: u.enabled(),
                    // The user vserver's own certkey; else the one bound to its default lb
                    // vserver, as the lab binds it there (docs/decisions.md).
                    certkey: server_cert(&u.certs)
                        .or_else(|| lb.and_then(|l| server_cert(&l.certs))),
                    tls: if u.ssl.is_empty() {
                        lb.map(tls_versions).unwrap_or_default()
                    } else {
                        tls_versions(u)
                    },
                    clt_timeout: lb.map(|l| num(l, "cltTimeout", 180)).unwrap_or(180),
                },
            );
        }
        s
    }
}

fn builtin_monitor(name: &str, kind: &str) -> MonitorSpec {
    MonitorSpec {
        name: name.to_string(),
        kind: kind.to_string(),
        interval_ms: 5000,
        resp_timeout_ms: 2000,
        retries: 3,
        success_retries: 1,
        down_time_ms: 30_000,
        dest_ip: None,
        dest_port: None,
        secure: false,
        send: None,
        recv: None,
        user_name: None,
        password: None,
        enabled: true,
    }
}

fn monitor(m: &Object) -> MonitorSpec {
    MonitorSpec {
        name: m.name.clone(),
        kind: m.get("type").unwrap_or("TCP").to_string(),
        interval_ms: duration_ms(m.get("interval").unwrap_or("5"), "SEC"),
        resp_timeout_ms: duration_ms(m.get("resptimeout").unwrap_or("2"), "SEC"),
        retries: num(m, "retries", 3),
        success_retries: num(m, "successRetries", 1),
        down_time_ms: duration_ms(m.get("downTime").unwrap_or("30"), "SEC"),
        dest_ip: m.get("destIP").and_then(|a| a.parse().ok()),
        dest_port: m.get("destPort").and_then(|p| p.parse().ok()),
        secure: m.get("secure") == Some("YES"),
        send: m.get("send").map(str::to_string),
        recv: m.get("recv").map(str::to_string),
        user_name: m.get("userName").map(str::to_string),
        password: m.get("password").map(str::to_string),
        enabled: m.enabled(),
    }
}
