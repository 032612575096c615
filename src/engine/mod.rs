//! The proxy engine: the only async code in nsemu.
//!
//! It owns listeners, connections, TLS, load balancing, health monitors, protocol extensions and
//! counters. It takes configuration only as whole `Arc<Snapshot>`s through `Engine::commit`, which
//! prepares everything that can fail (binding listeners, loading certificates, compiling Lua)
//! before publishing; on failure the running snapshot and listeners stay exactly as they were.

mod backend;
pub mod balance;
mod drain;
pub mod extension;
mod listener;
mod monitor;
pub mod persist;
mod probe;
mod proxy;
mod stats;
pub mod status;
mod supervisor;
mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::config::snapshot::Snapshot;
use stats::{lock, Stats};
pub use status::{State, Status};
use supervisor::{Reconciler, Runtime, Shared};

/// Errors of the engine layer, rendered by the shell as `ERROR: <Display>`.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineError {
    /// A listener could not bind its address.
    AddressInUse { addr: String, reason: String },
    /// A certificate file is missing or unreadable (NetScaler 1540).
    CertNotFound { certkey: String, path: String },
    /// A file is not a usable certificate or key (NetScaler 1536).
    InvalidCert { certkey: String, reason: String },
    /// Certificate and key do not match (NetScaler 1538).
    CertKeyMismatch { certkey: String },
    /// A protocol extension failed to compile (NetScaler 3962).
    ExtensionCompile { name: String, message: String },
    /// A TLS configuration could not be built.
    Tls { reason: String },
    /// The engine has stopped.
    Stopped,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::AddressInUse { addr, reason } => {
                write!(f, "Address already in use [{addr}, {reason}]")
            }
            EngineError::CertNotFound { path, .. } => {
                write!(f, "Certificate does not exist [{path}]")
            }
            EngineError::InvalidCert { certkey, reason } => {
                write!(f, "Invalid certificate [{certkey}, {reason}]")
            }
            EngineError::CertKeyMismatch { certkey } => {
                write!(f, "Certificate and private key do not match [{certkey}]")
            }
            EngineError::ExtensionCompile { name, message } => {
                write!(f, "Extension compilation error. [{name}, {message}]")
            }
            EngineError::Tls { reason } => write!(f, "SSL configuration error [{reason}]"),
            EngineError::Stopped => write!(f, "The engine has stopped"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Where the engine keeps files of its own (persistence sessions).
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Directory of `persist::FILE_NAME` (beside ns.conf). Empty: sessions are kept in memory
    /// only.
    pub state_dir: PathBuf,
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// Serialises commits; holds the listeners. Held across no `.await` (commit's work is
    /// synchronous), but a tokio mutex keeps concurrent `commit` callers queued fairly.
    reconciler: tokio::sync::Mutex<Reconciler>,
    /// The published runtime, read by `status` and health updates (connections hold their own).
    current: RwLock<Option<Arc<Runtime>>>,
    shared: Arc<Shared>,
    /// The persistence file; written by the periodic task started in `new` and by `shutdown`.
    store: Arc<persist::Store>,
    /// See `defer_session_restore`.
    restore_deferred: std::sync::atomic::AtomicBool,
    /// Health monitor tasks (monitor.rs); reconciled by commits, read by `status`.
    monitors: Mutex<monitor::Monitors>,
    /// Delayed flushes of gracefully disabled services (drain.rs); changed by commits only.
    drains: Mutex<drain::Drains>,
}

