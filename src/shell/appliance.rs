//! The appliance: the running configuration, the engine it drives, and the execution of one
//! command line as an admin types it.
//!
//! Each mutating command is one transaction: clone the configuration, apply, compile a snapshot,
//! commit it to the engine; only when all of that succeeded does the clone become the running
//! configuration. The lock around the state serialises sessions (console, control socket, boot
//! replay); connections never take it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Mutex;

use crate::cli::{parse_line, Command};
use crate::config::{nsconf, CompileEnv, Config, ConfigError, Inputs, Kind, Snapshot};
use crate::engine::extension::Extension;
use crate::engine::{Engine, EngineError};

use super::render;
use super::time::ctime;

/// Where the appliance keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The saved configuration (NetScaler's /nsconfig/ns.conf).
    pub config: PathBuf,
    /// Certificates and keys given by relative name (NetScaler's /nsconfig/ssl).
    pub ssl_dir: PathBuf,
    /// `import ns extension local:FILE` resolves FILE here (NetScaler's /var/tmp).
    pub ext_dir: PathBuf,
}

impl Paths {
    /// The defaults beside a config file: `ssl/` and `extensions/` in the same directory.
    pub fn beside(config: &Path) -> Paths {
        let dir = config
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Paths {
            config: config.to_path_buf(),
            ssl_dir: dir.join("ssl"),
            ext_dir: dir.join("extensions"),
        }
    }
}

/// The result of one command line, as printed to the admin.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Output including the final ` Done` or `ERROR: ...` line, newline-terminated.
    pub text: String,
    pub ok: bool,
    /// The admin asked to leave (`exit`, `quit`).
    pub exit: bool,
}

impl Reply {
    fn done(body: String, warnings: &[String]) -> Reply {
        let mut text = body;
        for w in warnings {
            text.push_str(&format!("Warning: {w}\n"));
        }
        text.push_str(" Done\n");
        Reply {
            text,
            ok: true,
            exit: false,
        }
    }

    fn error(msg: impl std::fmt::Display) -> Reply {
        Reply {
            text: format!("ERROR: {msg}\n"),
            ok: false,
            exit: false,
        }
    }
}

struct State {
    config: Config,
    /// The snapshot the engine runs, compiled from `config`: the base of the next incremental
    /// compile.
    snapshot: Arc<Snapshot>,
    generation: u64,
    /// Running config differs from the saved file.
    changed: bool,
    last_change: Option<SystemTime>,
    last_save: Option<SystemTime>,
}

pub struct Appliance {
    state: Mutex<State>,
    engine: Engine,
    paths: Paths,
}

/// Every command path that does not change the configuration; `query` handles each.
pub const QUERIES: &[&str] = &[
    "save ns config",
    "help",
    "exit",
    "quit",
    "show ns runningConfig",
    "show ns savedConfig",
    "show ns config",
    "diff ns config",
    "show server",
    "show service",
    "stat service",
    "show serviceGroup",
    "show lb vserver",
    "stat lb vserver",
    "show lb monitor",
    "show lb persistentSessions",
    "show ssl certKey",
    "show ssl vserver",
    "show ssl service",
    "show user protocol",
    "show user vserver",
    "stat user vserver",
    "show ns extension",
];

/// The default certkey an appliance creates at first boot, as NetScaler has it.
pub const DEFAULT_CERTKEY: &str = "ns-server-certificate";

