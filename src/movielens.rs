//! MovieLens (ml-latest-small layout) import and the evaluation split of
//! `shared/EVAL.md`.
//!
//! Interactions are ratings ≥ 4.0 as binary implicit feedback; the catalogue is
//! every movieId that appears in `ratings.csv`; an item's text is
//! `title | genres | distinct tags` (tags sorted, joined with ", "; the part is
//! left out when a movie has no tags). The split is per user and temporal: sort
//! by (timestamp, item id), the last ceil(n/5) go to TEST, users with n < 2 stay
//! in TRAIN; VALIDATION is carved from TRAIN by the same rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use vecrec_index::ItemMeta;

use crate::catalog::{CatalogItem, Interaction};
use crate::error::{Error, Result};

/// One (user, item, timestamp) triple with MovieLens' integer ids.
pub type Triple = (u32, u32, i64);

/// The imported data set.
#[derive(Debug)]
pub struct MovieLens {
    /// Items sorted by movieId (so internal order is id order, which breaks ties as EVAL.md asks).
    pub items: Vec<CatalogItem>,
    /// Positive interactions (rating ≥ 4), in file order.
    pub positives: Vec<Triple>,
}

/// The four parts of the split.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// TRAIN.
    pub train: Vec<Triple>,
    /// TEST.
    pub test: Vec<Triple>,
    /// Validation training part (carved from TRAIN).
    pub val_train: Vec<Triple>,
    /// Validation target part.
    pub val: Vec<Triple>,
}

fn open_csv(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(csv::Reader::from_reader(f))
}

fn field<T: std::str::FromStr>(
    path: &Path,
    rec: &csv::StringRecord,
    i: usize,
    name: &str,
) -> Result<T> {
    let line = rec.position().map_or(0, |p| p.line());
    let raw = rec
        .get(i)
        .ok_or_else(|| Error::bad_row(path, line, name, "missing"))?;
    raw.trim()
        .parse()
        .map_err(|_| Error::bad_row(path, line, name, format!("cannot parse {raw:?}")))
}

impl MovieLens {
    /// Loads `ratings.csv`, `movies.csv` and `tags.csv` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let csv_err = |p: &Path, e: csv::Error| {
            Error::bad_row(
                p,
                e.position().map_or(0, |x| x.line()),
                "(row)",
                e.to_string(),
            )
        };
        let rp = dir.join("ratings.csv");
        let mut rated = BTreeSet::new();
        let mut positives = Vec::new();
        for rec in open_csv(&rp)?.records() {
            let rec = rec.map_err(|e| csv_err(&rp, e))?;
            let user: u32 = field(&rp, &rec, 0, "userId")?;
            let item: u32 = field(&rp, &rec, 1, "movieId")?;
            let rating: f64 = field(&rp, &rec, 2, "rating")?;
            let ts: i64 = field(&rp, &rec, 3, "timestamp")?;
            rated.insert(item);
            if rating >= 4.0 {
                positives.push((user, item, ts));
            }
        }
        let mp = dir.join("movies.csv");
        let mut movies: HashMap<u32, (String, String)> = HashMap::new();
        for rec in open_csv(&mp)?.records() {
            let rec = rec.map_err(|e| csv_err(&mp, e))?;
            let id: u32 = field(&mp, &rec, 0, "movieId")?;
            movies.insert(
                id,
                (
                    rec.get(1).unwrap_or("").to_owned(),
                    rec.get(2).unwrap_or("").to_owned(),
                ),
            );
        }
        let tp = dir.join("tags.csv");
        let mut tags: HashMap<u32, BTreeSet<String>> = HashMap::new();
        if tp.exists() {
            for rec in open_csv(&tp)?.records() {
                let rec = rec.map_err(|e| csv_err(&tp, e))?;
                let id: u32 = field(&tp, &rec, 1, "movieId")?;
                tags.entry(id)
                    .or_default()
                    .insert(rec.get(2).unwrap_or("").to_owned());
            }
        }
        let items = rated
            .into_iter()
            .map(|id| {
                let (title, genres) = movies.get(&id).cloned().unwrap_or_default();
                let tag_list: Vec<String> = tags
                    .get(&id)
                    .map(|t| t.iter().cloned().collect())
                    .unwrap_or_default();
                let mut text = format!("{title} | {genres}");
                if !tag_list.is_empty() {
                    text.push_str(" | ");
                    text.push_str(&tag_list.join(", "));
                }
                let mut numeric = BTreeMap::new();
                if let Some(y) = year_of(&title) {
                    numeric.insert("year".to_owned(), y);
                }
                CatalogItem {
                    id: id.to_string(),
                    meta: ItemMeta {
                        title,
                        text,
                        categories: genres
                            .split('|')
                            .filter(|g| !g.is_empty() && *g != "(no genres listed)")
                            .map(str::to_owned)
                            .collect(),
                        tags: tag_list,
                        numeric,
                    },
                }
            })
            .collect();
        Ok(Self { items, positives })
    }

    /// The positives as generic interactions (for building a serving index).
    pub fn interactions(triples: &[Triple]) -> Vec<Interaction> {
        triples
            .iter()
            .map(|&(u, i, t)| Interaction {
                user: u.to_string(),
                item: i.to_string(),
                timestamp: t,
                event: None,
                weight: 1.0,
            })
            .collect()
    }
}

