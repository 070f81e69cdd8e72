//! The vector store: vectors, external ids and item attributes of one generation.
//!
//! Files in a generation directory:
//! - `vectors.bin` — f32 row-major matrix; header fields `[dim, count, metric]`.
//! - `ids.bin` — string table of external ids, row `i` ↔ internal id `i`.
//! - `items.bin` — string table of JSON [`ItemMeta`] records, one per row.
//!
//! The vectors are searched straight from the memory map. The id map and the
//! attributes are parsed into memory (the lookups and filters need them as a
//! hash map and structs): on open when the store is verified, else on first
//! use, so a lazily opened store answers its first search without reading
//! them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::distance::{normalize, Metric};
use crate::error::{IndexError, Result};
use crate::format::{CheckedFile, FileWriter, Kind, StringTable};

/// File name of the vector matrix.
pub const VECTORS_FILE: &str = "vectors.bin";
/// File name of the external id table.
pub const IDS_FILE: &str = "ids.bin";
/// File name of the item attribute table.
pub const ITEMS_FILE: &str = "items.bin";

/// What the engine knows about an item besides its vector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    /// Display title.
    #[serde(default)]
    pub title: String,
    /// The text that was embedded.
    #[serde(default)]
    pub text: String,
    /// Categories, in catalogue order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Tags, in catalogue order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Numeric attributes by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub numeric: BTreeMap<String, f64>,
}

/// Collects vectors in memory and writes them as a store.
#[derive(Debug)]
pub struct StoreBuilder {
    dim: usize,
    metric: Metric,
    vectors: Vec<f32>,
    ids: Vec<String>,
    metas: Vec<ItemMeta>,
    index: HashMap<String, u32>,
}

impl StoreBuilder {
    /// A builder for vectors of `dim` dimensions compared by `metric`.
    pub fn new(dim: usize, metric: Metric) -> Result<Self> {
        if dim == 0 || dim > 65_536 {
            return Err(IndexError::InvalidParameter {
                name: "dim",
                reason: format!("must be in 1..=65536, got {dim}"),
            });
        }
        Ok(Self {
            dim,
            metric,
            vectors: Vec::new(),
            ids: Vec::new(),
            metas: Vec::new(),
            index: HashMap::new(),
        })
    }

    /// Adds one item; returns its internal id. Cosine vectors are normalised here.
    pub fn add(&mut self, id: &str, vector: &[f32], meta: ItemMeta) -> Result<u32> {
        if vector.len() != self.dim {
            return Err(IndexError::DimensionMismatch {
                expected: self.dim,
                got: vector.len(),
            });
        }
        if id.is_empty() {
            return Err(IndexError::InvalidParameter {
                name: "id",
                reason: "item ids must not be empty".into(),
            });
        }
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(IndexError::InvalidVector {
                id: id.to_owned(),
                reason: "contains NaN or infinity",
            });
        }
        if self.index.contains_key(id) {
            return Err(IndexError::DuplicateId(id.to_owned()));
        }
        let start = self.vectors.len();
        self.vectors.extend_from_slice(vector);
        if self.metric == Metric::Cosine && !normalize(&mut self.vectors[start..]) {
            self.vectors.truncate(start);
            return Err(IndexError::InvalidVector {
                id: id.to_owned(),
                reason: "zero vector cannot be normalised for the cosine metric",
            });
        }
        let internal = self.ids.len() as u32;
        self.index.insert(id.to_owned(), internal);
        self.ids.push(id.to_owned());
        self.metas.push(meta);
        Ok(internal)
    }

    /// Number of items added.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The stored (possibly normalised) vectors, row-major.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Writes the three store files into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join(VECTORS_FILE);
        let mut w = FileWriter::create(
            &p,
            Kind::VECTORS,
            [self.dim as u64, self.len() as u64, self.metric.code(), 0, 0],
        )?;
        w.write_pod(&self.vectors)?;
        w.finish()?;
        StringTable::write(&dir.join(IDS_FILE), &self.ids)?;
        let metas: Vec<String> = self
            .metas
            .iter()
            .map(|m| serde_json::to_string(m).expect("ItemMeta serialises"))
            .collect();
        StringTable::write(&dir.join(ITEMS_FILE), &metas)
    }
}

/// A store opened from a generation directory.
#[derive(Debug)]
pub struct VectorStore {
    dir: PathBuf,
    vectors: CheckedFile,
    dim: usize,
    count: usize,
    metric: Metric,
    ids: StringTable,
    items: StringTable,
    index: OnceLock<HashMap<String, u32>>,
    metas: OnceLock<Vec<ItemMeta>>,
}

