//! The nom parser for grammar files (notation in grammar/README.md).

use super::{CommandDef, Grammar, ObjectDef, OptionArg, ParamDef, Positional, ValueKind};
use nom::branch::alt;
use nom::bytes::complete::{tag, take_till1, take_while1};
use nom::character::complete::{char, digit1, space0, space1};
use nom::combinator::{all_consuming, map, map_res, opt, recognize, rest};
use nom::multi::separated_list1;
use nom::sequence::{delimited, pair, preceded, separated_pair, tuple};
use nom::IResult;

/// A synopsis element before parameters are resolved.
#[derive(Debug)]
enum Elem {
    Word(String),
    Positional {
        name: String,
        required: bool,
        group: Option<usize>,
    },
    Option {
        name: String,
        required: bool,
    },
}

fn word(i: &str) -> IResult<&str, &str> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')(i)
}

fn value_word(i: &str) -> IResult<&str, &str> {
    take_while1(|c: char| !c.is_whitespace() && c != '|' && c != ':')(i)
}

fn kind(i: &str) -> IResult<&str, ValueKind> {
    alt((
        map(
            preceded(pair(tag("name"), opt(char('@'))), opt(word)),
            |of| ValueKind::Name {
                of: of.map(str::to_string),
            },
        ),
        map(preceded(pair(tag("ref"), space1), word), |k| {
            ValueKind::Ref(k.to_string())
        }),
        map(
            preceded(pair(tag("string"), space1), map_res(digit1, str::parse)),
            ValueKind::String,
        ),
        map(tag("text"), |_| ValueKind::Text),
        map(
            preceded(
                pair(tag("int"), space1),
                separated_pair(
                    map_res(recognize(pair(opt(char('-')), digit1)), str::parse),
                    tag(".."),
                    map_res(digit1, str::parse),
                ),
            ),
            |(min, max)| ValueKind::Int { min, max },
        ),
        map(tag("portOrStar"), |_| ValueKind::PortOrStar),
        map(tag("port"), |_| ValueKind::Port),
        map(tag("ipOrDomain"), |_| ValueKind::IpOrDomain),
        map(tag("ipOrName"), |_| ValueKind::IpOrName),
        map(tag("ip"), |_| ValueKind::Ip),
        map(preceded(pair(tag("duration"), space1), word), |u| {
            ValueKind::Duration {
                unit: u.to_string(),
            }
        }),
        map(tag("flag"), |_| ValueKind::Flag),
        map(
            preceded(
                pair(tag("enum"), space1),
                separated_list1(char('|'), value_word),
            ),
            |v| ValueKind::Enum(v.into_iter().map(str::to_string).collect()),
        ),
        map(tag("rest"), |_| ValueKind::Rest),
    ))(i)
}

/// `param NAME KIND [= DEFAULT] [always] [: HELP]`
fn param(i: &str) -> IResult<&str, ParamDef> {
    let (i, (_, _, name, _, kind)) = tuple((tag("param"), space1, word, space1, kind))(i)?;
    let (i, default) = opt(preceded(tuple((space0, char('='), space0)), value_word))(i)?;
    let (i, always) = opt(preceded(space1, tag("always")))(i)?;
    let (i, help) = opt(preceded(tuple((space0, char(':'), space0)), rest))(i)?;
    Ok((
        i,
        ParamDef {
            name: name.to_string(),
            kind,
            default: default.map(str::to_string),
            always: always.is_some(),
            help: help.unwrap_or("").trim().to_string(),
        },
    ))
}

/// `object WORDS [as KEY]`
fn object(i: &str) -> IResult<&str, (Vec<String>, Option<String>)> {
    let (i, _) = pair(tag("object"), space1)(i)?;
    let (i, words) = separated_list1(space1, word)(i)?;
    let mut words: Vec<String> = words.into_iter().map(str::to_string).collect();
    let mut key = None;
    if let Some(pos) = words.iter().position(|w| w == "as") {
        key = words.get(pos + 1).cloned();
        words.truncate(pos);
    }
    Ok((i, (words, key)))
}

/// `alias WORDS = WORDS`
fn alias(i: &str) -> IResult<&str, (Vec<String>, Vec<String>)> {
    let words = |i| separated_list1(space1, word)(i);
    let (i, (_, _, from, _, to)) = tuple((
        tag("alias"),
        space1,
        words,
        delimited(space0, char('='), space0),
        words,
    ))(i)?;
    let own = |v: Vec<&str>| v.into_iter().map(str::to_string).collect();
    Ok((i, (own(from), own(to))))
}

/// The elements of a synopsis: words, `<p>`, `[...]` groups, `-opt <v>`.
fn synopsis(i: &str, next_group: &mut usize) -> Result<Vec<Elem>, String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut group: Option<usize> = None;
    let mut rest_in = i.trim();
    let mut seen_arg = false;
    // True right after `-opt`: a following `<v>` is that option's value, not a positional.
    let mut after_option = false;
    while !rest_in.is_empty() {
        let tok_res: IResult<&str, &str> = alt((
            tag("["),
            tag("]"),
            recognize(delimited(char('<'), take_till1(|c| c == '>'), char('>'))),
            recognize(delimited(char('('), take_till1(|c| c == ')'), char(')'))),
            recognize(pair(char('-'), word)),
            word,
        ))(rest_in);
        let (r, tok) = tok_res.map_err(|e| format!("bad synopsis near '{rest_in}': {e}"))?;
        rest_in = r.trim_start();
        let prev_was_option = std::mem::replace(&mut after_option, false);
        match tok {
            "[" => {
                depth += 1;
                if depth == 1 {
                    group = Some(*next_group);
                    *next_group += 1;
                }
            }
            "]" => {
                depth = depth.checked_sub(1).ok_or("unbalanced ]")?;
                if depth == 0 {
                    group = None;
                }
            }
            t if t.starts_with('<') => {
                let name = t.trim_start_matches('<').trim_end_matches('>').to_string();
                // A placeholder right after an option is its value, not a positional.
                if prev_was_option {
                    continue;
                }
                seen_arg = true;
                out.push(Elem::Positional {
                    name,
                    required: depth == 0,
                    group,
                });
            }
            t if t.starts_with('(') => {} // enum values: the param declares them
            t if t.starts_with('-') => {
                seen_arg = true;
                after_option = true;
                out.push(Elem::Option {
                    name: t[1..].to_string(),
                    required: depth == 0,
                });
            }
            t => {
                if seen_arg {
                    return Err(format!("unexpected word '{t}' after arguments"));
                }
                out.push(Elem::Word(t.to_string()));
            }
        }
    }
    if depth != 0 {
        return Err("unbalanced [".into());
    }
    Ok(out)
}