impl Appliance {
    pub fn new(paths: Paths, engine: Engine) -> Arc<Appliance> {
        Arc::new(Appliance {
            state: Mutex::new(State {
                config: Config::default(),
                snapshot: Arc::new(Snapshot::compile(
                    &Config::default(),
                    &CompileEnv::default(),
                    0,
                )),
                generation: 0,
                changed: false,
                last_change: None,
                last_save: None,
            }),
            engine,
            paths,
        })
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Replays the saved config (if any) as one commit. Returns messages for the log: each line
    /// that failed, with file and line number. The rest of the file loads regardless.
    pub async fn boot(&self) -> Vec<String> {
        let mut msgs = Vec::new();
        let text = match std::fs::read_to_string(&self.paths.config) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                msgs.push(format!("{}: cannot read: {e}", self.paths.config.display()));
                String::new()
            }
        };
        let mut st = self.state.lock().await;
        let mut cfg = Config::default();
        let errors = nsconf::replay(&mut cfg, &text, &mut |c| self.inputs_for(c));
        for e in &errors {
            let what = if e.unsupported {
                "unsupported"
            } else {
                "ERROR"
            };
            msgs.push(format!(
                "{}:{}: {what}: {} [{}]",
                self.paths.config.display(),
                e.line,
                e.message,
                e.text
            ));
        }
        // A file load is one commit. If the engine refuses it (a port in use, an unreadable
        // key), load it again line by line, one commit each, so that only the lines the engine
        // refuses are left out and reported; nothing else of the file is lost.
        match self.commit(&mut st, cfg).await {
            Ok(w) => msgs.extend(w.into_iter().map(|w| format!("Warning: {w}"))),
            Err(e) => {
                msgs.push(format!(
                    "{}: the engine refused the configuration as a whole ({e}); loading it line by line",
                    self.paths.config.display()
                ));
                // Saved persistence sessions wait until the whole file is in.
                self.engine.defer_session_restore(true);
                self.replay_line_by_line(&mut st, &text, &mut msgs).await;
                self.engine.defer_session_restore(false);
                self.engine.restore_deferred_sessions();
            }
        }
        st.changed = false;
        msgs
    }

    /// The slow boot path: each command its own transaction. Lines that do not parse or apply
    /// were reported by the first pass and are skipped silently here.
    async fn replay_line_by_line(&self, st: &mut State, text: &str, msgs: &mut Vec<String>) {
        for (i, line) in text.lines().enumerate() {
            let Ok(cmds) = parse_line(line) else { continue };
            for cmd in cmds {
                if !crate::config::apply::is_mutating(&cmd) || cmd.path() == "clear ns config" {
                    continue;
                }
                let Ok(inputs) = self.inputs_for(&cmd) else {
                    continue;
                };
                let mut candidate = st.config.clone();
                if candidate.apply(&cmd, &inputs).is_err() {
                    continue;
                }
                if let Err(e) = self.commit(st, candidate).await {
                    msgs.push(format!(
                        "{}:{}: ERROR: {e} [{line}]",
                        self.paths.config.display(),
                        i + 1
                    ));
                }
            }
        }
    }

    /// At first boot NetScaler creates its default certkey; nsemu does the same with a fresh
    /// self-signed certificate (files ns-server.cert and ns-server.key in the ssl directory).
    pub async fn ensure_default_certkey(&self) -> Result<(), String> {
        if self
            .state
            .lock()
            .await
            .config
            .contains(Kind::CertKey, DEFAULT_CERTKEY)
        {
            return Ok(());
        }
        let cert = self.paths.ssl_dir.join("ns-server.cert");
        let key = self.paths.ssl_dir.join("ns-server.key");
        if !cert.exists() || !key.exists() {
            std::fs::create_dir_all(&self.paths.ssl_dir).map_err(|e| e.to_string())?;
            let ck = rcgen::generate_simple_self_signed(vec![
                "nsemu".to_string(),
                "localhost".to_string(),
            ])
            .map_err(|e| e.to_string())?;
            std::fs::write(&cert, ck.cert.pem()).map_err(|e| e.to_string())?;
            write_private(&key, &ck.key_pair.serialize_pem()).map_err(|e| e.to_string())?;
        }
        let r = self
            .execute(&format!(
                "add ssl certKey {DEFAULT_CERTKEY} -cert ns-server.cert -key ns-server.key"
            ))
            .await;
        if !r.ok {
            return Err(r.text.trim().to_string());
        }
        // Part of the appliance as booted, not an admin's unsaved change.
        self.state.lock().await.changed = false;
        Ok(())
    }

    /// Compiles and commits `cfg`; on success it becomes the running config.
    async fn commit(&self, st: &mut State, cfg: Config) -> Result<Vec<String>, String> {
        let env = CompileEnv {
            ssl_dir: self.paths.ssl_dir.clone(),
        };
        let generation = st.generation + 1;
        // A whole file onto an empty config compiles in one pass; an admin command recompiles
        // only what it touched.
        let snap = Arc::new(if st.config.is_empty() {
            Snapshot::compile(&cfg, &env, generation)
        } else {
            Snapshot::compile_incremental(&st.snapshot, &st.config, &cfg, &env, generation)
        });
        let warnings = self
            .engine
            .commit(snap.clone())
            .await
            .map_err(|e| e.to_string())?;
        st.generation = generation;
        st.snapshot = snap;
        st.config = cfg;
        st.changed = true;
        st.last_change = Some(SystemTime::now());
        Ok(warnings)
    }

    /// What a command needs from outside config: an extension's source for `import`.
    fn inputs_for(&self, cmd: &Command) -> Result<Inputs, ConfigError> {
        if cmd.path() != "import ns extension" {
            return Ok(Inputs::default());
        }
        let src = cmd.get("src").unwrap_or("");
        let path = self.extension_path(src)?;
        let code = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::new(
                3963,
                "Extension loading error.",
                Some(format!("src, {}: {e}", path.display())),
            )
        })?;
        // NetScaler checks the script at import, so a syntax error is refused here, before
        // anything changes (also for `-overwrite`, whose code runs only after `update`).
        let name = cmd.get("name").unwrap_or("");
        if let Err(e) = Extension::compile(name, &code) {
            let message = match e {
                EngineError::ExtensionCompile { message, .. } => message,
                other => other.to_string(),
            };
            return Err(ConfigError::new(
                3962,
                "Extension compilation error.",
                Some(format!("{name}, {message}")),
            ));
        }
        Ok(Inputs {
            extension_code: Some(code),
        })
    }

    /// `local:FILE` is FILE in the extensions directory (or FILE itself when absolute); a bare
    /// path is taken as is. URLs cannot be fetched here.
    fn extension_path(&self, src: &str) -> Result<PathBuf, ConfigError> {
        if src.starts_with("http://") || src.starts_with("https://") {
            return Err(ConfigError::new(
                3963,
                "Extension loading error.",
                Some(format!(
                    "src, {src}: URLs are not supported; use local:FILE"
                )),
            ));
        }
        let file = src.strip_prefix("local:").unwrap_or(src);
        let p = Path::new(file);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.paths.ext_dir.join(p)
        })
    }

    /// Runs one line as typed by an admin: blank and comment lines do nothing and succeed.
    pub async fn execute(&self, line: &str) -> Reply {
        let cmds = match parse_line(line) {
            Ok(c) => c,
            Err(e) => return Reply::error(e),
        };
        if cmds.is_empty() {
            return Reply {
                text: String::new(),
                ok: true,
                exit: false,
            };
        }
        let mut out = Reply {
            text: String::new(),
            ok: true,
            exit: false,
        };
        // A range expands into several commands; each is its own transaction, as on NetScaler.
        for cmd in &cmds {
            let r = self.execute_one(cmd).await;
            out.text.push_str(&r.text);
            out.ok &= r.ok;
            out.exit |= r.exit;
        }
        out
    }

    async fn execute_one(&self, cmd: &Command) -> Reply {
        if crate::config::apply::is_mutating(cmd) {
            let inputs = match self.inputs_for(cmd) {
                Ok(i) => i,
                Err(e) => return Reply::error(e),
            };
            let mut st = self.state.lock().await;
            let mut candidate = st.config.clone();
            let applied = match candidate.apply(cmd, &inputs) {
                Ok(a) => a,
                Err(e) => return Reply::error(e),
            };
            return match self.commit(&mut st, candidate).await {
                Ok(engine_warnings) => {
                    let mut w = applied.warnings;
                    w.extend(engine_warnings);
                    Reply::done(String::new(), &w)
                }
                Err(e) => Reply::error(e),
            };
        }
        self.query(cmd).await
    }

    /// Commands that do not change the configuration.
    async fn query(&self, cmd: &Command) -> Reply {
        let name = |k: &str| cmd.get(k);
        let path = cmd.path();
        if path == "save ns config" {
            return self.save().await;
        }
        let st = self.state.lock().await;
        let cfg = &st.config;
        let status = self.engine.status();
        let res: Result<String, render::Missing> = match path.as_str() {
            "help" => return help(cmd.get("command")),
            "exit" | "quit" => {
                return Reply {
                    text: " Done\n".into(),
                    ok: true,
                    exit: true,
                }
            }
            "show ns runningConfig" => {
                Ok(nsconf::lines(cfg).into_iter().map(|l| l + "\n").collect())
            }
            "show ns savedConfig" => match std::fs::read_to_string(&self.paths.config) {
                Ok(t) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => {
                    return Reply::error(format!("Cannot read the saved configuration [{e}]"))
                }
            },
            "show ns config" => Ok(show_ns_config(&st, &self.paths)),
            "diff ns config" => Ok(diff(&self.paths, cfg)),
            "show server" => render::server(cfg, name("name")),
            "show service" => render::service(cfg, &status, name("name")),
            "stat service" => render::stat_service(cfg, &status, name("name")),
            "show serviceGroup" => render::service_group(cfg, &status, name("serviceGroupName")),
            "show lb vserver" => render::lb_vserver(cfg, &status, name("name")),
            "stat lb vserver" => render::stat_vservers(cfg, &status, Kind::LbVserver, name("name")),
            "show lb monitor" => render::lb_monitor(cfg, name("monitorName")),
            "show lb persistentSessions" => {
                Ok(render::persistent_sessions(&status, name("vserver")))
            }
            "show ssl certKey" => render::certkey(cfg, name("certkeyName")),
            "show ssl vserver" => {
                let objs: Vec<_> = match name("vServerName") {
                    Some(n) => match cfg
                        .get(Kind::LbVserver, n)
                        .or_else(|| cfg.get(Kind::UserVserver, n))
                    {
                        Some(o) => vec![(o, false)],
                        None => return Reply::error(ConfigError::no_such("vServerName", n)),
                    },
                    None => cfg
                        .in_order(Kind::LbVserver)
                        .into_iter()
                        .chain(cfg.in_order(Kind::UserVserver))
                        .filter(|o| {
                            !o.certs.is_empty()
                                || !o.ssl.is_empty()
                                || o.get("serviceType")
                                    .is_some_and(crate::config::rules::is_ssl_type)
                        })
                        .map(|o| (o, false))
                        .collect(),
                };
                Ok(render::ssl_entity(objs, name("vServerName").is_some()))
            }
            "show ssl service" => {
                let objs: Vec<_> = match name("serviceName") {
                    Some(n) => match cfg.get(Kind::Service, n) {
                        Some(o) => vec![(o, true)],
                        None => return Reply::error(ConfigError::no_such("serviceName", n)),
                    },
                    None => cfg
                        .in_order(Kind::Service)
                        .into_iter()
                        .filter(|o| {
                            o.get("serviceType")
                                .is_some_and(crate::config::rules::is_ssl_type)
                        })
                        .map(|o| (o, true))
                        .collect(),
                };
                Ok(render::ssl_entity(objs, name("serviceName").is_some()))
            }
            "show user protocol" => render::user_protocol(cfg, name("name")),
            "show user vserver" => render::user_vserver(cfg, &status, name("name")),
            "stat user vserver" => {
                render::stat_vservers(cfg, &status, Kind::UserVserver, name("name"))
            }
            "show ns extension" => render::extension(cfg, name("name")),
            other => return Reply::error(format!("No such command [{other}]")),
        };
        match res {
            Ok(body) => Reply::done(body, &[]),
            Err(m) => Reply::error(ConfigError::no_such(m.arg, &m.name)),
        }
    }

    /// `save ns config`: atomic (temp file, fsync, rename); the previous file becomes FILE.0 and
    /// older ones shift up (FILE.0 is the newest backup), keeping five.
    async fn save(&self) -> Reply {
        let mut st = self.state.lock().await;
        let now = SystemTime::now();
        let text = nsconf::render(&st.config, &ctime(now));
        match write_atomic(&self.paths.config, &text) {
            Ok(()) => {
                st.changed = false;
                st.last_save = Some(now);
                Reply::done(String::new(), &[])
            }
            Err(e) => Reply::error(format!(
                "Cannot save the configuration [{}: {e}]",
                self.paths.config.display()
            )),
        }
    }

    /// Object names of a grammar object key, for completion.
    pub async fn names(&self, key: &str) -> Vec<String> {
        let st = self.state.lock().await;
        let Some(kind) = Kind::from_key(key) else {
            return Vec::new();
        };
        let mut v: Vec<String> = st.config.iter(kind).map(|o| o.name.clone()).collect();
        if kind == Kind::Monitor {
            v.extend(
                crate::config::rules::BUILTIN_MONITORS
                    .iter()
                    .map(|(n, _)| n.to_string()),
            );
        }
        v
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Keep this many backups (FILE.0 newest .. FILE.4 oldest).
const BACKUPS: usize = 5;

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| "ns.conf".into());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if path.exists() {
        let backup = |n: usize| dir.join(format!("{file_name}.{n}"));
        for n in (0..BACKUPS - 1).rev() {
            if backup(n).exists() {
                std::fs::rename(backup(n), backup(n + 1))?;
            }
        }
        // A hard link keeps the current file in place until the rename below replaces it, so
        // there is never a moment without a config file.
        if std::fs::hard_link(path, backup(0)).is_err() {
            std::fs::copy(path, backup(0))?;
        }
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn show_ns_config(st: &State, paths: &Paths) -> String {
    let t = |t: Option<SystemTime>| t.map(ctime).unwrap_or_else(|| "never".into());
    format!(
        "\tConfig file: {}\n\tSystem Type: Stand-alone (nsemu {})\n\tLast Config Changed Time: {}\n\tLast Config Saved Time: {}\n\tConfiguration changed since last save: {}\n\tObjects: {}\n",
        paths.config.display(),
        env!("CARGO_PKG_VERSION"),
        t(st.last_change),
        t(st.last_save),
        if st.changed { "YES" } else { "NO" },
        st.config.len()
    )
}

fn diff(paths: &Paths, cfg: &Config) -> String {
    let saved = std::fs::read_to_string(&paths.config).unwrap_or_default();
    let saved: Vec<&str> = saved.lines().filter(|l| !l.starts_with('#')).collect();
    let running = nsconf::lines(cfg);
    let mut s = String::new();
    for l in &saved {
        if !running.iter().any(|r| r == l) {
            s.push_str(&format!("- {l}\n"));
        }
    }
    for l in &running {
        if !saved.contains(&l.as_str()) {
            s.push_str(&format!("+ {l}\n"));
        }
    }
    s
}

/// `help [command words]`: usage of matching commands, from the grammar.
pub fn help(words: Option<&str>) -> Reply {
    use crate::grammar::{grammar, ValueKind};
    let g = grammar();
    let typed: Vec<String> = words
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let matches: Vec<_> = g
        .commands
        .iter()
        .filter(|c| {
            typed.len() <= c.path.len()
                && typed
                    .iter()
                    .zip(&c.path)
                    .all(|(t, p)| p.to_ascii_lowercase().starts_with(t.as_str()))
        })
        .collect();
    if matches.is_empty() {
        return Reply::error(format!("No such command [{}]", words.unwrap_or("")));
    }
    let mut s = String::new();
    if matches.len() == 1 {
        let c = matches[0];
        s.push_str(&format!("Usage: {}\n{}\n", c.synopsis, c.help));
        let enums: Vec<_> = c
            .params()
            .filter(|p| matches!(p.kind, ValueKind::Enum(_)))
            .collect();
        if !enums.is_empty() {
            s.push_str("where:\n");
            for p in enums {
                s.push_str(&format!("{} = {}\n", p.name, p.kind.describe()));
            }
        }
    } else {
        for c in matches {
            s.push_str(&format!("{}\n", c.synopsis));
        }
    }
    Reply::done(s, &[])
}
