//! The lexer: one command line into tokens, with NetScaler's quoting.
//!
//! Double and single quotes group words; inside double quotes `\"` and `\\` are escapes. A line
//! whose first non-blank character is `#` is a comment (names may contain `#`, so only a leading
//! one counts). Tokens keep their byte span so completion can tell where the cursor is.

use super::ParseError;

/// Longest line accepted; NetScaler's own limit is of the same order.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    /// The token was quoted: never a keyword, an option name or a range.
    pub quoted: bool,
    pub start: usize,
    pub end: usize,
}

/// Splits `line` into tokens. An empty vector means a blank or comment line.
pub fn lex(line: &str) -> Result<Vec<Token>, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::LineTooLong { len: line.len() });
    }
    if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(ParseError::InvalidCharacter { code: c as u32 });
    }
    if line.trim_start().starts_with('#') {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut text = String::new();
        let mut quoted = false;
        let mut end = start;
        // A token runs to the next unquoted blank; quoted parts may sit inside it (a"b c"d).
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            end = i + c.len_utf8();
            if c == '"' || c == '\'' {
                quoted = true;
                let mut closed = false;
                while let Some((j, d)) = chars.next() {
                    end = j + d.len_utf8();
                    if d == c {
                        closed = true;
                        break;
                    }
                    if d == '\\' && c == '"' {
                        if let Some(&(k, e)) = chars.peek() {
                            if e == '"' || e == '\\' {
                                chars.next();
                                end = k + e.len_utf8();
                                text.push(e);
                                continue;
                            }
                        }
                    }
                    text.push(d);
                }
                if !closed {
                    return Err(ParseError::UnmatchedQuote);
                }
            } else {
                text.push(c);
            }
        }
        out.push(Token {
            text,
            quoted,
            start,
            end,
        });
    }
    Ok(out)
}

/// Quotes a value for printing in a command line or ns.conf, when it needs it.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value.starts_with('#')
        && value
            .chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '\'' && c != '\\');
    if plain {
        value.to_string()
    } else {
        let mut s = String::with_capacity(value.len() + 2);
        s.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        lex(line)
            .expect("lex")
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    #[test]
    fn splits_words_and_quotes() {
        assert_eq!(
            texts(r#"add server "my server" 1.1.1.1"#),
            ["add", "server", "my server", "1.1.1.1"]
        );
        assert_eq!(
            texts(r#"set x -comment 'it''s'"#),
            ["set", "x", "-comment", "its"]
        );
        assert_eq!(
            texts(r#"-comment "say \"hi\"""#),
            ["-comment", r#"say "hi""#]
        );
    }

    #[test]
    fn comments_and_blank_lines_are_empty() {
        assert!(texts("  # a comment").is_empty());
        assert!(texts("   ").is_empty());
        assert_eq!(
            texts("add server a#1 1.1.1.1"),
            ["add", "server", "a#1", "1.1.1.1"]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert_eq!(
            lex(r#"add server "x 1.1.1.1"#),
            Err(ParseError::UnmatchedQuote)
        );
    }

    #[test]
    fn garbage_and_huge_lines_are_errors() {
        assert!(matches!(
            lex("add \u{1} x"),
            Err(ParseError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            lex(&"a".repeat(MAX_LINE + 1)),
            Err(ParseError::LineTooLong { .. })
        ));
    }

    #[test]
    fn quote_round_trips() {
        for v in [
            "plain",
            "with space",
            r#"q"uote"#,
            "",
            "back\\slash",
            "#hash",
        ] {
            let line = format!("x {}", quote(v));
            assert_eq!(texts(&line)[1], v);
        }
    }
}
