//! Sets and maps keyed by internal item numbers, hashed with `foldhash`
//! (randomly seeded, like the standard hasher) instead of SipHash: a Recommend call
//! asks "is this item excluded?" tens of thousands of times (the planner's
//! sample, every node a filtered graph walk visits, every scored row), and
//! SipHash made up about a sixth of the server's CPU under load.

use std::collections::{HashMap, HashSet};

/// The hasher of [`IdSet`] and [`IdMap`].
pub type IdHasher = foldhash::fast::RandomState;

/// A set of internal item numbers.
pub type IdSet = HashSet<u32, IdHasher>;

/// A map from internal item numbers.
pub type IdMap<V> = HashMap<u32, V, IdHasher>;

/// A set of internal item numbers held as one bit each, for the paths that
/// already spend memory and time in proportion to the item count on every
/// call (the hybrid sources' dense score arrays): a hybrid Recommend asks
/// "is this item excluded?" for every row its exact scans and `top_n` pass
/// (tens of thousands of times), and answering from a hash set took about
/// 7% of the server's CPU. Here the answer is one shift and one mask.
#[derive(Clone, Debug, Default)]
pub struct IdBits {
    words: Vec<u64>,
}

impl IdBits {
    /// An empty set with room for the numbers below `rows` (it grows past
    /// them when asked to).
    pub fn with_rows(rows: usize) -> Self {
        Self {
            words: vec![0; rows.div_ceil(64)],
        }
    }

    /// Adds `i`.
    pub fn insert(&mut self, i: u32) {
        let w = i as usize / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << (i % 64);
    }

    /// Whether `i` is in the set.
    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether the set holds no number.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }
}

impl Extend<u32> for IdBits {
    fn extend<T: IntoIterator<Item = u32>>(&mut self, iter: T) {
        for i in iter {
            self.insert(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bits_hold_exactly_what_was_inserted() {
        let planted = [0u32, 1, 63, 64, 65, 127, 128, 200, 999];
        let mut bits = IdBits::with_rows(130);
        assert!(bits.is_empty());
        bits.extend(planted);
        assert!(!bits.is_empty());
        let want: IdSet = planted.into_iter().collect();
        for i in 0..1100u32 {
            assert_eq!(bits.contains(i), want.contains(&i), "item {i}");
        }
        // Past every word held: not in the set, and no panic.
        assert!(!bits.contains(u32::MAX));
        // A number past the rows it was made for grows the set.
        bits.insert(5_000);
        assert!(bits.contains(5_000) && !bits.contains(4_999) && !bits.contains(5_001));
    }
}
