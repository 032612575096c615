//! `show` and `stat` output in NetScaler's layout, from the configuration and the engine's
//! runtime status. Pure formatting: no locks, no I/O.

use std::fmt::Write;

use crate::config::model::{Config, Kind, Object};
use crate::config::rules;
use crate::engine::status::{ServiceStatus, State, Status, VserverStatus};

use super::time::{ctime, since};

/// What went wrong with a `show NAME`: the object does not exist.
pub struct Missing {
    pub arg: &'static str,
    pub name: String,
}

type Out = Result<String, Missing>;

fn pick<'a>(
    cfg: &'a Config,
    kind: Kind,
    name: Option<&str>,
    arg: &'static str,
) -> Result<Vec<&'a Object>, Missing> {
    match name {
        Some(n) => cfg.get(kind, n).map(|o| vec![o]).ok_or(Missing {
            arg,
            name: n.to_string(),
        }),
        None => Ok(cfg.in_order(kind)),
    }
}

/// Numbered list form (`1)\t...`) for several objects, plain detail form for one named.
fn listing<'a>(
    objs: Vec<&'a Object>,
    named: bool,
    mut f: impl FnMut(&mut String, &'a Object),
) -> String {
    let mut s = String::new();
    for (i, o) in objs.into_iter().enumerate() {
        let mut block = String::new();
        f(&mut block, o);
        if named {
            s.push_str(&block);
        } else {
            // The first line of each block carries the number.
            let block = block.strip_prefix('\t').unwrap_or(&block);
            let _ = write!(s, "{})\t{block}", i + 1);
        }
    }
    s
}

fn state_of(o: &Object) -> &'static str {
    if o.enabled() {
        "ENABLED"
    } else {
        "DISABLED"
    }
}

fn vs_state(o: &Object, st: Option<&VserverStatus>) -> State {
    if !o.enabled() {
        return State::OutOfService;
    }
    st.map(|s| s.state).unwrap_or(State::Down)
}

pub fn server(cfg: &Config, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::Server, name, "name")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let _ = writeln!(s, "\tName:     {}      State:{}", o.name, state_of(o));
        let addr = o.get("IPAddress").unwrap_or("");
        if addr.parse::<std::net::IpAddr>().is_ok() {
            let _ = writeln!(s, "\tIPAddress:   {addr}");
        } else {
            let _ = writeln!(
                s,
                "\tDomain:   {addr}\tResolve Retry: {} secs",
                o.get("domainResolveRetry").unwrap_or("5")
            );
        }
        if let Some(c) = o.get("comment") {
            let _ = writeln!(s, "\tComment: \"{c}\"");
        }
    }))
}

fn service_addr(cfg: &Config, o: &Object) -> String {
    let server = o.get("serverName").unwrap_or("");
    let ip = cfg
        .get(Kind::Server, server)
        .and_then(|s| s.get("IPAddress"))
        .unwrap_or(server);
    format!("{ip}:{}", o.get("port").unwrap_or("*"))
}

fn svc_state(o: &Object, st: Option<&ServiceStatus>) -> State {
    if !o.enabled() {
        return State::OutOfService;
    }
    st.map(|s| s.state).unwrap_or(State::Down)
}

