//! The errors that stop a run (exit code 2): bad usage, a bad config, a
//! missing path, an I/O failure writing output. Findings are never errors.

use std::fmt;

/// A run that could not complete; the message is ready to print (it may
/// hold a rendered miette report with a source snippet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    message: String,
}

impl DriverError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        DriverError {
            message: message.into(),
        }
    }

    /// The message, ready to print.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DriverError {}
