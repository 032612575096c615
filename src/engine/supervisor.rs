//! Commit and reconcile: turns a `Snapshot` into running listeners and runtime objects.
//!
//! `commit` works in two phases. *Prepare* does everything that can fail (compile extensions,
//! load every certkey, build TLS configs, bind the addresses that are not bound yet) without
//! touching what runs; any error drops the prepared objects (closing any socket bound so far) and
//! the running configuration stays exactly as it was. *Publish* cannot fail: it swaps the new
//! `Runtime` in, hands each kept listener its new `Route`, starts the new listeners and only then
//! drops the listeners no longer wanted (so a vserver moved to a new address binds the new one
//! before closing the old).
//!
//! Removed or disabled vservers stop accepting, but their established connections keep flowing
//! until either side closes: each connection holds the `Arc<Route>` (and so the `Runtime` and
//! snapshot) it was accepted under. This matches NetScaler, where disabling a vserver stops new
//! connections and `rm` leaves existing ones to finish. Use `Engine::close_service_connections`
//! to cut connections explicitly.
//!
//! It must not do I/O on the data path; the proxy reads what this module publishes.

use std::collections::HashMap;

use imbl::ordmap::DiffItem;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::snapshot::{
    CertKeySpec, LbVserverSpec, ServiceType, Snapshot, TlsVersions, Transport, UserVserverSpec,
};
use crate::engine::backend::ServiceRuntime;
use crate::engine::balance::{Balancer, PersistenceTable};
use crate::engine::extension::Extension;
use crate::engine::listener::{self, Listener};
use crate::engine::stats::{ServiceShared, Stats, VserverShared};
use crate::engine::status::State;
use crate::engine::tls::{self, LoadedCertKey};
use crate::engine::{lock, EngineError};

/// Engine-wide state shared by the supervisor, listeners and connections.
pub(crate) struct Shared {
    pub stats: Stats,
    pub persistence: PersistenceTable,
    /// Set to `true` once by `Engine::shutdown`; every connection task watches it and closes.
    pub shutdown: watch::Sender<bool>,
    pub provider: Arc<CryptoProvider>,
}

/// Everything one committed snapshot runs with. Immutable once published; connections hold it.
/// Its maps are persistent (imbl): the next commit starts from a cheap copy and replaces only
/// what the snapshot diff names, so an admin command costs O(changes), not O(configuration).
pub(crate) struct Runtime {
    pub snap: Arc<Snapshot>,
    pub lbs: imbl::HashMap<String, Arc<LbRuntime>>,
    pub services: imbl::HashMap<String, Arc<ServiceRuntime>>,
    pub extensions: imbl::HashMap<String, Arc<Extension>>,
    /// Service name -> the lb vservers that bind it: a rebuilt service rebuilds only these.
    pub lbs_of: imbl::HashMap<String, imbl::OrdSet<String>>,
    /// Lb vservers that listen themselves (`listen` is set).
    pub addressable: imbl::OrdSet<String>,
    /// Services whose backend TLS verifies against CA certkeys (their CA material is rechecked
    /// on every commit, since a certkey's files may change under the same name).
    pub ca_services: imbl::OrdSet<String>,
    /// Why an enabled user vserver (by name) or addressable lb vserver (`lb:` + name) does not
    /// listen.
    pub down_reasons: HashMap<String, String>,
}

/// An lb vserver as the data path sees it.
pub(crate) struct LbRuntime {
    pub spec: LbVserverSpec,
    pub shared: Arc<VserverShared>,
    pub balancer: Arc<Balancer>,
    /// Bound members that exist and are proxied, with their weights, in binding order.
    pub members: Vec<(Arc<ServiceRuntime>, u32)>,
}