/// The release year in a title such as "Heat (1995)".
fn year_of(title: &str) -> Option<f64> {
    let t = title.trim_end();
    let inner = t.strip_suffix(')')?;
    let y = &inner[inner.len().checked_sub(4)?..];
    (inner[..inner.len() - 4].ends_with('(') && y.chars().all(|c| c.is_ascii_digit()))
        .then(|| y.parse().ok())?
}

/// Splits per user by time: the last ceil(n/5) of each user with n ≥ 2 are held out.
/// Both outputs are sorted by (user, timestamp, item).
pub fn temporal_split(triples: &[Triple]) -> (Vec<Triple>, Vec<Triple>) {
    let mut by_user: BTreeMap<u32, Vec<Triple>> = BTreeMap::new();
    for &t in triples {
        by_user.entry(t.0).or_default().push(t);
    }
    let (mut keep, mut held) = (Vec::new(), Vec::new());
    for (_, mut v) in by_user {
        v.sort_by(|a, b| a.2.cmp(&b.2).then(a.1.cmp(&b.1)));
        let n = v.len();
        let cut = if n < 2 { n } else { n - n.div_ceil(5) };
        held.extend_from_slice(&v[cut..]);
        v.truncate(cut);
        keep.extend(v);
    }
    (keep, held)
}

/// The full split of EVAL.md.
pub fn split(positives: &[Triple]) -> Split {
    let (train, test) = temporal_split(positives);
    let (val_train, val) = temporal_split(&train);
    Split {
        train,
        test,
        val_train,
        val,
    }
}

fn write_triples(path: &Path, rows: &[Triple]) -> Result<()> {
    let mut s = String::from("user,item,timestamp\n");
    for (u, i, t) in rows {
        s.push_str(&format!("{u},{i},{t}\n"));
    }
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Writes `train.csv`, `test.csv`, `val_train.csv`, `val.csv`, `items.csv` and `item_text.csv` into `dir`.
pub fn write_split(dir: &Path, split: &Split, items: &[CatalogItem]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_triples(&dir.join("train.csv"), &split.train)?;
    write_triples(&dir.join("test.csv"), &split.test)?;
    write_triples(&dir.join("val_train.csv"), &split.val_train)?;
    write_triples(&dir.join("val.csv"), &split.val)?;
    let mut ids = String::from("item\n");
    for it in items {
        ids.push_str(&it.id);
        ids.push('\n');
    }
    let p = dir.join("items.csv");
    std::fs::write(&p, ids).map_err(|e| Error::io(&p, e))?;
    let p = dir.join("item_text.csv");
    let mut w = csv::Writer::from_path(&p).map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
    let mut rows = vec![["item".to_owned(), "text".to_owned()]];
    rows.extend(items.iter().map(|it| [it.id.clone(), it.meta.text.clone()]));
    for r in rows {
        w.write_record(&r)
            .map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
    }
    w.flush().map_err(|e| Error::io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule() {
        // User 1: 6 items -> ceil(6/5) = 2 held out; user 2: 1 item stays; ties by item id.
        let t = vec![
            (1, 5, 10),
            (1, 3, 10),
            (1, 9, 1),
            (1, 8, 2),
            (1, 7, 30),
            (1, 6, 20),
            (2, 1, 5),
        ];
        let (keep, held) = temporal_split(&t);
        assert_eq!(held, vec![(1, 6, 20), (1, 7, 30)]);
        assert_eq!(
            keep,
            vec![(1, 9, 1), (1, 8, 2), (1, 3, 10), (1, 5, 10), (2, 1, 5)]
        );
    }

    #[test]
    fn years_are_parsed() {
        assert_eq!(year_of("Heat (1995)"), Some(1995.0));
        assert_eq!(year_of("Babylon 5"), None);
        assert_eq!(year_of("(500) Days of Summer (2009) "), Some(2009.0));
    }
}
