//! Protocol extensions: NetScaler's Lua 5.2 extension API (`client.on_data`, `ns.send`,
//! `ns.pipe`, `ctxt:hold`, ...) run on mlua.
//!
//! Owns the Lua states of extensions and the per-connection extension state; knows nothing of
//! sockets, load balancing or config: the engine feeds bytes in and performs the [`Action`]s out.
//!
//! INTERFACE CONTRACT (the engine codes against exactly this):
//! - `Extension::compile` validates and loads a script once per commit.
//! - `Extension::new_session` starts the per-connection context.
//! - The engine feeds bytes with `Session::on_client_data` / `on_server_data` and performs the
//!   returned `Action`s in order. After `PipeClient` (resp. `PipeServer`) the engine stops calling
//!   the callback for that direction and copies bytes natively.
//! - An `Err` resets the client connection; nothing else is affected.
//!
//! # Design
//!
//! - **One Lua state per extension**, behind a mutex: callbacks are short and budgeted, and a
//!   state costs tens of KB while a connection's contexts cost a few hundred bytes. A session's
//!   contexts live in a registry table created at its first callback and released as soon as
//!   both directions are native (piped, or no callback for that direction), on `Close`, on error,
//!   or when the session is dropped. A piped MQTT connection holds no Lua memory at all.
//! - **Sandbox**: base (without `dofile`, `loadfile`, `require`; `load` takes text only;
//!   `collectgarbage` limited to `collect`/`count`/`step`; `setmetatable` refuses `__gc`, as
//!   finalizers would run outside callbacks; `print` logs), `string` (without
//!   `dump`), `table`, `math`, `bit32`, and `os.time/clock/date/difftime`. No `io`, `package`,
//!   `debug` or `coroutine` (mlua's instruction hook does not follow coroutines).
//! - **Budget**: a count hook every 1000 VM instructions; a callback that exceeds
//!   [`ExtensionLimits::instruction_budget`] fails with "instruction budget exceeded" and the hook
//!   keeps raising (and `pcall`/`xpcall` re-raise) until the callback has returned. Known limit: a
//!   single C call (a pathological `string.find` pattern on a large subject) is not interruptible.
//! - **Memory**: `Lua::set_memory_limit` caps the whole state; payload bytes and held data live
//!   in Rust (held data capped per session by [`ExtensionLimits::hold_limit`]).
//! - A failed callback leaves the state usable: Lua unwinds, and only the failing session's
//!   contexts are dropped.
//!
//! # Script-visible names chosen here (NetScaler's are unconfirmed)
//!
//! - `ctxt.client.ip`, `ctxt.client.port`: the client's address; `ctxt.client.vserver_ip`,
//!   `ctxt.client.vserver_port`: the address it connected to.
//! - `ctxt.vserver.name`, `ctxt.vserver.params.<name>`.
//! - `payload.data:split(n)` returns the first `n` bytes and the rest.
//! - The callbacks are looked up once, when the script is compiled.

mod runtime;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mlua::RegistryKey;

use crate::engine::EngineError;
use runtime::{CallState, Runtime, Side, BUDGET_EXCEEDED};
use std::net::SocketAddr;

/// Compiled extension code shared by all connections of the user vservers that use it.
pub struct Extension {
    shared: Arc<Shared>,
}

/// Limits applied to an extension's Lua state and its sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionLimits {
    /// VM instructions one callback may run (the script's top level gets ten times this).
    pub instruction_budget: u64,
    /// Bytes the extension's Lua state may allocate (shared by all its connections).
    pub memory_limit: usize,
    /// Bytes one direction of a session may keep with `ctxt:hold`.
    pub hold_limit: usize,
}

/// Counters of an extension since it was compiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtensionCounters {
    /// Callbacks run.
    pub callbacks: u64,
    /// Messages passed on with `ns.send` (to either side).
    pub messages: u64,
    /// Bytes in those messages.
    pub bytes: u64,
    /// Callbacks that failed (Lua error, budget, memory or hold limit).
    pub errors: u64,
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
pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    conn: Arc<SessionContext>,
    /// The session's registry record (its ctxt tables), created at the first callback.
    record: Option<RegistryKey>,
    /// Bytes kept by `ctxt:hold`, per direction (client, server).
    held: [Vec<u8>; 2],
    /// Directions that are native (piped, or no callback).
    native: [bool; 2],
    /// Set by the first error: the engine resets the connection, later calls repeat the error.
    failed: Option<ExtensionError>,
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

