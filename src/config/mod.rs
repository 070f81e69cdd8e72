//! Configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags.
//!
//! Every key can be set from the environment as `VECREC_<SECTION>__<KEY>`
//! (double underscore between section and key), e.g.
//! `VECREC_SERVER__ADDR=0.0.0.0:50051` or `VECREC_SEARCH__EF=128`; the value is
//! read as a TOML literal when it parses as one, else as a string. The encoder
//! file paths also honour the variables written by `scripts/setup.sh`
//! (`VECREC_MODEL`, `VECREC_TOKENIZER`, `VECREC_ORT_DYLIB`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod experiment;
mod hybrid;
mod route;
mod security;
mod train;

pub use experiment::{ArmConfig, ExperimentConfig, ExperimentMode};
pub use hybrid::{FusionMethod, HybridConfig, RerankConfig, RerankKind, SourceWeights};
pub use route::{MissingShard, RouteConfig};
pub use security::SecurityConfig;
pub use train::{AlsOptions, DinOptions, SequenceOptions, TrainOptions, TwoTowerOptions};

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network settings.
    pub server: ServerConfig,
    /// Encoder files and threads.
    pub encoder: EncoderConfig,
    /// Search settings.
    pub search: SearchConfig,
    /// How user vectors are made from histories.
    pub users: UserConfig,
    /// Request limits.
    pub limits: Limits,
    /// The multi-source pipeline of `Recommend`.
    pub hybrid: HybridConfig,
    /// Training of the interaction-based sources (used by `vecrec-build`).
    pub train: TrainOptions,
    /// The reranking stage of the multi-source pipeline.
    pub rerank: RerankConfig,
    /// Live updates (UpsertItems, DeleteItems, RecordEvents).
    pub live: LiveConfig,
    /// TLS, bearer tokens and per-token write rates.
    pub security: SecurityConfig,
    /// A/B and interleaving experiments over `Recommend` (`[[experiments]]`).
    pub experiments: Vec<ExperimentConfig>,
    /// The front tier of a partitioned index (`vecrec route`).
    pub route: RouteConfig,
}