/// What a listener serves. Swapped by commit; each connection keeps the one it was accepted with.
pub(crate) struct Route {
    /// Name of the user vserver, or of the lb vserver for an addressable lb vserver.
    pub name: String,
    /// The entity accepting the connection: the user vserver's record, or the lb vserver's.
    pub front: Arc<VserverShared>,
    /// True when `front` is the lb vserver itself (so its counters are not counted twice).
    pub front_is_lb: bool,
    pub lb: Arc<LbRuntime>,
    pub tls: Option<TlsAcceptor>,
    pub ext: Option<Arc<Extension>>,
    pub params: Vec<(String, String)>,
    pub clt_timeout: u32,
    /// Keeps the runtime (services, extensions) alive for connections of this route.
    pub _runtime: Arc<Runtime>,
}

/// The supervisor's own state, behind the engine's commit lock.
#[derive(Default)]
pub(crate) struct Reconciler {
    listeners: HashMap<SocketAddr, Listener>,
    runtime: Option<Arc<Runtime>>,
    /// Certkeys as last loaded, with the spec and the file stamps they were loaded from.
    certs: HashMap<String, CachedCert>,
}

/// A loaded certkey and what it was loaded from: a commit parses a certkey again only when its
/// spec or the bytes of one of its files changed, so `update ssl certKey` naming the same files
/// with new contents still reloads. (Bytes, not modification times: two writes within the
/// filesystem's timestamp granularity would look alike.)
struct CachedCert {
    spec: CertKeySpec,
    stamp: Vec<Vec<u8>>,
    loaded: LoadedCertKey,
}

/// The files' contents, or `None` when one cannot be read (loading then reports why).
fn file_stamp(spec: &CertKeySpec) -> Option<Vec<Vec<u8>>> {
    std::iter::once(&spec.cert)
        .chain(spec.key.as_ref())
        .map(|p| std::fs::read(p).ok())
        .collect()
}

/// A listener wanted by the new snapshot, before publishing.
struct Wanted {
    addr: SocketAddr,
    name: String,
    is_lb: bool,
    lb: String,
    tls: Option<Arc<ServerConfig>>,
    ext: Option<String>,
    params: Vec<(String, String)>,
    clt_timeout: u32,
}

// === impl Reconciler ===

