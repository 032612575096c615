//! Configuration at scale: boot replay of a 100,000-object ns.conf, and the cost of one
//! admin command on it, as the appliance runs it: clone the config (persistent, O(1)), apply,
//! compile the snapshot incrementally, and commit it to a running engine.
//!
//! Run: `cargo bench --bench config_scale` (prints figures; asserts nothing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nsemu::engine::{Engine, EngineOptions};

use nsemu::cli::parse_line;
use nsemu::config::{nsconf, CompileEnv, Config, Inputs, Snapshot};

/// Servers are on loopback addresses (nothing listens there) and services carry
/// `-healthMonitor NO`: the engine this bench commits to must send no traffic anywhere, and
/// 30,000 health probes would measure the monitors rather than the configuration.
fn generate(objects: usize) -> String {
    // Per group of 10 objects: 3 servers, 3 services, 1 lb vserver, 3 bindings (counted as
    // objects here, as the issue counts them), plus one monitor per 100 groups.
    let mut s = String::new();
    let groups = objects / 10;
    for g in 0..groups {
        let (a, b) = (g / 250, g % 250);
        for k in 0..3 {
            s.push_str(&format!("add server srv{g}_{k} 127.{}.{a}.{b}\n", 100 + k));
        }
    }
    for g in 0..groups {
        for k in 0..3 {
            s.push_str(&format!(
                "add service svc{g}_{k} srv{g}_{k} TCP 80 -healthMonitor NO\n"
            ));
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

/// One command: (config side, engine commit).
fn transaction(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    cfg: &mut Config,
    snap: &mut Arc<Snapshot>,
    line: &str,
) -> (Duration, Duration) {
    let t = Instant::now();
    let mut candidate = cfg.clone();
    for cmd in parse_line(line).expect("parse") {
        candidate.apply(&cmd, &Inputs::default()).expect(line);
    }
    let next = Arc::new(Snapshot::compile_incremental(
        snap,
        cfg,
        &candidate,
        &CompileEnv::default(),
        snap.generation + 1,
    ));
    let config_side = t.elapsed();
    let t = Instant::now();
    rt.block_on(engine.commit(next.clone())).expect("commit");
    let engine_side = t.elapsed();
    *cfg = candidate;
    *snap = next;
    (config_side, engine_side)
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
    let cmd = parse_line("add server extra0 127.200.0.1")
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
    // Config side only, repeated for medians: apply, diff against the previous config, and the
    // incremental compile.
    let mut snap0 = snap.clone();
    let (mut a, mut d, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..21 {
        let line = format!("set lb vserver vs{i} -comment c{i}");
        let cmd = parse_line(&line).expect("parse").remove(0);
        let t = Instant::now();
        let mut next = cfg.clone();
        next.apply(&cmd, &Inputs::default()).expect("apply");
        a.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(next.changed_since(&cfg));
        d.push(t.elapsed());
        let t = Instant::now();
        let s2 = Snapshot::compile_incremental(&snap0, &cfg, &next, &CompileEnv::default(), 9);
        c.push(t.elapsed());
        snap0 = s2;
        cfg = next;
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "  median of 21 'set lb vserver': apply {:.3} ms, diff {:.3} ms, incremental compile {:.3} ms",
        med(&mut a),
        med(&mut d),
        med(&mut c)
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(async { Engine::new(EngineOptions::default()) });
    let mut snap = Arc::new(snap);
    let t = Instant::now();
    rt.block_on(engine.commit(snap.clone())).expect("commit");
    println!(
        "  engine commit of the whole config:{:>6.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("  one command, as the appliance runs it, median of 7 (config side | engine commit):");
    let kinds: [(&str, &str); 6] = [
        ("add server", "add server extra{i} 127.201.0.{i}"),
        ("add service", "add service extra_svc{i} extra{i} TCP 80"),
        ("bind lb vserver", "bind lb vserver vs{i} extra_svc{i}"),
        (
            "set lb vserver",
            "set lb vserver vs{i} -lbMethod LEASTCONNECTION",
        ),
        ("rm service", "rm service extra_svc{i}"),
        ("rm server", "rm server extra{i}"),
    ];
    let mut times: Vec<(Vec<Duration>, Vec<Duration>)> =
        vec![(Vec::new(), Vec::new()); kinds.len()];
    for i in 1..=7 {
        for (k, (_, template)) in kinds.iter().enumerate() {
            let line = template.replace("{i}", &i.to_string());
            let (c, e) = transaction(&rt, &engine, &mut cfg, &mut snap, &line);
            times[k].0.push(c);
            times[k].1.push(e);
        }
    }
    for ((what, _), (mut c, mut e)) in kinds.iter().zip(times) {
        println!(
            "    {what:<18}{:>9.3} ms | {:>9.3} ms",
            med(&mut c),
            med(&mut e)
        );
    }
}