pub fn service(cfg: &Config, status: &Status, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::Service, name, "name")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let st = status.services.get(&o.name);
        let state = svc_state(o, st);
        let _ = writeln!(
            s,
            "\t{} ({}) - {}",
            o.name,
            service_addr(cfg, o),
            o.get("serviceType").unwrap_or("")
        );
        let _ = writeln!(s, "\tState: {}", state.as_str());
        if let Some(t) = st.and_then(|st| st.last_state_change) {
            let _ = writeln!(s, "\tLast state change was at {}", ctime(t));
            let _ = writeln!(s, "\tTime since last state change: {}", since(t));
        }
        let _ = writeln!(s, "\tServer Name: {}", o.get("serverName").unwrap_or(""));
        let _ = writeln!(
            s,
            "\tMax Conn: {}\tMax Req: {}\tMax Bandwidth: 0 kbits",
            o.get("maxClient").unwrap_or("0"),
            o.get("maxReq").unwrap_or("0")
        );
        let _ = writeln!(s, "\tUse Source IP: {}", o.get("usip").unwrap_or("NO"));
        let _ = writeln!(
            s,
            "\tClient Keepalive(CKA): {}",
            o.get("CKA").unwrap_or("NO")
        );
        let _ = writeln!(
            s,
            "\tIdle timeout: Client: {} sec\tServer: {} sec",
            o.get("cltTimeout").unwrap_or("0"),
            o.get("svrTimeout").unwrap_or("0")
        );
        let _ = writeln!(
            s,
            "\tHealth monitoring: {}",
            if o.get("healthMonitor") == Some("NO") {
                "OFF"
            } else {
                "ON"
            }
        );
        if let Some(c) = o.get("comment") {
            let _ = writeln!(s, "\tComment: \"{c}\"");
        }
        if let Some(d) = o.drain_delay {
            let _ = writeln!(s, "\tGraceful shutdown: delay {d} sec");
        }
        if name.is_some() {
            monitors_block(s, o, st);
        }
    }))
}

fn monitors_block(s: &mut String, o: &Object, st: Option<&ServiceStatus>) {
    let mon_status = |n: &str| st.and_then(|st| st.monitors.iter().find(|m| m.name == n));
    let names: Vec<(String, u32, bool)> = if o.get("healthMonitor") == Some("NO") {
        Vec::new()
    } else if o.monitors.is_empty() {
        vec![("tcp-default".to_string(), 1, false)]
    } else {
        o.monitors
            .iter()
            .map(|m| (m.monitor.clone(), m.weight, m.passive))
            .collect()
    };
    for (i, (n, w, passive)) in names.iter().enumerate() {
        let ms = mon_status(n);
        let _ = writeln!(s);
        let _ = writeln!(s, "{})\tMonitor Name: {n}", i + 1);
        let _ = writeln!(
            s,
            "\t\tState: {}\tWeight: {w}\tPassive: {}",
            ms.map(|m| m.state.as_str()).unwrap_or("UNKNOWN"),
            u8::from(*passive)
        );
        let _ = writeln!(
            s,
            "\t\tProbes: {}\tFailed [Total: {} Current: {}]",
            ms.map(|m| m.probes).unwrap_or(0),
            ms.map(|m| m.failed_total).unwrap_or(0),
            ms.map(|m| m.failed_current).unwrap_or(0)
        );
        let _ = writeln!(
            s,
            "\t\tLast response: {}",
            ms.map(|m| m.last_response.as_str())
                .unwrap_or("Probe not yet sent.")
        );
    }
}

pub fn service_group(cfg: &Config, status: &Status, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::ServiceGroup, name, "serviceGroupName")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let _ = writeln!(s, "\t{} - {}", o.name, o.get("serviceType").unwrap_or(""));
        let _ = writeln!(
            s,
            "\tState: {}\tEffective State: {}",
            state_of(o),
            if o.enabled() { "UP" } else { "OUT OF SERVICE" }
        );
        for (i, m) in o.group_members.iter().enumerate() {
            let member = format!("{}/{}:{}", o.name, m.server, m.port);
            let st = status
                .services
                .get(&member)
                .map(|s| s.state)
                .unwrap_or(State::Down);
            let st = if m.enabled && o.enabled() {
                st
            } else {
                State::OutOfService
            };
            let _ = writeln!(
                s,
                "\t{})\t{}:{}\tState: {}\tWeight: {}",
                i + 1,
                m.server,
                m.port,
                st.as_str(),
                m.weight
            );
        }
        for m in &o.monitors {
            let _ = writeln!(s, "\tMonitor Name: {}\tWeight: {}", m.monitor, m.weight);
        }
    }))
}

