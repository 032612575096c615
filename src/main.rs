//! `nsemu`: arguments, tracing, and the wiring of the three modes (appliance, cli, check).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nsemu::config::{nsconf, Config, Inputs};
use nsemu::engine::{Engine, EngineOptions};
use nsemu::shell::console::{self, Backend};
use nsemu::shell::control::{self, Client};
use nsemu::shell::{Appliance, Paths, Reply};

const DEFAULT_CONFIG: &str = "nsconfig/ns.conf";
const DEFAULT_SOCKET_NAME: &str = "nsemu.sock";

const USAGE: &str = "\
nsemu: a NetScaler-style appliance (NetScaler CLI, MQTT/TCP/TLS load balancer)

USAGE:
  nsemu [--config FILE] [--socket PATH]   boot the appliance: replay FILE, serve, and
                                          run the console on a terminal, or run stdin
                                          as a script and keep serving until SIGINT/SIGTERM
  nsemu cli [--socket PATH] [-c COMMAND]  the admin shell on a running appliance
                                          (piped stdin runs a script; exit 0 only if
                                          every command succeeded)
  nsemu check FILE                        validate a config offline, report every bad line

DEFAULTS:
  --config   nsconfig/ns.conf (relative to the current directory)
  --socket   nsemu.sock beside the config file (cli: nsconfig/nsemu.sock)
  certificates given by relative name: ssl/ beside the config file
  import ns extension local:FILE: extensions/ beside the config file
  logs: stderr, level from RUST_LOG (default info)
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            0
        }
        Some("-V" | "--version") => {
            println!("nsemu {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("cli") => run_cli(&args[1..]),
        Some("check") => run_check(&args[1..]),
        _ => run_appliance(&args),
    };
    std::process::exit(code);
}

fn flag(args: &[String], names: &[&str]) -> Result<Option<String>, String> {
    let mut i = 0;
    while i < args.len() {
        if names.contains(&args[i].as_str()) {
            return args
                .get(i + 1)
                .cloned()
                .map(Some)
                .ok_or(format!("{} needs a value", args[i]));
        }
        i += 1;
    }
    Ok(None)
}

fn check_args(args: &[String], known: &[&str]) -> Result<(), String> {
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            return Err(format!("unknown argument '{}' (see nsemu --help)", args[i]));
        }
        i += 2;
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

// === the appliance ===

/// The in-process backend of the console and of piped scripts.
struct Local {
    app: Arc<Appliance>,
    rt: tokio::runtime::Handle,
}

impl Backend for Local {
    fn execute(&mut self, line: &str) -> Result<Reply, String> {
        Ok(self.rt.block_on(self.app.execute(line)))
    }
    fn names(&mut self, key: &str) -> Vec<String> {
        self.rt.block_on(self.app.names(key))
    }
}

fn run_appliance(args: &[String]) -> i32 {
    if let Err(e) = check_args(args, &["--config", "--socket"]) {
        eprintln!("nsemu: {e}");
        return 2;
    }
    let (config, socket) = match (flag(args, &["--config"]), flag(args, &["--socket"])) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("nsemu: {e}");
            return 2;
        }
    };
    init_tracing();
    let config = PathBuf::from(config.unwrap_or_else(|| DEFAULT_CONFIG.into()));
    let paths = Paths::beside(&config);
    let socket = socket
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling(&config, DEFAULT_SOCKET_NAME));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nsemu: cannot start the runtime: {e}");
            return 1;
        }
    };
    // Persistence sessions are saved beside the config file.
    let state_dir = match config.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let app = rt.block_on(async {
        let engine = Engine::new(EngineOptions { state_dir });
        let app = Appliance::new(paths, engine);
        for m in app.boot().await {
            tracing::warn!("{m}");
        }
        if let Err(e) = app.ensure_default_certkey().await {
            tracing::warn!("default certkey: {e}");
        }
        app
    });
    let listener = match rt.block_on(async { control::bind(&socket) }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("nsemu: control socket {}: {e}", socket.display());
            return 1;
        }
    };
    rt.spawn(control::serve(app.clone(), listener));
    // SIGTERM at any moment (also while the console or a piped script still reads stdin) stops
    // the appliance cleanly: the engine shuts down (saving the persistence sessions) and the
    // process exits.
    {
        let app = app.clone();
        let socket = socket.clone();
        let mut term = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        });
        rt.spawn(async move {
            if let Ok(t) = term.as_mut() {
                t.recv().await;
                app.engine().shutdown().await;
                let _ = std::fs::remove_file(&socket);
                std::process::exit(0);
            }
        });
    }
    tracing::info!(config = %config.display(), socket = %socket.display(), "nsemu ready");

    let stdin = std::io::stdin();
    let mut local = Local {
        app: app.clone(),
        rt: rt.handle().clone(),
    };
    let code = if stdin.is_terminal() {
        let history = config.parent().map(|d| d.join(".nsemu_history"));
        let ok = console::interactive(Box::new(local), history);
        i32::from(!ok)
    } else {
        console::script(&mut local, stdin.lock(), false);
        rt.block_on(wait_for_signal());
        0
    };
    rt.block_on(app.engine().shutdown());
    let _ = std::fs::remove_file(&socket);
    code
}