impl VectorStore {
    /// Opens the store files in `dir`. With `verify`: checksums, every id
    /// unique, every attribute record parsed; without: headers and sizes only,
    /// the rest on first use (a damaged record then reads as empty
    /// attributes, a repeated id as its first row: [`VectorStore::open`] with
    /// `verify` is the check that refuses them).
    pub fn open(dir: &Path, verify: bool) -> Result<Self> {
        let vectors = CheckedFile::open(&dir.join(VECTORS_FILE), Kind::VECTORS, verify)?;
        let [dim, count, metric, ..] = vectors.fields();
        let metric = Metric::from_code(metric)
            .ok_or_else(|| vectors.corrupt(format!("unknown metric code {metric}")))?;
        let (dim, count) = (dim as usize, count as usize);
        if dim == 0 || (dim as u128) * (count as u128) * 4 != vectors.payload().len() as u128 {
            return Err(vectors.corrupt(format!(
                "{count} vectors of dim {dim} do not fill {} payload bytes",
                vectors.payload().len()
            )));
        }
        vectors.payload_as::<f32>()?;
        // Graph searches read rows at random: no read-ahead around a fault.
        vectors.advise_random();
        let ids = StringTable::open(&dir.join(IDS_FILE), verify)?;
        let items = StringTable::open(&dir.join(ITEMS_FILE), verify)?;
        if ids.len() != count || items.len() != count {
            return Err(IndexError::Corrupt {
                path: dir.to_owned(),
                reason: format!(
                    "{count} vectors but {} ids and {} attribute records",
                    ids.len(),
                    items.len()
                ),
            });
        }
        let store = Self {
            dir: dir.to_owned(),
            vectors,
            dim,
            count,
            metric,
            ids,
            items,
            index: OnceLock::new(),
            metas: OnceLock::new(),
        };
        if verify {
            let _ = store.index.set(store.parse_ids(true)?);
            let _ = store.metas.set(store.parse_metas(true)?);
        }
        Ok(store)
    }

    fn parse_ids(&self, strict: bool) -> Result<HashMap<String, u32>> {
        let mut index = HashMap::with_capacity(self.count);
        for (i, id) in self.ids.iter().enumerate() {
            if index.contains_key(id) {
                if strict {
                    return Err(IndexError::Corrupt {
                        path: self.dir.join(IDS_FILE),
                        reason: format!("duplicate id {id:?}"),
                    });
                }
                continue;
            }
            index.insert(id.to_owned(), i as u32);
        }
        Ok(index)
    }

    fn parse_metas(&self, strict: bool) -> Result<Vec<ItemMeta>> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, s)| match serde_json::from_str(s) {
                Ok(m) => Ok(m),
                Err(e) if strict => Err(IndexError::Corrupt {
                    path: self.dir.join(ITEMS_FILE),
                    reason: format!("record {i}: {e}"),
                }),
                Err(_) => Ok(ItemMeta::default()),
            })
            .collect()
    }

    fn id_map(&self) -> &HashMap<String, u32> {
        self.index
            .get_or_init(|| self.parse_ids(false).unwrap_or_default())
    }

    fn metas(&self) -> &[ItemMeta] {
        self.metas
            .get_or_init(|| self.parse_metas(false).unwrap_or_default())
    }

    /// Dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The metric the vectors are compared by.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// All vectors, row-major.
    pub fn vectors(&self) -> &[f32] {
        // Checked to cast in `open`.
        self.vectors.payload_as::<f32>().unwrap_or(&[])
    }

    /// Row `i`.
    pub fn vector(&self, i: u32) -> &[f32] {
        let i = i as usize;
        &self.vectors()[i * self.dim..(i + 1) * self.dim]
    }

    /// External id of row `i`.
    pub fn external_id(&self, i: u32) -> &str {
        self.ids.get(i as usize)
    }

    /// Internal id of an external id.
    pub fn internal_id(&self, id: &str) -> Option<u32> {
        self.id_map().get(id).copied()
    }

    /// Attributes of row `i`.
    pub fn meta(&self, i: u32) -> &ItemMeta {
        &self.metas()[i as usize]
    }

    /// Bytes of the vector payload.
    pub fn vector_bytes(&self) -> usize {
        self.vectors.payload().len()
    }
}
