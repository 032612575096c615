//! The configuration: a pure, synchronous object graph with NetScaler's rules.
//!
//! `model` holds objects and bindings, `apply` runs one command against it (all-or-nothing),
//! `nsconf` prints and replays ns.conf, `compile` turns it into the engine's `Snapshot`. No tokio,
//! no I/O, no clock here: what a command needs from outside (an extension's source text, the time
//! of a save) is passed in by the shell.

pub mod apply;
pub mod compile;
pub mod error;
pub mod model;
pub mod nsconf;
pub mod rules;
pub mod snapshot;

pub use apply::{Applied, Inputs};
pub use compile::CompileEnv;
pub use error::ConfigError;
pub use model::{Config, Kind, Object};
pub use snapshot::Snapshot;
