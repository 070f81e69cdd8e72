//! Attribute predicates over item metadata: categories, tags, numeric ranges.

use vecrec_index::ItemMeta;

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

    /// Whether `meta` passes.
    pub fn matches(&self, meta: &ItemMeta) -> bool {
        (self.categories_any.is_empty()
            || self
                .categories_any
                .iter()
                .any(|c| meta.categories.contains(c)))
            && self.tags_all.iter().all(|t| meta.tags.contains(t))
            && self.ranges.iter().all(|r| {
                meta.numeric.get(&r.field).is_some_and(|&x| {
                    r.min.is_none_or(|lo| x >= lo) && r.max.is_none_or(|hi| x <= hi)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_combine() {
        let mut m = ItemMeta {
            categories: vec!["a".into(), "b".into()],
            tags: vec!["x".into(), "y".into()],
            ..Default::default()
        };
        m.numeric.insert("year".into(), 2000.0);
        assert!(Filter::default().matches(&m));
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
        assert!(f(&["z", "b"], &[], None).matches(&m));
        assert!(!f(&["z"], &[], None).matches(&m));
        assert!(f(&[], &["x", "y"], None).matches(&m));
        assert!(!f(&[], &["x", "q"], None).matches(&m));
        assert!(f(&[], &[], Some((2000.0, 2000.0))).matches(&m));
        assert!(!f(&[], &[], Some((2001.0, 3000.0))).matches(&m));
        let missing = Filter {
            ranges: vec![Range {
                field: "price".into(),
                min: None,
                max: None,
            }],
            ..Default::default()
        };
        assert!(!missing.matches(&m));
    }
}
