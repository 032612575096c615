//! Errors of the configuration layer, in NetScaler's words and codes.

/// A rule of the object graph refused a command. Rendered as `ERROR: <Display>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// NetScaler's error code (as NITRO reports it).
    pub code: u32,
    /// NetScaler's message text.
    pub message: String,
    /// The argument and value concerned, printed in brackets.
    pub detail: Option<String>,
}

impl ConfigError {
    pub fn new(code: u32, message: &str, detail: Option<String>) -> ConfigError {
        ConfigError {
            code,
            message: message.to_string(),
            detail,
        }
    }

    /// 258
    pub fn no_such(arg: &str, value: &str) -> ConfigError {
        Self::new(258, "No such resource", Some(format!("{arg}, {value}")))
    }

    /// 273
    pub fn exists(arg: &str, value: &str) -> ConfigError {
        Self::new(
            273,
            "Resource already exists",
            Some(format!("{arg}, {value}")),
        )
    }

    /// 315
    pub fn in_use(arg: &str, value: &str, by: &str) -> ConfigError {
        Self::new(
            315,
            "Resource in use",
            Some(format!("{arg}, {value}: {by}")),
        )
    }

    /// 278
    pub fn invalid(arg: &str, why: &str) -> ConfigError {
        Self::new(278, "Invalid argument", Some(format!("{arg}, {why}")))
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{} [{d}]", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}
