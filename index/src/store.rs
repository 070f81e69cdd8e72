//! The vector store: vectors, external ids and item attributes of one generation.
//!
//! Files in a generation directory:
//! - `vectors.bin` — f32 row-major matrix; header fields `[dim, count, metric]`.
//! - `ids.bin` — string table of external ids, row `i` ↔ internal id `i`.
//! - `items.bin` — string table of JSON [`ItemMeta`] records, one per row.
//!
//! The vectors are searched straight from the memory map. Two compact
//! tables are made in memory, on open when the store is verified, else on
//! first use (so a lazily opened store answers its first search without
//! reading them): row numbers by id ([`IdTable`], over the mapped ids) and
//! every row's filter attributes ([`AttrTable`]). A row's title and text are
//! parsed from the map when a call needs them ([`VectorStore::item`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::attrs::{AttrTable, AttrTableBuilder, Attributes, FilterAttributes, RowAttributes};
use crate::distance::{normalize, Metric};
use crate::error::{IndexError, Result};
use crate::format::{CheckedFile, FileWriter, Kind, StringTable};
use crate::idtable::IdTable;
use crate::quant::RowCodes;

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

impl FilterAttributes for ItemMeta {
    fn has_category(&self, c: &str) -> bool {
        self.categories.iter().any(|x| x == c)
    }

    fn has_tag(&self, t: &str) -> bool {
        self.tags.iter().any(|x| x == t)
    }

    fn number(&self, field: &str) -> Option<f64> {
        self.numeric.get(field).copied()
    }
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
    index: OnceLock<IdTable>,
    /// Every row's filter attributes, parsed once; titles and texts stay
    /// in the map (`VectorStore::item`).
    attrs: OnceLock<AttrTable>,
    /// One bit a row, set where every value of the row is 0, made by
    /// [`VectorStore::find_zero_rows`] or the first
    /// [`VectorStore::is_zero_row`].
    zero_rows: OnceLock<Vec<u64>>,
    /// Int8 copies of the rows for the bounded exact scan, made by
    /// [`VectorStore::build_row_codes`].
    row_codes: OnceLock<RowCodes>,
}

/// An item record's filter attributes, parsed as an [`ItemMeta`] is (the
/// same fields and types, so a record one refuses the other refuses), with
/// the title and text borrowed from the record rather than copied.
#[derive(Deserialize)]
struct RecordAttributes<'a> {
    #[serde(default, borrow)]
    #[allow(dead_code)]
    title: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    #[allow(dead_code)]
    text: std::borrow::Cow<'a, str>,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    numeric: BTreeMap<String, f64>,
}

impl VectorStore {
    /// Opens the store files in `dir`. With `verify`: checksums, every id
    /// unique, every attribute record parsed; without: headers and sizes only,
    /// the rest on first use (a damaged record then reads as empty
    /// attributes, a repeated id as its first row: [`VectorStore::open`] with
    /// `verify` is the check that refuses them).
    pub fn open(dir: &Path, verify: bool) -> Result<Self> {
        Self::open_with(dir, verify, verify)
    }

    /// Checks the store as [`VectorStore::open`] with `verify` does, but
    /// keeps no id or attribute table: for a store read by row number only
    /// (a learned source's item table), or a check whose store is dropped.
    /// [`VectorStore::internal_id`] and [`VectorStore::attributes`] build
    /// them, unchecked, if ever called.
    pub fn open_checked_rows(dir: &Path) -> Result<Self> {
        Self::open_with(dir, true, false)
    }

