//! docs/commands.md must match the grammar, and every grammar command must have a handler.

#[test]
fn commands_md_is_generated_from_the_grammar() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md");
    let want = nsemu::grammar::docs::markdown();
    if std::env::var_os("NSEMU_BLESS").is_some() {
        std::fs::write(path, &want).expect("write docs/commands.md");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/commands.md is stale: run NSEMU_BLESS=1 cargo test --test docs"
    );
}

#[test]
fn every_grammar_command_has_exactly_one_handler() {
    use nsemu::config::apply::MUTATING;
    use nsemu::shell::appliance::QUERIES;
    let g = nsemu::grammar::grammar();
    for c in &g.commands {
        let p = c.path_str();
        let n = MUTATING.iter().filter(|m| **m == p).count()
            + QUERIES.iter().filter(|q| **q == p).count();
        assert_eq!(n, 1, "{p} has {n} handlers");
    }
    for p in MUTATING.iter().chain(QUERIES) {
        let words: Vec<&str> = p.split(' ').collect();
        assert!(
            g.command(&words).is_some(),
            "handler without grammar entry: {p}"
        );
    }
}
