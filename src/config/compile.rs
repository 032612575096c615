//! `Snapshot::compile`: the typed, engine-ready view of a `Config`.
//!
//! Everything the engine needs is resolved here (certkey fallback, service group members as
//! services, effective enabled flags, timeouts and durations in numbers), so the engine never
//! interprets NetScaler strings.

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
    /// Compiles the engine's view of `cfg` from scratch (boot, and the reference the
    /// incremental path is tested against).
    pub fn compile(cfg: &Config, env: &CompileEnv, generation: u64) -> Snapshot {
        let mut s = Snapshot {
            generation,
            ..Snapshot::default()
        };
        for (name, kind) in rules::BUILTIN_MONITORS {
            s.monitors
                .insert(name.to_string(), builtin_monitor(name, kind));
        }
        for kind in Kind::ALL {
            for o in cfg.iter(kind) {
                s.put(cfg, env, kind, &o.name);
            }
        }
        s
    }

    /// The snapshot of `cfg`, given the snapshot `prev` compiled from `prev_cfg`: only the
    /// entries that the change touches are recompiled, the rest is shared with `prev`. With
    /// persistent maps on both sides, one admin command costs O(changes x log n), not a rebuild
    /// of the whole graph.
    pub fn compile_incremental(
        prev: &Snapshot,
        prev_cfg: &Config,
        cfg: &Config,
        env: &CompileEnv,
        generation: u64,
    ) -> Snapshot {
        let mut s = prev.clone();
        s.generation = generation;
        let mut todo: Vec<(Kind, String)> = Vec::new();
        for (kind, key) in cfg.changed_since(prev_cfg) {
            // The object's name as stored (user protocol keys are case-folded).
            let name = cfg
                .get(kind, &key)
                .or_else(|| prev_cfg.get(kind, &key))
                .map(|o| o.name.clone())
                .unwrap_or(key);
            // What depends on the changed object, in either config.
            for c in [prev_cfg, cfg] {
                dependents(c, kind, &name, &mut todo);
            }
            todo.push((kind, name));
        }
        todo.sort();
        todo.dedup();
        for (kind, name) in todo {
            s.drop_entry(prev_cfg, kind, &name);
            s.put(cfg, env, kind, &name);
        }
        s
    }

    /// Removes what an object contributed to the snapshot.
    fn drop_entry(&mut self, prev_cfg: &Config, kind: Kind, name: &str) {
        match kind {
            Kind::Extension => {
                self.extensions.remove(name);
            }
            Kind::CertKey => {
                self.certkeys.remove(name);
            }
            Kind::Monitor => {
                self.monitors.remove(name);
            }
            Kind::Service => {
                self.services.remove(name);
            }
            Kind::ServiceGroup => {
                if let Some(g) = prev_cfg.get(Kind::ServiceGroup, name) {
                    for m in &g.group_members {
                        self.services.remove(&member_name(name, &m.server, &m.port));
                    }
                }
            }
            Kind::LbVserver => {
                self.lb_vservers.remove(name);
            }
            Kind::UserVserver => {
                self.user_vservers.remove(name);
            }
            // Servers and user protocols have no entry of their own: their dependents do.
            Kind::Server | Kind::UserProtocol => {}
        }
    }

    /// Compiles an object of `cfg` into the snapshot (nothing if it no longer exists).
    fn put(&mut self, cfg: &Config, env: &CompileEnv, kind: Kind, name: &str) {
        let Some(o) = cfg.get(kind, name) else { return };
        match kind {
            Kind::Extension if o.loaded => {
                let spec = ExtensionSpec {
                    name: o.name.clone(),
                    // What `add`/`update ns extension` loaded; an `import -overwrite` alone
                    // does not change what runs.
                    code: o
                        .loaded_code
                        .clone()
                        .or_else(|| o.code.clone())
                        .unwrap_or_default(),
                    src: o.get("src").unwrap_or("").to_string(),
                };
                self.extensions.insert(o.name.clone(), spec);
            }
            Kind::Extension => {}
            Kind::CertKey => {
                let spec = CertKeySpec {
                    name: o.name.clone(),
                    cert: resolve(&env.ssl_dir, o.get("cert").unwrap_or("")),
                    key: o.get("key").map(|k| resolve(&env.ssl_dir, k)),
                };
                self.certkeys.insert(o.name.clone(), spec);
            }
            Kind::Monitor => {
                self.monitors.insert(o.name.clone(), monitor(o));
            }
            Kind::Service => {
                self.services.insert(o.name.clone(), service(cfg, o));
            }
            Kind::ServiceGroup => {
                for (n, spec) in group_services(cfg, o) {
                    self.services.insert(n, spec);
                }
            }
            Kind::LbVserver => {
                self.lb_vservers.insert(o.name.clone(), lb_vserver(cfg, o));
            }
            Kind::UserVserver => {
                if let Some(spec) = user_vserver(cfg, o) {
                    self.user_vservers.insert(o.name.clone(), spec);
                }
            }
            Kind::Server | Kind::UserProtocol => {}
        }
    }
}

