//! The interface every compared backend implements.

use crate::error::Result;
use crate::hnsw::Neighbor;

/// A filter over row numbers.
pub type Accept<'a> = &'a (dyn Fn(u32) -> bool + Sync);

/// A searchable, reopened index.
pub trait AnnIndex: Send + Sync {
    /// The backend's name.
    fn name(&self) -> &'static str;
    /// Rows indexed.
    fn len(&self) -> usize;
    /// Whether nothing is indexed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Waits for work the open left running in the background (vecrec's
    /// checksum verification reads every file once); a benchmark calls it
    /// before it drops the files' cached pages, so what it then counts as
    /// resident is what searching keeps there.
    fn settle(&self) -> Result<()> {
        Ok(())
    }
    /// The `k` nearest rows to `query` that `accept` allows, nearest first.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<Accept<'_>>,
    ) -> Result<Vec<Neighbor>>;
}