impl Reconciler {
    /// Prepares and publishes `snap` (see the module doc). Returns warnings for the admin.
    pub fn commit(
        &mut self,
        snap: Arc<Snapshot>,
        shared: &Arc<Shared>,
    ) -> Result<(Arc<Runtime>, Vec<String>), EngineError> {
        let prev = self.runtime.clone();
        let mut warnings = Vec::new();
        let empty = Snapshot::default();
        let old: &Snapshot = prev.as_ref().map(|p| &*p.snap).unwrap_or(&empty);
        // Start from the running runtime's maps (O(1) copies); only diffs are applied below.
        let (mut extensions, mut services, mut lbs, mut lbs_of, mut addressable, mut ca_services) =
            match &prev {
                Some(p) => (
                    p.extensions.clone(),
                    p.services.clone(),
                    p.lbs.clone(),
                    p.lbs_of.clone(),
                    p.addressable.clone(),
                    p.ca_services.clone(),
                ),
                None => Default::default(),
            };

        // --- prepare: extensions that changed ---
        for d in old.extensions.diff(&snap.extensions) {
            match d {
                DiffItem::Add(name, spec)
                | DiffItem::Update {
                    new: (name, spec), ..
                } => {
                    extensions.insert(
                        name.clone(),
                        Arc::new(Extension::compile(name, &spec.code)?),
                    );
                }
                DiffItem::Remove(name, _) => {
                    extensions.remove(name);
                }
            }
        }

        // --- prepare: certificates (each commit reads every certkey's files, so that `update
        // ssl certKey` naming the same files with new contents reloads them; unchanged ones are
        // not parsed again) ---
        let mut certs: HashMap<&str, LoadedCertKey> = HashMap::new();
        let mut loaded_now: Vec<(String, CachedCert)> = Vec::new();
        for (name, spec) in &snap.certkeys {
            let stamp = file_stamp(spec);
            let cached = self
                .certs
                .get(name)
                .filter(|c| c.spec == *spec && stamp.as_ref() == Some(&c.stamp));
            let loaded = match cached {
                Some(c) => c.loaded.clone(),
                // A missing file has no stamp: loading reports it with NetScaler's error.
                None => {
                    let l = tls::load_certkey(spec, &shared.provider)?;
                    if let Some(stamp) = stamp {
                        let entry = CachedCert {
                            spec: spec.clone(),
                            stamp,
                            loaded: l.clone(),
                        };
                        loaded_now.push((name.clone(), entry));
                    }
                    l
                }
            };
            certs.insert(name, loaded);
        }

        // --- prepare: services that changed, and those whose CA material changed ---
        let mut changed_services: Vec<String> = Vec::new();
        for d in old.services.diff(&snap.services) {
            match d {
                DiffItem::Add(name, spec)
                | DiffItem::Update {
                    new: (name, spec), ..
                } => {
                    if spec.ca_certkeys.is_empty() {
                        ca_services.remove(name);
                    } else {
                        ca_services.insert(name.clone());
                    }
                    changed_services.push(name.clone());
                }
                DiffItem::Remove(name, _) => {
                    ca_services.remove(name);
                    services.remove(name);
                    changed_services.push(name.clone());
                }
            }
        }
        for name in ca_services.iter() {
            if !changed_services.contains(name) {
                changed_services.push(name.clone());
            }
        }
        let mut rebuilt_services: Vec<String> = Vec::new();
        for name in &changed_services {
            let Some(spec) = snap.services.get(name) else {
                continue;
            };
            if !ServiceRuntime::proxied(spec) {
                services.remove(name);
                rebuilt_services.push(name.clone());
                continue;
            }
            let mut roots = Vec::new();
            for ca in &spec.ca_certkeys {
                if let Some(c) = certs.get(ca.as_str()) {
                    roots.extend(c.chain.iter().cloned());
                }
            }
            let ca_der: Vec<Vec<u8>> = roots.iter().map(|c| c.as_ref().to_vec()).collect();
            if services
                .get(name)
                .is_some_and(|s| s.same_backend(spec, &ca_der))
            {
                continue;
            }
            let cfg = if ServiceRuntime::wants_tls(spec) {
                Some(tls::client_config(spec, &roots, &shared.provider)?)
            } else {
                None
            };
            let rec: Arc<ServiceShared> = Stats::entry(&shared.stats.services, name);
            services.insert(
                name.clone(),
                Arc::new(ServiceRuntime::new(spec.clone(), rec, cfg, ca_der)),
            );
            rebuilt_services.push(name.clone());
        }

        // --- prepare: lb vservers that changed, or whose services were rebuilt ---
        let mut changed_lbs: Vec<String> = Vec::new();
        let lb_diff: Vec<_> = old.lb_vservers.diff(&snap.lb_vservers).collect();
        for d in &lb_diff {
            let (name, old_spec, new_spec) = match d {
                DiffItem::Add(n, v) => (*n, None, Some(*v)),
                DiffItem::Update {
                    old: (n, o),
                    new: (_, v),
                } => (*n, Some(*o), Some(*v)),
                DiffItem::Remove(n, o) => (*n, Some(*o), None),
            };
            for m in old_spec.iter().flat_map(|o| o.members.iter()) {
                if let Some(set) = lbs_of.get_mut(&m.service) {
                    set.remove(name);
                }
            }
            for m in new_spec.iter().flat_map(|v| v.members.iter()) {
                lbs_of
                    .entry(m.service.clone())
                    .or_default()
                    .insert(name.clone());
            }
            if new_spec.is_some_and(|v| v.listen.is_some()) {
                addressable.insert(name.clone());
            } else {
                addressable.remove(name);
            }
            changed_lbs.push(name.clone());
        }
        for svc in &rebuilt_services {
            for lb in lbs_of.get(svc).into_iter().flatten() {
                changed_lbs.push(lb.clone());
            }
        }
        changed_lbs.sort();
        changed_lbs.dedup();
        for name in &changed_lbs {
            let Some(spec) = snap.lb_vservers.get(name) else {
                lbs.remove(name);
                continue;
            };
            let members: Vec<(Arc<ServiceRuntime>, u32)> = spec
                .members
                .iter()
                .filter_map(|m| services.get(&m.service).map(|s| (s.clone(), m.weight)))
                .collect();
            let balancer = lbs
                .get(name)
                .filter(|l| l.spec.method == spec.method && l.spec.members == spec.members)
                .map(|l| l.balancer.clone())
                .unwrap_or_else(|| Arc::new(Balancer::new(spec.method, members.len())));
            let lb = LbRuntime {
                spec: spec.clone(),
                shared: Stats::entry(&shared.stats.lbs, name),
                balancer,
                members,
            };
            lbs.insert(name.clone(), Arc::new(lb));
        }

        // --- prepare: what listens where ---
        let mut down_reasons = HashMap::new();
        let mut wanted: Vec<Wanted> = Vec::new();
        let mut server_cfgs: HashMap<(String, TlsKey), Option<Arc<ServerConfig>>> = HashMap::new();
        let mut tls_for = |certkey: &Option<String>,
                           versions: &TlsVersions|
         -> Result<Result<Arc<ServerConfig>, String>, EngineError> {
            let Some(ck) = certkey else {
                return Ok(Err("Certkey not bound".to_string()));
            };
            let Some(loaded) = certs.get(ck.as_str()) else {
                return Ok(Err(format!("Certkey {ck} not found")));
            };
            let Some(key) = &loaded.certified else {
                return Ok(Err(format!("Certkey {ck} has no private key")));
            };
            let k = (ck.clone(), TlsKey::from(versions));
            let cfg = match server_cfgs.get(&k) {
                Some(c) => c.clone(),
                None => {
                    let c = tls::server_config(key.clone(), versions, &shared.provider)?;
                    server_cfgs.insert(k, c.clone());
                    c
                }
            };
            Ok(cfg.ok_or_else(|| {
                "No TLS protocol version enabled (nsemu offers TLS1.2 and TLS1.3)".to_string()
            }))
        };
        for (name, uv) in &snap.user_vservers {
            if !uv.enabled {
                continue;
            }
            if !lbs.contains_key(&uv.default_lb) {
                down_reasons.insert(name.clone(), "Default LB vserver not found".to_string());
                continue;
            }
            let tls = match uv.transport {
                Transport::Tcp => None,
                Transport::Ssl => match tls_for(&uv.certkey, &uv.tls)? {
                    Ok(c) => Some(c),
                    Err(reason) => {
                        if reason.starts_with("No TLS") {
                            warnings.push(format!("Warning: {reason} [{name}]"));
                        }
                        down_reasons.insert(name.clone(), reason);
                        continue;
                    }
                },
            };
            wanted.push(Wanted::user(uv, tls));
        }
        for name in addressable.iter() {
            let Some(lb) = snap.lb_vservers.get(name) else {
                continue;
            };
            let Some((ip, port)) = lb.listen else {
                continue;
            };
            if !lb.enabled {
                continue;
            }
            let tls = match lb.service_type {
                ServiceType::Tcp | ServiceType::Any => None,
                ServiceType::SslTcp | ServiceType::Ssl => match tls_for(&lb.certkey, &lb.tls)? {
                    Ok(c) => Some(c),
                    Err(reason) => {
                        down_reasons.insert(format!("lb:{name}"), reason);
                        continue;
                    }
                },
                _ => continue,
            };
            wanted.push(Wanted {
                addr: SocketAddr::new(ip, port),
                name: name.clone(),
                is_lb: true,
                lb: name.clone(),
                tls,
                ext: None,
                params: Vec::new(),
                clt_timeout: lb.clt_timeout,
            });
        }
        let mut seen: HashMap<SocketAddr, &str> = HashMap::new();
        for w in &wanted {
            if let Some(other) = seen.insert(w.addr, &w.name) {
                return Err(EngineError::AddressInUse {
                    addr: w.addr.to_string(),
                    reason: format!("used by both {other} and {}", w.name),
                });
            }
        }

        // --- prepare: bind the new addresses (nothing running is touched yet) ---
        let mut fresh: HashMap<SocketAddr, TcpListener> = HashMap::new();
        for w in &wanted {
            if self.listeners.contains_key(&w.addr) {
                continue;
            }
            let sock = listener::bind(w.addr).map_err(|e| EngineError::AddressInUse {
                addr: w.addr.to_string(),
                reason: e.to_string(),
            })?;
            fresh.insert(w.addr, sock);
        }

        // --- publish (infallible from here) ---
        let runtime = Arc::new(Runtime {
            snap: snap.clone(),
            lbs,
            services,
            extensions,
            lbs_of,
            addressable,
            ca_services,
            down_reasons,
        });
        let mut listeners = HashMap::new();
        for w in wanted {
            let Some(lb) = runtime.lbs.get(&w.lb).cloned() else {
                continue;
            };
            let front = if w.is_lb {
                lb.shared.clone()
            } else {
                Stats::entry(&shared.stats.users, &w.name)
            };
            let route = Arc::new(Route {
                name: w.name,
                front,
                front_is_lb: w.is_lb,
                lb,
                tls: w.tls.map(TlsAcceptor::from),
                ext: w.ext.and_then(|e| runtime.extensions.get(&e).cloned()),
                params: w.params,
                clt_timeout: w.clt_timeout,
                _runtime: runtime.clone(),
            });
            let l = match (self.listeners.remove(&w.addr), fresh.remove(&w.addr)) {
                (Some(l), _) => {
                    l.set_route(route);
                    l
                }
                (None, Some(sock)) => Listener::start(sock, route, shared.clone()),
                // Every wanted address is either kept or freshly bound above.
                (None, None) => continue,
            };
            listeners.insert(w.addr, l);
        }
        // Old listeners not wanted any more close now, after the new ones are up.
        self.listeners = listeners;
        self.runtime = Some(runtime.clone());
        self.certs.extend(loaded_now);
        self.certs
            .retain(|name, _| snap.certkeys.contains_key(name));

        // Forget runtime records of entities that left the configuration (their counters
        // restart if they are added again).
        for d in old.user_vservers.diff(&snap.user_vservers) {
            if let DiffItem::Remove(name, _) = d {
                lock(&shared.stats.users).remove(name);
            }
        }
        for d in &lb_diff {
            if let DiffItem::Remove(name, _) = d {
                lock(&shared.stats.lbs).remove(*name);
            }
        }
        for name in &changed_services {
            if !snap.services.contains_key(name) {
                lock(&shared.stats.services).remove(name);
            }
        }
        if !lb_diff.is_empty() {
            shared
                .persistence
                .retain(|vs, svc| is_bound(&snap, vs, svc));
        }
        if prev.is_none() {
            refresh_states(&runtime, shared);
        } else {
            refresh_some_states(&runtime, shared, &changed_services, &changed_lbs);
        }
        Ok((runtime, warnings))
    }

