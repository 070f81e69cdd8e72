//! Serving one index root over time, with no network code: the slot that
//! holds the engine being served and swaps generations atomically
//! ([`slot`]), the compaction that folds live updates into a new
//! generation ([`compact()`](compact::compact)), backups of a served
//! root ([`backup`]), and the experiments a `Recommend` is served under
//! ([`experiments`]). `grpc` sits on top of this.

pub mod backup;
pub mod compact;
pub mod experiments;
pub mod slot;

pub use compact::compact;
pub use slot::EngineSlot;
