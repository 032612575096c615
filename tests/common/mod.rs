//! Helpers for end-to-end tests: run the real `nsemu` binary in a temporary directory, wait for
//! its readiness line, drive it with `nsemu cli`, and stop it by PID.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_nsemu");

/// A running appliance; killed on drop.
pub struct Appliance {
    child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Appliance {
    /// Starts `nsemu --config DIR/ns.conf --socket DIR/nsemu.sock` and waits for "nsemu ready".
    pub fn start(dir: &Path) -> Appliance {
        let config = dir.join("ns.conf");
        let socket = dir.join("nsemu.sock");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsemu");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = Appliance {
            child,
            dir: dir.to_path_buf(),
            config,
            socket,
            stderr: rx,
            log: Vec::new(),
        };
        app.wait_log("nsemu ready", Duration::from_secs(30));
        app
    }

    /// Waits until a stderr line contains `needle`; panics with the log so far on timeout.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no '{needle}' in nsemu's log: {:#?}", self.log),
            }
        }
    }

    /// Runs a script through `nsemu cli` (piped stdin). Returns stdout and whether it exited 0.
    pub fn cli(&self, script: &str) -> (String, bool) {
        cli(&self.socket, script)
    }

    /// Runs one command with `nsemu cli -c`.
    pub fn run(&self, command: &str) -> (String, bool) {
        let out = Command::new(BIN)
            .arg("cli")
            .arg("--socket")
            .arg(&self.socket)
            .arg("-c")
            .arg(command)
            .output()
            .expect("run nsemu cli");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    }

    /// `show ns runningConfig` without the final Done.
    pub fn running_config(&self) -> String {
        let (out, ok) = self.run("show ns runningConfig");
        assert!(ok, "{out}");
        out.trim_end()
            .strip_suffix("Done")
            .unwrap_or(&out)
            .trim_end()
            .to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the appliance with SIGTERM (as an admin would) and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cli(socket: &Path, script: &str) -> (String, bool) {
    let mut child = Command::new(BIN)
        .arg("cli")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nsemu cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    let out = child.wait_with_output().expect("nsemu cli");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// The lab's configuration with concrete values: a VIP and two gateways on `net` (e.g.
/// "127.2.1": VIP .10, gateways .11 and .12), certkey `lab` from files `lab.crt`/`lab.key`.
pub fn lab_script(net: &str) -> String {
    format!(
        "import ns extension local:mqtt.lua mqtt_code
add user protocol MQTT -transport TCP -extension mqtt_code
add user protocol MQTT_SSL -transport SSL -extension mqtt_code
add server AzureIOTEdge1 {net}.11
add server AzureIOTEdge2 {net}.12
add service lb_service_azureiot1 AzureIOTEdge1 USER_SSL_TCP 8883
add service lb_service_azureiot2 AzureIOTEdge2 USER_SSL_TCP 8883
add lb vs lb_vserver_azureiot USER_SSL_TCP
bind lb vs lb_vserver_azureiot lb_service_azureiot1
bind lb vs lb_vserver_azureiot lb_service_azureiot2
add ssl certKey lab -cert lab.crt -key lab.key
bind ssl vserver lb_vserver_azureiot -certkeyName lab
set ssl vserver lb_vserver_azureiot -ssl3 DISABLED
add user vs u_vserver_azureiot MQTT {net}.10 1883 -defaultlb lb_vserver_azureiot
add user vs u_vserver_azureiot_ssl MQTT_SSL {net}.10 8883 -defaultlb lb_vserver_azureiot
bind ssl vserver u_vserver_azureiot_ssl -certkeyName lab
set ssl vserver u_vserver_azureiot_ssl -ssl3 DISABLED
save config
"
    )
}

/// Prepares a config directory for the lab: the mqtt.lua extension and a certkey `lab.crt`.
pub fn lab_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let ext = dir.path().join("extensions");
    std::fs::create_dir_all(&ext).expect("mkdir");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/extensions/mqtt.lua"),
        ext.join("mqtt.lua"),
    )
    .expect("copy mqtt.lua");
    let ssl = dir.path().join("ssl");
    std::fs::create_dir_all(&ssl).expect("mkdir");
    let ck = rcgen::generate_simple_self_signed(vec!["lab.nsemu.test".to_string()]).expect("rcgen");
    std::fs::write(ssl.join("lab.crt"), ck.cert.pem()).expect("write cert");
    std::fs::write(ssl.join("lab.key"), ck.key_pair.serialize_pem()).expect("write key");
    dir
}

