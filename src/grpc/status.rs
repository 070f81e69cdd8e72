//! The one place where errors become gRPC statuses.

use tonic::{Code, Status};
use vecrec_index::IndexError;

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) | Error::BadRow { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Index(ie) => match ie {
                IndexError::DimensionMismatch { .. }
                | IndexError::InvalidVector { .. }
                | IndexError::DuplicateId(_)
                | IndexError::InvalidParameter { .. } => Code::InvalidArgument,
                IndexError::UnknownId(_) => Code::NotFound,
                IndexError::BadMagic { .. }
                | IndexError::UnsupportedVersion { .. }
                | IndexError::ChecksumMismatch { .. }
                | IndexError::Corrupt { .. } => Code::DataLoss,
                IndexError::NoGeneration { .. } => Code::Unavailable,
                IndexError::Io { .. } => Code::Internal,
                _ => Code::Internal,
            },
            Error::Encoder(_) | Error::Runtime(_) | Error::Config(_) | Error::Io { .. } => {
                Code::Internal
            }
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s: Status = Error::invalid("k too big").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "k too big");
        let s: Status = Error::NotFound {
            kind: "item",
            id: "x".into(),
        }
        .into();
        assert_eq!(s.code(), Code::NotFound);
        let s: Status = Error::Index(IndexError::ChecksumMismatch {
            path: "f".into(),
            stored: 1,
            computed: 2,
        })
        .into();
        assert_eq!(s.code(), Code::DataLoss);
        let s: Status = Error::Overloaded("busy".into()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = Error::DeadlineExceeded { stage: "rerank" }.into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert_eq!(s.message(), "deadline exceeded before rerank");
    }
}
