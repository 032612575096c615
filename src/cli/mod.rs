//! Lexing and parsing admin commands against the grammar, and completion.
//!
//! `lex` splits a line into tokens, `parse` resolves the command path (unique prefixes, the
//! optional `ns` group word, aliases), binds arguments and checks every value against its kind in
//! the grammar, `complete` answers `?` and TAB. Nothing here knows what a command does.

pub mod complete;
pub mod lex;
pub mod parse;

pub use parse::{parse, parse_line, Command};

/// Errors of the command language, rendered as `ERROR: <Display>` (NetScaler's texts and codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 1088
    NoSuchCommand {
        near: String,
    },
    /// 1089
    AmbiguousCommand {
        word: String,
        candidates: Vec<String>,
    },
    /// The command path stops short, e.g. `add lb`.
    IncompleteCommand {
        next: Vec<String>,
    },
    /// 1090
    NoSuchArgument {
        arg: String,
    },
    /// 1099
    AmbiguousArgument {
        arg: String,
        candidates: Vec<String>,
    },
    /// 1105
    AmbiguousValue {
        param: String,
        value: String,
        candidates: Vec<String>,
    },
    /// 1091
    MissingValue {
        param: String,
    },
    /// 1095
    MissingArgument {
        param: String,
    },
    /// 1094 (also: surplus words)
    TooManyArguments {
        extra: String,
    },
    /// 1092 (an option given twice)
    Duplicate {
        param: String,
    },
    /// 1097
    InvalidValue {
        param: String,
        value: String,
    },
    /// 1108
    TooLarge {
        param: String,
        value: String,
    },
    /// 1109
    TooSmall {
        param: String,
        value: String,
    },
    /// 1106
    TooLong {
        param: String,
        max: usize,
    },
    /// 1110
    InvalidIp {
        param: String,
        value: String,
    },
    /// 1075
    InvalidName {
        param: String,
        value: String,
    },
    /// 1115
    UnmatchedQuote,
    /// 1116
    InvalidRange {
        value: String,
    },
    /// 1117
    RangeSizes,
    /// 1118
    OneRangePerArgument {
        value: String,
    },
    LineTooLong {
        len: usize,
    },
    InvalidCharacter {
        code: u32,
    },
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ParseError::*;
        match self {
            NoSuchCommand { near } => write!(f, "No such command [{near}]"),
            AmbiguousCommand { word, candidates } => {
                write!(
                    f,
                    "Ambiguous command name [{word}: {}]",
                    candidates.join(", ")
                )
            }
            IncompleteCommand { next } => {
                write!(
                    f,
                    "Incomplete command; next word is one of: {}",
                    next.join(", ")
                )
            }
            NoSuchArgument { arg } => write!(f, "No such argument [{arg}]"),
            AmbiguousArgument { arg, candidates } => {
                write!(
                    f,
                    "Ambiguous argument name [{arg}: {}]",
                    candidates.join(", ")
                )
            }
            AmbiguousValue {
                param,
                value,
                candidates,
            } => {
                write!(
                    f,
                    "Ambiguous argument value [{param}, {value}: {}]",
                    candidates.join(", ")
                )
            }
            MissingValue { param } => write!(f, "Required argument value missing [{param}]"),
            MissingArgument { param } => write!(f, "Required argument missing [{param}]"),
            TooManyArguments { extra } => write!(f, "Too many arguments [{extra}]"),
            Duplicate { param } => write!(f, "Arguments cannot both be specified [{param}]"),
            InvalidValue { param, value } => write!(f, "Invalid argument value [{param}, {value}]"),
            TooLarge { param, value } => {
                write!(f, "Integer value exceeds maximum [{param}, {value}]")
            }
            TooSmall { param, value } => {
                write!(f, "Integer value below minimum [{param}, {value}]")
            }
            TooLong { param, max } => write!(f, "String length exceeds maximum [{param}, {max}]"),
            InvalidIp { param, value } => write!(f, "Invalid IP address [{param}, {value}]"),
            InvalidName { param, value } => write!(
                f,
                "Invalid name; names must begin with an alphanumeric character or underscore and \
                 must contain only alphanumerics, '_', '#', '.', ' ', ':', '@', '=' or '-' \
                 [{param}, {value}]"
            ),
            UnmatchedQuote => write!(f, "Unmatched quote"),
            InvalidRange { value } => write!(f, "Invalid range specification [{value}]"),
            RangeSizes => write!(f, "Ranges are different sizes"),
            OneRangePerArgument { value } => {
                write!(f, "Only one range allowed per argument [{value}]")
            }
            LineTooLong { len } => {
                write!(
                    f,
                    "Command line too long [{len} bytes, max {}]",
                    lex::MAX_LINE
                )
            }
            InvalidCharacter { code } => write!(f, "Invalid character in command [0x{code:02x}]"),
        }
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    /// NetScaler's error code, as NITRO would report it.
    pub fn code(&self) -> u32 {
        use ParseError::*;
        match self {
            NoSuchCommand { .. } | IncompleteCommand { .. } => 1088,
            AmbiguousCommand { .. } => 1089,
            NoSuchArgument { .. } => 1090,
            AmbiguousArgument { .. } => 1099,
            AmbiguousValue { .. } => 1105,
            MissingValue { .. } => 1091,
            MissingArgument { .. } => 1095,
            TooManyArguments { .. } => 1094,
            Duplicate { .. } => 1092,
            InvalidValue { .. } | LineTooLong { .. } | InvalidCharacter { .. } => 1097,
            TooLarge { .. } => 1108,
            TooSmall { .. } => 1109,
            TooLong { .. } => 1106,
            InvalidIp { .. } => 1110,
            InvalidName { .. } => 1075,
            UnmatchedQuote => 1115,
            InvalidRange { .. } => 1116,
            RangeSizes => 1117,
            OneRangePerArgument { .. } => 1118,
        }
    }
}
