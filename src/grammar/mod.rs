//! The command grammar: the single source of nsemu's command language.
//!
//! `grammar/*.ns` (see grammar/README.md for the notation) is compiled into the binary and parsed
//! here, with nom, into a `Grammar`: objects with their parameters (kinds, defaults, help) and
//! commands with their synopses. Everything else walks this data: `cli::parse` (parsing and
//! validation), `cli::complete` (`?` and TAB), `shell` (`help`), `config::nsconf` (printing
//! ns.conf lines) and the generated docs/commands.md. This module owns no behaviour of the
//! commands themselves.

pub mod docs;
mod load;

use std::sync::OnceLock;

/// The grammar sources, in the order they are loaded.
const SOURCES: &[(&str, &str)] = &[
    ("grammar/ns.ns", include_str!("../../grammar/ns.ns")),
    ("grammar/user.ns", include_str!("../../grammar/user.ns")),
    ("grammar/basic.ns", include_str!("../../grammar/basic.ns")),
    ("grammar/lb.ns", include_str!("../../grammar/lb.ns")),
    ("grammar/ssl.ns", include_str!("../../grammar/ssl.ns")),
];

/// The whole command language.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub objects: Vec<ObjectDef>,
    pub commands: Vec<CommandDef>,
    /// Old command paths and the current path they stand for.
    pub aliases: Vec<(Vec<String>, Vec<String>)>,
}

/// An object kind (`lb vserver`) and the parameters its commands share.
#[derive(Debug, Clone)]
pub struct ObjectDef {
    pub words: Vec<String>,
    /// Short key used by `ref`/`name@` kinds, e.g. `lbvserver`.
    pub key: String,
    pub params: Vec<ParamDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamDef {
    /// Canonical spelling, e.g. `defaultLB`.
    pub name: String,
    pub kind: ValueKind,
    /// Canonical default value, if the parameter has one.
    pub default: Option<String>,
    /// Printed in ns.conf even at its default.
    pub always: bool,
    pub help: String,
}

/// What a parameter's value may be.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// An object name; `of` is the object key whose existing names complete it.
    Name {
        of: Option<String>,
    },
    /// The name of an object of the given key (checked by config, completed by the shell).
    Ref(String),
    /// Text up to the given length.
    String(usize),
    /// Any text.
    Text,
    Int {
        min: i64,
        max: i64,
    },
    Port,
    PortOrStar,
    Ip,
    IpOrDomain,
    IpOrName,
    /// An integer with an optional unit token (SEC, MSEC, MIN); `unit` is the default unit.
    Duration {
        unit: String,
    },
    /// Takes no value.
    Flag,
    Enum(Vec<String>),
    /// The rest of the line.
    Rest,
}

/// One command: a path (verb and object words) and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandDef {
    /// e.g. `["add", "lb", "vserver"]`, in canonical spelling.
    pub path: Vec<String>,
    /// Key of the object the command belongs to.
    pub object: String,
    /// The synopsis as written in the grammar.
    pub synopsis: String,
    pub help: String,
    pub positionals: Vec<Positional>,
    pub options: Vec<OptionArg>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Positional {
    pub param: ParamDef,
    pub required: bool,
    /// Positionals of one optional group (`[<a> <b>]`) share a group number: all or none.
    pub group: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OptionArg {
    pub param: ParamDef,
    pub required: bool,
}

/// The grammar compiled into this binary. Loading is checked by a unit test, so a bad grammar file
/// fails the build's tests rather than an admin's session.
pub fn grammar() -> &'static Grammar {
    static GRAMMAR: OnceLock<Grammar> = OnceLock::new();
    GRAMMAR.get_or_init(|| match load::load(SOURCES) {
        Ok(g) => g,
        Err(e) => panic!("invalid built-in grammar: {e}"),
    })
}

// === impl Grammar ===

impl Grammar {
    pub fn object(&self, key: &str) -> Option<&ObjectDef> {
        self.objects.iter().find(|o| o.key == key)
    }

    /// The command with exactly this canonical path.
    pub fn command(&self, path: &[&str]) -> Option<&CommandDef> {
        self.commands
            .iter()
            .find(|c| c.path.len() == path.len() && c.path.iter().zip(path).all(|(a, b)| a == b))
    }

    /// The `add` command of an object (used to print ns.conf lines).
    pub fn add_command(&self, object: &str) -> Option<&CommandDef> {
        self.commands
            .iter()
            .find(|c| c.object == object && c.path[0] == "add")
    }
}

impl ObjectDef {
    pub fn param(&self, name: &str) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }
}

impl CommandDef {
    /// The path as typed canonically, e.g. `add lb vserver`.
    pub fn path_str(&self) -> String {
        self.path.join(" ")
    }

    /// Every argument (positionals then options), for completion and help.
    pub fn params(&self) -> impl Iterator<Item = &ParamDef> {
        self.positionals
            .iter()
            .map(|p| &p.param)
            .chain(self.options.iter().map(|o| &o.param))
    }

    pub fn option(&self, name: &str) -> Option<&OptionArg> {
        self.options.iter().find(|o| o.param.name == name)
    }
}

impl ValueKind {
    /// A short description used by `?` help and docs.
    pub fn describe(&self) -> String {
        match self {
            ValueKind::Name { .. } => "<name>".into(),
            ValueKind::Ref(k) => format!("<{k} name>"),
            ValueKind::String(n) => format!("<string, max {n}>"),
            ValueKind::Text => "<string>".into(),
            ValueKind::Int { min, max } => format!("<integer {min}-{max}>"),
            ValueKind::Port => "<port 1-65535>".into(),
            ValueKind::PortOrStar => "<port 1-65535 | *>".into(),
            ValueKind::Ip => "<ip address>".into(),
            ValueKind::IpOrDomain => "<ip address | domain name>".into(),
            ValueKind::IpOrName => "<ip address | name>".into(),
            ValueKind::Duration { unit } => {
                format!("<integer> [SEC|MSEC|MIN] (default unit {unit})")
            }
            ValueKind::Flag => String::new(),
            ValueKind::Enum(v) => format!("( {} )", v.join(" | ")),
            ValueKind::Rest => "<words>".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_grammar_loads() {
        let g = grammar();
        assert!(g.command(&["add", "lb", "vserver"]).is_some());
        assert!(g.command(&["save", "ns", "config"]).is_some());
        let add_server = g.command(&["add", "server"]).expect("add server");
        assert_eq!(add_server.positionals.len(), 2);
        assert!(add_server.option("domainResolveRetry").is_some());
    }

    #[test]
    fn every_command_belongs_to_a_declared_object() {
        let g = grammar();
        for c in &g.commands {
            assert!(g.object(&c.object).is_some(), "{}", c.path_str());
            assert!(!c.help.is_empty(), "{} has no help line", c.path_str());
        }
    }

    #[test]
    fn aliases_point_to_commands() {
        let g = grammar();
        for (_, to) in &g.aliases {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            assert!(g.command(&to).is_some(), "{to:?}");
        }
    }
}