    /// The route served on `addr` (for tests that drive connections by hand).
    #[cfg(test)]
    pub fn route(&self, addr: SocketAddr) -> Option<Arc<Route>> {
        self.listeners.get(&addr).map(Listener::route)
    }

    /// Closes every listener (engine shutdown).
    pub fn close_all(&mut self) {
        self.listeners.clear();
    }
}

/// True when lb vserver `lb` exists in `snap` with `service` bound to it (a persistence session
/// that is not is dropped).
pub(crate) fn is_bound(snap: &Snapshot, lb: &str, service: &str) -> bool {
    snap.lb_vservers
        .get(lb)
        .is_some_and(|l| l.members.iter().any(|m| m.service == service))
}

/// Recomputes every entity's state from the snapshot and the health table, recording transitions.
/// Called after each commit and after each health change.
pub(crate) fn refresh_states(rt: &Runtime, shared: &Shared) {
    let snap = &rt.snap;
    for (name, spec) in &snap.services {
        let rec: Arc<ServiceShared> = Stats::entry(&shared.stats.services, name);
        rec.set_state(service_state(spec, &rec));
    }
    for (name, lb) in &snap.lb_vservers {
        refresh_lb(rt, shared, name, lb);
    }
    refresh_user_vservers(rt, shared);
}

