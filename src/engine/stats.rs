//! Runtime tables: counters, service health and entity states.
//!
//! Owns the live (atomic) counters of user vservers, lb vservers and services, the per-service
//! health flag the balancer reads on every pick, and the recorded state of each entity with the
//! time it last changed. These tables outlive snapshots: an entity keeps its counters across
//! commits for as long as its name stays in the configuration (NetScaler resets counters only
//! when the entity is removed). `Engine::status` copies them into plain `status` values.
//! It must not hold configuration: states are *computed* by the supervisor from the snapshot plus
//! health and stored here only so that `last_state_change` is the moment of the transition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::engine::status::{self, State};

/// Live counters of one entity. Updated with relaxed atomics once per chunk of bytes or per
/// connection event, never per byte; a `Status` is a racy-but-consistent-enough copy.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub cur_client_conns: AtomicU64,
    pub cur_server_conns: AtomicU64,
    pub request_bytes: AtomicU64,
    pub response_bytes: AtomicU64,
    pub rejected: AtomicU64,
    /// Messages the extension passed on with `ns.send` (to either side), and their bytes.
    pub ext_messages: AtomicU64,
    pub ext_bytes: AtomicU64,
    pub ext_errors: AtomicU64,
}

/// Which gauge a `GaugeGuard` holds up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gauge {
    Client,
    Server,
}

/// Increments a gauge when created and decrements it when dropped, so that a connection task
/// ending in any way (error, abort, shutdown) leaves the "current connections" figures right.
#[derive(Debug)]
pub(crate) struct GaugeGuard {
    counters: Arc<Counters>,
    gauge: Gauge,
}

/// Recorded state of an entity (see module doc: computed elsewhere, stored for its timestamp).
#[derive(Debug, Clone, Default)]
pub(crate) struct EntityState {
    pub state: State,
    pub reason: Option<String>,
    pub since: Option<SystemTime>,
}

/// Runtime record of one user vserver or lb vserver.
#[derive(Debug, Default)]
pub(crate) struct VserverShared {
    pub counters: Arc<Counters>,
    state: Mutex<EntityState>,
    /// Health figures of lb vservers (percentage UP, active services), set with the state.
    health: Mutex<(u32, u32)>,
}

/// Runtime record of one service: counters, health, and the drain signal.
#[derive(Debug)]
pub(crate) struct ServiceShared {
    pub counters: Arc<Counters>,
    /// Health as last reported by the monitors (issue #4); `true` (UP) until told otherwise.
    /// Read lock-free by the balancer on every pick.
    healthy: AtomicBool,
    last_response: Mutex<String>,
    state: Mutex<EntityState>,
    /// Bumped to ask every connection through this service to close (drain hook for issue #4).
    /// Each connection task holds a receiver while its backend connection is open; the sender
    /// lives as long as this record.
    kill: watch::Sender<u64>,
}

/// All runtime records, by entity name.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub users: Mutex<HashMap<String, Arc<VserverShared>>>,
    pub lbs: Mutex<HashMap<String, Arc<VserverShared>>>,
    pub services: Mutex<HashMap<String, Arc<ServiceShared>>>,
}

/// Locks a table, recovering from a poisoned lock: the tables hold plain counters and states
/// that stay meaningful even if a thread panicked while holding the lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Counters ===

impl Counters {
    pub fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> status::Counters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        status::Counters {
            hits: g(&self.hits),
            cur_client_conns: g(&self.cur_client_conns),
            cur_server_conns: g(&self.cur_server_conns),
            request_bytes: g(&self.request_bytes),
            response_bytes: g(&self.response_bytes),
            rejected: g(&self.rejected),
        }
    }
}

// === impl GaugeGuard ===

impl GaugeGuard {
    pub fn new(counters: &Arc<Counters>, gauge: Gauge) -> GaugeGuard {
        Self::field(counters, gauge).fetch_add(1, Ordering::Relaxed);
        GaugeGuard {
            counters: counters.clone(),
            gauge,
        }
    }

    fn field(c: &Counters, gauge: Gauge) -> &AtomicU64 {
        match gauge {
            Gauge::Client => &c.cur_client_conns,
            Gauge::Server => &c.cur_server_conns,
        }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        Self::field(&self.counters, self.gauge).fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl VserverShared ===

impl VserverShared {
    /// Records `state`; the timestamp moves only on a real transition.
    /// The state last recorded.
    pub fn state(&self) -> State {
        lock(&self.state).state
    }

    pub fn set_state(&self, state: State, reason: Option<String>) {
        let mut s = lock(&self.state);
        if s.state != state || s.since.is_none() {
            s.since = Some(SystemTime::now());
        }
        s.state = state;
        s.reason = reason;
    }

    pub fn set_health(&self, health: u32, active: u32) {
        *lock(&self.health) = (health, active);
    }

    pub fn status(&self) -> status::VserverStatus {
        let s = lock(&self.state).clone();
        let (health, active_services) = *lock(&self.health);
        status::VserverStatus {
            state: s.state,
            reason: s.reason,
            last_state_change: s.since,
            counters: self.counters.snapshot(),
            ext_messages: self.counters.ext_messages.load(Ordering::Relaxed),
            ext_bytes: self.counters.ext_bytes.load(Ordering::Relaxed),
            ext_errors: self.counters.ext_errors.load(Ordering::Relaxed),
            health,
            active_services,
        }
    }
}

// === impl ServiceShared ===

impl Default for ServiceShared {
    fn default() -> Self {
        ServiceShared {
            counters: Arc::default(),
            healthy: AtomicBool::new(true),
            last_response: Mutex::new(String::new()),
            state: Mutex::default(),
            kill: watch::channel(0).0,
        }
    }
}

impl ServiceShared {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_health(&self, up: bool, last_response: String) {
        self.healthy.store(up, Ordering::Relaxed);
        *lock(&self.last_response) = last_response;
    }

    /// The state last recorded.
    pub fn state(&self) -> State {
        lock(&self.state).state
    }

    pub fn set_state(&self, state: State) {
        let mut s = lock(&self.state);
        if s.state != state || s.since.is_none() {
            s.since = Some(SystemTime::now());
        }
        s.state = state;
    }

    /// A receiver that changes when the service is asked to drop its connections.
    pub fn kill_signal(&self) -> watch::Receiver<u64> {
        self.kill.subscribe()
    }

    /// Closes every connection currently open through this service.
    pub fn close_connections(&self) {
        self.kill.send_modify(|g| *g += 1);
    }

    pub fn status(&self) -> status::ServiceStatus {
        let s = lock(&self.state).clone();
        status::ServiceStatus {
            state: s.state,
            last_state_change: s.since,
            counters: self.counters.snapshot(),
            monitors: Vec::new(),
        }
    }
}

// === impl Stats ===

impl Stats {
    /// The record named `name` in `table`, created on first use.
    pub fn entry<T: Default>(table: &Mutex<HashMap<String, Arc<T>>>, name: &str) -> Arc<T> {
        lock(table).entry(name.to_string()).or_default().clone()
    }
}
