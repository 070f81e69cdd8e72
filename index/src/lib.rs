//! vecrec-index: the on-disk vector store and the ANN indexes of vecrec.
//!
//! It knows nothing about gRPC, ONNX or configuration files. Every file it
//! writes uses the envelope of [`format`] (magic, version, header fields,
//! CRC-32 footer); a build writes a new [`generation`] directory and switches a
//! pointer atomically; an opened [`Index`] searches its memory-mapped vectors
//! and graph in place. `unsafe` lives only in the private `mmap` module (maps)
//! and the private `simd` module (calls of AVX2 kernels after CPU detection).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod attrs;
#[cfg(feature = "backends")]
pub mod backends;
pub mod distance;
pub mod error;
pub mod exact;
pub mod format;
pub mod generation;
pub mod hnsw;
pub mod idtable;
pub mod index;
mod mmap;
pub mod quant;
pub mod rows;
pub mod scorer;
mod simd;
pub mod store;
pub mod texmex;
pub mod wal;

pub use attrs::{Attributes, FilterAttributes};
pub use distance::Metric;
pub use error::{IndexError, Result};
pub use hnsw::{HnswParams, Neighbor};
pub use idtable::IdTable;
pub use index::{exact_is_cheaper, write_index, Index, Manifest, Plan, SearchParams};
pub use rows::RowSet;
pub use scorer::Scorer;
pub use store::{ItemMeta, StoreBuilder, VectorStore};