pub fn lb_vserver(cfg: &Config, status: &Status, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::LbVserver, name, "name")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let st = status.lb_vservers.get(&o.name);
        let ty = o.get("serviceType").unwrap_or("");
        let addr = match (o.get("IPAddress"), o.get("port")) {
            (Some(ip), Some(p)) => format!("{ip}:{p}"),
            _ => "0.0.0.0:0".to_string(),
        };
        let kind = if o.get("IPAddress").is_some() {
            "ADDRESS"
        } else {
            "NON-ADDRESSABLE"
        };
        let _ = writeln!(s, "\t{} ({addr}) - {ty}\tType: {kind}", o.name);
        let state = vs_state(o, st);
        let _ = writeln!(
            s,
            "\tState: {}",
            if o.enabled() { "UP" } else { "OUT OF SERVICE" }
        );
        if let Some(t) = st.and_then(|st| st.last_state_change) {
            let _ = writeln!(s, "\tLast state change was at {}", ctime(t));
            let _ = writeln!(s, "\tTime since last state change: {}", since(t));
        }
        let _ = writeln!(s, "\tEffective State: {}", state.as_str());
        let _ = writeln!(
            s,
            "\tClient Idle Timeout: {} sec",
            o.get("cltTimeout").unwrap_or("0")
        );
        let _ = writeln!(
            s,
            "\tDown state flush: {}",
            o.get("downStateFlush").unwrap_or("ENABLED")
        );
        let _ = writeln!(
            s,
            "\tVserver Health: {}%",
            st.map(|s| s.health).unwrap_or(0)
        );
        let active = o
            .members
            .iter()
            .filter(|m| {
                status
                    .services
                    .get(&m.service)
                    .is_some_and(|x| x.state == State::Up)
            })
            .count();
        let _ = writeln!(
            s,
            "\tNo. of Bound Services :  {} (Total) \t {} (Active)",
            o.members.len(),
            st.map(|s| s.active_services as usize).unwrap_or(active)
        );
        let _ = writeln!(
            s,
            "\tConfigured Method: {}",
            o.get("lbMethod").unwrap_or("LEASTCONNECTION")
        );
        let _ = writeln!(s, "\tMode: IP");
        let p = o.get("persistenceType").unwrap_or("NONE");
        if p == "NONE" {
            let _ = writeln!(s, "\tPersistence: NONE");
        } else {
            let _ = writeln!(
                s,
                "\tPersistence: {p}\tPersistence Timeout: {} min",
                o.get("timeout").unwrap_or("2")
            );
        }
        if let Some(c) = o.get("comment") {
            let _ = writeln!(s, "\tComment: \"{c}\"");
        }
        if let Some(ck) = o.certs.iter().find(|c| !c.ca) {
            let _ = writeln!(s, "\tCertkey: {}", ck.certkey);
        }
        for (i, m) in o.members.iter().enumerate() {
            let (state, addr, sty) = match cfg.get(Kind::Service, &m.service) {
                Some(svc) => (
                    svc_state(svc, status.services.get(&m.service)),
                    service_addr(cfg, svc),
                    svc.get("serviceType").unwrap_or("").to_string(),
                ),
                None => (State::Down, "group".into(), "SERVICEGROUP".into()),
            };
            let _ = writeln!(
                s,
                "\n{}) {} ({addr}) - {sty} State: {} Weight: {}",
                i + 1,
                m.service,
                state.as_str(),
                m.weight
            );
        }
    }))
}

