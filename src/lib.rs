//! nsemu: a NetScaler-style appliance.
//!
//! The data path of one admin command, and the module that owns each step:
//!
//! ```text
//! line (console | cli over the control socket | ns.conf replay | piped script)
//!   -> cli::lex      tokens with spans, NetScaler quoting
//!   -> cli::parse    tokens x grammar -> Command (unique-prefix keywords and options)
//!   -> config::apply on a candidate copy, NetScaler's rules -> new Config
//!   -> config::snapshot::compile  typed, engine-ready view
//!   -> engine::Engine::commit     prepare (listeners, TLS, Lua), then publish or abort
//!   -> connections keep the snapshot they were accepted under
//! ```
//!
//! `grammar` holds the command language loaded from `grammar/*.ns`; `shell` renders results in
//! NetScaler's form and runs the console, the control socket and the `cli`/`check` modes.

pub mod cli;
pub mod config;
pub mod engine;
pub mod grammar;
pub mod shell;
