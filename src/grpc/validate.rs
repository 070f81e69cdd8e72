//! Checks each request against `[limits]` at the edge, before it takes a
//! place in line, reaches the engine or becomes a log record: ids and
//! attribute strings bounded, every float finite, event weights in range.
//! Anything the caller sent that an error message repeats is cut by
//! [`Clip`]. The engine keeps its own checks (batch sizes, text lengths,
//! unknown ids) and the live log refuses any record that would not replay
//! ([`crate::live`]), so this is the first of three nets, not the only one.

use crate::config::Limits;
use crate::error::{Clip, Error};

use super::pb;

type Result<T = ()> = std::result::Result<T, Error>;

/// A non-empty id of at most `max_id_bytes`.
pub(super) fn id(limits: &Limits, what: &str, id: &str) -> Result {
    if id.trim().is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    bounded(limits, what, id)
}

/// An optional id: empty, or at most `max_id_bytes`.
fn id_or_empty(limits: &Limits, what: &str, id: &str) -> Result {
    bounded(limits, what, id)
}

/// A string of at most `max_id_bytes` (may be empty).
fn bounded(limits: &Limits, what: &str, s: &str) -> Result {
    if s.len() > limits.max_id_bytes {
        return Err(Error::invalid(format!(
            "{what} {} is over the limit of {} bytes",
            Clip(s),
            limits.max_id_bytes
        )));
    }
    Ok(())
}

/// At most `max_attributes` entries.
fn count(limits: &Limits, what: &str, n: usize) -> Result {
    if n > limits.max_attributes {
        return Err(Error::invalid(format!(
            "{what} has {n} entries, over the limit of {}",
            limits.max_attributes
        )));
    }
    Ok(())
}

/// A list of at most `max_attributes` ids.
fn ids(limits: &Limits, what: &str, list: &[String]) -> Result {
    count(limits, what, list.len())?;
    for (i, s) in list.iter().enumerate() {
        id(limits, &format!("{what}[{i}]"), s)?;
    }
    Ok(())
}

/// A finite number (NaN and ±infinity are refused).
fn finite(what: &str, x: f64) -> Result {
    if !x.is_finite() {
        return Err(Error::invalid(format!(
            "{what} must be a finite number, got {x}"
        )));
    }
    Ok(())
}

/// A filter: bounded lists and field names, finite bounds.
pub(super) fn filter(limits: &Limits, f: Option<&pb::AttributeFilter>) -> Result {
    let Some(f) = f else { return Ok(()) };
    ids(limits, "filter.categories_any", &f.categories_any)?;
    ids(limits, "filter.tags_all", &f.tags_all)?;
    count(limits, "filter.ranges", f.ranges.len())?;
    for (i, r) in f.ranges.iter().enumerate() {
        bounded(limits, &format!("filter.ranges[{i}].field"), &r.field)?;
        for (name, bound) in [("min", r.min), ("max", r.max)] {
            if let Some(b) = bound {
                finite(&format!("filter.ranges[{i}].{name}"), b)?;
            }
        }
    }
    Ok(())
}

/// A Recommend request's user id or history ids, its filter and the arm it
/// forces.
pub(crate) fn recommend(limits: &Limits, r: &pb::RecommendRequest) -> Result {
    if !r.user_id.is_empty() {
        bounded(limits, "user_id", &r.user_id)?;
    }
    id_or_empty(limits, "force_arm", &r.force_arm)?;
    if r.history.len() > limits.max_history {
        return Err(Error::invalid(format!(
            "history has {} items, over the limit of {}",
            r.history.len(),
            limits.max_history
        )));
    }
    for (i, h) in r.history.iter().enumerate() {
        id(limits, &format!("history[{i}]"), h)?;
    }
    filter(limits, r.filter.as_ref())
}

/// A front tier's ShardSources request: known sources, once each, finite
/// vectors of bounded width, a bounded filter (item numbers are checked
/// against the shard's front by the engine).
pub(super) fn shard_sources(limits: &Limits, r: &pb::ShardSourcesRequest) -> Result {
    let mut seen = Vec::new();
    for (i, input) in r.inputs.iter().enumerate() {
        let s = crate::engine::Source::from_name(&input.source).ok_or_else(|| {
            Error::invalid(format!(
                "inputs[{i}].source: no source called {:?}",
                input.source
            ))
        })?;
        if seen.contains(&s) {
            return Err(Error::invalid(format!(
                "inputs[{i}].source: {} is asked twice",
                input.source
            )));
        }
        seen.push(s);
        if input.vector.len() > MAX_VECTOR {
            return Err(Error::invalid(format!(
                "inputs[{i}].vector has {} values, over the limit of {MAX_VECTOR}",
                input.vector.len()
            )));
        }
        if let Some(bad) = input.vector.iter().find(|x| !x.is_finite()) {
            return Err(Error::invalid(format!(
                "inputs[{i}].vector holds {bad}: every value must be finite"
            )));
        }
    }
    for (what, n) in [("history", r.history.len()), ("exclude", r.exclude.len())] {
        if n > MAX_SHARD_HISTORY {
            return Err(Error::invalid(format!(
                "{what} has {n} items, over the limit of {MAX_SHARD_HISTORY}"
            )));
        }
    }
    if !(r.ease_decay.is_finite() && r.transitions_decay.is_finite())
        || r.ease_decay < 0.0
        || r.transitions_decay < 0.0
    {
        return Err(Error::invalid("the decays must be finite and not negative"));
    }
    filter(limits, r.filter.as_ref())
}

/// The widest user-side vector a shard accepts.
const MAX_VECTOR: usize = 4096;

