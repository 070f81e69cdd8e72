//! Errors of the index crate: one enum, with the numbers a person needs to act.

use std::path::PathBuf;

/// Everything that can go wrong while writing, opening or searching an index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// An operating-system I/O call failed on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not one of ours, or is of another kind than expected.
    #[error("{path}: not a vecrec {expected} file (bad magic bytes)")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The kind of file that was expected.
        expected: &'static str,
    },
    /// A file was written by a format version this build cannot read.
    #[error(
        "{path}: format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A file's checksum does not match its contents: it was damaged after writing.
    #[error("{path}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the file is damaged, rebuild the index")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// Checksum stored in the footer.
        stored: u32,
        /// Checksum of the bytes on disk.
        computed: u32,
    },
    /// A file is shorter or longer than its header says, or its contents are inconsistent.
    #[error("{path}: corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the numbers.
        reason: String,
    },
    /// A vector has another dimension than the index.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// Dimension of the index.
        expected: usize,
        /// Dimension of the offending vector.
        got: usize,
    },
    /// A vector contains NaN or infinity, or is all zeros under the cosine metric.
    #[error("invalid vector for id {id:?}: {reason}")]
    InvalidVector {
        /// External id of the vector.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same external id was added twice.
    #[error("duplicate id {0:?}")]
    DuplicateId(String),
    /// An external id that is not in the index.
    #[error("unknown id {0:?}")]
    UnknownId(String),
    /// A parameter is out of its range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// FAISS refused a call (bad factory string, untrained index, ...).
    #[error("faiss: {0}")]
    Faiss(String),
    /// The index directory has no committed generation yet.
    #[error("{path}: no index generation found (no CURRENT file); build one with `vecrec-build`")]
    NoGeneration {
        /// The index root directory.
        path: PathBuf,
    },
}

impl IndexError {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the error means the data on disk is damaged (as opposed to bad input).
    pub fn is_data_loss(&self) -> bool {
        matches!(
            self,
            IndexError::BadMagic { .. }
                | IndexError::UnsupportedVersion { .. }
                | IndexError::ChecksumMismatch { .. }
                | IndexError::Corrupt { .. }
        )
    }
}

/// Result alias of the crate.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
