//! Attribute predicates over item metadata: categories, tags, numeric ranges.

use vecrec_index::FilterAttributes;

/// An inclusive range on a numeric attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Range {
    /// Attribute name.
    pub field: String,
    /// Lower bound, inclusive.
    pub min: Option<f64>,
    /// Upper bound, inclusive.
    pub max: Option<f64>,
}

/// An item passes when every set condition holds; the empty filter passes all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// At least one of these categories.
    pub categories_any: Vec<String>,
    /// Every one of these tags.
    pub tags_all: Vec<String>,
    /// Every range holds (an item without the attribute fails).
    pub ranges: Vec<Range>,
}

impl Filter {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        self.categories_any.is_empty() && self.tags_all.is_empty() && self.ranges.is_empty()
    }

    /// Whether an item with attributes `meta` (a stored row's or a live
    /// item's record) passes.
    pub fn matches(&self, meta: &impl FilterAttributes) -> bool {
        (self.categories_any.is_empty() || self.categories_any.iter().any(|c| meta.has_category(c)))
            && self.tags_all.iter().all(|t| meta.has_tag(t))
            && self.ranges.iter().all(|r| {
                meta.number(&r.field).is_some_and(|x| {
                    r.min.is_none_or(|lo| x >= lo) && r.max.is_none_or(|hi| x <= hi)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vecrec_index::ItemMeta;

    #[test]
    fn conditions_combine() {
        let mut m = ItemMeta {
            categories: vec!["a".into(), "b".into()],
            tags: vec!["x".into(), "y".into()],
            ..Default::default()
        };
        m.numeric.insert("year".into(), 2000.0);
        // The same record as a stored row: every filter below agrees on both.
        let mut rows = vecrec_index::attrs::AttrTableBuilder::default();
        rows.push(vecrec_index::attrs::RowAttributes {
            categories: m.categories.clone(),
            tags: m.tags.clone(),
            numeric: m.numeric.clone().into_iter().collect(),
        });
        let rows = rows.finish();
        let row = rows.get(0);
        let both = |f: &Filter| {
            let on_record = f.matches(&m);
            assert_eq!(f.matches(&row), on_record, "{f:?}");
            on_record
        };
        assert!(both(&Filter::default()));
        let f = |c: &[&str], t: &[&str], r: Option<(f64, f64)>| Filter {
            categories_any: c.iter().map(|s| s.to_string()).collect(),
            tags_all: t.iter().map(|s| s.to_string()).collect(),
            ranges: r
                .map(|(lo, hi)| Range {
                    field: "year".into(),
                    min: Some(lo),
                    max: Some(hi),
                })
                .into_iter()
                .collect(),
        };
        assert!(both(&f(&["z", "b"], &[], None)));
        assert!(!both(&f(&["z"], &[], None)));
        assert!(both(&f(&[], &["x", "y"], None)));
        assert!(!both(&f(&[], &["x", "q"], None)));
        assert!(both(&f(&[], &[], Some((2000.0, 2000.0)))));
        assert!(!both(&f(&[], &[], Some((2001.0, 3000.0)))));
        let missing = Filter {
            ranges: vec![Range {
                field: "price".into(),
                min: None,
                max: None,
            }],
            ..Default::default()
        };
        assert!(!both(&missing));
    }
}
