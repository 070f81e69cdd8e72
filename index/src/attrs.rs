//! Every item's filter attributes (categories, tags, numeric fields) in
//! two flat arrays of `u32`, their names kept once. A parsed record per item
//! (strings, vectors and a map) cost about 700 bytes an item on a catalogue
//! with a category, two tags and two numbers; here it is 8 bytes an item,
//! plus, for an item with any attributes, 8 for the two counts, 4 a
//! category or tag and 12 a number (52 bytes for that item).

use std::collections::HashMap;

/// What a filter reads of an item: a stored row ([`Attributes`]) or a live
/// item's record (`ItemMeta`).
pub trait FilterAttributes {
    /// Whether the item is in category `c`.
    fn has_category(&self, c: &str) -> bool;
    /// Whether the item has tag `t`.
    fn has_tag(&self, t: &str) -> bool;
    /// The item's numeric field `field`.
    fn number(&self, field: &str) -> Option<f64>;
}

/// The attributes of every row: row `i`'s words are
/// `words[starts[i]..starts[i + 1]]` (64-bit starts: a catalogue of 100M
/// items passes 2³² words at 43 words an item), laid out as the count of categories,
/// their name numbers, the count of tags, theirs, then a (name, low bits,
/// high bits) triple for each numeric field.
#[derive(Debug, Default)]
pub struct AttrTable {
    names: Vec<String>,
    starts: Vec<u64>,
    words: Vec<u32>,
}

/// A row's attributes, as one record of parsed lists (the input of
/// [`AttrTable::push`]).
#[derive(Debug, Default)]
pub struct RowAttributes {
    /// Categories, in catalogue order.
    pub categories: Vec<String>,
    /// Tags, in catalogue order.
    pub tags: Vec<String>,
    /// Numeric fields, by name.
    pub numeric: Vec<(String, f64)>,
}

/// Builds an [`AttrTable`] row by row.
#[derive(Debug, Default)]
pub struct AttrTableBuilder {
    table: AttrTable,
    names: HashMap<String, u32>,
}

impl AttrTableBuilder {
    fn name(&mut self, s: String) -> u32 {
        let next = self.names.len() as u32;
        let table = &mut self.table;
        *self.names.entry(s).or_insert_with_key(|s| {
            table.names.push(s.clone());
            next
        })
    }

    /// Appends the next row.
    pub fn push(&mut self, row: RowAttributes) {
        if self.table.starts.is_empty() {
            self.table.starts.push(0);
        }
        let empty = row.categories.is_empty() && row.tags.is_empty() && row.numeric.is_empty();
        if !empty {
            for list in [row.categories, row.tags] {
                self.table.words.push(list.len() as u32);
                for s in list {
                    let n = self.name(s);
                    self.table.words.push(n);
                }
            }
            for (field, x) in row.numeric {
                let n = self.name(field);
                let bits = x.to_bits();
                self.table
                    .words
                    .extend([n, bits as u32, (bits >> 32) as u32]);
            }
        }
        self.table.starts.push(self.table.words.len() as u64);
    }

    /// The table, its arrays trimmed to their length.
    pub fn finish(mut self) -> AttrTable {
        if self.table.starts.is_empty() {
            self.table.starts.push(0);
        }
        self.table.words.shrink_to_fit();
        self.table.starts.shrink_to_fit();
        self.table.names.shrink_to_fit();
        self.table
    }
}

impl AttrTable {
    /// Row `i`'s attributes (none for a row past the end).
    pub fn get(&self, i: u32) -> Attributes<'_> {
        let i = i as usize;
        let words = match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.words[a as usize..b as usize],
            _ => &[],
        };
        Attributes {
            names: &self.names,
            words,
        }
    }

    /// Bytes the table holds (not counting the names).
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 8 + self.words.capacity() * 4
    }
}

/// One row's attributes in an [`AttrTable`].
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    names: &'a [String],
    words: &'a [u32],
}