/// Recomputes the states of the given services, of the given lb vservers and of those binding
/// the services, then of every user vserver (there are few): what one commit or one health
/// change can affect, without walking the whole configuration.
pub(crate) fn refresh_some_states(
    rt: &Runtime,
    shared: &Shared,
    services: &[String],
    lbs: &[String],
) {
    let snap = &rt.snap;
    for name in services {
        let Some(spec) = snap.services.get(name) else {
            continue;
        };
        let rec: Arc<ServiceShared> = Stats::entry(&shared.stats.services, name);
        rec.set_state(service_state(spec, &rec));
    }
    let mut lb_names: Vec<&String> = lbs.iter().collect();
    for svc in services {
        lb_names.extend(rt.lbs_of.get(svc).into_iter().flatten());
    }
    lb_names.sort();
    lb_names.dedup();
    for name in lb_names {
        if let Some(lb) = snap.lb_vservers.get(name) {
            refresh_lb(rt, shared, name, lb);
        }
    }
    refresh_user_vservers(rt, shared);
}

fn service_state(spec: &crate::config::snapshot::ServiceSpec, rec: &ServiceShared) -> State {
    if !spec.enabled {
        State::OutOfService
    } else if !spec.health_monitor || rec.healthy() {
        State::Up
    } else {
        State::Down
    }
}