/// Network settings, admission control and metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:50051`.
    pub addr: String,
    /// Per-request deadline in milliseconds when the client sets none; a
    /// client's shorter `grpc-timeout` wins. Default 10000.
    pub request_timeout_ms: u64,
    /// SimilarItems and encoder requests (SearchText, Embed, UpsertItems)
    /// worked on at once, over all connections; 0 means four per core (the
    /// encoder joins the texts of the requests in progress into batches).
    /// Default 0.
    pub max_concurrent_requests: usize,
    /// Requests that compute on a thread of their own (Recommend,
    /// DeleteItems, RecordEvents) worked on at once, in a line of their own;
    /// 0 means one per core and one more, so a core does not idle while a
    /// finished request's place passes to the next. Default 0.
    pub max_cpu_requests: usize,
    /// Requests that may wait for a free place, in each line. While a line
    /// has room it is first come, first served; when it is full the request
    /// that has waited longest is answered `RESOURCE_EXHAUSTED` and the line
    /// serves the newest first for the next 100 ms (adaptive LIFO, see
    /// ARCHITECTURE.md); 0 refuses at once every request that finds no
    /// free place. Default 32.
    pub max_queued_requests: usize,
    /// Requests worked on at once in each line while it is overloaded (its
    /// line full within the last 100 ms); 0 means one per core. With a
    /// request always waiting, more places add little throughput and
    /// much latency. Default 0.
    pub overload_in_flight: usize,
    /// Longest wait for a free place in milliseconds; a request that waited
    /// longer is answered `RESOURCE_EXHAUSTED` (0: only its deadline bounds
    /// the wait). Default 0.
    pub max_queue_wait_ms: u64,
    /// HTTP/2 streams one connection may have open. Default 100: h2 closes
    /// a connection (GOAWAY `ENHANCE_YOUR_CALM`) when the small DATA frames
    /// it holds unread exceed its budget (at least 25,600 bytes of framing
    /// overhead, 256 less the payload per frame), and a unary call holds one
    /// such frame until its handler runs, so past saturation, with every
    /// stream's handler waiting, more than about 100 streams got connections
    /// closed instead of calls answered.
    pub max_concurrent_streams: u32,
    /// TCP keepalive idle time of accepted connections in seconds (0: off). Default 60.
    pub tcp_keepalive_s: u64,
    /// Connections open at once; one more is closed as soon as it is
    /// accepted (so its client fails at once instead of hanging), and the
    /// process's open-file limit is raised to fit. Default 4096.
    pub max_connections: usize,
    /// A connection with no call in progress for this many seconds is
    /// closed (0: never). Must exceed `request_timeout_ms`. Default 300.
    pub idle_timeout_s: u64,
    /// Connections the kernel may hold for us before we accept them
    /// (capped by net.core.somaxconn). Default 4096.
    pub listen_backlog: u32,
    /// Time a new connection has for its TLS handshake, in milliseconds.
    /// Default 10000.
    pub handshake_timeout_ms: u64,
    /// How often the served generation's files are re-read and their
    /// checksums checked, in seconds (also at once on SIGHUP); damage makes
    /// health NOT_SERVING and every call `DATA_LOSS`. 0: only on SIGHUP.
    /// Default 3600.
    pub scrub_interval_s: u64,
    /// Address of the Prometheus text endpoint (`GET /metrics`); none turns
    /// it off. Default none.
    pub metrics_addr: Option<String>,
    /// How often the index root's CURRENT pointer is checked for a new
    /// generation to swap in, in milliseconds; 0 turns it off (SIGHUP still
    /// does nothing then). Default 2000.
    pub reload_interval_ms: u64,
    /// How long the generation served before a swap stays open beside the
    /// new one, in seconds, for calls that name it: a shard of a
    /// partitioned hybrid build answers `ShardSources` from it while the
    /// router still serves the front the old generation was cut from, and
    /// the router falls back to its previous front while a shard has not
    /// swapped yet, so a rebuild fails no Recommend. Its log records are
    /// pruned when it closes. 0 closes it at once. Default 60.
    pub previous_generation_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            request_timeout_ms: 10_000,
            max_concurrent_requests: 0,
            max_cpu_requests: 0,
            max_queued_requests: 32,
            overload_in_flight: 0,
            max_queue_wait_ms: 0,
            max_concurrent_streams: 100,
            tcp_keepalive_s: 60,
            max_connections: 4096,
            idle_timeout_s: 300,
            listen_backlog: 4096,
            handshake_timeout_ms: 10_000,
            scrub_interval_s: 3600,
            metrics_addr: None,
            reload_interval_ms: 2000,
            previous_generation_s: 60,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::max_concurrent_requests`] with 0 resolved to four per core.
    pub fn in_flight_limit(&self) -> usize {
        match self.max_concurrent_requests {
            0 => 4 * cores(),
            n => n,
        }
    }
}

impl ServerConfig {
    /// [`ServerConfig::max_cpu_requests`] with 0 resolved to one per core
    /// and one more.
    pub fn cpu_limit(&self) -> usize {
        match self.max_cpu_requests {
            0 => cores() + 1,
            n => n,
        }
    }

    /// Requests worked on at once in a line while it is overloaded (each
    /// line's own limit caps it).
    pub fn overload_limit(&self) -> usize {
        match self.overload_in_flight {
            0 => cores(),
            n => n,
        }
    }
}

/// Cores this process may use (1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Encoder files and threads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderConfig {
    /// The sentence-encoder ONNX model. Default: `$VECREC_MODEL`, else
    /// `.cache/models/minilm/model-a8.onnx` (the int8 model with its weight
    /// products on per-token int8 activations, written by `make setup`;
    /// `model.onnx` next to it is the model as shipped).
    pub model: Option<PathBuf>,
    /// Its `tokenizer.json`. Default: `$VECREC_TOKENIZER`, else next to the model.
    pub tokenizer: Option<PathBuf>,
    /// `libonnxruntime.so`. Default: `$VECREC_ORT_DYLIB` / `$ORT_DYLIB_PATH`, else `.cache/onnxruntime/libonnxruntime.so`.
    pub ort_dylib: Option<PathBuf>,
    /// Intra-op threads of ONNX Runtime per session; 0 shares the cores
    /// among the sessions (one thread each when there is a session per core).
    /// Default 0.
    pub threads: usize,
    /// ONNX Runtime sessions of the server, each run by its own worker
    /// thread; 0 means one per core. Default 0. (Bulk builds use one session
    /// on every core.)
    pub sessions: usize,
    /// Texts per forward pass. Default 32.
    pub batch_size: usize,
    /// Dynamic batching in the server: texts of concurrent requests are
    /// joined into one forward pass of at most `batch_size` texts; a worker
    /// that finds fewer waits at most this many microseconds from the oldest
    /// request's arrival for more (0: it takes what is queued and goes; the
    /// requests that arrive while every worker is busy still form batches).
    /// Default 0: on 2 cores waiting 1 ms cost SearchText about 10% of its
    /// throughput at concurrency 8 (benches/serving).
    pub max_batch_wait_us: u64,
    /// Tokens read per text (longer texts are truncated). Default 256.
    pub max_tokens: usize,
    /// Whether the serving encoder's ONNX Runtime sessions keep a memory
    /// arena (bulk encoding always does). With it, memory grows to the
    /// largest forward pass ever run and stays there; without it, a large
    /// request's buffers are returned when it ends. Default false.
    pub memory_arena: bool,
    /// `cpu` or `cuda` (needs the `cuda` cargo feature; falls back to CPU with a log line). Default `cpu`.
    pub device: Device,
}

/// Where ONNX Runtime runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider (the `cuda` cargo feature).
    Cuda,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            model: None,
            tokenizer: None,
            ort_dylib: None,
            threads: 0,
            sessions: 0,
            batch_size: 32,
            max_batch_wait_us: 0,
            max_tokens: 256,
            memory_arena: false,
            device: Device::Cpu,
        }
    }
}

/// Search settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// HNSW candidate list size at query time. Default 64.
    pub ef: usize,
    /// Score every item exactly instead of searching the graph. Default false.
    pub exact: bool,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            ef: 64,
            exact: false,
        }
    }
}

/// How a user vector is made from a history: the weighted mean of the last
/// `max_items` item vectors, the item `a` steps before the newest weighing
/// `decay^a` times its interaction weight.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UserConfig {
    /// Recency decay per step back in the history, in (0, 1]; 1 is a plain
    /// mean. Default 1.
    pub decay: f32,
    /// Newest items used; older ones are ignored. Default 2 (chosen on the
    /// ml-latest-small validation split).
    pub max_items: usize,
}

impl Default for UserConfig {
    fn default() -> Self {
        Self {
            decay: 1.0,
            max_items: 2,
        }
    }
}

/// Request limits; a breach answers `INVALID_ARGUMENT`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest `k`. Default 1000.
    pub max_k: usize,
    /// Most texts per `Embed`. Default 256.
    pub max_batch: usize,
    /// Longest text or query in bytes. Default 8192.
    pub max_text_bytes: usize,
    /// Longest explicit history. Default 1000.
    pub max_history: usize,
    /// Longest id (item, user, attribute name, category or tag) in bytes.
    /// Default 256.
    pub max_id_bytes: usize,
    /// Most categories, tags or numeric attributes on one item, and most
    /// values in one filter list. Default 64.
    pub max_attributes: usize,
    /// Largest event weight (weights are finite and ≥ 0). Default 1000.
    pub max_event_weight: f32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_k: 1000,
            max_batch: 256,
            max_text_bytes: 8192,
            max_history: 1000,
            max_id_bytes: 256,
            max_attributes: 64,
            max_event_weight: 1000.0,
        }
    }
}

impl Config {
    /// Loads `file` (if given), then applies `VECREC_*` environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_with_env(file, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut value = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                text.parse::<toml::Table>()
                    .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("VECREC_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_lowercase(), key.to_lowercase());
            let parsed = format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(v.clone()));
            let table = value
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table {
                toml::Value::Table(t) => {
                    t.insert(key, parsed);
                }
                _ => return Err(Error::Config(format!("{k}: [{section}] is not a table"))),
            }
        }
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e| Error::Config(format!("{e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.users.decay > 0.0 && self.users.decay <= 1.0) {
            return bad(format!(
                "users.decay must be in (0, 1], got {}",
                self.users.decay
            ));
        }
        if self.users.max_items == 0 {
            return bad("users.max_items must be at least 1".into());
        }
        if self.search.ef == 0 || self.search.ef > 10_000 {
            return bad(format!(
                "search.ef must be in 1..=10000, got {}",
                self.search.ef
            ));
        }
        if self.encoder.batch_size == 0
            || self.encoder.max_tokens == 0
            || self.encoder.max_tokens > 512
        {
            return bad("encoder.batch_size must be ≥ 1 and encoder.max_tokens in 1..=512".into());
        }
        if self.encoder.max_batch_wait_us > 1_000_000 {
            return bad(format!(
                "encoder.max_batch_wait_us must be at most 1000000 (one second), got {}",
                self.encoder.max_batch_wait_us
            ));
        }
        if let Some(a) = &self.server.metrics_addr {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "server.metrics_addr must be an IP address with a port, e.g. 127.0.0.1:9100, got {a:?}"
                ));
            }
        }
        if self.live.follow_interval_ms == 0 || self.live.follow_interval_ms > 60_000 {
            return bad(format!(
                "live.follow_interval_ms must be in 1..=60000, got {}",
                self.live.follow_interval_ms
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return bad("server.max_concurrent_streams must be at least 1".into());
        }
        if self.server.max_connections == 0 || self.server.listen_backlog == 0 {
            return bad(
                "server.max_connections and server.listen_backlog must be at least 1".into(),
            );
        }
        if self.server.idle_timeout_s > 0
            && self.server.idle_timeout_s * 1000 <= self.server.request_timeout_ms
        {
            return bad(format!(
                "server.idle_timeout_s ({} s) must exceed server.request_timeout_ms ({} ms), or be 0",
                self.server.idle_timeout_s, self.server.request_timeout_ms
            ));
        }
        let l = &self.limits;
        if l.max_id_bytes == 0 || l.max_attributes == 0 {
            return bad("limits.max_id_bytes and limits.max_attributes must be at least 1".into());
        }
        if !(l.max_event_weight > 0.0 && l.max_event_weight.is_finite()) {
            return bad(format!(
                "limits.max_event_weight must be a finite number > 0, got {}",
                l.max_event_weight
            ));
        }
        self.security.validate().map_err(Error::Config)?;
        experiment::validate(&self.experiments).map_err(Error::Config)?;
        let h = &self.hybrid;
        let rrf_k_ok = h.rrf_k > 0.0 && h.rrf_k.is_finite();
        if h.candidates == 0 || !rrf_k_ok {
            return bad("hybrid.candidates and hybrid.rrf_k must be positive".into());
        }
        for (name, w) in [
            ("ease_weight", h.ease_weight),
            ("transitions_weight", h.transitions_weight),
            ("content_weight", h.content_weight),
            ("popularity_weight", h.popularity_weight),
            ("als_weight", h.als_weight),
            ("two_tower_weight", h.two_tower_weight),
            ("sequence_weight", h.sequence_weight),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return bad(format!(
                    "hybrid.{name} must be a finite number ≥ 0, got {w}"
                ));
            }
        }
        for (name, d) in [
            ("ease_decay", h.ease_decay),
            ("transitions_decay", h.transitions_decay),
        ] {
            if !(d > 0.0 && d <= 1.0) {
                return bad(format!("hybrid.{name} must be in (0, 1], got {d}"));
            }
        }
        let r = &self.rerank;
        if !(r.weight >= 0.0 && r.weight.is_finite()) || r.candidates == 0 || r.max_tokens == 0 {
            return bad(format!(
                "rerank.weight must be a finite number ≥ 0 and rerank.candidates, rerank.max_tokens ≥ 1 (weight {}, candidates {}, max_tokens {})",
                r.weight, r.candidates, r.max_tokens
            ));
        }
        if self.limits.max_k == 0 || self.limits.max_batch == 0 || self.limits.max_text_bytes == 0 {
            return bad("limits must be at least 1".into());
        }
        Ok(())
    }
}

/// Settings of live updates.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// Accept UpsertItems, DeleteItems and RecordEvents. Default true.
    pub enabled: bool,
    /// Compact into a new generation once this many log records are pending. Default 10000.
    pub compact_after: usize,
    /// A replica that follows another's log (`vecrec serve --follow-log`)
    /// reads what was appended this often, in milliseconds. Default 200.
    pub follow_interval_ms: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            compact_after: 10_000,
            follow_interval_ms: 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[search]\nef = 32\n[server]\naddr = \"1.2.3.4:5\"\n").unwrap();
        let env = vec![
            ("VECREC_SEARCH__EF".to_string(), "128".to_string()),
            ("VECREC_USERS__DECAY".to_string(), "0.5".to_string()),
            ("VECREC_MODEL".to_string(), "ignored-here".to_string()),
        ];
        let c = Config::load_with_env(Some(&p), env.into_iter()).unwrap();
        assert_eq!(c.search.ef, 128);
        assert_eq!(c.users.decay, 0.5);
        assert_eq!(c.server.addr, "1.2.3.4:5");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        let env = vec![("VECREC_USERS__DECAY".to_string(), "1.5".to_string())];
        assert!(Config::load_with_env(None, env.into_iter()).is_err());
        let env = vec![("VECREC_SEARCH__EFF".to_string(), "1".to_string())];
        let err = Config::load_with_env(None, env.into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("eff"), "{err}");
    }
}