impl<'a> Attributes<'a> {
    /// Whether the row has no attributes.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn list(&self, which: usize) -> &'a [u32] {
        let mut at = 0;
        for _ in 0..which {
            at += 1 + *self.words.get(at).unwrap_or(&0) as usize;
        }
        match self.words.get(at) {
            Some(&n) => &self.words[at + 1..at + 1 + n as usize],
            None => &[],
        }
    }

    /// The row's categories, in catalogue order.
    pub fn categories(&self) -> impl Iterator<Item = &'a str> + 'a {
        let names = self.names;
        self.list(0)
            .iter()
            .map(move |&n| names[n as usize].as_str())
    }

    /// The row's tags, in catalogue order.
    pub fn tags(&self) -> impl Iterator<Item = &'a str> + 'a {
        let names = self.names;
        self.list(1)
            .iter()
            .map(move |&n| names[n as usize].as_str())
    }

    /// The row's numeric fields, in the order written (a record's are in
    /// name order).
    pub fn numeric(&self) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        let names = self.names;
        let skip = match self.words.first() {
            None => self.words.len(),
            Some(&c) => {
                let t = 1 + c as usize;
                t + 1 + self.words[t] as usize
            }
        };
        self.words[skip..].chunks_exact(3).map(move |w| {
            let bits = w[1] as u64 | (w[2] as u64) << 32;
            (names[w[0] as usize].as_str(), f64::from_bits(bits))
        })
    }
}

impl FilterAttributes for Attributes<'_> {
    fn has_category(&self, c: &str) -> bool {
        self.categories().any(|x| x == c)
    }

    fn has_tag(&self, t: &str) -> bool {
        self.tags().any(|x| x == t)
    }

    fn number(&self, field: &str) -> Option<f64> {
        self.numeric().find(|e| e.0 == field).map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(c: &[&str], t: &[&str], n: &[(&str, f64)]) -> RowAttributes {
        RowAttributes {
            categories: c.iter().map(|s| s.to_string()).collect(),
            tags: t.iter().map(|s| s.to_string()).collect(),
            numeric: n.iter().map(|(s, x)| (s.to_string(), *x)).collect(),
        }
    }

    #[test]
    fn rows_read_back_as_written_and_names_are_kept_once() {
        let rows = [
            row(
                &["sea", "travel"],
                &["blue"],
                &[("year", 1999.0), ("price", -0.5)],
            ),
            row(&[], &[], &[]),
            row(&[], &["blue", "green"], &[]),
            row(&["sea"], &[], &[("year", f64::MAX)]),
        ];
        let mut b = AttrTableBuilder::default();
        for r in &rows {
            b.push(RowAttributes {
                categories: r.categories.clone(),
                tags: r.tags.clone(),
                numeric: r.numeric.clone(),
            });
        }
        let t = b.finish();
        for (i, r) in rows.iter().enumerate() {
            let a = t.get(i as u32);
            assert_eq!(a.categories().collect::<Vec<_>>(), r.categories);
            assert_eq!(a.tags().collect::<Vec<_>>(), r.tags);
            let n: Vec<(String, f64)> = a.numeric().map(|(s, x)| (s.to_owned(), x)).collect();
            assert_eq!(n, r.numeric);
        }
        assert!(t.get(1).is_empty() && t.get(4).is_empty() && t.get(99).is_empty());
        let a = t.get(0);
        assert!(a.has_category("travel") && !a.has_category("blue"));
        assert!(a.has_tag("blue") && !a.has_tag("sea"));
        assert_eq!(a.number("price"), Some(-0.5));
        assert_eq!(a.number("pages"), None);
        assert_eq!(t.names, ["sea", "travel", "blue", "year", "price", "green"]);
        // 4 rows: 5 starts; row 0: 1 + 2 + 1 + 1 + 2·3 words, row 2: 1 + 1 + 2,
        // row 3: 1 + 1 + 1 + 3.
        assert_eq!(t.heap_bytes(), 5 * 8 + (11 + 4 + 6) * 4);
        assert!(AttrTableBuilder::default().finish().get(0).is_empty());
    }
}