/// Counts lines that are exactly " Done" and lines starting with "ERROR:".
pub fn tally(out: &str) -> (usize, usize) {
    (
        out.lines().filter(|l| *l == " Done").count(),
        out.lines().filter(|l| l.starts_with("ERROR:")).count(),
    )
}

// === real MQTT brokers and clients (mosquitto), shared by the lab tests ===

/// A child process killed (by its PID, through the handle) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls until `f` holds or 10 s pass.
pub fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_accepting(addr: &str) -> bool {
    wait_until(|| std::net::TcpStream::connect(addr).is_ok())
}

pub fn have_mosquitto() -> bool {
    Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts a mosquitto broker with one TLS listener on `ip`:8883 (config written to
/// `dir/NAME.conf`) and waits until it accepts connections.
pub fn mosquitto_broker(dir: &Path, name: &str, ip: &str, cert: &Path, key: &Path) -> Proc {
    mosquitto_broker_with(dir, name, ip, cert, key, true)
}

/// As `mosquitto_broker`; `anonymous: false` makes it refuse every CONNECT (no passwords set).
pub fn mosquitto_broker_with(
    dir: &Path,
    name: &str,
    ip: &str,
    cert: &Path,
    key: &Path,
    anonymous: bool,
) -> Proc {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "user root\npersistence false\nlog_type error\nlistener 8883 {ip}\n\
             certfile {}\nkeyfile {}\nallow_anonymous {anonymous}\nmax_inflight_messages 0\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let p = Proc(child);
    assert!(
        wait_accepting(&format!("{ip}:8883")),
        "broker {name} did not start"
    );
    p
}

/// mosquitto_sub -d's own lines, as opposed to `-v` message lines ("topic payload").
fn is_debug_line(s: &str) -> bool {
    s.starts_with("Client ") || s.starts_with("Subscribed")
}

/// A running mosquitto_sub and the lines it printed, collected by a reader thread.
pub struct Sub {
    _proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
    prefix: String,
}

impl Sub {
    /// Received messages (`-v` lines: topic, space, payload).
    pub fn messages(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|s| s.starts_with(&self.prefix) && !is_debug_line(s))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A message on exactly this topic was received.
    pub fn has_topic(&self, topic: &str) -> bool {
        let prefix = format!("{topic} ");
        self.messages().iter().any(|m| m.starts_with(&prefix))
    }

    pub fn subscribed(&self) -> bool {
        self.lines
            .lock()
            .map(|l| l.iter().any(|s| s.contains("SUBACK")))
            .unwrap_or(false)
    }
}

/// Starts `mosquitto_sub -d -v` on `filter` (a topic prefix ending in `#`) with extra
/// arguments (TLS options) and waits for its SUBACK.
pub fn mosquitto_sub(host: &str, port: u16, id: &str, filter: &str, extra: &[String]) -> Sub {
    // stdbuf: mosquitto_sub block-buffers a piped stdout; the test reads it line by line.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-d", "-V", "mqttv311", "-h", host])
        .args(["-p", &port.to_string(), "-i", id, "-t", filter, "-v"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("mosquitto_sub");
    let out = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(mut l) = l2.lock() {
                l.push(line);
            }
        }
    });
    let s = Sub {
        _proc: Proc(child),
        lines,
        prefix: filter.trim_end_matches('#').to_string(),
    };
    assert!(
        wait_until(|| s.subscribed()),
        "subscriber {id} got no SUBACK"
    );
    s
}
