//! Serving one index root over time, with no network code: the slot that
//! holds the engine being served and swaps generations atomically
//! ([`slot`]), and the compaction that folds live updates into a new
//! generation ([`compact()`](compact::compact)). `grpc` sits on top of this.

pub mod compact;
pub mod slot;

pub use compact::compact;
pub use slot::EngineSlot;