pub fn lb_monitor(cfg: &Config, name: Option<&str>) -> Out {
    let mut s = String::new();
    let block = |s: &mut String, n: usize, name: &str, ty: &str, o: Option<&Object>| {
        let g = |k: &str, d: &str| o.and_then(|o| o.get(k)).unwrap_or(d).to_string();
        let state = o.map(state_of).unwrap_or("ENABLED");
        let _ = writeln!(
            s,
            "{n})   Name.......: {name:<16}Type......: {ty:<10}State....: {state}"
        );
        let _ = writeln!(s, "Standard parameters:");
        let _ = writeln!(
            s,
            "  Interval.........: {:<14}Retries..........: {}",
            unit(&g("interval", "5")),
            g("retries", "3")
        );
        let _ = writeln!(
            s,
            "  Response timeout.: {:<14}Down time........: {}",
            unit(&g("resptimeout", "2")),
            unit(&g("downTime", "30"))
        );
        let _ = writeln!(
            s,
            "  Success retries..: {:<14}Secure...........: {}",
            g("successRetries", "1"),
            g("secure", "NO")
        );
        let _ = writeln!(
            s,
            "  Destination IP...: {:<14}Destination port.: {}",
            g("destIP", "Bound service"),
            g("destPort", "Bound service")
        );
        if let Some(v) = o.and_then(|o| o.get("send")) {
            let _ = writeln!(s, "  Send string......: \"{v}\"");
        }
        if let Some(v) = o.and_then(|o| o.get("recv")) {
            let _ = writeln!(s, "  Receive string...: \"{v}\"");
        }
        if let Some(v) = o.and_then(|o| o.get("userName")) {
            let _ = writeln!(s, "  User name........: {v}");
        }
    };
    let mut n = 0;
    if let Some(name) = name {
        if let Some(ty) = rules::builtin_monitor(name) {
            block(&mut s, 1, name, ty, None);
        } else {
            let o = cfg.get(Kind::Monitor, name).ok_or(Missing {
                arg: "monitorName",
                name: name.to_string(),
            })?;
            block(&mut s, 1, name, o.get("type").unwrap_or(""), Some(o));
        }
        return Ok(s);
    }
    for (bn, ty) in rules::BUILTIN_MONITORS {
        n += 1;
        let _ = writeln!(
            s,
            "{n})   Name.......: {bn:<16}Type......: {ty:<10}State....: ENABLED"
        );
    }
    for o in cfg.in_order(Kind::Monitor) {
        n += 1;
        let _ = writeln!(
            s,
            "{n})   Name.......: {:<16}Type......: {:<10}State....: {}",
            o.name,
            o.get("type").unwrap_or(""),
            state_of(o)
        );
    }
    Ok(s)
}

fn unit(v: &str) -> String {
    if v.contains(' ') {
        v.to_string()
    } else {
        format!("{v} sec")
    }
}

pub fn certkey(cfg: &Config, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::CertKey, name, "certkeyName")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let _ = writeln!(s, "\tName: {}\tStatus: Valid", o.name);
        let _ = writeln!(s, "\tCertificate: \"{}\"", o.get("cert").unwrap_or(""));
        if let Some(k) = o.get("key") {
            let _ = writeln!(s, "\tKey: \"{k}\"");
        }
        let _ = writeln!(s, "\tFormat: {}", o.get("inform").unwrap_or("PEM"));
        let users: Vec<String> = [Kind::LbVserver, Kind::UserVserver, Kind::Service]
            .into_iter()
            .flat_map(|k| cfg.iter(k))
            .filter(|v| v.certs.iter().any(|c| c.certkey == o.name))
            .map(|v| v.name.clone())
            .collect();
        if !users.is_empty() {
            let _ = writeln!(s, "\tBound to: {}", users.join(", "));
        }
    }))
}

/// `show ssl vserver|service`: protocol switches and bound certkeys.
pub fn ssl_entity(objs: Vec<(&Object, bool)>, named: bool) -> String {
    let mut s = String::new();
    for (i, (o, service)) in objs.into_iter().enumerate() {
        let obj = if service { "sslservice" } else { "sslvserver" };
        let def = crate::grammar::grammar().object(obj);
        let get = |k: &str| {
            o.ssl
                .get(k)
                .cloned()
                .or_else(|| def.and_then(|d| d.param(k)).and_then(|p| p.default.clone()))
                .unwrap_or_default()
        };
        if !named {
            let _ = write!(s, "{}) ", i + 1);
        }
        let _ = writeln!(
            s,
            "\tAdvanced SSL configuration for {} {}:",
            if service {
                "Back-end SSL Service"
            } else {
                "VServer"
            },
            o.name
        );
        let _ = writeln!(
            s,
            "\tSSLv3: {}  TLSv1.0: {}  TLSv1.1: {}  TLSv1.2: {}  TLSv1.3: {}",
            get("ssl3"),
            get("tls1"),
            get("tls11"),
            get("tls12"),
            get("tls13")
        );
        if service {
            let _ = writeln!(s, "\tServer Auth: {}", get("serverAuth"));
            if let Some(cn) = o.ssl.get("commonName") {
                let _ = writeln!(s, "\tCommon Name: {cn}");
            }
        } else {
            let _ = writeln!(
                s,
                "\tSession Reuse: {}\tTimeout: {} seconds",
                get("sessReuse"),
                get("sessTimeout")
            );
        }
        for (n, c) in o.certs.iter().enumerate() {
            let role = if c.ca {
                "CA Certificate"
            } else if c.sni {
                "SNI Certificate"
            } else {
                "Server Certificate"
            };
            let _ = writeln!(s, "\n{})\tCertKey Name: {}\t{role}", n + 1, c.certkey);
        }
        for c in &o.ecc_curves {
            let _ = writeln!(s, "\tECC Curve: {c}");
        }
    }
    s
}

