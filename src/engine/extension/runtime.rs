//! The Lua state of one extension: the sandbox, NetScaler's API (`ns`, contexts, streams) and the
//! per-callback instruction budget.
//!
//! One state serves every connection of the extension; the owner ([`super::Extension`]) keeps it
//! behind a mutex, so at most one callback runs in it at a time. What a callback does (sends,
//! pipes, holds) is collected in a [`CallState`] stored as mlua app data for the duration of the
//! call: the `ns.*` functions and `ctxt` methods find it there, and raise a Lua error when there
//! is none (called outside a callback) or when the context they are given belongs to another
//! connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mlua::{
    AnyUserData, ChunkMode, Function, HookTriggers, Lua, LuaOptions, RegistryKey, StdLib, Table,
    UserData, UserDataFields, UserDataMethods, Value, VmState,
};

use super::stream::{bytes_of, Stream, STRING_FIND};
use super::{Action, ExtensionLimits, SessionContext};

/// The hook runs every this many VM instructions; the budget is counted in these ticks.
const HOOK_EVERY: u32 = 1000;

/// Top-level code of a script gets this many callback budgets (it may build tables).
const TOP_LEVEL_BUDGETS: u64 = 10;

/// Message of the error raised when a callback runs out of instructions.
pub(super) const BUDGET_EXCEEDED: &str = "instruction budget exceeded";

/// Message of the error a callback gets when the state's memory cap is reached.
pub(super) const MEMORY_EXCEEDED: &str = "memory limit exceeded";

/// Which callback runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Server,
}

/// The effects of one callback, in order; app data of the state while the callback runs.
#[derive(Debug)]
pub(super) struct CallState {
    pub session: u64,
    /// Identity (`Table::to_pointer`) of the ctxt passed to the callback: `hold`/`close` must be
    /// called on it.
    pub ctxt: usize,
    pub actions: Vec<Action>,
    pub hold: Option<Vec<u8>>,
}

/// Instruction budget shared by the hook and the runtime. Only touched while the runtime mutex is
/// held, so relaxed atomics suffice (they are atomics only because the hook must be `Send`).
#[derive(Debug, Default)]
pub(super) struct Budget {
    ticks: AtomicU32,
    max_ticks: AtomicU32,
}

/// A context a script can name as `ctxt.input`, `ctxt.output` or `ctxt.client`.
#[derive(Debug, Clone)]
struct Endpoint {
    session: u64,
    kind: EndpointKind,
    conn: Arc<SessionContext>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndpointKind {
    /// The client connection (`ctxt.client`; `ctxt.input` of client callbacks, `ctxt.output` of
    /// server callbacks).
    Client,
    /// The default LB vserver (`ctxt.output` of client callbacks).
    LbVserver,
    /// The server connection (`ctxt.input` of server callbacks).
    Server,
}

/// The extension's Lua state and what the session code needs from it.
pub(super) struct Runtime {
    pub lua: Lua,
    pub client_on_data: Option<Function>,
    pub server_on_data: Option<Function>,
    pub budget: Arc<Budget>,
    /// Metatable of every ctxt table: `__index` holds `hold` and `close`.
    ctxt_meta: Table,
    /// `ctxt.vserver` tables, one per user vserver (it is the vserver's context, shared by its
    /// connections), rebuilt when the vserver's params change.
    vservers: HashMap<String, (Vec<(String, String)>, Table)>,
}

// === impl Budget ===

impl Budget {
    /// Starts counting for a run of at most `instructions` VM instructions.
    pub(super) fn start(&self, instructions: u64) {
        let ticks = instructions.div_ceil(u64::from(HOOK_EVERY)).max(1);
        self.max_ticks
            .store(u32::try_from(ticks).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.ticks.store(0, Ordering::Relaxed);
    }

    pub(super) fn exceeded(&self) -> bool {
        self.ticks.load(Ordering::Relaxed) > self.max_ticks.load(Ordering::Relaxed)
    }

    /// One hook tick; an error once the budget is spent (and at every later tick, so a script
    /// cannot outlive it by catching the error).
    fn tick(&self) -> mlua::Result<VmState> {
        let ticks = self.ticks.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if ticks > self.max_ticks.load(Ordering::Relaxed) {
            Err(mlua::Error::runtime(BUDGET_EXCEEDED))
        } else {
            Ok(VmState::Continue)
        }
    }
}

// === impl Runtime ===

impl Runtime {
    /// Builds the sandboxed state, runs the script's top level and finds its callbacks. The error
    /// is Lua's message (with the chunk name and line).
    pub(super) fn new(name: &str, code: &str, limits: &ExtensionLimits) -> Result<Runtime, String> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::BIT | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::new()).map_err(|e| describe(&e))?;
        lua.set_memory_limit(limits.memory_limit)
            .map_err(|e| describe(&e))?;

