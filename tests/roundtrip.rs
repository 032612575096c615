//! A random valid configuration survives save -> load -> save byte for byte, and a failed
//! command never changes the configuration.

use nsemu::cli::parse_line;
use nsemu::config::{nsconf, CompileEnv, Config, Inputs, Snapshot};
use proptest::prelude::*;

/// Applies a script line by line, ignoring lines the rules refuse (the generator may produce
/// duplicates); returns the config.
fn build(lines: &[String]) -> Config {
    let mut cfg = Config::default();
    let inputs = Inputs {
        extension_code: Some("client = {}".into()),
    };
    for l in lines {
        for cmd in parse_line(l).expect(l) {
            let before = cfg.clone();
            if cfg.apply(&cmd, &inputs).is_err() {
                assert_eq!(cfg, before, "a failed command changed the config: {l}");
            }
        }
    }
    // The binding index (used by `rm service`) agrees with the bindings themselves.
    for v in cfg.iter(nsemu::config::Kind::LbVserver) {
        for m in &v.members {
            assert!(
                cfg.lb_vservers_binding(&m.service).contains(&v.name),
                "{} {}",
                v.name,
                m.service
            );
        }
    }
    cfg
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d", "web 1", "x_y", "q#1"]).prop_map(str::to_string)
}

fn command() -> impl Strategy<Value = String> {
    let q = |s: &str| format!("\"{s}\"");
    prop_oneof![
        (name(), 1u8..250).prop_map(move |(n, o)| format!("add server {} 127.9.0.{o}", q(&n))),
        (
            name(),
            name(),
            prop::sample::select(vec!["TCP", "SSL_TCP", "USER_TCP", "USER_SSL_TCP"]),
            1u16..65535
        )
            .prop_map(move |(s, srv, t, p)| format!(
                "add service {} {} {t} {p}",
                q(&format!("svc {s}")),
                q(&srv)
            )),
        (
            name(),
            prop::sample::select(vec!["TCP", "USER_SSL_TCP", "SSL_TCP"]),
            prop::sample::select(vec!["ROUNDROBIN", "LEASTCONNECTION", "SOURCEIPHASH"])
        )
            .prop_map(move |(n, t, m)| format!(
                "add lb vserver {} {t} -lbMethod {m}",
                q(&format!("vs {n}"))
            )),
        (name(), name(), 1u32..100).prop_map(move |(v, s, w)| format!(
            "bind lb vserver {} {} -weight {w}",
            q(&format!("vs {v}")),
            q(&format!("svc {s}"))
        )),
        (name(), 1u32..30).prop_map(move |(n, i)| format!(
            "add lb monitor {} TCP -interval {} -resptimeout {i} MSEC",
            q(&format!("mon {n}")),
            i + 1
        )),
        (name(), name()).prop_map(move |(s, m)| format!(
            "bind service {} -monitorName {}",
            q(&format!("svc {s}")),
            q(&format!("mon {m}"))
        )),
        name().prop_map(move |n| format!("disable server {}", q(&n))),
        (name(), "[a-z \"]{0,12}").prop_map(move |(n, c)| format!(
            "set lb vserver {} -comment {}",
            q(&format!("vs {n}")),
            nsemu::cli::lex::quote(&c)
        )),
        name().prop_map(move |n| format!(
            "set ssl vserver {} -tls13 DISABLED",
            q(&format!("vs {n}"))
        )),
        name().prop_map(move |n| format!("rm server {}", q(&n))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn save_load_save_is_byte_identical(script in prop::collection::vec(command(), 1..40)) {
        let cfg = build(&script);
        let saved = nsconf::render(&cfg, "Thu Dec  3 12:00:00 2026");
        let mut loaded = Config::default();
        let errors = nsconf::replay(&mut loaded, &saved, &mut |_| Ok(Inputs::default()));
        prop_assert!(errors.is_empty(), "{errors:?}\n{saved}");
        let resaved = nsconf::render(&loaded, "Thu Dec  3 12:00:00 2026");
        prop_assert_eq!(saved, resaved);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The appliance compiles each command's snapshot incrementally; it must equal a full
    /// compile of the same config after every command.
    #[test]
    fn incremental_compile_equals_full_compile(script in prop::collection::vec(command(), 1..40)) {
        let env = CompileEnv::default();
        let inputs = Inputs { extension_code: Some("client = {}".into()) };
        let mut cfg = Config::default();
        let mut snap = Snapshot::compile(&cfg, &env, 0);
        for (i, l) in script.iter().enumerate() {
            for cmd in parse_line(l).expect(l) {
                let mut next = cfg.clone();
                if next.apply(&cmd, &inputs).is_ok() {
                    let inc = Snapshot::compile_incremental(&snap, &cfg, &next, &env, i as u64 + 1);
                    let full = Snapshot::compile(&next, &env, i as u64 + 1);
                    prop_assert_eq!(&inc, &full, "after {}", l);
                    snap = inc;
                    cfg = next;
                }
            }
        }
    }
}
