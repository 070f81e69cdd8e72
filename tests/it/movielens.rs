//! The MovieLens import reproduces the shared split bit for bit.

use sha2::{Digest, Sha256};
use vecrec::movielens::{split, write_split, MovieLens};

use crate::common::shared;

#[test]
fn split_is_byte_identical_to_the_shared_one() {
    let ml_dir = shared().join("datasets/ml-latest-small");
    let ml = MovieLens::load(&ml_dir).unwrap();
    assert_eq!(ml.items.len(), 9724);
    let out = tempfile::tempdir().unwrap();
    write_split(out.path(), &split(&ml.positives), &ml.items).unwrap();
    let sums = std::fs::read_to_string(ml_dir.join("split/SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines() {
        let (hash, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(out.path().join(name)).unwrap();
        let got = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(got, hash, "{name} differs from the shared split");
        checked += 1;
    }
    assert_eq!(checked, 6);
}