    fn open_with(dir: &Path, verify: bool, keep: bool) -> Result<Self> {
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
            attrs: OnceLock::new(),
            zero_rows: OnceLock::new(),
            row_codes: OnceLock::new(),
        };
        if verify {
            // A repeated id is found through the table, kept or not.
            let ids = store.parse_ids(true)?;
            if keep {
                let _ = store.index.set(ids);
                let _ = store.attrs.set(store.parse_attrs(true)?);
            } else {
                drop(ids);
                store.check_attrs()?;
            }
        }
        Ok(store)
    }

    fn parse_ids(&self, strict: bool) -> Result<IdTable> {
        let (table, repeat) = IdTable::build(self.count, |i| self.ids.get(i as usize));
        match repeat {
            Some((_, row)) if strict => Err(IndexError::Corrupt {
                path: self.dir.join(IDS_FILE),
                reason: format!("duplicate id {:?}", self.ids.get(row as usize)),
            }),
            _ => Ok(table),
        }
    }

    /// Parses every record as a strict [`VectorStore::parse_attrs`] does,
    /// keeping nothing.
    fn check_attrs(&self) -> Result<()> {
        for (i, s) in self.items.iter().enumerate() {
            self.record_attributes(i, s)?;
        }
        Ok(())
    }

    /// Record `i` (text `s`) parsed, or the error that makes a strict open
    /// refuse it.
    fn record_attributes<'a>(&self, i: usize, s: &'a str) -> Result<RecordAttributes<'a>> {
        serde_json::from_str(s).map_err(|e| IndexError::Corrupt {
            path: self.dir.join(ITEMS_FILE),
            reason: format!("record {i}: {e}"),
        })
    }

    fn parse_attrs(&self, strict: bool) -> Result<AttrTable> {
        let mut table = AttrTableBuilder::default();
        for (i, s) in self.items.iter().enumerate() {
            match self.record_attributes(i, s) {
                Ok(a) => table.push(RowAttributes {
                    categories: a.categories,
                    tags: a.tags,
                    numeric: a.numeric.into_iter().collect(),
                }),
                Err(e) if strict => return Err(e),
                Err(_) => table.push(RowAttributes::default()),
            }
        }
        Ok(table.finish())
    }

    /// Builds the id table now if it is not built ([`VectorStore::internal_id`]
    /// builds it on first use after an unchecked open): one pass over the
    /// ids, done at open rather than in a first call.
    pub fn prepare_ids(&self) {
        self.id_table();
    }

    /// Whether the id table and the attribute table are built, in that order.
    pub fn tables_built(&self) -> (bool, bool) {
        (self.index.get().is_some(), self.attrs.get().is_some())
    }

    fn id_table(&self) -> &IdTable {
        self.index
            .get_or_init(|| self.parse_ids(false).unwrap_or_default())
    }

    fn attrs(&self) -> &AttrTable {
        self.attrs
            .get_or_init(|| self.parse_attrs(false).unwrap_or_default())
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

    /// Whether every value of row `i` is 0 (a learned table's row for an
    /// item it never saw): one bit's lookup. Scanning the row instead, in
    /// a search that asks it of every item it visits, had cost about a
    /// quarter of a Recommend's CPU. A row number past the end is not a
    /// zero row.
    pub fn is_zero_row(&self, i: u32) -> bool {
        let i = i as usize;
        self.find_zero_rows()
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// The bitset of [`VectorStore::is_zero_row`], made by scanning every
    /// row on the first call (a generation's open calls it, so no request
    /// waits for the scan).
    pub fn find_zero_rows(&self) -> &[u64] {
        self.zero_rows.get_or_init(|| {
            let mut bits = vec![0u64; self.count.div_ceil(64)];
            for (r, row) in self.vectors().chunks_exact(self.dim).enumerate() {
                if row.iter().all(|&x| x == 0.0) {
                    bits[r / 64] |= 1 << (r % 64);
                }
            }
            bits
        })
    }

    /// Whether the bitset of [`VectorStore::is_zero_row`] has been made.
    pub fn zero_rows_built(&self) -> bool {
        self.zero_rows.get().is_some()
    }

    /// Makes (on the first call) the int8 copies of the rows that an exact
    /// search then scans first ([`crate::exact::search_bounded`]): a
    /// quarter of the f32 rows' bytes and 12 more a row, held in memory,
    /// and one pass over the rows. Worth it for a table that is searched
    /// exactly on most calls; the open of a hybrid generation, or of a
    /// shard of one, makes them for every learned table (ALS, two-tower,
    /// sequence), whichever plan the planner then picks for it. Nothing
    /// else makes them.
    pub fn build_row_codes(&self) -> &RowCodes {
        self.row_codes
            .get_or_init(|| RowCodes::new(self.vectors(), self.dim))
    }

    /// The copies of [`VectorStore::build_row_codes`], if made.
    pub fn row_codes(&self) -> Option<&RowCodes> {
        self.row_codes.get()
    }

    /// External id of row `i`.
    pub fn external_id(&self, i: u32) -> &str {
        self.ids.get(i as usize)
    }

    /// Internal id of an external id.
    pub fn internal_id(&self, id: &str) -> Option<u32> {
        self.id_table().get(id, |r| self.ids.get(r as usize))
    }

    /// Row `i`'s filter attributes (categories, tags, numeric), kept parsed
    /// in one table (none for a row past the end); [`VectorStore::item`]
    /// reads the whole record.
    pub fn attributes(&self, i: u32) -> Attributes<'_> {
        self.attrs().get(i)
    }

    /// Row `i`'s whole record (title and text too), parsed from the map on
    /// each call: one per answered item, so no copy of every text is kept.
    /// A record that does not parse (an unchecked open) reads as empty.
    pub fn item(&self, i: u32) -> ItemMeta {
        serde_json::from_str(self.items.get(i as usize)).unwrap_or_default()
    }

    /// Row `i`'s title (see [`VectorStore::item`]; in a damaged record read
    /// by an unchecked open, the title is read even where `item` gives an
    /// empty record).
    pub fn title(&self, i: u32) -> String {
        #[derive(Deserialize)]
        struct Title {
            #[serde(default)]
            title: String,
        }
        serde_json::from_str::<Title>(self.items.get(i as usize))
            .map(|t| t.title)
            .unwrap_or_default()
    }

    /// Bytes of the vector payload.
    pub fn vector_bytes(&self) -> usize {
        self.vectors.payload().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store keeps parsed only what a filter reads, and only for items
    /// that have it; titles and texts are read from the map per call.
    #[test]
    fn attributes_are_kept_parsed_and_records_read_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = StoreBuilder::new(2, Metric::Cosine).unwrap();
        let mut with = ItemMeta {
            title: "Tides".into(),
            text: "a long text about tides".into(),
            categories: vec!["sea".into()],
            tags: vec!["blue".into()],
            ..Default::default()
        };
        with.numeric.insert("year".into(), 1999.0);
        let bare = ItemMeta {
            title: "Bare".into(),
            text: "nothing to filter on".into(),
            ..Default::default()
        };
        b.add("a", &[1.0, 0.0], with.clone()).unwrap();
        b.add("b", &[0.0, 1.0], bare.clone()).unwrap();
        b.write(dir.path()).unwrap();
        for verify in [true, false] {
            let s = VectorStore::open(dir.path(), verify).unwrap();
            assert_eq!(s.internal_id("a"), Some(0));
            assert_eq!(s.internal_id("b"), Some(1));
            assert_eq!(s.internal_id("c"), None);
            assert_eq!(s.item(0), with);
            assert_eq!(s.item(1), bare);
            assert_eq!(s.title(0), "Tides");
            let a = s.attributes(0);
            assert_eq!(a.categories().collect::<Vec<_>>(), with.categories);
            assert_eq!(a.tags().collect::<Vec<_>>(), with.tags);
            let numeric: BTreeMap<String, f64> =
                a.numeric().map(|(k, x)| (k.to_owned(), x)).collect();
            assert_eq!(numeric, with.numeric);
            for f in [&a as &dyn FilterAttributes, &with] {
                assert!(f.has_category("sea") && f.has_tag("blue") && !f.has_tag("sea"));
                assert_eq!(f.number("year"), Some(1999.0));
            }
            assert!(s.attributes(1).is_empty() && s.attributes(7).is_empty());
            // Three starts, and row 0's words only: 1 + 1 categories, 1 + 1
            // tags, one number's 3.
            assert_eq!(s.attrs().heap_bytes(), 3 * 8 + 7 * 4);
        }
        // Checked for rows only: no table kept, each built on first use.
        let s = VectorStore::open_checked_rows(dir.path()).unwrap();
        assert_eq!(s.tables_built(), (false, false));
        assert_eq!(s.internal_id("b"), Some(1));
        assert_eq!(s.tables_built(), (true, false));
        assert_eq!(
            VectorStore::open(dir.path(), true).unwrap().tables_built(),
            (true, true)
        );
        drop(s);
        // A repeated id: a checked open refuses it, an unchecked one finds
        // its first row.
        StringTable::write(&dir.path().join(IDS_FILE), &["a", "a"]).unwrap();
        for err in [
            VectorStore::open(dir.path(), true).unwrap_err(),
            VectorStore::open_checked_rows(dir.path()).unwrap_err(),
        ] {
            assert!(err.to_string().contains("duplicate id \"a\""), "{err}");
        }
        let s = VectorStore::open(dir.path(), false).unwrap();
        assert_eq!(s.internal_id("a"), Some(0));
        assert_eq!(s.internal_id("b"), None);
        // A record whose title is not a string is refused as before.
        drop(s);
        let bad = r#"{"title":5,"categories":["sea"]}"#;
        StringTable::write(&dir.path().join(ITEMS_FILE), &[bad, "{}"]).unwrap();
        StringTable::write(&dir.path().join(IDS_FILE), &["a", "b"]).unwrap();
        for err in [
            VectorStore::open(dir.path(), true).unwrap_err(),
            VectorStore::open_checked_rows(dir.path()).unwrap_err(),
        ] {
            assert!(err.to_string().contains("record 0"), "{err}");
        }
    }

    /// Rows whose every value is 0 (an inner-product table's row for an
    /// item without interactions) are found, across word boundaries of the
    /// bitset, and no other row is, nor a row past the end.
    #[test]
    fn zero_rows_are_found_and_only_they() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = StoreBuilder::new(3, Metric::InnerProduct).unwrap();
        let zero = [0, 5, 63, 64, 129];
        for i in 0..130u32 {
            let v = if zero.contains(&i) {
                [0.0, -0.0, 0.0]
            } else {
                // Non-zero in one place only, the last for some rows.
                let mut v = [0.0f32; 3];
                v[i as usize % 3] = 0.5;
                v
            };
            b.add(&i.to_string(), &v, ItemMeta::default()).unwrap();
        }
        b.write(dir.path()).unwrap();
        let s = VectorStore::open(dir.path(), true).unwrap();
        assert!(!s.zero_rows_built(), "made before it was asked for");
        let found: Vec<u32> = (0..130).filter(|&i| s.is_zero_row(i)).collect();
        assert!(s.zero_rows_built());
        assert_eq!(found, zero);
        assert!(!s.is_zero_row(130) && !s.is_zero_row(u32::MAX));
    }
}
