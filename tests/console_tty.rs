//! The console on a real terminal (tmux): `?` lists what may come next, TAB completes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    server: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.server);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .expect("tmux");
        assert!(ok.success());
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until it contains `want` (the terminal has no other readiness signal).
    fn wait_for(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if s.contains(want) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {want:?} on screen:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

#[test]
fn question_mark_lists_next_words_and_tab_completes() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is required (scripts/test.sh installs it)");
    }
    let dir = common::lab_dir();
    let tmux = Tmux {
        server: format!("nsemu-test-{}", std::process::id()),
    };
    let cmdline = format!(
        "{} --config {}/ns.conf --socket {}/s.sock 2>{}/log",
        common::BIN,
        dir.path().display(),
        dir.path().display(),
        dir.path().display()
    );
    let ok = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "200",
            "-y",
            "50",
            &cmdline,
        ])
        .status()
        .expect("tmux");
    assert!(ok.success());
    tmux.wait_for(">");
    tmux.keys(&["add lb ", "?"]);
    let s = tmux.wait_for("vserver");
    assert!(s.contains("monitor"), "{s}");
    assert!(
        s.contains("Creates a load balancing virtual server."),
        "one-line descriptions: {s}"
    );
    // The typed line is still there after the listing; complete it with TAB.
    tmux.keys(&["vs", "Tab"]);
    tmux.wait_for("> add lb vserver");
    tmux.keys(&["v1 TCP 127.2.20.10 80 -lbM", "Tab", "RO", "Tab", "Enter"]);
    tmux.wait_for(" Done");
    tmux.keys(&["sh lb vs v1", "Enter"]);
    tmux.wait_for("Configured Method: ROUNDROBIN");
    tmux.keys(&["bind lb vserver ", "Tab"]);
    tmux.wait_for("> bind lb vserver v1");
    tmux.keys(&["C-u", "exit", "Enter"]);
}