fn sibling(config: &Path, name: &str) -> PathBuf {
    match config.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(name),
        _ => PathBuf::from(name),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received, stopping");
}

// === nsemu cli ===

struct Remote(Client);

impl Backend for Remote {
    fn execute(&mut self, line: &str) -> Result<Reply, String> {
        self.0
            .execute(line)
            .map_err(|e| format!("{}: {e}", self.0.path.display()))
    }
    fn names(&mut self, key: &str) -> Vec<String> {
        self.0.names(key)
    }
}

fn run_cli(args: &[String]) -> i32 {
    if let Err(e) = check_args(args, &["--socket", "-c"]) {
        eprintln!("nsemu cli: {e}");
        return 2;
    }
    let (socket, command) = match (flag(args, &["--socket"]), flag(args, &["-c"])) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("nsemu cli: {e}");
            return 2;
        }
    };
    let socket = PathBuf::from(socket.unwrap_or_else(|| {
        sibling(Path::new(DEFAULT_CONFIG), DEFAULT_SOCKET_NAME)
            .display()
            .to_string()
    }));
    let client = match Client::connect(&socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "nsemu cli: cannot reach the appliance at {}: {e}",
                socket.display()
            );
            return 1;
        }
    };
    let mut remote = Remote(client);
    if let Some(cmd) = command {
        return match remote.execute(&cmd) {
            Ok(r) => {
                print!("{}", r.text);
                i32::from(!r.ok)
            }
            Err(e) => {
                eprintln!("nsemu cli: {e}");
                1
            }
        };
    }
    let stdin = std::io::stdin();
    let ok = if stdin.is_terminal() {
        console::interactive(Box::new(remote), None)
    } else {
        console::script(&mut remote, stdin.lock(), true)
    };
    i32::from(!ok)
}

// === nsemu check ===

fn run_check(args: &[String]) -> i32 {
    let [file] = args else {
        eprintln!("nsemu check: usage: nsemu check FILE");
        return 2;
    };
    let text = match std::fs::read(file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("nsemu check: {file}: {e}");
            return 2;
        }
    };
    let paths = Paths::beside(Path::new(file));
    let mut cfg = Config::default();
    // Extension sources are read as at boot, so a missing file is reported here too.
    let errors = nsconf::replay(&mut cfg, &text, &mut |cmd| {
        if cmd.path() != "import ns extension" {
            return Ok(Inputs::default());
        }
        let src = cmd.get("src").unwrap_or("");
        let f = src.strip_prefix("local:").unwrap_or(src);
        let p = if Path::new(f).is_absolute() {
            PathBuf::from(f)
        } else {
            paths.ext_dir.join(f)
        };
        std::fs::read_to_string(&p)
            .map(|code| Inputs {
                extension_code: Some(code),
            })
            .map_err(|e| {
                nsemu::config::ConfigError::new(
                    3963,
                    "Extension loading error.",
                    Some(format!("src, {}: {e}", p.display())),
                )
            })
    });
    let mut bad = 0;
    for e in &errors {
        let what = if e.unsupported {
            "unsupported"
        } else {
            "ERROR"
        };
        println!("{file}:{}: {what}: {}", e.line, e.message);
        if !e.unsupported {
            bad += 1;
        }
    }
    let unsupported = errors.len() - bad;
    println!(
        "{file}: {} objects, {bad} errors, {unsupported} unsupported lines",
        cfg.len()
    );
    i32::from(bad > 0)
}
