//! Request deadlines carried from the gRPC front end into the engine.
//!
//! A request's deadline is the client's `grpc-timeout` (or the server's
//! default, whichever is sooner), fixed when the request arrives. The engine
//! checks it between stages (queue, encoding, each candidate stage, rerank,
//! fusion), so work for a request whose client has given up stops at the next
//! stage boundary instead of running to the end: a stage that has started is
//! never cut short, which keeps every stage free of cancellation paths.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// When a request stops being worth answering; [`Deadline::NONE`] never expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline (offline evaluation, builds, tests).
    pub const NONE: Self = Self(None);

    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Self(Some(at))
    }

    /// A deadline `after` from now.
    pub fn after(after: Duration) -> Self {
        Self(Instant::now().checked_add(after))
    }

    /// The instant, if any.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Whether the deadline has passed.
    pub fn expired(self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }

    /// `Ok` while the deadline has not passed; else the error that names
    /// `stage` as the first one skipped, counted in
    /// `vecrec_deadline_stops_total{stage}`.
    pub fn check(self, stage: &'static str) -> Result<()> {
        if self.expired() {
            metrics::counter!(crate::telemetry::DEADLINE_STOPS, "stage" => stage).increment(1);
            return Err(Error::DeadlineExceeded { stage });
        }
        Ok(())
    }
}

/// Parses a gRPC `grpc-timeout` header value: at most 8 ASCII digits and a
/// unit (`H`, `M`, `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 spec says.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123", "123456789S", "-1S", "1s", "1.5S", "1 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_passed_deadline_stops_the_next_stage() {
        assert!(Deadline::NONE.check("encode").is_ok());
        assert!(Deadline::after(Duration::from_secs(60))
            .check("encode")
            .is_ok());
        let past = Deadline::at(Instant::now() - Duration::from_millis(1));
        assert!(past.expired());
        match past.check("rerank") {
            Err(Error::DeadlineExceeded { stage }) => assert_eq!(stage, "rerank"),
            other => panic!("expected DeadlineExceeded, got {other:?}"),
        }
    }
}
