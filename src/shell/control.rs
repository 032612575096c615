//! The control socket: a Unix socket (mode 0600) over which `nsemu cli` sessions run commands on
//! the running appliance.
//!
//! Protocol, one request at a time per connection: the client sends one command line ending in
//! `\n`; the appliance answers with the command's output (the same text the console prints),
//! then a terminator line `\x1e0` (success) or `\x1e1` (failure). A request line starting with
//! `\x1d` is a completion query (`\x1dnames KEY`) answered with one object name per line. A line
//! over `MAX_REQUEST` bytes or not UTF-8 gets an error answer; the oversize one also closes the
//! connection, since the rest of it cannot be framed. Sessions run concurrently; the appliance
//! serialises their commands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::{UnixListener, UnixStream};

use super::appliance::{Appliance, Reply};

pub const MAX_REQUEST: usize = 1024 * 1024;
const END: char = '\u{1e}';
const QUERY: char = '\u{1d}';

/// Binds the socket (replacing a stale one) and serves sessions until the runtime stops.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a dead appliance refuses connections; a live one answers.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another appliance is running on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(app: Arc<Appliance>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(app, stream).await {
                        tracing::debug!(error = %e, "control session ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(app: Arc<Appliance>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = TokioBufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut r)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() > MAX_REQUEST {
            let reply = Reply {
                text: format!("ERROR: Command line too long [max {MAX_REQUEST} bytes]\n"),
                ok: false,
                exit: false,
            };
            write_reply(&mut w, &reply).await?;
            return Ok(());
        }
        let reply = match std::str::from_utf8(&buf) {
            Err(_) => Reply {
                text: "ERROR: Invalid character in command [not UTF-8]\n".into(),
                ok: false,
                exit: false,
            },
            Ok(line) => {
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(q) = line.strip_prefix(QUERY) {
                    let key = q.strip_prefix("names ").unwrap_or("");
                    let names = app.names(key).await;
                    Reply {
                        text: names.into_iter().map(|n| n + "\n").collect(),
                        ok: true,
                        exit: false,
                    }
                } else {
                    app.execute(line).await
                }
            }
        };
        write_reply(&mut w, &reply).await?;
    }
}

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut out = reply.text.clone();
    out.push(END);
    out.push(if reply.ok { '0' } else { '1' });
    out.push('\n');
    w.write_all(out.as_bytes()).await
}

/// The client end, used by `nsemu cli`.
pub struct Client {
    reader: BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    pub path: PathBuf,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let s = std::os::unix::net::UnixStream::connect(path)?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            path: path.to_path_buf(),
        })
    }

    fn request(&mut self, line: &str) -> std::io::Result<Reply> {
        // One line per request: a newline inside would be two commands.
        let line = line.replace(['\n', '\r'], " ");
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let mut text = String::new();
        loop {
            let mut l = String::new();
            if self.reader.read_line(&mut l)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the appliance closed the session",
                ));
            }
            if let Some(status) = l.strip_prefix(END) {
                let ok = status.trim() == "0";
                return Ok(Reply {
                    text,
                    ok,
                    exit: false,
                });
            }
            text.push_str(&l);
        }
    }

    /// Runs a command line on the appliance.
    pub fn execute(&mut self, line: &str) -> std::io::Result<Reply> {
        let mut r = self.request(line)?;
        let first = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        r.exit = r.ok
            && ["exit", "quit"]
                .iter()
                .any(|w| w.starts_with(&first) && first.len() >= 2);
        Ok(r)
    }

    pub fn names(&mut self, key: &str) -> Vec<String> {
        match self.request(&format!("{QUERY}names {key}")) {
            Ok(r) => r.text.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }
}
