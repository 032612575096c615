//! docs/commands.md, generated from the grammar (a test fails when the file is stale;
//! `NSEMU_BLESS=1 cargo test --test docs` rewrites it).

use super::{grammar, ValueKind};
use std::fmt::Write;

pub fn markdown() -> String {
    let g = grammar();
    let mut s = String::from(
        "# nsemu command reference\n\nGenerated from `grammar/*.ns` by `nsemu::grammar::docs::markdown` \
         (do not edit; run `NSEMU_BLESS=1 cargo test --test docs`). Keywords, options and enum values are \
         case-insensitive and may be abbreviated to any unique prefix; the `ns` group word may be left out.\n",
    );
    for o in &g.objects {
        let cmds: Vec<_> = g.commands.iter().filter(|c| c.object == o.key).collect();
        if cmds.is_empty() {
            continue;
        }
        let title = if o.words.is_empty() {
            o.key.clone()
        } else {
            o.words.join(" ")
        };
        let _ = write!(s, "\n## {title}\n\n");
        for c in &cmds {
            let _ = writeln!(s, "- `{}`  \n  {}", c.synopsis, c.help);
        }
        if !o.params.is_empty() {
            let _ = write!(
                s,
                "\n| parameter | value | default | meaning |\n|---|---|---|---|\n"
            );
            for p in &o.params {
                let kind = match &p.kind {
                    ValueKind::Enum(v) => v.join(", "),
                    ValueKind::Flag => "(flag)".to_string(),
                    k => k.describe().replace('|', "or"),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    p.name,
                    kind,
                    p.default.as_deref().unwrap_or(""),
                    p.help
                );
            }
        }
    }
    let _ = write!(s, "\n## Aliases\n\n");
    for (from, to) in &g.aliases {
        let _ = writeln!(s, "- `{}` = `{}`", from.join(" "), to.join(" "));
    }
    s
}
