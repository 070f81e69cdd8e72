//! Row numbers by external id, at a few bytes an id: an open-addressing
//! table of row numbers over the ids kept elsewhere (a generation's
//! memory-mapped `StringTable`), where a `HashMap<String, u32>` copied every
//! id onto the heap (about 70 bytes an item; 7 GB at 100M items, in every
//! store and sub-index opened).

use std::hash::BuildHasher;

/// An empty slot.
const EMPTY: u32 = u32::MAX;

/// Row numbers by id. The ids stay with the caller, which passes a lookup
/// of row `i`'s id to every call; the table holds one `u32` per slot, at
/// most two slots in three used (6 to 12 bytes an id).
#[derive(Debug, Default)]
pub struct IdTable {
    slots: Vec<u32>,
    hasher: foldhash::fast::RandomState,
}

impl IdTable {
    /// The table of rows `0..n`, whose ids `id(i)` gives. A repeated id
    /// keeps its first row; the first repeat found is returned beside the
    /// table (row numbers of the first and the repeated row).
    pub fn build<'a>(n: usize, id: impl Fn(u32) -> &'a str) -> (Self, Option<(u32, u32)>) {
        assert!(n < EMPTY as usize, "{n} ids do not fit row numbers");
        let size = (n + n / 2).max(4).next_power_of_two();
        let mut t = Self {
            slots: vec![EMPTY; size],
            hasher: foldhash::fast::RandomState::default(),
        };
        let mut repeat = None;
        for row in 0..n as u32 {
            match t.probe(id(row), &id) {
                Ok(first) => {
                    repeat.get_or_insert((first, row));
                }
                Err(slot) => t.slots[slot] = row,
            }
        }
        (t, repeat)
    }

    /// Where `key` is: `Ok(row)` of its slot, or `Err(slot)`, the empty
    /// slot its probe ended at (the table always has one).
    fn probe<'a>(&self, key: &str, id: &impl Fn(u32) -> &'a str) -> Result<u32, usize> {
        let mask = self.slots.len() - 1;
        let mut s = (self.hasher.hash_one(key) as usize) & mask;
        loop {
            match self.slots[s] {
                EMPTY => return Err(s),
                r if id(r) == key => return Ok(r),
                _ => s = (s + 1) & mask,
            }
        }
    }

    /// The row whose id is `key`, with `id(i)` row `i`'s id as at build.
    pub fn get<'a>(&self, key: &str, id: impl Fn(u32) -> &'a str) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.probe(key, &id).ok()
    }

    /// Bytes the table holds.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_id_and_only_those() {
        let ids: Vec<String> = (0..5000).map(|i| format!("item-{i}")).collect();
        let (t, repeat) = IdTable::build(ids.len(), |i| &ids[i as usize]);
        assert_eq!(repeat, None);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.get(id, |r| &ids[r as usize]), Some(i as u32));
        }
        for miss in ["item-5000", "", "item-", "ITEM-1"] {
            assert_eq!(t.get(miss, |r| &ids[r as usize]), None);
        }
        assert!(t.heap_bytes() <= 12 * ids.len(), "{} bytes", t.heap_bytes());
    }

    #[test]
    fn a_repeated_id_keeps_its_first_row_and_is_reported() {
        let ids = ["a", "b", "a", "c", "b"];
        let (t, repeat) = IdTable::build(ids.len(), |i| ids[i as usize]);
        assert_eq!(repeat, Some((0, 2)));
        assert_eq!(t.get("a", |r| ids[r as usize]), Some(0));
        assert_eq!(t.get("b", |r| ids[r as usize]), Some(1));
        assert_eq!(t.get("c", |r| ids[r as usize]), Some(3));
        let (empty, _) = IdTable::build(0, |i| ids[i as usize]);
        assert_eq!(empty.get("a", |r| ids[r as usize]), None);
    }
}
