//! Completion (TAB) and inline help (`?`), walking the grammar.
//!
//! Given the text before the cursor, `candidates` lists what may come next: command words,
//! option names, enum values, or existing object names (through the `names` callback, since the
//! configuration lives elsewhere). `help_lines` adds each candidate's one-line description.

use super::lex::lex;
use super::parse::{resolve_path, PathState};
use crate::grammar::{grammar, CommandDef, ParamDef, ValueKind};

/// One possible next word and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub word: String,
    pub help: String,
}

/// What may come next after `line` (the text before the cursor). Returns the byte offset where
/// the word being completed starts, and the candidates matching what is typed of it.
pub fn candidates(line: &str, names: &dyn Fn(&str) -> Vec<String>) -> (usize, Vec<Candidate>) {
    let Ok(tokens) = lex(line) else {
        return (line.len(), Vec::new());
    };
    // The word under the cursor is the last token unless the line ends in a blank.
    let (done, partial, start) = match tokens.last() {
        Some(t) if t.end == line.len() => (&tokens[..tokens.len() - 1], t.text.clone(), t.start),
        _ => (&tokens[..], String::new(), line.len()),
    };
    let matching = |c: Vec<Candidate>| -> Vec<Candidate> {
        let p = partial.to_ascii_lowercase();
        c.into_iter()
            .filter(|c| c.word.to_ascii_lowercase().starts_with(&p))
            .collect()
    };
    match resolve_path(done) {
        Ok(PathState::Partial(next)) => {
            let depth = done.len();
            let c = next
                .into_iter()
                .map(|w| Candidate {
                    word: w.to_string(),
                    help: word_help(done, depth, w),
                })
                .collect();
            (start, matching(c))
        }
        Ok(PathState::Complete(def, args_at)) => {
            let mut c = argument_candidates(def, &done[args_at..], names);
            if partial.starts_with('-') || c.is_empty() {
                c.retain(|x| {
                    partial.is_empty() || x.word.starts_with('-') == partial.starts_with('-')
                });
            }
            (start, matching(std::mem::take(&mut c)))
        }
        Err(_) => (start, Vec::new()),
    }
}

fn word_help(done: &[super::lex::Token], depth: usize, w: &str) -> String {
    // The help of the first command whose path continues with `w` (a verb or object word).
    let typed: Vec<String> = done.iter().map(|t| t.text.to_ascii_lowercase()).collect();
    grammar()
        .commands
        .iter()
        .find(|c| {
            c.path.len() > depth
                && c.path[depth] == w
                && c.path
                    .iter()
                    .zip(&typed)
                    .all(|(a, b)| a.to_ascii_lowercase().starts_with(b.as_str()))
        })
        .map(|c| {
            if c.path.len() == depth + 1 {
                c.help.clone()
            } else {
                format!("{} ...", c.path[..=depth].join(" "))
            }
        })
        .unwrap_or_default()
}

fn param_help(p: &ParamDef) -> String {
    let d = p.kind.describe();
    match &p.default {
        Some(dflt) => format!("{} {d} (default {dflt})", p.help),
        None if d.is_empty() => p.help.clone(),
        None => format!("{} {d}", p.help),
    }
}

