//! The parser: tokens x grammar -> `Command`.
//!
//! Keywords, option names and enum values are case-insensitive and may be shortened to any unique
//! prefix (an exact match always wins). The `ns` group word may be left out (`save config`,
//! `sh run`). Every value is checked against its kind and turned into its canonical spelling, so
//! config never sees an unchecked value. `[a-b]` ranges expand a line into several commands.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::lex::{lex, Token};
use super::ParseError;
use crate::grammar::{grammar, CommandDef, ParamDef, ValueKind};

/// One parsed command: its grammar entry and its canonical argument values.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub def: &'static CommandDef,
    /// Canonical values by canonical parameter name; flags have the value `""`.
    pub args: BTreeMap<String, String>,
}

impl Command {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.args.get(name).map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.args.contains_key(name)
    }

    /// `add lb vserver` etc.
    pub fn path(&self) -> String {
        self.def.path_str()
    }

    /// The verb (`add`, `rm`, ...).
    pub fn verb(&self) -> &str {
        &self.def.path[0]
    }
}

/// How a typed word matched a set of candidates.
#[derive(Debug, PartialEq)]
pub enum WordMatch<'a> {
    One(&'a str),
    Ambiguous(Vec<&'a str>),
    None,
}

/// Case-insensitive: an exact match wins, else a unique prefix.
pub fn match_word<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> WordMatch<'a> {
    let typed = typed.to_ascii_lowercase();
    let mut prefixed = Vec::new();
    for c in candidates {
        let lc = c.to_ascii_lowercase();
        if lc == typed {
            return WordMatch::One(c);
        }
        if lc.starts_with(&typed) && !prefixed.contains(&c) {
            prefixed.push(c);
        }
    }
    match prefixed.len() {
        0 => WordMatch::None,
        1 => WordMatch::One(prefixed[0]),
        _ => WordMatch::Ambiguous(prefixed),
    }
}

/// Command paths to match against: every command, plus aliases (mapped to their target).
/// Built once: every line of a 100,000-line ns.conf resolves its path against this list.
fn paths() -> &'static [(Vec<&'static str>, &'static CommandDef)] {
    static PATHS: std::sync::OnceLock<Vec<(Vec<&'static str>, &'static CommandDef)>> =
        std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let g = grammar();
        let mut v: Vec<_> = g
            .commands
            .iter()
            .map(|c| (c.path.iter().map(String::as_str).collect(), c))
            .collect();
        for (from, to) in &g.aliases {
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            if let Some(c) = g.command(&to) {
                v.push((from.iter().map(String::as_str).collect(), c));
            }
        }
        v
    })
}

