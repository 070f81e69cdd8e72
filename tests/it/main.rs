//! vecrec's integration tests: one binary, one module per area (as ripgrep and
//! Qdrant do). They use the real encoder from `.cache/` (`make setup`).

mod cli;
mod common;
mod encoder;
mod experiments;
mod grpc;
mod hostile;
mod layers;
mod live;
mod movielens;
mod neural;
mod pipeline;
mod python_client;
mod route;
mod security;
mod serving;
