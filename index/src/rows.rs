//! A set of a table's rows held as one bit a row: the rows a search may
//! answer with ([`crate::Index::search_in`]).
//!
//! A hybrid Recommend scans whole learned tables (ALS's, exactly, since the
//! zero rows it leaves out are many) and asked "may this row be answered?"
//! of every row through three nested closures (zero row, excluded, filter),
//! about a tenth of its CPU. Made once a call, word by word where it can
//! be, the set answers that by a scan of its set bits instead: a row it
//! leaves out costs nothing, and 64 of them cost one word's test.

/// A set of row numbers below [`RowSet::rows`], one bit each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSet {
    words: Vec<u64>,
    rows: usize,
}

impl RowSet {
    /// Every row below `rows`.
    pub fn full(rows: usize) -> Self {
        let mut words = vec![u64::MAX; rows.div_ceil(64)];
        if let Some(last) = words.last_mut().filter(|_| !rows.is_multiple_of(64)) {
            *last = (1u64 << (rows % 64)) - 1;
        }
        Self { words, rows }
    }

    /// The rows below `rows` that `f` allows (one call a row).
    pub fn from_fn(rows: usize, f: impl Fn(u32) -> bool) -> Self {
        let mut set = Self::full(rows);
        set.retain(f);
        set
    }

    /// How many rows the set is of (its rows are all below this).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether row `i` is in the set (never a row at or past [`RowSet::rows`]).
    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        self.words
            .get(i as usize / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Takes row `i` out (a row at or past [`RowSet::rows`] is not in it).
    pub fn remove(&mut self, i: u32) {
        if let Some(w) = self.words.get_mut(i as usize / 64) {
            *w &= !(1u64 << (i % 64));
        }
    }

    /// Keeps only the rows `f` allows (one call a row in the set).
    pub fn retain(&mut self, f: impl Fn(u32) -> bool) {
        for (w, word) in self.words.iter_mut().enumerate() {
            let mut left = *word;
            while left != 0 {
                let bit = left.trailing_zeros();
                left &= left - 1;
                if !f(w as u32 * 64 + bit) {
                    *word &= !(1u64 << bit);
                }
            }
        }
    }

    /// The set less the rows whose bits are set in `out` (a bitset of the
    /// same layout, as [`crate::VectorStore::find_zero_rows`] returns;
    /// words past its end take nothing out).
    pub fn without(&self, out: &[u64]) -> Self {
        let words = self
            .words
            .iter()
            .enumerate()
            .map(|(w, &word)| word & !out.get(w).copied().unwrap_or(0))
            .collect();
        Self {
            words,
            rows: self.rows,
        }
    }

    /// How many rows are in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The rows in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut left = word;
            std::iter::from_fn(move || {
                (left != 0).then(|| {
                    let bit = left.trailing_zeros();
                    left &= left - 1;
                    w as u32 * 64 + bit
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RowSet;
    use proptest::prelude::*;

    proptest! {
        /// Every operation against the plain filter it stands for, across
        /// word boundaries and partial last words.
        #[test]
        fn a_row_set_holds_what_its_filter_allows(
            rows in 0usize..300,
            keep in proptest::collection::vec(any::<bool>(), 300),
            zero in proptest::collection::vec(any::<bool>(), 300),
            removed in proptest::collection::vec(0u32..400, 0..20),
        ) {
            let allowed = |i: u32| keep[i as usize];
            let mut set = RowSet::from_fn(rows, allowed);
            for &i in &removed {
                set.remove(i);
            }
            let mut zero_words = vec![0u64; rows.div_ceil(64)];
            for i in (0..rows).filter(|&i| zero[i]) {
                zero_words[i / 64] |= 1 << (i % 64);
            }
            let want: Vec<u32> = (0..rows as u32)
                .filter(|&i| allowed(i) && !removed.contains(&i))
                .collect();
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(set.count(), want.len());
            for i in 0..400u32 {
                prop_assert_eq!(set.contains(i), want.contains(&i), "row {}", i);
            }
            let less: Vec<u32> = want.iter().copied().filter(|&i| !zero[i as usize]).collect();
            prop_assert_eq!(set.without(&zero_words).iter().collect::<Vec<_>>(), less);
            // A shorter bitset takes out nothing past its end.
            prop_assert_eq!(set.without(&[]), set.clone());
        }
    }

    #[test]
    fn a_full_set_holds_every_row_and_none_past_them() {
        for rows in [0usize, 1, 63, 64, 65, 130] {
            let set = RowSet::full(rows);
            assert_eq!(set.count(), rows);
            assert_eq!(set.iter().count(), rows);
            assert!(!set.contains(rows as u32));
            assert!(!set.contains(u32::MAX));
        }
    }
}