/// The longest history (and seen list) a shard accepts: a stored user's
/// whole history, which `limits.max_history` (for explicit ones) does not
/// bound.
const MAX_SHARD_HISTORY: usize = 100_000;

/// An item to upsert: id, attribute lists and names bounded, numbers finite.
/// (Title and text lengths are the engine's check, with the batch size.)
pub(super) fn item(limits: &Limits, k: usize, it: &pb::Item) -> Result {
    id(limits, &format!("items[{k}].id"), &it.id)?;
    ids(limits, &format!("items[{k}].categories"), &it.categories)?;
    ids(limits, &format!("items[{k}].tags"), &it.tags)?;
    count(limits, &format!("items[{k}].numeric"), it.numeric.len())?;
    for (name, v) in &it.numeric {
        id(limits, &format!("items[{k}].numeric name"), name)?;
        finite(&format!("items[{k}].numeric[{}]", Clip(name)), *v)?;
    }
    Ok(())
}

/// An event: ids bounded, the weight finite in `[0, max_event_weight]`
/// (0 stands for the default 1), the timestamp not negative.
pub(crate) fn event(limits: &Limits, k: usize, e: &pb::Event) -> Result {
    id(limits, &format!("events[{k}].user_id"), &e.user_id)?;
    id(limits, &format!("events[{k}].item_id"), &e.item_id)?;
    let w = e.weight;
    if !(w.is_finite() && (0.0..=limits.max_event_weight).contains(&w)) {
        return Err(Error::invalid(format!(
            "events[{k}].weight must be a finite number in [0, {}], got {w}",
            limits.max_event_weight
        )));
    }
    bounded(limits, &format!("events[{k}].request_id"), &e.request_id)?;
    bounded(limits, &format!("events[{k}].kind"), &e.kind)?;
    if e.timestamp < 0 {
        return Err(Error::invalid(format!(
            "events[{k}].timestamp must not be negative, got {}",
            e.timestamp
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn hostile_values_are_refused_and_echoed_short() {
        let l = Limits::default();
        let huge = "x".repeat(3 << 20);
        let m = msg(id(&l, "item_id", &huge));
        assert!(m.len() < 200, "{} bytes echoed", m.len());
        assert!(m.contains(&format!("({} bytes)", huge.len())), "{m}");
        assert!(id(&l, "item_id", "  ").is_err());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let it = pb::Item {
                id: "1".into(),
                numeric: [("year".to_string(), bad)].into(),
                ..Default::default()
            };
            assert!(msg(item(&l, 0, &it)).contains("finite"));
            let f = pb::AttributeFilter {
                ranges: vec![pb::NumericRange {
                    field: "year".into(),
                    min: Some(bad),
                    max: None,
                }],
                ..Default::default()
            };
            assert!(msg(filter(&l, Some(&f))).contains("finite"));
        }
        let ev = |weight: f32, timestamp: i64| pb::Event {
            user_id: "u".into(),
            item_id: "1".into(),
            weight,
            timestamp,
            ..Default::default()
        };
        for w in [f32::NAN, f32::INFINITY, -1.0, 1e30] {
            assert!(event(&l, 0, &ev(w, 0)).is_err(), "weight {w}");
        }
        assert!(event(&l, 0, &ev(0.0, -5)).is_err());
        event(&l, 0, &ev(2.5, 1_700_000_000)).unwrap();
        let many = pb::Item {
            id: "1".into(),
            tags: vec!["t".into(); l.max_attributes + 1],
            ..Default::default()
        };
        assert!(msg(item(&l, 3, &many)).contains("items[3].tags"));
    }

    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever bytes arrive as a request body, decoding and the edge
        /// checks return (never panic), and what passes holds only finite
        /// numbers and bounded ids: the request decoder's fuzz target.
        #[test]
        fn any_bytes_decode_and_check_without_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            seed in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let l = Limits::default();
            // Raw bytes, and a valid message with bytes appended (fields
            // of the right wire types but hostile values get through the
            // decoder that way).
            let mut framed = pb::UpsertItemsRequest {
                items: vec![pb::Item { id: "1".into(), ..Default::default() }],
            }
            .encode_to_vec();
            framed.extend_from_slice(&seed);
            for b in [&bytes, &framed] {
                if let Ok(r) = pb::UpsertItemsRequest::decode(b.as_slice()) {
                    for (k, it) in r.items.iter().enumerate() {
                        if item(&l, k, it).is_ok() {
                            prop_assert!(it.numeric.values().all(|x| x.is_finite()));
                            prop_assert!(it.id.len() <= l.max_id_bytes);
                        }
                    }
                }
                if let Ok(r) = pb::RecordEventsRequest::decode(b.as_slice()) {
                    for (k, e) in r.events.iter().enumerate() {
                        if event(&l, k, e).is_ok() {
                            prop_assert!(e.weight.is_finite() && e.weight >= 0.0);
                        }
                    }
                }
                if let Ok(r) = pb::RecommendRequest::decode(b.as_slice()) {
                    let _ = recommend(&l, &r);
                }
                if let Ok(r) = pb::SearchTextRequest::decode(b.as_slice()) {
                    if filter(&l, r.filter.as_ref()).is_ok() {
                        for rg in r.filter.iter().flat_map(|f| &f.ranges) {
                            prop_assert!(rg.min.is_none_or(f64::is_finite));
                            prop_assert!(rg.max.is_none_or(f64::is_finite));
                        }
                    }
                }
                if let Ok(r) = pb::DeleteItemsRequest::decode(b.as_slice()) {
                    for (k, i) in r.ids.iter().enumerate() {
                        let _ = id(&l, &format!("ids[{k}]"), i);
                    }
                }
            }
        }
    }
}
