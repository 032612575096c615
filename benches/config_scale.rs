//! Configuration at scale: boot replay of a 100,000-object ns.conf, and the cost of one
//! admin command on it (the appliance's transaction: clone, apply, compile the snapshot).
//!
//! Run: `cargo bench --bench config_scale` (prints figures; asserts nothing).

use std::time::{Duration, Instant};

use nsemu::cli::parse_line;
use nsemu::config::{nsconf, CompileEnv, Config, Inputs, Snapshot};

fn generate(objects: usize) -> String {
    // Per group of 10 objects: 3 servers, 3 services, 1 lb vserver, 3 bindings (counted as
    // objects here, as the issue counts them), plus one monitor per 100 groups.
    let mut s = String::new();
    let groups = objects / 10;
    for g in 0..groups {
        let (a, b) = (g / 250, g % 250);
        for k in 0..3 {
            s.push_str(&format!("add server srv{g}_{k} 10.{k}.{a}.{b}\n"));
        }
    }
    for g in 0..groups {
        for k in 0..3 {
            s.push_str(&format!("add service svc{g}_{k} srv{g}_{k} TCP 80\n"));
        }
    }
    for g in 0..groups {
        s.push_str(&format!("add lb vserver vs{g} TCP -lbMethod ROUNDROBIN\n"));
    }
    for g in 0..groups {
        for k in 0..3 {
            s.push_str(&format!("bind lb vserver vs{g} svc{g}_{k}\n"));
        }
    }
    for m in 0..groups / 100 {
        s.push_str(&format!("add lb monitor mon{m} TCP -interval 10\n"));
        s.push_str(&format!(
            "bind service svc{}_0 -monitorName mon{m}\n",
            m * 100
        ));
    }
    s
}

fn transaction(cfg: &mut Config, line: &str) -> Duration {
    let t = Instant::now();
    let mut candidate = cfg.clone();
    for cmd in parse_line(line).expect("parse") {
        candidate.apply(&cmd, &Inputs::default()).expect(line);
    }
    let snap = Snapshot::compile(&candidate, &CompileEnv::default(), 2);
    std::hint::black_box(&snap);
    *cfg = candidate;
    t.elapsed()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds and runs this in test mode: nothing to do.
    }
    let text = generate(100_000);
    let lines = text.lines().count();
    let t = Instant::now();
    let mut cfg = Config::default();
    let errors = nsconf::replay(&mut cfg, &text, &mut |_| Ok(Inputs::default()));
    let replay = t.elapsed();
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(3)]);
    let t = Instant::now();
    let snap = Snapshot::compile(&cfg, &CompileEnv::default(), 1);
    let compile = t.elapsed();
    println!(
        "config_scale: {lines} lines, {} objects, {} services in the snapshot",
        cfg.len(),
        snap.services.len()
    );
    println!(
        "  boot replay (parse + apply):   {:>8.1} ms",
        replay.as_secs_f64() * 1e3
    );
    println!(
        "  snapshot compile:              {:>8.1} ms",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "  boot total:                    {:>8.1} ms",
        (replay + compile).as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mut probe = cfg.clone();
    let clone = t.elapsed();
    let cmd = parse_line("add server extra0 10.200.0.1")
        .expect("parse")
        .remove(0);
    let t = Instant::now();
    probe.apply(&cmd, &Inputs::default()).expect("apply");
    let apply = t.elapsed();
    println!(
        "  config clone:                  {:>8.3} ms",
        clone.as_secs_f64() * 1e3
    );
    println!(
        "  apply of one add (no clone):   {:>8.3} ms",
        apply.as_secs_f64() * 1e3
    );
    for (what, line) in [
        ("add server", "add server extra1 10.201.0.1"),
        ("add service", "add service extra_svc extra1 TCP 80"),
        ("bind lb vserver", "bind lb vserver vs5 extra_svc"),
        ("rm service", "rm service extra_svc"),
    ] {
        let d = transaction(&mut cfg, line);
        println!(
            "  one '{what}' transaction:{:>pad$.1} ms",
            d.as_secs_f64() * 1e3,
            pad = 22 - what.len() + 8
        );
    }
}