/// Where path resolution stopped.
#[derive(Debug)]
pub enum PathState {
    /// A complete command; arguments start at this token index.
    Complete(&'static CommandDef, usize),
    /// Tokens ran out before the path was complete; the next words possible.
    Partial(Vec<&'static str>),
}

/// Resolves the command path from the first tokens.
pub fn resolve_path(tokens: &[Token]) -> Result<PathState, ParseError> {
    let mut cands: Vec<&(Vec<&'static str>, &'static CommandDef)> = paths().iter().collect();
    let mut depth = 0;
    let mut t = 0;
    loop {
        let complete: Vec<&'static CommandDef> = cands
            .iter()
            .filter(|(p, _)| p.len() == depth)
            .map(|(_, c)| *c)
            .collect();
        let mut words: Vec<&'static str> = cands
            .iter()
            .filter(|(p, _)| p.len() > depth)
            .map(|(p, _)| p[depth])
            .collect();
        words.dedup();
        let tok = tokens
            .get(t)
            .filter(|tk| !tk.quoted && !tk.text.starts_with('-'));
        let Some(tok) = tok else {
            if let Some(c) = complete.first() {
                return Ok(PathState::Complete(c, t));
            }
            return Ok(PathState::Partial(unique(words)));
        };
        match match_word(&tok.text, words.iter().copied()) {
            WordMatch::One(w) => {
                cands.retain(|(p, _)| p.len() > depth && p[depth] == w);
                depth += 1;
                t += 1;
            }
            WordMatch::Ambiguous(list) if complete.is_empty() => {
                return Err(ParseError::AmbiguousCommand {
                    word: tok.text.clone(),
                    candidates: unique(list).into_iter().map(str::to_string).collect(),
                });
            }
            _ => {
                if let Some(c) = complete.first() {
                    return Ok(PathState::Complete(c, t));
                }
                // The `ns` group word may be left out: try the token one level deeper.
                if words.contains(&"ns") {
                    let deeper: Vec<&'static str> = cands
                        .iter()
                        .filter(|(p, _)| p.len() > depth + 1 && p[depth] == "ns")
                        .map(|(p, _)| p[depth + 1])
                        .collect();
                    if let WordMatch::One(w) = match_word(&tok.text, deeper.iter().copied()) {
                        cands.retain(|(p, _)| {
                            p.len() > depth + 1 && p[depth] == "ns" && p[depth + 1] == w
                        });
                        depth += 2;
                        t += 1;
                        continue;
                    }
                }
                let near: Vec<&str> = tokens[..=t].iter().map(|t| t.text.as_str()).collect();
                return Err(ParseError::NoSuchCommand {
                    near: near.join(" "),
                });
            }
        }
    }
}

fn unique(mut v: Vec<&'static str>) -> Vec<&'static str> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Lexes and parses one line; ranges may turn it into several commands. A blank or comment line
/// gives none.
pub fn parse_line(line: &str) -> Result<Vec<Command>, ParseError> {
    let tokens = lex(line)?;
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    expand_ranges(&tokens)?.iter().map(|t| parse(t)).collect()
}

/// Parses one command from its tokens.
pub fn parse(tokens: &[Token]) -> Result<Command, ParseError> {
    let (def, start) = match resolve_path(tokens)? {
        PathState::Complete(def, start) => (def, start),
        PathState::Partial(next) => {
            return Err(ParseError::IncompleteCommand {
                next: next.into_iter().map(str::to_string).collect(),
            })
        }
    };
    let mut args = BTreeMap::new();
    let mut pos = def.positionals.iter();
    let mut i = start;
    while i < tokens.len() {
        let tok = &tokens[i];
        i += 1;
        if !tok.quoted && tok.text.len() > 1 && tok.text.starts_with('-') && !is_number(&tok.text) {
            let name = &tok.text[1..];
            let opt = match match_word(name, def.options.iter().map(|o| o.param.name.as_str())) {
                WordMatch::One(n) => def.option(n).ok_or_else(|| no_arg(&tok.text))?,
                WordMatch::Ambiguous(c) => {
                    return Err(ParseError::AmbiguousArgument {
                        arg: tok.text.clone(),
                        candidates: c.iter().map(|c| format!("-{c}")).collect(),
                    })
                }
                WordMatch::None => return Err(no_arg(&tok.text)),
            };
            let p = &opt.param;
            if args.contains_key(&p.name) {
                return Err(ParseError::Duplicate {
                    param: p.name.clone(),
                });
            }
            let value = match &p.kind {
                ValueKind::Flag => String::new(),
                ValueKind::Duration { unit } => {
                    let v = tokens.get(i).ok_or_else(|| ParseError::MissingValue {
                        param: p.name.clone(),
                    })?;
                    i += 1;
                    let typed_unit = tokens.get(i).and_then(|u| {
                        if u.quoted {
                            return None;
                        }
                        match match_word(&u.text, ["SEC", "MSEC", "MIN"]) {
                            WordMatch::One(u) => Some(u),
                            _ => None,
                        }
                    });
                    if typed_unit.is_some() {
                        i += 1;
                    }
                    check_duration(p, &v.text, typed_unit.unwrap_or(unit))?
                }
                _ => {
                    let v = tokens.get(i).ok_or_else(|| ParseError::MissingValue {
                        param: p.name.clone(),
                    })?;
                    i += 1;
                    check_value(p, &v.text)?
                }
            };
            args.insert(p.name.clone(), value);
        } else {
            let Some(slot) = pos.next() else {
                return Err(ParseError::TooManyArguments {
                    extra: tok.text.clone(),
                });
            };
            let value = if slot.param.kind == ValueKind::Rest {
                let rest: Vec<&str> = tokens[i - 1..].iter().map(|t| t.text.as_str()).collect();
                i = tokens.len();
                rest.join(" ")
            } else {
                check_value(&slot.param, &tok.text)?
            };
            args.insert(slot.param.name.clone(), value);
        }
    }
    for p in &def.positionals {
        let given = args.contains_key(&p.param.name);
        let group_given = p.group.is_some()
            && def
                .positionals
                .iter()
                .any(|q| q.group == p.group && args.contains_key(&q.param.name));
        if !given && (p.required || group_given) {
            return Err(ParseError::MissingArgument {
                param: p.param.name.clone(),
            });
        }
    }
    for o in &def.options {
        if o.required && !args.contains_key(&o.param.name) {
            return Err(ParseError::MissingArgument {
                param: o.param.name.clone(),
            });
        }
    }
    Ok(Command { def, args })
}

fn no_arg(arg: &str) -> ParseError {
    ParseError::NoSuchArgument {
        arg: arg.to_string(),
    }
}

fn is_number(s: &str) -> bool {
    s.len() > 1 && s[1..].chars().all(|c| c.is_ascii_digit())
}

/// Checks `raw` against the parameter's kind; returns the canonical value.
pub fn check_value(p: &ParamDef, raw: &str) -> Result<String, ParseError> {
    let invalid = || ParseError::InvalidValue {
        param: p.name.clone(),
        value: raw.to_string(),
    };
    match &p.kind {
        ValueKind::Name { .. } | ValueKind::Ref(_) => check_name(p, raw),
        ValueKind::String(max) => {
            if raw.chars().count() > *max {
                Err(ParseError::TooLong {
                    param: p.name.clone(),
                    max: *max,
                })
            } else {
                Ok(raw.to_string())
            }
        }
        ValueKind::Text | ValueKind::Rest => Ok(raw.to_string()),
        ValueKind::Int { min, max } => check_int(p, raw, *min, *max),
        ValueKind::Port => check_int(p, raw, 1, 65535),
        ValueKind::PortOrStar if raw == "*" => Ok("*".into()),
        ValueKind::PortOrStar => check_int(p, raw, 1, 65535),
        ValueKind::Ip => {
            raw.parse::<IpAddr>()
                .map(|ip| ip.to_string())
                .map_err(|_| ParseError::InvalidIp {
                    param: p.name.clone(),
                    value: raw.to_string(),
                })
        }
        ValueKind::IpOrDomain => {
            if let Ok(ip) = raw.parse::<IpAddr>() {
                Ok(ip.to_string())
            } else if looks_like_ip(raw) {
                Err(ParseError::InvalidIp {
                    param: p.name.clone(),
                    value: raw.to_string(),
                })
            } else if is_domain(raw) {
                Ok(raw.to_string())
            } else {
                Err(invalid())
            }
        }
        ValueKind::IpOrName => {
            if let Ok(ip) = raw.parse::<IpAddr>() {
                Ok(ip.to_string())
            } else {
                check_name(p, raw)
            }
        }
        ValueKind::Duration { unit } => check_duration(p, raw, unit),
        ValueKind::Flag => Ok(String::new()),
        ValueKind::Enum(values) => match match_word(raw, values.iter().map(String::as_str)) {
            WordMatch::One(v) => Ok(v.to_string()),
            WordMatch::Ambiguous(c) => Err(ParseError::AmbiguousValue {
                param: p.name.clone(),
                value: raw.to_string(),
                candidates: c.iter().map(|s| s.to_string()).collect(),
            }),
            WordMatch::None => Err(invalid()),
        },
    }
}

fn check_int(p: &ParamDef, raw: &str, min: i64, max: i64) -> Result<String, ParseError> {
    let v: i128 = raw.parse().map_err(|_| ParseError::InvalidValue {
        param: p.name.clone(),
        value: raw.to_string(),
    })?;
    if v > max as i128 {
        return Err(ParseError::TooLarge {
            param: p.name.clone(),
            value: raw.to_string(),
        });
    }
    if v < min as i128 {
        return Err(ParseError::TooSmall {
            param: p.name.clone(),
            value: raw.to_string(),
        });
    }
    Ok(v.to_string())
}

/// Canonical duration: the number alone when in the parameter's default unit, else `N UNIT`.
fn check_duration(p: &ParamDef, raw: &str, unit: &str) -> Result<String, ParseError> {
    let (num, typed_unit) = match raw.split_once(' ') {
        Some((n, u)) => (n, u.to_ascii_uppercase()),
        None => (raw, unit.to_string()),
    };
    let n = check_int(p, num, 1, 20_940_000)?;
    let default_unit = match &p.kind {
        ValueKind::Duration { unit } => unit.as_str(),
        _ => "SEC",
    };
    if !["SEC", "MSEC", "MIN"].contains(&typed_unit.as_str()) {
        return Err(ParseError::InvalidValue {
            param: p.name.clone(),
            value: raw.to_string(),
        });
    }
    Ok(if typed_unit == default_unit {
        n
    } else {
        format!("{n} {typed_unit}")
    })
}

/// NetScaler's object name rules: 1-127 characters, starting with an alphanumeric or `_`, made
/// of alphanumerics and `_ # . space : @ = -`.
fn check_name(p: &ParamDef, raw: &str) -> Result<String, ParseError> {
    let bad = || ParseError::InvalidName {
        param: p.name.clone(),
        value: raw.to_string(),
    };
    let first = raw.chars().next().ok_or_else(bad)?;
    if raw.chars().count() > 127 {
        return Err(ParseError::TooLong {
            param: p.name.clone(),
            max: 127,
        });
    }
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(bad());
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_#. :@=-".contains(c))
    {
        return Err(bad());
    }
    Ok(raw.to_string())
}

fn looks_like_ip(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit() || c == '.') && s.contains('.')
}

fn is_domain(s: &str) -> bool {
    s.len() <= 255
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
        })
}

