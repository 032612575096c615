//! Protocol extensions: NetScaler's Lua 5.2 extension API (`client.on_data`, `ns.send`,
//! `ns.pipe`, `ctxt:hold`, ...) run on mlua.
//!
//! INTERFACE CONTRACT (the engine codes against exactly this; the Lua work replaces the bodies):
//! - `Extension::compile` validates and loads a script once per commit.
//! - `Extension::new_session` starts the per-connection context.
//! - The engine feeds bytes with `Session::on_client_data` / `on_server_data` and performs the
//!   returned `Action`s in order. After `PipeClient` (resp. `PipeServer`) the engine stops calling
//!   the callback for that direction and copies bytes natively.
//! - An `Err` resets the client connection; nothing else is affected.

use crate::engine::EngineError;
use std::net::SocketAddr;

/// Compiled extension code shared by all connections of the user vservers that use it.
#[derive(Debug)]
pub struct Extension {
    name: String,
}

/// What the engine knows about a connection when it starts a session.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub vserver_name: String,
    pub client_addr: SocketAddr,
    pub vserver_addr: SocketAddr,
    /// The user vserver's `-params` as name/value pairs.
    pub params: Vec<(String, String)>,
}

/// One connection's extension state.
#[derive(Debug)]
pub struct Session {
    _private: (),
}

/// What a callback asked the engine to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `ns.send(ctxt.output, "DATA"|"EOM", {...})`: deliver to the server side. The load-balancing
    /// decision is taken on the first data; after an `eom` the next data gets a new decision.
    ToServer {
        data: Vec<u8>,
        eom: bool,
        token: Option<String>,
        session: Option<String>,
    },
    /// `ns.send(ctxt.client, ...)` (client side) or `ns.send(ctxt.output, ...)` (server side):
    /// deliver to the client.
    ToClient { data: Vec<u8>, eom: bool },
    /// `ns.pipe(ctxt.input, ctxt.output)` in the client callback: client->server goes native.
    PipeClient,
    /// `ns.pipe(...)` in the server callback: server->client goes native.
    PipeServer,
    /// `ctxt:close()`: close the client connection with a FIN.
    Close,
}

/// A callback failed (Lua error, instruction budget or memory cap exceeded).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionError {
    pub message: String,
}

impl std::fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Extension {
    /// Compiles `code`; a syntax error is `EngineError::ExtensionCompile` with Lua's message.
    pub fn compile(name: &str, _code: &str) -> Result<Extension, EngineError> {
        Ok(Extension {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the script defines `client.on_data` (else the client side stays native).
    pub fn has_client_on_data(&self) -> bool {
        false
    }

    /// True when the script defines `server.on_data` (else the server side stays native).
    pub fn has_server_on_data(&self) -> bool {
        false
    }

    pub fn new_session(&self, _ctx: SessionContext) -> Result<Session, ExtensionError> {
        Ok(Session { _private: () })
    }
}

impl Session {
    /// Bytes that arrived from the client.
    pub fn on_client_data(&mut self, data: &[u8]) -> Result<Vec<Action>, ExtensionError> {
        Ok(vec![
            Action::ToServer {
                data: data.to_vec(),
                eom: false,
                token: None,
                session: None,
            },
            Action::PipeClient,
        ])
    }

    /// Bytes that arrived from the server.
    pub fn on_server_data(&mut self, data: &[u8]) -> Result<Vec<Action>, ExtensionError> {
        Ok(vec![
            Action::ToClient {
                data: data.to_vec(),
                eom: false,
            },
            Action::PipeServer,
        ])
    }
}