impl Engine {
    /// Starts the engine. Must be called inside a tokio runtime.
    ///
    /// Raises the open-file soft limit to the hard limit: every proxied connection needs two
    /// descriptors.
    pub fn new(opts: EngineOptions) -> Engine {
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
        }
        let store = Arc::new(persist::Store::open(&opts.state_dir));
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            persistence: Default::default(),
            shutdown: watch::channel(false).0,
            provider: tls::provider(),
        });
        if store.enabled() {
            tokio::spawn(write_sessions(shared.clone(), store.clone()));
        }
        Engine {
            inner: Arc::new(Inner {
                reconciler: tokio::sync::Mutex::new(Reconciler::default()),
                current: RwLock::new(None),
                shared,
                store,
                restore_deferred: Default::default(),
                monitors: Mutex::default(),
                drains: Mutex::default(),
            }),
        }
    }

    /// Prepares and publishes `snap`, returning warnings to show the admin. On error nothing
    /// running changes (see `supervisor`).
    pub async fn commit(&self, snap: Arc<Snapshot>) -> Result<Vec<String>, EngineError> {
        if *self.inner.shared.shutdown.borrow() {
            return Err(EngineError::Stopped);
        }
        let mut rec = self.inner.reconciler.lock().await;
        let prev = self.runtime().map(|r| r.snap.clone());
        let (rt, warnings) = rec.commit(snap.clone(), &self.inner.shared)?;
        if !self
            .inner
            .restore_deferred
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.restore_sessions(&snap);
        }
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(rt.clone());
        // Still under the commit lock: monitors and drains follow commits in order.
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let notify: monitor::Notify = Arc::new(move |svc: &str| {
            if let Some(inner) = weak.upgrade() {
                Engine { inner }.monitor_changed(svc);
            }
        });
        let touched = lock(&self.inner.monitors).reconcile(
            prev.as_deref(),
            &rt.snap,
            &self.inner.shared.provider,
            &notify,
        );
        for svc in touched {
            self.monitor_changed(&svc);
        }
        lock(&self.inner.drains).follow(prev.as_deref(), &rt.snap, &self.inner.shared.stats);
        Ok(warnings)
    }

    /// Brings back the sessions of the previous run that still fit `snap` (once: the first
    /// time the configuration is known).
    fn restore_sessions(&self, snap: &Snapshot) {
        if let Some(saved) = self.inner.store.take_pending() {
            let n = self.inner.shared.persistence.restore(
                saved,
                Instant::now(),
                SystemTime::now(),
                |vs, svc| supervisor::is_bound(snap, vs, svc),
            );
            tracing::info!(sessions = n, "restored persistence sessions");
        }
    }

    /// While `true`, commits do not restore the saved persistence sessions: a boot that loads
    /// its file line by line (one commit each) defers them until the whole file is in, then
    /// calls `restore_deferred_sessions`.
    pub fn defer_session_restore(&self, defer: bool) {
        self.inner
            .restore_deferred
            .store(defer, std::sync::atomic::Ordering::Relaxed);
    }

    /// Restores the saved sessions against the running configuration, if not done yet.
    pub fn restore_deferred_sessions(&self) {
        if let Some(rt) = self.runtime() {
            self.restore_sessions(&rt.snap);
        }
    }

    fn runtime(&self) -> Option<Arc<Runtime>> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Recombines the verdicts of `service`'s monitors into its health (UP only when all say
    /// UP; UP when none runs). On a change: states are recomputed, the change is logged, and a
    /// service going DOWN has its connections closed (NetScaler's Down State Flush, on by
    /// default) so that clients reconnect through a service that is UP.
    fn monitor_changed(&self, service: &str) {
        let (up, last) = lock(&self.inner.monitors)
            .health(service)
            .unwrap_or((true, String::new()));
        let Some(rec) = lock(&self.inner.shared.stats.services)
            .get(service)
            .cloned()
        else {
            return;
        };
        let was = rec.healthy();
        rec.set_health(up, last.clone());
        if was == up {
            return;
        }
        if let Some(rt) = self.runtime() {
            supervisor::refresh_some_states(&rt, &self.inner.shared, &[service.to_string()], &[]);
        }
        if up {
            tracing::info!("service {service} UP: {last}");
        } else {
            tracing::info!("service {service} DOWN: {last}");
            // NetScaler's Down State Flush (on by default): clients reconnect through a service
            // that is UP. With `-downStateFlush DISABLED` established connections are left alone.
            let flush = self
                .runtime()
                .and_then(|rt| rt.snap.services.get(service).map(|s| s.down_state_flush))
                .unwrap_or(true);
            if flush {
                rec.close_connections();
            }
        }
    }

    /// A copy of the runtime tables for show/stat.
    pub fn status(&self) -> Status {
        let shared = &self.inner.shared;
        let mut st = Status::default();
        for (k, v) in lock(&shared.stats.users).iter() {
            st.user_vservers.insert(k.clone(), v.status());
        }
        for (k, v) in lock(&shared.stats.lbs).iter() {
            st.lb_vservers.insert(k.clone(), v.status());
        }
        let monitors = lock(&self.inner.monitors);
        for (k, v) in lock(&shared.stats.services).iter() {
            let mut s = v.status();
            s.monitors = monitors.statuses(k);
            st.services.insert(k.clone(), s);
        }
        drop(monitors);
        st.persistent_sessions = shared.persistence.list(Instant::now());
        st
    }

    /// Health of a service as found by its monitors (issue #4): `Up` or `Down`. Unknown services
    /// are ignored. The balancer sees the change at once; states are recomputed.
    pub fn set_service_health(&self, service: &str, state: State, last_response: &str) {
        let shared = &self.inner.shared;
        let Some(rec) = lock(&shared.stats.services).get(service).cloned() else {
            return;
        };
        rec.set_health(state == State::Up, last_response.to_string());
        let rt = self
            .inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(rt) = rt {
            supervisor::refresh_some_states(&rt, shared, &[service.to_string()], &[]);
        }
    }

    /// Closes every connection currently open through `service` (for graceful disable and
    /// health-triggered flushes). Returns false for an unknown service.
    pub fn close_service_connections(&self, service: &str) -> bool {
        match lock(&self.inner.shared.stats.services).get(service) {
            Some(rec) => {
                rec.close_connections();
                true
            }
            None => false,
        }
    }

    /// Stops listeners, closes connections and saves the persistence sessions.
    pub async fn shutdown(&self) {
        self.inner.shared.shutdown.send_replace(true);
        lock(&self.inner.monitors).clear();
        lock(&self.inner.drains).clear();
        self.inner.reconciler.lock().await.close_all();
        // Sessions read at start but never restored (no commit happened) are kept as they were.
        if self.inner.store.enabled() && self.inner.store.take_pending().is_none() {
            self.inner.store.save(&self.inner.shared.persistence);
        }
    }
}

/// The periodic writer: saves the persistence table when it changed, until shutdown (which
/// writes the last state itself).
async fn write_sessions(shared: Arc<Shared>, store: Arc<persist::Store>) {
    let mut stop = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(persist::WRITE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if shared.persistence.take_dirty() {
            let (shared, store) = (shared.clone(), store.clone());
            let _ = tokio::task::spawn_blocking(move || store.save(&shared.persistence)).await;
        }
    }
}
