//! `[route]`: the front tier of a partitioned index (`vecrec route`).

use serde::{Deserialize, Serialize};

/// What the router does when every replica of a shard has failed a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingShard {
    /// Answer from the other shards and set `partial` in the response (and
    /// count it in `vecrec_route_partial_total`).
    #[default]
    Partial,
    /// Answer `UNAVAILABLE` at once.
    Fail,
}

/// The router's shards and how it calls them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The replicas of each shard, shard 0 first, as `host:port`. A host
    /// that is not an IP address is looked up in DNS, and every address it
    /// resolves to is a replica (a Kubernetes headless Service per shard
    /// gives one per ready pod); looked up again every
    /// `resolve_interval_ms`. Default: none (`vecrec route --shard` sets
    /// them).
    pub shards: Vec<Vec<String>>,
    /// How long one shard may take to answer a request (retries and hedges
    /// included), in milliseconds; the client's shorter deadline wins.
    /// Default 2000.
    pub shard_timeout_ms: u64,
    /// A call to a replica that has not answered after this many
    /// milliseconds is sent to a second replica as well, and the first
    /// answer wins (0: no hedging). Default 20.
    pub hedge_after_ms: u64,
    /// At most this fraction of shard calls is hedged, so that hedging
    /// cannot add more than this much load when every replica is slow (a
    /// saturated cluster), where it would only make calls slower: each
    /// shard call earns the fraction of a hedge, a hedge spends one, and
    /// at most 10 are saved. 0 (no hedges) or in [0.001, 1]. Default 0.1.
    pub hedge_budget: f64,
    /// A replica that refused a connection or reset one is tried last for
    /// this many milliseconds. Default 1000.
    pub down_for_ms: u64,
    /// Timeout of a new connection to a replica, in milliseconds. Default 500.
    pub connect_timeout_ms: u64,
    /// How often replica names are looked up again, in milliseconds.
    /// Default 5000.
    pub resolve_interval_ms: u64,
    /// Requests the router works on at once; beyond it up to
    /// `server.max_queued_requests` wait and the rest are answered
    /// `RESOURCE_EXHAUSTED` at once, as on one node. Default 256.
    pub max_in_flight: usize,
    /// `partial` (answer from the other shards and say so) or `fail`
    /// (`UNAVAILABLE`; once one shard has failed and another answered, the
    /// router waits for no more) when a shard has no live replica. Default
    /// `partial`.
    pub on_missing_shard: MissingShard,
    /// The front generation's index root of a partitioned hybrid build
    /// (`<out>/front`, written by `vecrec-build --shards N` with training):
    /// with it the router serves the hybrid `Recommend`, computing the
    /// users' side and the fusion and reranking itself and asking each
    /// shard for its sources' lists (`ShardSources`). Default: none (the
    /// content pipeline).
    pub front: Option<std::path::PathBuf>,
    /// Where the router logs the lists its experiments serve and the
    /// feedback on them (`<dir>/experiments/exposures-NNNNNN.log`, read by
    /// `vecrec-experiment report --index <dir>`). Needed for an enabled
    /// `[[experiments]]`, which a router with `front` runs itself, as one
    /// node does; give each router replica a directory of its own.
    /// Default: none (no experiments; events' `request_id` is not logged).
    pub exposure_root: Option<std::path::PathBuf>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            shards: Vec::new(),
            shard_timeout_ms: 2000,
            hedge_after_ms: 20,
            hedge_budget: 0.1,
            down_for_ms: 1000,
            connect_timeout_ms: 500,
            resolve_interval_ms: 5000,
            max_in_flight: 256,
            on_missing_shard: MissingShard::Partial,
            front: None,
            exposure_root: None,
        }
    }
}
