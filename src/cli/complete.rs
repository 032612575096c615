//! Completion and `?` help (filled in with the shell).
