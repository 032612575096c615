//! Fuzz the command path: any bytes through lex + parse + apply (+ save/replay) must never panic,
//! and a failed command must leave the configuration unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsemu::cli::parse_line;
use nsemu::config::{nsconf, Config, Inputs};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut cfg = Config::default();
    let inputs = Inputs { extension_code: Some("client = {}".into()) };
    for line in text.lines() {
        if let Ok(cmds) = parse_line(line) {
            for cmd in cmds {
                let before = cfg.clone();
                if cfg.apply(&cmd, &inputs).is_err() {
                    assert_eq!(cfg, before);
                }
            }
        }
    }
    let saved = nsconf::render(&cfg, "now");
    let mut again = Config::default();
    let _ = nsconf::replay(&mut again, &saved, &mut |_| Ok(Inputs::default()));
});
