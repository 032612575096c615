//! Lexing and parsing admin commands against the grammar.