/// State shared by an extension and its sessions.
struct Shared {
    name: String,
    limits: ExtensionLimits,
    has_client: bool,
    has_server: bool,
    /// The Lua state; locked for the length of one callback (budgeted) or a session release.
    runtime: Mutex<Runtime>,
    next_session: AtomicU64,
    callbacks: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

// === impl ExtensionLimits ===

impl Default for ExtensionLimits {
    fn default() -> Self {
        ExtensionLimits {
            instruction_budget: 1_000_000,
            memory_limit: 64 << 20,
            hold_limit: 1 << 20,
        }
    }
}

// === impl ExtensionError ===

impl ExtensionError {
    fn new(message: impl Into<String>) -> ExtensionError {
        ExtensionError {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExtensionError {}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Runtime> {
        // A panic under the lock cannot leave the Lua state inconsistent (mlua unwinds it).
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// === impl Extension ===

impl Extension {
    /// Compiles `code`; a syntax error is `EngineError::ExtensionCompile` with Lua's message.
    pub fn compile(name: &str, code: &str) -> Result<Extension, EngineError> {
        Extension::compile_with_limits(name, code, ExtensionLimits::default())
    }

    /// Like [`Extension::compile`] with explicit limits.
    pub fn compile_with_limits(
        name: &str,
        code: &str,
        limits: ExtensionLimits,
    ) -> Result<Extension, EngineError> {
        let runtime =
            Runtime::new(name, code, &limits).map_err(|message| EngineError::ExtensionCompile {
                name: name.to_string(),
                message,
            })?;
        Ok(Extension {
            shared: Arc::new(Shared {
                name: name.to_string(),
                limits,
                has_client: runtime.client_on_data.is_some(),
                has_server: runtime.server_on_data.is_some(),
                runtime: Mutex::new(runtime),
                next_session: AtomicU64::new(1),
                callbacks: AtomicU64::new(0),
                messages: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// True when the script defines `client.on_data` (else the client side stays native).
    pub fn has_client_on_data(&self) -> bool {
        self.shared.has_client
    }

    /// True when the script defines `server.on_data` (else the server side stays native).
    pub fn has_server_on_data(&self) -> bool {
        self.shared.has_server
    }

    pub fn new_session(&self, ctx: SessionContext) -> Result<Session, ExtensionError> {
        Ok(Session {
            shared: self.shared.clone(),
            id: self.shared.next_session.fetch_add(1, Ordering::Relaxed),
            conn: Arc::new(ctx),
            record: None,
            held: [Vec::new(), Vec::new()],
            native: [!self.shared.has_client, !self.shared.has_server],
            failed: None,
        })
    }

    pub fn limits(&self) -> &ExtensionLimits {
        &self.shared.limits
    }

    pub fn counters(&self) -> ExtensionCounters {
        let s = &self.shared;
        ExtensionCounters {
            callbacks: s.callbacks.load(Ordering::Relaxed),
            messages: s.messages.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        }
    }

    /// Bytes currently allocated by the extension's Lua state.
    pub fn lua_memory(&self) -> usize {
        self.shared.lock().lua.used_memory()
    }

    /// Runs a full garbage collection of the extension's Lua state (for measurements).
    pub fn collect_garbage(&self) {
        let rt = self.shared.lock();
        // Twice: the first call may only finish a cycle already under way.
        let _ = rt.lua.gc_collect();
        let _ = rt.lua.gc_collect();
    }
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension")
            .field("name", &self.shared.name)
            .field("has_client_on_data", &self.shared.has_client)
            .field("has_server_on_data", &self.shared.has_server)
            .finish_non_exhaustive()
    }
}

// === impl Session ===

impl Session {
    /// Bytes that arrived from the client.
    pub fn on_client_data(&mut self, data: &[u8]) -> Result<Vec<Action>, ExtensionError> {
        self.on_data(Side::Client, data)
    }

    /// Bytes that arrived from the server.
    pub fn on_server_data(&mut self, data: &[u8]) -> Result<Vec<Action>, ExtensionError> {
        self.on_data(Side::Server, data)
    }

    /// True once the session holds no Lua state (both directions native, closed, failed, or
    /// released).
    pub fn is_released(&self) -> bool {
        self.record.is_none()
    }

    /// Frees the session's Lua contexts now (also done on drop). Later calls start afresh.
    pub fn release(&mut self) {
        if let Some(key) = self.record.take() {
            let rt = self.shared.lock();
            let _ = rt.lua.remove_registry_value(key);
        }
    }

    fn on_data(&mut self, side: Side, data: &[u8]) -> Result<Vec<Action>, ExtensionError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let index = side as usize;
        if self.native[index] {
            // The engine should not call a native direction; pass the bytes on unchanged.
            return Ok(vec![match side {
                Side::Client => Action::ToServer {
                    data: data.to_vec(),
                    eom: false,
                    token: None,
                    session: None,
                },
                Side::Server => Action::ToClient {
                    data: data.to_vec(),
                    eom: false,
                },
            }]);
        }
        let mut bytes = std::mem::take(&mut self.held[index]);
        bytes.extend_from_slice(data);

        let shared = self.shared.clone();
        let mut rt = shared.lock();
        shared.callbacks.fetch_add(1, Ordering::Relaxed);
        match self.call(&mut rt, side, bytes) {
            Ok(st) => {
                let mut closed = false;
                for action in &st.actions {
                    match action {
                        Action::ToServer { data, .. } | Action::ToClient { data, .. } => {
                            shared.messages.fetch_add(1, Ordering::Relaxed);
                            shared.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        Action::PipeClient => self.native[Side::Client as usize] = true,
                        Action::PipeServer => self.native[Side::Server as usize] = true,
                        Action::Close => closed = true,
                    }
                }
                if let Some(hold) = st.hold {
                    if hold.len() > shared.limits.hold_limit {
                        drop(rt);
                        return Err(self.fail(
                            &shared,
                            format!(
                                "hold limit exceeded ({} bytes held, limit {})",
                                hold.len(),
                                shared.limits.hold_limit
                            ),
                        ));
                    }
                    // Data held in a direction that was just piped has nowhere to go.
                    if !self.native[index] {
                        self.held[index] = hold;
                    }
                }
                if closed || self.native.iter().all(|native| *native) {
                    if let Some(key) = self.record.take() {
                        let _ = rt.lua.remove_registry_value(key);
                    }
                }
                Ok(st.actions)
            }
            Err(message) => {
                drop(rt);
                Err(self.fail(&shared, message))
            }
        }
    }

    /// Runs the callback of `side` with `bytes` as `payload.data`.
    fn call(&mut self, rt: &mut Runtime, side: Side, bytes: Vec<u8>) -> Result<CallState, String> {
        let describe = |e: mlua::Error| runtime::describe(&e);
        let callback = match side {
            Side::Client => rt.client_on_data.clone(),
            Side::Server => rt.server_on_data.clone(),
        }
        .ok_or_else(|| "no callback for this direction".to_string())?;
        rt.budget.start(self.shared.limits.instruction_budget);
        let ctxt = rt
            .ctxt(&mut self.record, self.id, &self.conn, side)
            .map_err(describe)?;
        let payload = runtime::payload(&rt.lua, bytes).map_err(describe)?;
        rt.lua.set_app_data(CallState {
            session: self.id,
            ctxt: ctxt.to_pointer() as usize,
            actions: Vec::new(),
            hold: None,
        });
        let result = callback.call::<()>((ctxt, payload));
        let st = rt.lua.remove_app_data::<CallState>();
        match (result, st) {
            (Ok(()), Some(st)) => Ok(st),
            (Ok(()), None) => Err("internal error: callback state lost".into()),
            (Err(_), _) if rt.budget.exceeded() => Err(BUDGET_EXCEEDED.into()),
            (Err(e), _) => Err(describe(e)),
        }
    }

    /// Records a failure: counted, logged, the session's contexts dropped.
    fn fail(&mut self, shared: &Shared, message: String) -> ExtensionError {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "nsemu::extension",
            extension = %shared.name,
            vserver = %self.conn.vserver_name,
            client = %self.conn.client_addr,
            "callback failed, resetting the connection: {message}"
        );
        self.release();
        self.held = [Vec::new(), Vec::new()];
        let err = ExtensionError::new(message);
        self.failed = Some(err.clone());
        err
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(key) = self.record.take() {
            // Never block in drop: if a callback of another connection runs, the key goes to
            // mlua's unref list and its slot is reclaimed at the next session's first callback.
            if let Ok(rt) = self.shared.runtime.try_lock() {
                let _ = rt.lua.remove_registry_value(key);
            }
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("extension", &self.shared.name)
            .field("id", &self.id)
            .field("client", &self.conn.client_addr)
            .field("native", &self.native)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