pub(super) fn load(sources: &[(&str, &str)]) -> Result<Grammar, String> {
    let mut g = Grammar {
        objects: Vec::new(),
        commands: Vec::new(),
        aliases: Vec::new(),
    };
    let mut next_group = 0usize;
    for (file, text) in sources {
        for (n, raw) in text.lines().enumerate() {
            let at = |e: String| format!("{file}:{}: {e}", n + 1);
            let line = raw.trim_end();
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(help) = trimmed.strip_prefix(':') {
                let cmd = g
                    .commands
                    .last_mut()
                    .ok_or_else(|| at("help before any cmd".into()))?;
                cmd.help = help.trim().to_string();
            } else if trimmed.starts_with("object") {
                let (_, (words, key)) =
                    all_consuming(object)(trimmed).map_err(|e| at(e.to_string()))?;
                let key = key.unwrap_or_else(|| words.concat().to_lowercase());
                g.objects.push(ObjectDef {
                    words,
                    key,
                    params: Vec::new(),
                });
            } else if trimmed.starts_with("param") {
                let (_, p) = all_consuming(param)(trimmed).map_err(|e| at(e.to_string()))?;
                let obj = g
                    .objects
                    .last_mut()
                    .ok_or_else(|| at("param before object".into()))?;
                obj.params.push(p);
            } else if trimmed.starts_with("alias") {
                let (_, a) = all_consuming(alias)(trimmed).map_err(|e| at(e.to_string()))?;
                g.aliases.push(a);
            } else if let Some(syn) = trimmed.strip_prefix("cmd ") {
                let obj = g
                    .objects
                    .last()
                    .ok_or_else(|| at("cmd before object".into()))?;
                let elems = synopsis(syn, &mut next_group).map_err(at)?;
                g.commands.push(resolve(obj, syn, elems).map_err(at)?);
            } else {
                return Err(at(format!("unknown line '{trimmed}'")));
            }
        }
    }
    Ok(g)
}

/// Binds synopsis elements to the object's params.
fn resolve(obj: &ObjectDef, syn: &str, elems: Vec<Elem>) -> Result<CommandDef, String> {
    let mut cmd = CommandDef {
        path: Vec::new(),
        object: obj.key.clone(),
        synopsis: syn.trim().to_string(),
        help: String::new(),
        positionals: Vec::new(),
        options: Vec::new(),
    };
    let find = |name: &str| {
        obj.param(name)
            .cloned()
            .ok_or_else(|| format!("no param '{name}' in object {}", obj.key))
    };
    for e in elems {
        match e {
            Elem::Word(w) => cmd.path.push(w),
            Elem::Positional {
                name,
                required,
                group,
            } => cmd.positionals.push(Positional {
                param: find(&name)?,
                required,
                group,
            }),
            Elem::Option { name, required } => cmd.options.push(OptionArg {
                param: find(&name)?,
                required,
            }),
        }
    }
    // A single optional positional is not a group: only multi-positional groups are all-or-none.
    let groups: Vec<Option<usize>> = cmd.positionals.iter().map(|p| p.group).collect();
    for p in &mut cmd.positionals {
        if p.group.is_some() && groups.iter().filter(|g| **g == p.group).count() < 2 {
            p.group = None;
        }
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_param_lines() {
        let (_, p) =
            param("param lbMethod enum ROUNDROBIN|LEASTCONNECTION = LEASTCONNECTION : How.")
                .expect("param");
        assert_eq!(p.name, "lbMethod");
        assert_eq!(p.default.as_deref(), Some("LEASTCONNECTION"));
        assert_eq!(p.help, "How.");
        let (_, p) = param("param maxClient int 0..4294967294 = 0 always : Max.").expect("param");
        assert!(p.always);
        assert_eq!(
            p.kind,
            ValueKind::Int {
                min: 0,
                max: 4294967294
            }
        );
    }

    #[test]
    fn synopsis_groups_and_options() {
        let mut n = 0;
        let e = synopsis(
            "add lb vserver <name> <t> [<ip> <port>] -x <v> [-y <w>]",
            &mut n,
        )
        .expect("synopsis");
        assert_eq!(e.len(), 9);
        assert!(matches!(
            &e[5],
            Elem::Positional {
                required: false,
                group: Some(0),
                ..
            }
        ));
        assert!(matches!(&e[7], Elem::Option { required: true, .. }));
        assert!(matches!(
            &e[8],
            Elem::Option {
                required: false,
                ..
            }
        ));
    }

    #[test]
    fn bad_grammar_is_reported_with_its_line() {
        let err = load(&[("g.ns", "object a\nparam x bogus\n")]).expect_err("bad");
        assert!(err.starts_with("g.ns:2:"), "{err}");
    }
}