        let budget = Arc::new(Budget::default());
        budget.start(limits.instruction_budget.saturating_mul(TOP_LEVEL_BUDGETS));
        let hook_budget = budget.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| hook_budget.tick(),
        );

        let ctxt_meta = install_api(&lua, name, &budget).map_err(|e| describe(&e))?;

        let chunk = lua
            .load(code)
            .set_name(format!("={name}"))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| describe(&e))?;
        chunk.call::<()>(()).map_err(|e| {
            if budget.exceeded() {
                BUDGET_EXCEEDED.to_string()
            } else {
                describe(&e)
            }
        })?;

        let on_data = |table: &str| -> Option<Function> {
            let table: Table = lua.globals().raw_get(table).ok()?;
            table.raw_get::<Function>("on_data").ok()
        };
        let client_on_data = on_data("client");
        let server_on_data = on_data("server");
        if client_on_data.is_none() && server_on_data.is_none() {
            return Err("the script defines neither client.on_data nor server.on_data".into());
        }
        Ok(Runtime {
            client_on_data,
            server_on_data,
            budget,
            ctxt_meta,
            vservers: HashMap::new(),
            lua,
        })
    }

    /// The ctxt table of `side` for session `id`, created on first use in the session's record
    /// (a registry table `{c = client ctxt, s = server ctxt, e = client endpoint}`).
    pub(super) fn ctxt(
        &mut self,
        record: &mut Option<RegistryKey>,
        id: u64,
        conn: &Arc<SessionContext>,
        side: Side,
    ) -> mlua::Result<Table> {
        let lua = &self.lua;
        let rec: Table = match record {
            Some(key) => lua.registry_value(key)?,
            None => {
                // Slots of sessions dropped without the lock are reclaimed here.
                lua.expire_registry_values();
                let rec = lua.create_table_with_capacity(0, 3)?;
                *record = Some(lua.create_registry_value(&rec)?);
                rec
            }
        };
        let field = match side {
            Side::Client => "c",
            Side::Server => "s",
        };
        if let Some(ctxt) = rec.raw_get::<Option<Table>>(field)? {
            return Ok(ctxt);
        }
        let endpoint = |kind| {
            lua.create_userdata(Endpoint {
                session: id,
                kind,
                conn: conn.clone(),
            })
        };
        let client = match rec.raw_get::<Option<AnyUserData>>("e")? {
            Some(client) => client,
            None => {
                let client = endpoint(EndpointKind::Client)?;
                rec.raw_set("e", &client)?;
                client
            }
        };
        let (input, output) = match side {
            Side::Client => (client.clone(), endpoint(EndpointKind::LbVserver)?),
            Side::Server => (endpoint(EndpointKind::Server)?, client.clone()),
        };
        let vserver = self.vserver(conn)?;
        let ctxt = self.lua.create_table_with_capacity(0, 4)?;
        ctxt.raw_set("input", input)?;
        ctxt.raw_set("output", output)?;
        ctxt.raw_set("client", client)?;
        ctxt.raw_set("vserver", vserver)?;
        ctxt.set_metatable(Some(self.ctxt_meta.clone()));
        rec.raw_set(field, &ctxt)?;
        Ok(ctxt)
    }

    /// `ctxt.vserver`: `{name = ..., params = {name = value, ...}}`, one per user vserver.
    fn vserver(&mut self, conn: &SessionContext) -> mlua::Result<Table> {
        if let Some((params, table)) = self.vservers.get(&conn.vserver_name) {
            if *params == conn.params {
                return Ok(table.clone());
            }
        }
        let params = self.lua.create_table_with_capacity(0, conn.params.len())?;
        for (name, value) in &conn.params {
            params.raw_set(name.as_str(), value.as_str())?;
        }
        let table = self.lua.create_table_with_capacity(0, 2)?;
        table.raw_set("name", conn.vserver_name.as_str())?;
        table.raw_set("params", params)?;
        self.vservers.insert(
            conn.vserver_name.clone(),
            (conn.params.clone(), table.clone()),
        );
        Ok(table)
    }
}

