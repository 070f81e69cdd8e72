//! Property-based fuzzing of the readers: whatever bytes a damaged or hostile
//! index file holds, opening and searching either fails with an error or
//! answers within the index's bounds: never a panic, never an id out of range.
//!
//! The payload is mutated and the footer checksum then recomputed, so the
//! structural checks behind the checksum are what gets exercised (plain bit
//! flips are caught by the checksum; `index.rs` tests every one of those).
//! The write-ahead log gets random damage and random tails.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use vecrec_index::generation::GenerationWriter;
use vecrec_index::wal::Wal;
use vecrec_index::{HnswParams, Index, ItemMeta, Metric, SearchParams, StoreBuilder};

const FOOTER: usize = 16;
const HEADER: usize = 64;

/// A small index built once; each case works on a copy.
fn pristine() -> &'static (tempfile::TempDir, PathBuf) {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let dim = 8;
        let mut sb = StoreBuilder::new(dim, Metric::L2).unwrap();
        for i in 0..300 {
            let v: Vec<f32> = (0..dim).map(|k| ((i * 7 + k * 13) % 17) as f32).collect();
            let meta = ItemMeta {
                title: format!("item {i}"),
                categories: vec![format!("c{}", i % 3)],
                ..Default::default()
            };
            sb.add(&format!("id{i}"), &v, meta).unwrap();
        }
        let w = GenerationWriter::begin(root.path()).unwrap();
        vecrec_index::write_index(
            w.dir(),
            &sb,
            &HnswParams::default(),
            serde_json::Value::Null,
            &|_| {},
        )
        .unwrap();
        let gen = w.commit().unwrap();
        (root, gen)
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// A private copy of the pristine generation.
fn copy_pristine() -> tempfile::TempDir {
    let (_, gen) = pristine();
    let work = tempfile::tempdir().unwrap();
    for f in files(gen) {
        std::fs::copy(&f, work.path().join(f.file_name().unwrap())).unwrap();
    }
    work
}

/// Rewrites the footer's checksum so the envelope accepts the bytes.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER + FOOTER {
        return;
    }
    let end = bytes.len() - FOOTER;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end + 8..end + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Opens eagerly and lazily: neither may panic, searches stay in range, and
/// the lazy open's background check refuses exactly what the eager open
/// refuses, after which its searches fail too.
fn open_and_search(dir: &Path) {
    let eager = Index::open(dir);
    if let Ok(index) = &eager {
        exercise(index);
    }
    let Ok(lazy) = Index::open_lazy(dir) else {
        assert!(
            eager.is_err(),
            "the lazy open refused what the eager one took"
        );
        return;
    };
    exercise(&lazy);
    let verdict = lazy.wait_verified();
    assert_eq!(
        verdict.is_ok(),
        eager.is_ok(),
        "{verdict:?} vs {:?}",
        eager.err()
    );
    if verdict.is_err() {
        let params = SearchParams::default();
        assert!(lazy.search(&[1.0; 8], &params, None).is_err());
    }
}

fn exercise(index: &Index) {
    let n = index.store().len() as u32;
    for exact in [false, true] {
        let params = SearchParams {
            k: 10,
            ef: 32,
            exact,
        };
        if let Ok((found, _)) = index.search(&[1.0; 8], &params, None) {
            assert!(found.iter().all(|x| x.id < n), "an id out of range");
        }
    }
    for i in 0..n.min(20) {
        let _ = index.store().external_id(i);
        let _ = (index.store().attributes(i), index.store().item(i));
        let _ = index.store().internal_id(index.store().external_id(i));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn resealed_garbage_never_panics(
        file in 0usize..16,
        edits in prop::collection::vec((any::<u32>(), any::<u8>()), 1..8),
    ) {
        let work = copy_pristine();
        let all = files(work.path());
        let target = &all[file % all.len()];
        let mut bytes = std::fs::read(target).unwrap();
        if bytes.len() > HEADER + FOOTER {
            let payload = bytes.len() - HEADER - FOOTER;
            for (at, value) in &edits {
                let i = HEADER + (*at as usize % payload);
                bytes[i] = *value;
            }
            reseal(&mut bytes);
        } else {
            for (at, value) in &edits {
                let i = *at as usize % bytes.len().max(1);
                if let Some(b) = bytes.get_mut(i) { *b = *value; }
            }
        }
        std::fs::write(target, &bytes).unwrap();
        open_and_search(work.path());
    }

    #[test]
    fn header_fields_are_checked(
        file in 0usize..16,
        field in 0usize..5,
        value in any::<u64>(),
    ) {
        let work = copy_pristine();
        let all = files(work.path());
        let target = &all[file % all.len()];
        let mut bytes = std::fs::read(target).unwrap();
        if bytes.len() >= HEADER + FOOTER {
            bytes[24 + 8 * field..32 + 8 * field].copy_from_slice(&value.to_le_bytes());
            reseal(&mut bytes);
            std::fs::write(target, &bytes).unwrap();
        }
        open_and_search(work.path());
    }

    #[test]
    fn a_damaged_log_never_panics(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..6),
        flips in prop::collection::vec((any::<u32>(), any::<u8>()), 0..4),
        tail in prop::collection::vec(any::<u8>(), 0..40),
        cut in any::<u32>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut w, _) = Wal::open(&path).unwrap();
        w.append(&payloads).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, x) in &flips {
            let i = *at as usize % bytes.len();
            bytes[i] ^= x;
        }
        bytes.extend_from_slice(&tail);
        bytes.truncate(cut as usize % (bytes.len() + 1));
        std::fs::write(&path, &bytes).unwrap();
        if let Ok((mut w, records)) = Wal::open(&path) {
            prop_assert!(records.windows(2).all(|r| r[0].0 < r[1].0));
            prop_assert!(records.len() <= payloads.len() + tail.len());
            // The log accepts appends after whatever it kept, and replays them.
            let s = w.append(&[b"after".to_vec()]).unwrap()[0];
            drop(w);
            let (_, again) = Wal::open(&path).unwrap();
            prop_assert_eq!(again.last().map(|r| r.0), Some(s));
        }
    }
}