pub fn user_protocol(cfg: &Config, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::UserProtocol, name, "name")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let _ = writeln!(
            s,
            "\tName: {}\tTransport: {}\tExtension: {}",
            o.name,
            o.get("transport").unwrap_or(""),
            o.get("extension").unwrap_or("")
        );
        if let Some(c) = o.get("comment") {
            let _ = writeln!(s, "\tComment: \"{c}\"");
        }
    }))
}

pub fn user_vserver(cfg: &Config, status: &Status, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::UserVserver, name, "name")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let st = status.user_vservers.get(&o.name);
        let _ = writeln!(
            s,
            "\t{} ({}:{}) - {}",
            o.name,
            o.get("IPAddress").unwrap_or(""),
            o.get("port").unwrap_or(""),
            o.get("userProtocol").unwrap_or("")
        );
        let state = vs_state(o, st);
        let _ = writeln!(s, "\tState: {}", state.as_str());
        if let Some(r) = st.and_then(|st| st.reason.as_deref()) {
            let _ = writeln!(s, "\tReason: {r}");
        }
        let _ = writeln!(
            s,
            "\tDefault LB vserver: {}",
            o.get("defaultLB").unwrap_or("")
        );
        if let Some(p) = o.get("params") {
            let _ = writeln!(s, "\tParams: \"{p}\"");
        }
        if let Some(c) = o.get("comment") {
            let _ = writeln!(s, "\tComment: \"{c}\"");
        }
        if let Some(st) = st {
            let _ = writeln!(
                s,
                "\tExtension messages: {}\tExtension bytes: {}\tExtension errors: {}",
                st.ext_messages, st.ext_bytes, st.ext_errors
            );
        }
    }))
}

pub fn extension(cfg: &Config, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::Extension, name, "name")?;
    Ok(listing(objs, name.is_some(), |s, o| {
        let _ = writeln!(s, "\tName: {}", o.name);
        let _ = writeln!(s, "\tSource: {}", o.get("src").unwrap_or(""));
        let _ = writeln!(
            s,
            "\tType: PROTOCOL\tLoaded: {}",
            if o.loaded { "YES" } else { "NO" }
        );
        let _ = writeln!(s, "\tTrace: {}", o.get("trace").unwrap_or("off"));
        if let Some(c) = o.get("comment") {
            let _ = writeln!(s, "\tComment: \"{c}\"");
        }
        if let Some(code) = &o.code {
            for (n, l) in code.lines().enumerate() {
                let l = l.trim_start();
                if let Some(rest) = l.strip_prefix("function ") {
                    let f = rest.split('(').next().unwrap_or(rest);
                    let _ = writeln!(s, "\tFunction: {f}\tLine: {}", n + 1);
                }
            }
        }
    }))
}

fn counters_block(s: &mut String, title: &str, st: &VserverStatus) {
    let c = &st.counters;
    let _ = writeln!(s, "\n{title}");
    let _ = writeln!(s, "{:<40}{:>12}", "", "Total");
    let rows: [(&str, String); 9] = [
        ("Vserver hits", c.hits.to_string()),
        ("Request bytes", c.request_bytes.to_string()),
        ("Response bytes", c.response_bytes.to_string()),
        ("Current client connections", c.cur_client_conns.to_string()),
        ("Current server connections", c.cur_server_conns.to_string()),
        (
            "Clients rejected (nothing to serve them)",
            c.rejected.to_string(),
        ),
        ("Vserver Health", format!("{}%", st.health)),
        ("Active services", st.active_services.to_string()),
        ("State", st.state.as_str().to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "{k:<40}{v:>12}");
    }
}

