//! The one place where the crate maps files into memory.
//!
//! # Safety
//! A memory map is only sound while nobody changes the file under it. vecrec never
//! rewrites a file it has published: every build writes a fresh generation
//! directory and readers keep their generation alive through an `Arc` until they
//! finish, so a published file is immutable for as long as it is mapped. A person
//! editing index files by hand while a server maps them breaks this contract.

use std::fs::File;
use std::path::Path;

use crate::error::{IndexError, Result};

/// A read-only memory map of a whole file.
#[derive(Debug)]
pub struct ReadOnlyMap {
    map: Option<memmap2::Mmap>,
}

impl ReadOnlyMap {
    /// Maps `path` read-only. An empty file gives an empty slice.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
        if len == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the file is never modified after it is published (module docs);
        // the map is read-only, so we never write through it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IndexError::io(path, e))?;
        Ok(Self { map: Some(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Tells the kernel that the given byte range will be read at random.
    pub fn advise_random(&self) {
        #[cfg(unix)]
        if let Some(m) = &self.map {
            let _ = m.advise(memmap2::Advice::Random);
        }
    }
}