/// Candidates once the command path is complete: the next positional's values, the value of an
/// option just typed, or the options not given yet.
fn argument_candidates(
    def: &CommandDef,
    args: &[super::lex::Token],
    names: &dyn Fn(&str) -> Vec<String>,
) -> Vec<Candidate> {
    // Is the previous token an option waiting for its value?
    if let Some(last) = args.last() {
        if let Some(name) = last.text.strip_prefix('-') {
            if let super::parse::WordMatch::One(n) =
                super::parse::match_word(name, def.options.iter().map(|o| o.param.name.as_str()))
            {
                if let Some(o) = def.option(n) {
                    if o.param.kind != ValueKind::Flag {
                        return values(&o.param, names);
                    }
                }
            }
        }
    }
    let mut used = Vec::new();
    let mut positionals_given = 0;
    let mut skip_value = false;
    for t in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if let Some(name) = t.text.strip_prefix('-') {
            if let super::parse::WordMatch::One(n) =
                super::parse::match_word(name, def.options.iter().map(|o| o.param.name.as_str()))
            {
                used.push(n.to_string());
                skip_value = def
                    .option(n)
                    .is_some_and(|o| o.param.kind != ValueKind::Flag);
            }
        } else {
            positionals_given += 1;
        }
    }
    let mut out = Vec::new();
    if let Some(p) = def.positionals.get(positionals_given) {
        out.extend(values(&p.param, names));
        if out.is_empty() {
            out.push(Candidate {
                word: format!("<{}>", p.param.name),
                help: param_help(&p.param),
            });
        }
    }
    for o in &def.options {
        if !used.contains(&o.param.name) {
            out.push(Candidate {
                word: format!("-{}", o.param.name),
                help: param_help(&o.param),
            });
        }
    }
    out
}

fn values(p: &ParamDef, names: &dyn Fn(&str) -> Vec<String>) -> Vec<Candidate> {
    let of = match &p.kind {
        ValueKind::Enum(v) => {
            return v
                .iter()
                .map(|w| Candidate {
                    word: w.clone(),
                    help: p.help.clone(),
                })
                .collect()
        }
        ValueKind::Duration { .. } => return Vec::new(),
        ValueKind::Name { of: Some(k) } | ValueKind::Ref(k) => k.clone(),
        ValueKind::IpOrName => match p.name.as_str() {
            "serverName" => "server".to_string(),
            "serviceName" => "service".to_string(),
            "vServerName" => "lbvserver".to_string(),
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let mut keys = vec![of.clone()];
    if p.name == "serviceName" {
        keys.push("servicegroup".into());
    }
    if p.name == "vServerName" {
        keys.push("uservserver".into());
    }
    keys.iter()
        .flat_map(|k| names(k))
        .map(|n| Candidate {
            word: n,
            help: p.help.clone(),
        })
        .collect()
}

/// `?` output: one line per candidate, word and description aligned.
pub fn help_lines(line: &str, names: &dyn Fn(&str) -> Vec<String>) -> Vec<String> {
    let (_, c) = candidates(line, names);
    if c.is_empty() {
        return vec!["<cr>".to_string()];
    }
    let width = c.iter().map(|c| c.word.len()).max().unwrap_or(0).min(28);
    c.iter()
        .map(|c| format!("  {:width$}  {}", c.word, c.help))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        let names = |k: &str| {
            if k == "lbvserver" {
                vec!["lb1".to_string()]
            } else {
                vec![]
            }
        };
        candidates(line, &names)
            .1
            .into_iter()
            .map(|c| c.word)
            .collect()
    }

    #[test]
    fn completes_verbs_objects_options_and_values() {
        assert!(words("sh").contains(&"show".to_string()));
        assert!(words("add lb ").contains(&"vserver".to_string()));
        assert!(words("add lb vserver x TCP 1.1.1.1 80 -lb").contains(&"-lbMethod".to_string()));
        assert!(words("add lb vserver x TCP 1.1.1.1 80 -lbMethod RO")
            .contains(&"ROUNDROBIN".to_string()));
        assert_eq!(words("bind lb vserver l"), ["lb1"]);
        assert!(words("add user vserver u P 1.1.1.1 80 -defaultLB ").contains(&"lb1".to_string()));
    }

    #[test]
    fn help_lists_descriptions() {
        let names = |_: &str| Vec::new();
        let lines = help_lines("add server ", &names);
        assert!(lines.iter().any(|l| l.contains("<name>")), "{lines:?}");
        assert!(help_lines("add lb vserver ", &names)
            .iter()
            .any(|l| l.contains("Name for the virtual server")));
    }
}
