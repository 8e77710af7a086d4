//! One error type for the library.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, dtype, device).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is missing, unknown or out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Input data is malformed (file, shape, values).
    #[error("invalid data: {0}")]
    Data(String),
    /// A checkpoint cannot be read or does not fit the configuration.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// A NaN or infinity appeared during training.
    #[error("non-finite {what} at step {step}")]
    NonFinite { step: usize, what: String },
    /// An ODE solve failed (step size collapsed, too many steps, non-finite state).
    #[error("ODE solver: {0}")]
    Ode(String),
    /// Training was interrupted by the user.
    #[error("interrupted at step {step}")]
    Interrupted { step: usize },
    /// A worker thread panicked (a bug): its message.
    #[error("a worker thread panicked: {0}")]
    WorkerPanic(String),
}

/// Result alias with the library's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error tagged with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A configuration error.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A data error.
    pub fn data(msg: impl Into<String>) -> Self {
        Error::Data(msg.into())
    }

    /// A checkpoint error tagged with its path.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