/// The sandbox prelude: keeps only the allowed globals, wraps what could escape the sandbox or
/// the budget, and defines `ns.logger`, `print` and the empty `client`/`server` tables scripts
/// fill. Receives `exceeded()` and `log(level, message)` from Rust.
const PRELUDE: &str = r##"
local exceeded, log = ...
local G = _G
local keep = {
  assert = true, error = true, getmetatable = true, ipairs = true, next = true, pairs = true,
  pcall = true, rawequal = true, rawget = true, rawlen = true, rawset = true, select = true,
  setmetatable = true, tonumber = true, tostring = true, type = true, xpcall = true,
  unpack = true, _G = true, _VERSION = true, load = true, collectgarbage = true,
  string = true, table = true, math = true, bit32 = true, os = true,
}
for k in next, G do
  if not keep[k] then G[k] = nil end
end
local os = G.os
G.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }
G.string.dump = nil

local error, select, tostring, format, concat = error, select, tostring, string.format, table.concat
local _load, _pcall, _xpcall, _collect = load, pcall, xpcall, collectgarbage

-- A budget error must not be swallowed by pcall: re-raise it after the protected call.
local function checked(...)
  if exceeded() then error("instruction budget exceeded", 0) end
  return ...
end
G.pcall = function(...) return checked(_pcall(...)) end
G.xpcall = function(...) return checked(_xpcall(...)) end

-- Finalizers would run at any allocation, outside callbacks and their budget.
local _setmetatable, rawget = setmetatable, rawget
G.setmetatable = function(t, mt)
  if mt ~= nil and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed", 2)
  end
  return _setmetatable(t, mt)
end

-- Text chunks only (no bytecode), never from files.
G.load = function(chunk, chunkname, mode, ...)
  if select("#", ...) > 0 then return _load(chunk, chunkname, "t", (...)) end
  return _load(chunk, chunkname, "t")
end

-- The state is shared by all connections: no stopping or tuning the collector.
local gc_allowed = { collect = true, count = true, step = true }
G.collectgarbage = function(opt, arg)
  opt = opt or "collect"
  if not gc_allowed[opt] then
    error("collectgarbage: option '" .. tostring(opt) .. "' is not allowed", 2)
  end
  return _collect(opt, arg)
end

local logger = {}
for _, level in G.ipairs({ "debug", "info", "warning", "error" }) do
  logger[level] = function(self, fmt, ...)
    if self ~= logger then -- called as ns.logger.info(fmt, ...)
      return log(level, format(tostring(self), fmt, ...))
    end
    return log(level, format(tostring(fmt), ...))
  end
end
G.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  log("info", concat(parts, "\t"))
end
G.ns = { logger = logger }
G.client = {}
G.server = {}
"##;

