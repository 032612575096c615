//! The proxy engine: the only async code in nsemu.
//!
//! It owns listeners, connections, TLS, load balancing, health monitors, protocol extensions and
//! counters. It takes configuration only as whole `Arc<Snapshot>`s through `Engine::commit`, which
//! prepares everything that can fail (binding listeners, loading certificates, compiling Lua)
//! before publishing; on failure the running snapshot and listeners stay exactly as they were.

pub mod extension;
pub mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::snapshot::Snapshot;
pub use status::Status;

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
            EngineError::Stopped => write!(f, "The engine has stopped"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Where the engine keeps files of its own (persistence sessions).
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub state_dir: PathBuf,
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    // Placeholder state until the data path lands: the last committed snapshot.
    current: Mutex<Arc<Snapshot>>,
    _opts: EngineOptions,
}

impl Engine {
    /// Starts the engine. Must be called inside a tokio runtime.
    pub fn new(opts: EngineOptions) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                current: Mutex::new(Arc::new(Snapshot::default())),
                _opts: opts,
            }),
        }
    }

    /// Prepares and publishes `snap`, returning warnings to show the admin.
    pub async fn commit(&self, snap: Arc<Snapshot>) -> Result<Vec<String>, EngineError> {
        let mut cur = self
            .inner
            .current
            .lock()
            .map_err(|_| EngineError::Stopped)?;
        *cur = snap;
        Ok(Vec::new())
    }

    /// A copy of the runtime tables for show/stat.
    pub fn status(&self) -> Status {
        Status::default()
    }

    /// Stops listeners and closes connections.
    pub async fn shutdown(&self) {}
}
