//! The service layer's error type. `grpc::status` is the one place that maps it
//! to a gRPC status code.

use std::path::PathBuf;

use vecrec_index::IndexError;

/// Everything the engine, the readers and the encoder can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request or an argument is malformed or over a limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// An id the engine does not know.
    #[error("unknown {kind} {}", Clip(id))]
    NotFound {
        /// "item" or "user".
        kind: &'static str,
        /// The id as given.
        id: String,
    },
    /// A row of an input file is malformed.
    #[error("{path}:{line}: field {field:?}: {reason}")]
    BadRow {
        /// The input file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The index layer failed (I/O, damage, bad vectors).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The sentence encoder's tokenizer failed, or it was given texts it
    /// cannot encode.
    #[error("encoder: {0}")]
    Encoder(String),
    /// ONNX Runtime failed to load or to run a model (the sentence encoder,
    /// the user tower or a reranker).
    #[error("onnx runtime: {0}")]
    Runtime(String),
    /// The operation is switched off on this server (e.g. live updates).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Configuration is invalid or a required file is missing.
    #[error("config: {0}")]
    Config(String),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server is over capacity.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The request's deadline passed before the named stage could start; the
    /// work after it was not done.
    #[error("deadline exceeded before {stage}")]
    DeadlineExceeded {
        /// The stage that did not start.
        stage: &'static str,
    },
}

/// Shows a caller's string in an error message, cut to its first 64
/// characters (with the full length said) so that a hostile id of megabytes
/// cannot make the answer's metadata too large for the client.
#[derive(Clone, Copy, Debug)]
pub struct Clip<'a>(pub &'a str);

impl std::fmt::Display for Clip<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 64;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

impl Error {
    /// An `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A `BadRow` error.
    pub fn bad_row(
        path: &std::path::Path,
        line: u64,
        field: &str,
        reason: impl Into<String>,
    ) -> Self {
        Error::BadRow {
            path: path.to_owned(),
            line,
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// An `InvalidArgument` error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// Result alias of the service crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