/// Runs the prelude and installs `ns.send`, `ns.pipe` and the ctxt methods; returns the ctxt
/// metatable.
fn install_api(lua: &Lua, name: &str, budget: &Arc<Budget>) -> mlua::Result<Table> {
    let string: Table = lua.globals().raw_get("string")?;
    lua.set_named_registry_value(STRING_FIND, string.raw_get::<Function>("find")?)?;

    let exceeded = {
        let budget = budget.clone();
        lua.create_function(move |_, ()| Ok(budget.exceeded()))?
    };
    let log = {
        let name = name.to_string();
        lua.create_function(move |lua, (level, message): (String, mlua::String)| {
            let session = lua.app_data_ref::<CallState>().map(|st| st.session);
            let message = message.to_string_lossy();
            match level.as_str() {
                "debug" => {
                    tracing::debug!(target: "nsemu::extension", extension = %name, ?session, "{message}")
                }
                "info" => {
                    tracing::info!(target: "nsemu::extension", extension = %name, ?session, "{message}")
                }
                "warning" => {
                    tracing::warn!(target: "nsemu::extension", extension = %name, ?session, "{message}")
                }
                _ => {
                    tracing::error!(target: "nsemu::extension", extension = %name, ?session, "{message}")
                }
            }
            Ok(())
        })?
    };
    lua.load(PRELUDE)
        .set_name("=nsemu.prelude")
        .call::<()>((exceeded, log))?;

    let ns: Table = lua.globals().raw_get("ns")?;
    ns.raw_set("send", lua.create_function(ns_send)?)?;
    ns.raw_set("pipe", lua.create_function(ns_pipe)?)?;

    let methods = lua.create_table()?;
    methods.raw_set("hold", lua.create_function(ctxt_hold)?)?;
    methods.raw_set("close", lua.create_function(ctxt_close)?)?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", methods)?;
    meta.raw_set("__metatable", false)?;
    Ok(meta)
}

/// The endpoint a script passed, checked to belong to the running callback's connection, and
/// the running callback's state.
fn endpoint_of(value: &AnyUserData, st: &CallState) -> mlua::Result<(u64, EndpointKind)> {
    let ep = value.borrow::<Endpoint>().map_err(|_| {
        mlua::Error::runtime("bad context: expected ctxt.input, ctxt.output or ctxt.client")
    })?;
    if ep.session != st.session {
        return Err(mlua::Error::runtime(
            "bad context: it belongs to another connection",
        ));
    }
    Ok((ep.session, ep.kind))
}

fn outside(what: &str) -> mlua::Error {
    mlua::Error::runtime(format!("{what} called outside a callback"))
}

/// `ns.send(dest, "DATA"|"EOM", {data=, user_token=, user_session=})`.
fn ns_send(
    lua: &Lua,
    (dest, event, fields): (AnyUserData, String, Option<Table>),
) -> mlua::Result<()> {
    let eom = match event.as_str() {
        "DATA" => false,
        "EOM" => true,
        other => {
            return Err(mlua::Error::runtime(format!(
                "ns.send: unknown event '{other}' (expected \"DATA\" or \"EOM\")"
            )))
        }
    };
    let (data, token, session) = match fields {
        Some(fields) => (
            match fields.get::<Value>("data")? {
                Value::Nil => Vec::new(),
                value => bytes_of(&value)?,
            },
            optional_string(fields.get::<Value>("user_token")?)?,
            optional_string(fields.get::<Value>("user_session")?)?,
        ),
        None => (Vec::new(), None, None),
    };
    let mut st = lua
        .app_data_mut::<CallState>()
        .ok_or_else(|| outside("ns.send"))?;
    let (_, kind) = endpoint_of(&dest, &st)?;
    st.actions.push(match kind {
        EndpointKind::Client => Action::ToClient { data, eom },
        EndpointKind::LbVserver | EndpointKind::Server => Action::ToServer {
            data,
            eom,
            token,
            session,
        },
    });
    Ok(())
}

/// `ns.pipe(src, dest)`: the direction is the one `src` sends in.
fn ns_pipe(lua: &Lua, (src, dest): (AnyUserData, AnyUserData)) -> mlua::Result<()> {
    let mut st = lua
        .app_data_mut::<CallState>()
        .ok_or_else(|| outside("ns.pipe"))?;
    let (_, from) = endpoint_of(&src, &st)?;
    let (_, to) = endpoint_of(&dest, &st)?;
    let action = match (from, to) {
        (EndpointKind::Client, EndpointKind::LbVserver | EndpointKind::Server) => {
            Action::PipeClient
        }
        (EndpointKind::Server, EndpointKind::Client) => Action::PipeServer,
        _ => {
            return Err(mlua::Error::runtime(
                "ns.pipe: expected ns.pipe(ctxt.input, ctxt.output)",
            ))
        }
    };
    if !st.actions.contains(&action) {
        st.actions.push(action);
    }
    Ok(())
}

