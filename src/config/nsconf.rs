//! ns.conf: printing the configuration as NetScaler command lines, and replaying such lines.
//!
//! Printing walks the grammar: each object's `add` line is its `add` command's positionals plus
//! the options that differ from their default (or are marked `always`), in synopsis order. Kinds
//! come in dependency order (see docs/decisions.md), each in creation order, so `load(save(c))`
//! re-saves byte for byte.

use super::apply::Inputs;
use super::error::ConfigError;
use super::model::{Config, Kind, Object};
use crate::cli::lex::quote;
use crate::cli::{parse_line, Command, ParseError};
use crate::grammar::{grammar, ValueKind};

/// The version line nsemu writes at the top of a saved ns.conf.
pub const VERSION_LINE: &str = concat!("#NS14.1 Build nsemu-", env!("CARGO_PKG_VERSION"));

/// One line of a replayed file that did not load.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: usize,
    pub text: String,
    /// True for a command nsemu does not model (skipped), false for a real error.
    pub unsupported: bool,
    pub message: String,
}

/// The `add` line of an object, from its kind's `add` command in the grammar.
fn add_line(kind: Kind, o: &Object) -> String {
    let g = grammar();
    // Extensions are recorded by their import command, which also loads them at boot.
    let cmd = if kind == Kind::Extension {
        g.command(&["import", "ns", "extension"])
    } else {
        g.add_command(kind.key())
    };
    let Some(cmd) = cmd else {
        return String::new();
    };
    let mut line = cmd.path_str();
    for p in &cmd.positionals {
        if let Some(v) = o.get(&p.param.name) {
            line.push(' ');
            line.push_str(&quote(v));
        }
    }
    for opt in &cmd.options {
        let p = &opt.param;
        let Some(v) = o
            .get(&p.name)
            .or(if p.always { p.default.as_deref() } else { None })
        else {
            continue;
        };
        if !p.always && p.default.as_deref() == Some(v) {
            continue;
        }
        line.push_str(" -");
        line.push_str(&p.name);
        if p.kind != ValueKind::Flag {
            line.push(' ');
            line.push_str(&quote(v));
        }
    }
    line
}

/// The running configuration as ns.conf lines (no header).
pub fn lines(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for kind in [
        Kind::Extension,
        Kind::UserProtocol,
        Kind::Server,
        Kind::Service,
        Kind::ServiceGroup,
        Kind::CertKey,
        Kind::LbVserver,
    ] {
        for o in cfg.in_order(kind) {
            out.push(add_line(kind, o));
        }
    }
    for v in cfg.in_order(Kind::LbVserver) {
        for m in &v.members {
            let w = if m.weight != 1 {
                format!(" -weight {}", m.weight)
            } else {
                String::new()
            };
            out.push(format!(
                "bind lb vserver {} {}{w}",
                quote(&v.name),
                quote(&m.service)
            ));
        }
    }
    for o in cfg.in_order(Kind::UserVserver) {
        out.push(add_line(Kind::UserVserver, o));
    }
    for o in cfg.in_order(Kind::Monitor) {
        out.push(add_line(Kind::Monitor, o));
    }
    for (kind, verb) in [
        (Kind::Service, "service"),
        (Kind::ServiceGroup, "serviceGroup"),
    ] {
        for s in cfg.in_order(kind) {
            for m in &s.group_members {
                let w = if m.weight != 1 {
                    format!(" -weight {}", m.weight)
                } else {
                    String::new()
                };
                out.push(format!(
                    "bind serviceGroup {} {} {}{w}",
                    quote(&s.name),
                    quote(&m.server),
                    m.port
                ));
            }
            for b in &s.monitors {
                let mut l = format!(
                    "bind {verb} {} -monitorName {}",
                    quote(&s.name),
                    quote(&b.monitor)
                );
                if !b.enabled {
                    l.push_str(" -monState DISABLED");
                }
                if b.weight != 1 {
                    l.push_str(&format!(" -weight {}", b.weight));
                }
                if b.passive {
                    l.push_str(" -passive");
                }
                out.push(l);
            }
            for m in s.group_members.iter().filter(|m| !m.enabled) {
                out.push(format!(
                    "disable serviceGroup {} {} {}",
                    quote(&s.name),
                    quote(&m.server),
                    m.port
                ));
            }
        }
    }
    let ssl_kinds = [
        (Kind::LbVserver, "vserver"),
        (Kind::UserVserver, "vserver"),
        (Kind::Service, "service"),
    ];
    for (kind, what) in ssl_kinds {
        let set_cmd = grammar().command(&["set", "ssl", what]);
        for o in cfg.in_order(kind) {
            if o.ssl.is_empty() {
                continue;
            }
            let mut l = format!("set ssl {what} {}", quote(&o.name));
            // Synopsis order, so the line is stable whatever order the admin typed.
            for p in set_cmd.iter().flat_map(|c| c.options.iter()) {
                if let Some(v) = o.ssl.get(&p.param.name) {
                    l.push_str(&format!(" -{} {}", p.param.name, quote(v)));
                }
            }
            out.push(l);
        }
    }
    for (kind, what) in ssl_kinds {
        for o in cfg.in_order(kind) {
            for c in &o.certs {
                let mut l = format!(
                    "bind ssl {what} {} -certkeyName {}",
                    quote(&o.name),
                    quote(&c.certkey)
                );
                if c.ca {
                    l.push_str(" -CA");
                }
                if c.sni {
                    l.push_str(" -SNICert");
                }
                out.push(l);
            }
            for e in &o.ecc_curves {
                out.push(format!(
                    "bind ssl {what} {} -eccCurveName {e}",
                    quote(&o.name)
                ));
            }
        }
    }
    out
}

/// A whole ns.conf file: NetScaler's two-line header, then the lines. `when` is the ctime-style
/// time of the save (config has no clock; the shell supplies it).
pub fn render(cfg: &Config, when: &str) -> String {
    let mut s = format!("{VERSION_LINE}\n# Last modified by `save config`, {when}\n");
    for l in lines(cfg) {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// Replays ns.conf text into `cfg`, line by line. Lines that fail are reported and skipped; the
/// rest still load. `inputs` supplies what a command needs from outside (extension sources).
pub fn replay(
    cfg: &mut Config,
    text: &str,
    inputs: &mut dyn FnMut(&Command) -> Result<Inputs, ConfigError>,
) -> Vec<LineError> {
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fail = |unsupported: bool, message: String| LineError {
            line: i + 1,
            text: line.to_string(),
            unsupported,
            message,
        };
        let cmds = match parse_line(line) {
            Ok(c) => c,
            Err(e @ (ParseError::NoSuchCommand { .. } | ParseError::IncompleteCommand { .. })) => {
                errors.push(fail(true, format!("Unsupported command, skipped ({e})")));
                continue;
            }
            Err(e) => {
                errors.push(fail(false, e.to_string()));
                continue;
            }
        };
        for cmd in cmds {
            if !super::apply::is_mutating(&cmd) || cmd.path() == "clear ns config" {
                errors.push(fail(
                    true,
                    format!("Not a configuration command, skipped ({})", cmd.path()),
                ));
                continue;
            }
            let res = inputs(&cmd).and_then(|inp| cfg.apply(&cmd, &inp));
            if let Err(e) = res {
                errors.push(fail(false, e.to_string()));
            }
        }
    }
    errors
}