/// Objects whose snapshot entries read the object (kind, name) of `cfg`.
fn dependents(cfg: &Config, kind: Kind, name: &str, out: &mut Vec<(Kind, String)>) {
    match kind {
        // A server's address and state are copied into its services and group members.
        Kind::Server => {
            out.extend(
                cfg.services_of(name)
                    .into_iter()
                    .map(|s| (Kind::Service, s)),
            );
            for g in cfg.iter(Kind::ServiceGroup) {
                if g.group_members.iter().any(|m| m.server == name) {
                    out.push((Kind::ServiceGroup, g.name.clone()));
                }
            }
        }
        // Group members are expanded into the lb vservers that bind the group.
        Kind::ServiceGroup => {
            out.extend(
                cfg.lb_vservers_binding(name)
                    .into_iter()
                    .map(|v| (Kind::LbVserver, v)),
            );
        }
        // A user vserver takes its certkey fallback, TLS versions and timeout from its default
        // lb vserver, and its transport and extension from its protocol.
        Kind::LbVserver | Kind::UserProtocol => {
            let key = if kind == Kind::LbVserver {
                "defaultLB"
            } else {
                "userProtocol"
            };
            for u in cfg.iter(Kind::UserVserver) {
                if u.get(key).is_some_and(|v| v.eq_ignore_ascii_case(name)) {
                    out.push((Kind::UserVserver, u.name.clone()));
                }
            }
        }
        _ => {}
    }
}

fn member_name(group: &str, server: &str, port: &str) -> String {
    format!("{group}/{server}:{port}")
}

/// Where a server is, and whether it is enabled.
fn target(cfg: &Config, server: &str) -> (Target, bool) {
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
}

fn binds(o: &Object) -> Vec<MonitorBinding> {
    o.monitors
        .iter()
        .map(|m| MonitorBinding {
            monitor: m.monitor.clone(),
            weight: m.weight,
            enabled: m.enabled,
        })
        .collect()
}

fn service(cfg: &Config, o: &Object) -> ServiceSpec {
    let server = o.get("serverName").unwrap_or("").to_string();
    let (t, server_on) = target(cfg, &server);
    // A service disabled only through its server drains as the server was told.
    let server_drain = (o.enabled() && !server_on)
        .then(|| cfg.get(Kind::Server, &server).and_then(|sv| sv.drain_delay))
        .flatten();
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
        ca_certkeys: o
            .certs
            .iter()
            .filter(|c| c.ca)
            .map(|c| c.certkey.clone())
            .collect(),
        tls: tls_versions(o),
        down_state_flush: o.get("downStateFlush") != Some("DISABLED"),
        drain_delay_secs: o.drain_delay.or(server_drain),
    }
}

/// Service group members become services named GROUP/SERVER:PORT.
fn group_services(cfg: &Config, g: &Object) -> Vec<(String, ServiceSpec)> {
    g.group_members
        .iter()
        .map(|m| {
            let name = member_name(&g.name, &m.server, &m.port);
            let (t, server_on) = target(cfg, &m.server);
            let spec = ServiceSpec {
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
                tls: TlsVersions::default(),
                down_state_flush: true,
                drain_delay_secs: None,
            };
            (name, spec)
        })
        .collect()
}

fn lb_vserver(cfg: &Config, v: &Object) -> LbVserverSpec {
    let mut members = Vec::new();
    for m in &v.members {
        match cfg.get(Kind::ServiceGroup, &m.service) {
            Some(g) => members.extend(g.group_members.iter().map(|gm| Member {
                service: member_name(&g.name, &gm.server, &gm.port),
                weight: gm.weight,
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
    }
}

fn user_vserver(cfg: &Config, u: &Object) -> Option<UserVserverSpec> {
    let proto = u
        .get("userProtocol")
        .and_then(|p| cfg.get(Kind::UserProtocol, p));
    let default_lb = u.get("defaultLB").unwrap_or("").to_string();
    let lb = cfg.get(Kind::LbVserver, &default_lb);
    let ip = u.get("IPAddress").and_then(|a| a.parse().ok())?;
    Some(UserVserverSpec {
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
        // The user vserver's own certkey; else the one bound to its default lb vserver, as the
        // lab binds it there (docs/decisions.md).
        certkey: server_cert(&u.certs).or_else(|| lb.and_then(|l| server_cert(&l.certs))),
        tls: if u.ssl.is_empty() {
            lb.map(tls_versions).unwrap_or_default()
        } else {
            tls_versions(u)
        },
        clt_timeout: lb.map(|l| num(l, "cltTimeout", 180)).unwrap_or(180),
    })
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