/// Checks that `ctxt` is the running callback's context.
fn check_ctxt(st: &CallState, ctxt: &Table, what: &str) -> mlua::Result<()> {
    if ctxt.to_pointer() as usize == st.ctxt {
        Ok(())
    } else {
        Err(mlua::Error::runtime(format!(
            "{what}: bad context (not the context of the running callback)"
        )))
    }
}

/// `ctxt:hold(data)`.
fn ctxt_hold(lua: &Lua, (ctxt, data): (Table, Value)) -> mlua::Result<()> {
    let bytes = bytes_of(&data)?;
    let mut st = lua
        .app_data_mut::<CallState>()
        .ok_or_else(|| outside("ctxt:hold"))?;
    check_ctxt(&st, &ctxt, "ctxt:hold")?;
    st.hold
        .get_or_insert_with(Vec::new)
        .extend_from_slice(&bytes);
    Ok(())
}

/// `ctxt:close()`.
fn ctxt_close(lua: &Lua, ctxt: Table) -> mlua::Result<()> {
    let mut st = lua
        .app_data_mut::<CallState>()
        .ok_or_else(|| outside("ctxt:close"))?;
    check_ctxt(&st, &ctxt, "ctxt:close")?;
    if !st.actions.contains(&Action::Close) {
        st.actions.push(Action::Close);
    }
    Ok(())
}

fn optional_string(value: Value) -> mlua::Result<Option<String>> {
    match value {
        Value::Nil => Ok(None),
        value => Ok(Some(
            String::from_utf8_lossy(&bytes_of(&value)?).into_owned(),
        )),
    }
}

impl UserData for Endpoint {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        // Connection details of ctxt.client; nil on the other contexts.
        fields.add_field_method_get("ip", |_, this| {
            Ok((this.kind == EndpointKind::Client).then(|| this.conn.client_addr.ip().to_string()))
        });
        fields.add_field_method_get("port", |_, this| {
            Ok((this.kind == EndpointKind::Client).then(|| this.conn.client_addr.port()))
        });
        fields.add_field_method_get("vserver_ip", |_, this| {
            Ok(
                (this.kind == EndpointKind::Client)
                    .then(|| this.conn.vserver_addr.ip().to_string()),
            )
        });
        fields.add_field_method_get("vserver_port", |_, this| {
            Ok((this.kind == EndpointKind::Client).then(|| this.conn.vserver_addr.port()))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| {
            Ok(match this.kind {
                EndpointKind::Client => "ns context: client",
                EndpointKind::LbVserver => "ns context: lb vserver",
                EndpointKind::Server => "ns context: server",
            })
        });
    }
}

/// A one-line message for an mlua error: Lua's own message (with chunk name and line), without
/// the traceback.
pub(super) fn describe(err: &mlua::Error) -> String {
    match err {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::MemoryError(_) => MEMORY_EXCEEDED.to_string(),
        mlua::Error::CallbackError { cause, .. } => describe(cause),
        mlua::Error::WithContext { cause, .. } => describe(cause),
        mlua::Error::RuntimeError(message) => first_part(message),
        other => first_part(&other.to_string()),
    }
}

fn first_part(message: &str) -> String {
    message
        .split("\nstack traceback:")
        .next()
        .unwrap_or(message)
        .trim_end()
        .to_string()
}

/// Builds the payload table of a callback: `{data = stream}`.
pub(super) fn payload(lua: &Lua, bytes: Vec<u8>) -> mlua::Result<Table> {
    let payload = lua.create_table_with_capacity(0, 1)?;
    payload.raw_set("data", Stream::new(bytes))?;
    Ok(payload)
}