/// Expands `name[1-3]`/`10.0.0.[1-3]` ranges: one token list per value. All ranges of a line must
/// have the same size; a token may carry only one.
pub fn expand_ranges(tokens: &[Token]) -> Result<Vec<Vec<Token>>, ParseError> {
    let mut ranges: Vec<(usize, String, u64, u64, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if t.quoted || t.text.starts_with('-') {
            continue;
        }
        let Some(open) = t.text.find('[') else {
            continue;
        };
        let Some(close) = t.text[open..].find(']').map(|c| c + open) else {
            continue;
        };
        if t.text[close + 1..].contains('[') {
            return Err(ParseError::OneRangePerArgument {
                value: t.text.clone(),
            });
        }
        let inner = &t.text[open + 1..close];
        let bad = || ParseError::InvalidRange {
            value: t.text.clone(),
        };
        let (a, b) = inner.split_once('-').ok_or_else(bad)?;
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b - a > 4095 {
            return Err(bad());
        }
        ranges.push((
            i,
            t.text[..open].to_string(),
            a,
            b,
            t.text[close + 1..].to_string(),
        ));
    }
    let Some(first) = ranges.first() else {
        return Ok(vec![tokens.to_vec()]);
    };
    let size = first.3 - first.2;
    if ranges.iter().any(|r| r.3 - r.2 != size) {
        return Err(ParseError::RangeSizes);
    }
    Ok((0..=size)
        .map(|k| {
            let mut v = tokens.to_vec();
            for (i, pre, a, _, post) in &ranges {
                v[*i].text = format!("{pre}{}{post}", a + k);
            }
            v
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Command {
        let mut v = parse_line(line).expect(line);
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn err(line: &str) -> ParseError {
        parse_line(line).expect_err(line)
    }

    #[test]
    fn abbreviations_resolve() {
        assert_eq!(one("add lb vs v1 USER_SSL_TCP").path(), "add lb vserver");
        assert_eq!(one("sh run").path(), "show ns runningConfig");
        assert_eq!(one("save config").path(), "save ns config");
        assert_eq!(one("sho save").path(), "show ns savedConfig");
        assert_eq!(
            one("import extension local:m.lua m").path(),
            "import ns extension"
        );
        assert_eq!(one("add monitor m TCP").path(), "add lb monitor");
        let c = one("add user vs u MQTT 127.0.0.10 1883 -defaultlb lb");
        assert_eq!(c.get("defaultLB"), Some("lb"));
    }

    #[test]
    fn case_insensitive_keywords_options_and_values() {
        let c = one("ADD LB VSERVER v1 tcp 10.0.0.1 80 -LBMETHOD roundrobin");
        assert_eq!(c.get("serviceType"), Some("TCP"));
        assert_eq!(c.get("lbMethod"), Some("ROUNDROBIN"));
        assert_eq!(
            one("set ssl vserver v -ssl3 dis").get("ssl3"),
            Some("DISABLED")
        );
    }

    #[test]
    fn ambiguous_prefixes_name_candidates() {
        match err("s server x") {
            ParseError::AmbiguousCommand { candidates, .. } => {
                assert!(candidates.contains(&"show".to_string()));
                assert!(candidates.contains(&"set".to_string()));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            err("add lb vserver v TCP -h x"),
            ParseError::AmbiguousArgument { .. }
        ));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(matches!(
            err("add service s a TCP 0"),
            ParseError::TooSmall { .. }
        ));
        assert!(matches!(
            err("add service s a TCP 65536"),
            ParseError::TooLarge { .. }
        ));
        assert!(matches!(
            err("add server s 1.2.3.999"),
            ParseError::InvalidIp { .. }
        ));
        assert!(matches!(
            err("add lb vs v TCP -lbMethod FOO"),
            ParseError::InvalidValue { .. }
        ));
        assert!(matches!(
            err("add server -bad 1.1.1.1"),
            ParseError::NoSuchArgument { .. }
        ));
        assert!(matches!(
            err("add server s 1.1.1.1 extra"),
            ParseError::TooManyArguments { .. }
        ));
        assert!(matches!(
            err("add server s"),
            ParseError::MissingArgument { .. }
        ));
        assert!(matches!(
            err("add server"),
            ParseError::MissingArgument { .. }
        ));
        assert!(matches!(
            err("frobnicate"),
            ParseError::NoSuchCommand { .. }
        ));
        assert!(matches!(
            err("add lb"),
            ParseError::IncompleteCommand { .. }
        ));
        let long = format!("add server {} 1.1.1.1", "a".repeat(128));
        assert!(matches!(err(&long), ParseError::TooLong { .. }));
        assert!(matches!(
            err("add server $x 1.1.1.1"),
            ParseError::InvalidName { .. }
        ));
        assert!(matches!(
            err("add user vs u P 1.1.1.1 80"),
            ParseError::MissingArgument { .. }
        ));
        assert!(matches!(
            err("add lb vs v TCP 1.1.1.1"),
            ParseError::MissingArgument { .. }
        ));
    }

    #[test]
    fn ranges_expand() {
        let v = parse_line("add server serv[1-3] 10.102.27.[151-153]").expect("ranges");
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].get("name"), Some("serv3"));
        assert_eq!(v[2].get("IPAddress"), Some("10.102.27.153"));
        assert_eq!(
            err("add server s[1-2] 10.0.0.[1-3]"),
            ParseError::RangeSizes
        );
        assert!(matches!(
            err("add server s[1-2][3-4] 1.1.1.1"),
            ParseError::OneRangePerArgument { .. }
        ));
        assert!(matches!(
            err("add server s[3-1] 1.1.1.1"),
            ParseError::InvalidRange { .. }
        ));
    }

    #[test]
    fn durations_take_units() {
        let c = one("add lb monitor m TCP -interval 500 MSEC -resptimeout 1");
        assert_eq!(c.get("interval"), Some("500 MSEC"));
        assert_eq!(c.get("resptimeout"), Some("1"));
    }

    #[test]
    fn flags_and_help_rest() {
        assert!(one("clear config -force basic").has("force"));
        assert_eq!(one("help add lb vs").get("command"), Some("add lb vs"));
    }
}
