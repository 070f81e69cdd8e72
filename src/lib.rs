//! vecrec: an approximate-nearest-neighbour vector recommendation engine.
//!
//! Items and queries are embedded by a BERT sentence encoder ([`encoder`]),
//! stored in a memory-mapped HNSW index (the `vecrec-index` crate), and served
//! over gRPC ([`grpc`]) by an [`engine::Engine`] that the offline evaluation
//! ([`eval`]) drives through the very same code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod analysis;
pub mod catalog;
pub mod config;
pub mod deadline;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod exposure;
pub mod filter;
pub mod fusion;
pub mod grpc;
pub mod ids;
pub mod layout;
pub mod linalg;
pub mod live;
pub mod movielens;
pub mod nn;
pub mod pipeline;
pub mod rerank;
pub mod retrieve;
pub mod route;
pub mod runtime;
pub mod sample;
pub mod serving;
pub mod simulation;
pub mod telemetry;
pub mod users;

pub use error::{Error, Result};

/// Sets up `tracing` logs on stderr; `RUST_LOG` overrides the default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a binary's body: logs to stderr, and on error prints the cause chain
/// as `error: …` and exits with status 1 (ripgrep's convention).
pub fn main_with(body: impl FnOnce() -> anyhow::Result<()>) {
    init_logging();
    if let Err(e) = body() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