/// Health, active services and state of one lb vserver, from its services' recorded states.
fn refresh_lb(rt: &Runtime, shared: &Shared, name: &str, lb: &LbVserverSpec) -> State {
    let rec: Arc<VserverShared> = Stats::entry(&shared.stats.lbs, name);
    let total = lb.members.len() as u32;
    let services = lock(&shared.stats.services);
    let active = lb
        .members
        .iter()
        .filter(|m| {
            services
                .get(&m.service)
                .is_some_and(|s| s.state() == State::Up)
        })
        .count() as u32;
    drop(services);
    let health = (active * 100).checked_div(total).unwrap_or(0);
    rec.set_health(health, active);
    let (st, reason) = if !lb.enabled {
        (State::OutOfService, None)
    } else if let Some(r) = rt.down_reasons.get(&format!("lb:{name}")) {
        (State::Down, Some(r.clone()))
    } else if active > 0 {
        (State::Up, None)
    } else {
        (State::Down, None)
    };
    rec.set_state(st, reason);
    st
}

fn refresh_user_vservers(rt: &Runtime, shared: &Shared) {
    for (name, uv) in &rt.snap.user_vservers {
        let rec: Arc<VserverShared> = Stats::entry(&shared.stats.users, name);
        let lb_up = lock(&shared.stats.lbs)
            .get(&uv.default_lb)
            .is_some_and(|l| l.state() == State::Up);
        let (st, reason) = if !uv.enabled {
            (State::OutOfService, None)
        } else if let Some(r) = rt.down_reasons.get(name) {
            (State::Down, Some(r.clone()))
        } else if lb_up {
            (State::Up, None)
        } else {
            (State::Down, None)
        };
        rec.set_state(st, reason);
    }
}

/// Hashable form of `TlsVersions` for the per-commit server-config cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TlsKey(bool, bool);

impl From<&TlsVersions> for TlsKey {
    fn from(v: &TlsVersions) -> Self {
        TlsKey(v.tls12, v.tls13)
    }
}

impl Wanted {
    fn user(uv: &UserVserverSpec, tls: Option<Arc<ServerConfig>>) -> Wanted {
        Wanted {
            addr: SocketAddr::new(uv.ip, uv.port),
            name: uv.name.clone(),
            is_lb: false,
            lb: uv.default_lb.clone(),
            tls,
            ext: uv.extension.clone(),
            params: uv.params.clone(),
            clt_timeout: uv.clt_timeout,
        }
    }
}