pub fn stat_vservers(cfg: &Config, status: &Status, kind: Kind, name: Option<&str>) -> Out {
    let objs = pick(cfg, kind, name, "name")?;
    let table = if kind == Kind::LbVserver {
        &status.lb_vservers
    } else {
        &status.user_vservers
    };
    let mut s = String::new();
    if name.is_none() {
        let _ = writeln!(s, "\nVirtual Server(s) Summary");
        let _ = writeln!(
            s,
            "{:<24}{:>16}{:>7}{:>16}{:>16}{:>8}{:>10}",
            "", "vsvrIP", "port", "Protocol", "State", "Hits", "ClntConn"
        );
        for o in objs {
            let st = table.get(&o.name).cloned().unwrap_or_default();
            let state = vs_state(o, Some(&st));
            let proto = o
                .get("serviceType")
                .or_else(|| o.get("userProtocol"))
                .unwrap_or("");
            let _ = writeln!(
                s,
                "{:<24}{:>16}{:>7}{:>16}{:>16}{:>8}{:>10}",
                o.name,
                o.get("IPAddress").unwrap_or("0.0.0.0"),
                o.get("port").unwrap_or("0"),
                proto,
                state.as_str(),
                st.counters.hits,
                st.counters.cur_client_conns
            );
        }
        return Ok(s);
    }
    for o in objs {
        let mut st = table.get(&o.name).cloned().unwrap_or_default();
        st.state = vs_state(o, Some(&st));
        counters_block(&mut s, &format!("Virtual Server Summary: {}", o.name), &st);
        if kind == Kind::UserVserver {
            let _ = writeln!(s, "{:<40}{:>12}", "Extension messages", st.ext_messages);
            let _ = writeln!(s, "{:<40}{:>12}", "Extension bytes", st.ext_bytes);
            let _ = writeln!(s, "{:<40}{:>12}", "Extension errors", st.ext_errors);
        }
    }
    Ok(s)
}

pub fn stat_service(cfg: &Config, status: &Status, name: Option<&str>) -> Out {
    let objs = pick(cfg, Kind::Service, name, "name")?;
    let mut s = String::new();
    if name.is_none() {
        let _ = writeln!(s, "\nService(s) Summary");
        let _ = writeln!(
            s,
            "{:<28}{:>22}{:>16}{:>16}{:>8}{:>10}{:>10}",
            "", "IP:port", "Protocol", "State", "Hits", "ClntConn", "SvrConn"
        );
    }
    for o in objs {
        let st = status.services.get(&o.name).cloned().unwrap_or_default();
        let state = svc_state(o, Some(&st));
        let c = &st.counters;
        if name.is_none() {
            let _ = writeln!(
                s,
                "{:<28}{:>22}{:>16}{:>16}{:>8}{:>10}{:>10}",
                o.name,
                service_addr(cfg, o),
                o.get("serviceType").unwrap_or(""),
                state.as_str(),
                c.hits,
                c.cur_client_conns,
                c.cur_server_conns
            );
        } else {
            let _ = writeln!(s, "\nService Summary: {}", o.name);
            let rows: [(&str, String); 7] = [
                ("Service hits", c.hits.to_string()),
                ("Request bytes", c.request_bytes.to_string()),
                ("Response bytes", c.response_bytes.to_string()),
                ("Current client connections", c.cur_client_conns.to_string()),
                ("Current server connections", c.cur_server_conns.to_string()),
                ("Connect failures", c.rejected.to_string()),
                ("State", state.as_str().to_string()),
            ];
            for (k, v) in rows {
                let _ = writeln!(s, "{k:<40}{v:>12}");
            }
        }
    }
    Ok(s)
}

pub fn persistent_sessions(status: &Status, vserver: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24}{:<40}{:<24}{:>10}",
        "VSERVER", "PERSISTENCE KEY", "SERVICE", "TIMEOUT"
    );
    for p in status
        .persistent_sessions
        .iter()
        .filter(|p| vserver.is_none_or(|v| v == p.vserver))
    {
        let _ = writeln!(
            s,
            "{:<24}{:<40}{:<24}{:>10}",
            p.vserver, p.key, p.service, p.remaining_secs
        );
    }
    s
}
