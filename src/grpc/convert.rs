//! Conversions between the proto's messages and the engine's types, and
//! the per-call counters every answer goes through.

use std::time::Instant;

use tonic::Status;

use super::pb;
use crate::engine::{Engine, Scored};
use crate::error::Error;
use crate::filter::{Filter, Range};
use crate::serving::experiments;
use crate::telemetry;

/// Counts a write refused for its caller's rate.
pub(super) fn observe_refusal(e: &Error) {
    if matches!(e, Error::Overloaded(_)) {
        metrics::counter!(telemetry::REFUSED, "reason" => "rate").increment(1);
    }
}

/// Counts an answer of `rpc` by status code and records its latency.
pub fn observe(rpc: &'static str, started: Instant, err: Option<&Status>) {
    let code = err.map_or(tonic::Code::Ok, Status::code);
    metrics::counter!(telemetry::REQUESTS, "rpc" => rpc, "code" => code_name(code)).increment(1);
    // By code too: under overload the refusals' short or long waits would
    // otherwise hide the latency of the requests that were served.
    metrics::histogram!(telemetry::REQUEST_SECONDS, "rpc" => rpc, "code" => code_name(code))
        .record(started.elapsed().as_secs_f64());
}

/// The gRPC status code's canonical name, as metrics labels use it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub(crate) fn to_filter(f: Option<pb::AttributeFilter>) -> Result<Option<Filter>, Error> {
    let Some(f) = f else { return Ok(None) };
    let ranges = f
        .ranges
        .into_iter()
        .map(|r| {
            if r.field.is_empty() {
                return Err(Error::invalid("filter.ranges[].field must not be empty"));
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max) {
                if lo > hi {
                    return Err(Error::invalid(format!(
                        "filter range on {:?}: min {lo} > max {hi}",
                        r.field
                    )));
                }
            }
            Ok(Range {
                field: r.field,
                min: r.min,
                max: r.max,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Filter {
        categories_any: f.categories_any,
        tags_all: f.tags_all,
        ranges,
    }))
}

pub(crate) fn fusion_method(code: i32) -> Result<Option<crate::fusion::FusionMethod>, Error> {
    use crate::fusion::FusionMethod as F;
    Ok(match pb::Fusion::try_from(code) {
        Ok(pb::Fusion::Default) => None,
        Ok(pb::Fusion::WeightedMinmax) => Some(F::WeightedMinmax),
        Ok(pb::Fusion::WeightedZscore) => Some(F::WeightedZscore),
        Ok(pb::Fusion::Geometric) => Some(F::Geometric),
        Ok(pb::Fusion::Rrf) => Some(F::Rrf),
        Ok(pb::Fusion::Borda) => Some(F::Borda),
        Ok(pb::Fusion::Learned) => Some(F::Learned),
        Err(_) => return Err(Error::invalid(format!("unknown fusion method {code}"))),
    })
}

pub(crate) fn scored(engine: &Engine, items: Vec<Scored>) -> Vec<pb::ScoredItem> {
    items
        .into_iter()
        .map(|s| scored_item(engine, s, String::new()))
        .collect()
}

pub(crate) fn served_items(
    engine: &Engine,
    items: Vec<experiments::Served>,
) -> Vec<pb::ScoredItem> {
    items
        .into_iter()
        .map(|s| scored_item(engine, s.item, s.arm))
        .collect()
}

pub(super) fn scored_item(engine: &Engine, s: Scored, arm: String) -> pb::ScoredItem {
    pb::ScoredItem {
        title: if s.internal == crate::engine::LIVE_ITEM {
            engine.item_meta(&s.id).map(|m| m.title).unwrap_or_default()
        } else {
            engine.index().store().title(s.internal)
        },
        item_id: s.id,
        score: s.score,
        arm,
    }
}
