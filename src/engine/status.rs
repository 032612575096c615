//! Runtime state the engine reports to the shell: health and counters.
//!
//! These are plain values copied out of the engine's live tables by `Engine::status`; the shell
//! renders them for `show`/`stat`. They are never part of the configuration.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// NetScaler's entity states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    Up,
    #[default]
    Down,
    OutOfService,
}

impl State {
    /// NetScaler's spelling in show output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "UP",
            State::Down => "DOWN",
            State::OutOfService => "OUT OF SERVICE",
        }
    }
}

/// Counters shared by user vservers, lb vservers and services.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Connections accepted (vserver) or opened (service).
    pub hits: u64,
    pub cur_client_conns: u64,
    pub cur_server_conns: u64,
    /// Bytes received from clients.
    pub request_bytes: u64,
    /// Bytes sent back to clients.
    pub response_bytes: u64,
    /// Clients closed at once because nothing could serve them.
    pub rejected: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VserverStatus {
    pub state: State,
    /// Why the vserver is DOWN, when it is (e.g. "Certkey not bound").
    pub reason: Option<String>,
    pub last_state_change: Option<SystemTime>,
    pub counters: Counters,
    /// Messages the protocol extension passed on with `ns.send`, to either side (user vservers).
    pub ext_messages: u64,
    /// Bytes in those messages.
    pub ext_bytes: u64,
    /// Lua errors that reset a connection (user vservers).
    pub ext_errors: u64,
    /// Percentage of bound services that are UP (lb vservers).
    pub health: u32,
    pub active_services: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorStatus {
    pub name: String,
    pub state: State,
    pub probes: u64,
    pub failed_total: u64,
    pub failed_current: u64,
    pub last_response: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceStatus {
    pub state: State,
    pub last_state_change: Option<SystemTime>,
    pub counters: Counters,
    pub monitors: Vec<MonitorStatus>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistentSession {
    pub vserver: String,
    pub key: String,
    pub service: String,
    pub remaining_secs: u64,
}

/// A copy of the engine's runtime tables, keyed like the snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub user_vservers: BTreeMap<String, VserverStatus>,
    pub lb_vservers: BTreeMap<String, VserverStatus>,
    pub services: BTreeMap<String, ServiceStatus>,
    pub persistent_sessions: Vec<PersistentSession>,
}
