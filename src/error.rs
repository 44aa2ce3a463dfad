//! Errors the user can act on, and the exit codes they map to.
//!
//! Exit codes: 0 success; 1 anything else; 2 usage (clap); 3 bad input (unreadable, undecodable, too
//! large, unreachable URL); 4 model or weights missing or incomplete; 5 GPU/CUDA unavailable or failed.
//! Code anywhere returns `anyhow::Error`; wherever the cause is one of the classes above it wraps a
//! [`UserError`], and `main` walks the error chain to pick the exit code and the hint.

use std::fmt;

/// The class of a failure, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Exit 3: an input image or argument value that cannot be used.
    BadInput,
    /// Exit 4: the model folder or its weights are missing or incomplete.
    ModelMissing,
    /// Exit 5: no usable GPU, CUDA failure, out of GPU memory.
    Device,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::BadInput => 3,
            ErrorKind::ModelMissing => 4,
            ErrorKind::Device => 5,
        }
    }
}

/// An error with a class and an optional one-line fix shown as `hint:`.
#[derive(Debug)]
pub struct UserError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl UserError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
        }
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, message)
    }
    pub fn model_missing(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ModelMissing, message)
    }
    pub fn device(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Device, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// The first [`UserError`] in the chain of `err`, if any.
pub fn user_error(err: &anyhow::Error) -> Option<&UserError> {
    err.chain().find_map(|e| e.downcast_ref::<UserError>())
}

/// The exit code for `err`: the class of its first [`UserError`], else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    user_error(err).map(|u| u.kind.exit_code()).unwrap_or(1)
}
