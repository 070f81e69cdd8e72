//! Readers for the two inputs of a build: the item catalogue and the
//! interaction log.
//!
//! Catalogue, JSONL (`.jsonl`/`.ndjson`): one object per line with `id`
//! (string or integer, required), `title` (string), `text` (string; at least
//! one of title and text), `categories` and `tags` (arrays of strings); every
//! other key must hold a number and becomes a numeric attribute.
//!
//! Catalogue, CSV (`.csv`): a header with `id` and the same columns;
//! `categories` and `tags` are `|`-separated; every other column is numeric
//! (an empty cell means the attribute is absent).
//!
//! Interactions, CSV: header `user,item,timestamp[,event][,weight]`;
//! `timestamp` is integer seconds, `weight` a finite number ≥ 0 (default 1).
//!
//! Any malformed row stops the read with an error naming file, line and field.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;
use vecrec_index::ItemMeta;

use crate::error::{Error, Result};

/// One catalogue item.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogItem {
    /// External id.
    pub id: String,
    /// Title, text, categories, tags and numeric attributes.
    pub meta: ItemMeta,
}

impl CatalogItem {
    /// The text the encoder embeds: `title. text`, or whichever of the two is present.
    pub fn embedding_text(&self) -> String {
        match (self.meta.title.trim(), self.meta.text.trim()) {
            (t, "") => t.to_owned(),
            ("", x) => x.to_owned(),
            (t, x) if x.starts_with(t) => x.to_owned(),
            (t, x) => format!("{t}. {x}"),
        }
    }
}

/// One interaction of a user with an item.
#[derive(Clone, Debug, PartialEq)]
pub struct Interaction {
    /// External user id.
    pub user: String,
    /// External item id.
    pub item: String,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    /// Event type (view, click, purchase, ...), if given.
    pub event: Option<String>,
    /// Weight of the interaction, 1 by default.
    pub weight: f32,
}

/// Reads a catalogue, choosing the format by extension.
pub fn read_catalog(path: &Path) -> Result<Vec<CatalogItem>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let items = match ext.as_str() {
        "jsonl" | "ndjson" => read_catalog_jsonl(path)?,
        "csv" => read_catalog_csv(path)?,
        _ => {
            return Err(Error::invalid(format!(
                "{}: unknown catalogue format {ext:?} (expected .jsonl, .ndjson or .csv)",
                path.display()
            )))
        }
    };
    if items.is_empty() {
        return Err(Error::invalid(format!(
            "{}: the catalogue has no items",
            path.display()
        )));
    }
    Ok(items)
}

fn check_item(
    path: &Path,
    line: u64,
    item: &CatalogItem,
    seen: &mut HashSet<String>,
) -> Result<()> {
    if item.id.trim().is_empty() {
        return Err(Error::bad_row(path, line, "id", "must not be empty"));
    }
    if item.meta.title.trim().is_empty() && item.meta.text.trim().is_empty() {
        return Err(Error::bad_row(
            path,
            line,
            "text",
            "an item needs a title or a text",
        ));
    }
    if !seen.insert(item.id.clone()) {
        return Err(Error::bad_row(
            path,
            line,
            "id",
            format!("duplicate id {:?}", item.id),
        ));
    }
    Ok(())
}

fn read_catalog_jsonl(path: &Path) -> Result<Vec<CatalogItem>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, Value> = serde_json::from_str(&line).map_err(|e| {
            Error::bad_row(path, line_no, "(line)", format!("not a JSON object: {e}"))
        })?;
        let mut item = CatalogItem {
            id: String::new(),
            meta: ItemMeta::default(),
        };
        for (k, v) in obj {
            let bad = |reason: &str| Error::bad_row(path, line_no, &k, reason);
            match k.as_str() {
                "id" => {
                    item.id = match v {
                        Value::String(s) => s,
                        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                        _ => return Err(bad("expected a string or an integer")),
                    }
                }
                "title" | "text" => {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad("expected a string"))?
                        .to_owned();
                    if k == "title" {
                        item.meta.title = s;
                    } else {
                        item.meta.text = s;
                    }
                }
                "categories" | "tags" => {
                    let arr = v
                        .as_array()
                        .ok_or_else(|| bad("expected an array of strings"))?;
                    let list = arr
                        .iter()
                        .map(|x| x.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| bad("expected an array of strings"))?;
                    if k == "categories" {
                        item.meta.categories = list;
                    } else {
                        item.meta.tags = list;
                    }
                }
                _ => {
                    let x = v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                        bad("unknown keys are numeric attributes and must hold a finite number")
                    })?;
                    item.meta.numeric.insert(k.clone(), x);
                }
            }
        }
        if item.id.is_empty() {
            return Err(Error::bad_row(path, line_no, "id", "missing"));
        }
        check_item(path, line_no, &item, &mut seen)?;
        out.push(item);
    }
    Ok(out)
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(csv::ReaderBuilder::new().flexible(false).from_reader(file))
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map_or(0, |p| p.line());
    Error::bad_row(path, line, "(row)", e.to_string())
}

fn split_list(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read_catalog_csv(path: &Path) -> Result<Vec<CatalogItem>> {
    let mut rdr = csv_reader(path)?;
    let headers = rdr.headers().map_err(|e| csv_err(path, e))?.clone();
    if !headers.iter().any(|h| h == "id") {
        return Err(Error::bad_row(path, 1, "id", "the header has no id column"));
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        let line = rec.position().map_or(0, |p| p.line());
        let mut item = CatalogItem {
            id: String::new(),
            meta: ItemMeta::default(),
        };
        let mut numeric = BTreeMap::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            match h {
                "id" => item.id = v.trim().to_owned(),
                "title" => item.meta.title = v.to_owned(),
                "text" => item.meta.text = v.to_owned(),
                "categories" => item.meta.categories = split_list(v),
                "tags" => item.meta.tags = split_list(v),
                _ if v.trim().is_empty() => {}
                _ => {
                    let x: f64 = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|x: &f64| x.is_finite())
                        .ok_or_else(|| {
                            Error::bad_row(path, line, h, format!("expected a number, got {v:?}"))
                        })?;
                    numeric.insert(h.to_owned(), x);
                }
            }
        }
        item.meta.numeric = numeric;
        check_item(path, line, &item, &mut seen)?;
        out.push(item);
    }
    Ok(out)
}

/// Reads an interaction log (CSV with header `user,item,timestamp[,event][,weight]`).
pub fn read_interactions(path: &Path) -> Result<Vec<Interaction>> {
    let mut rdr = csv_reader(path)?;
    let headers = rdr.headers().map_err(|e| csv_err(path, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(cu), Some(ci), Some(ct)) = (col("user"), col("item"), col("timestamp")) else {
        return Err(Error::bad_row(
            path,
            1,
            "(header)",
            format!(
                "expected columns user,item,timestamp[,event][,weight], got {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        ));
    };
    let (ce, cw) = (col("event"), col("weight"));
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        let line = rec.position().map_or(0, |p| p.line());
        let get = |c: usize| rec.get(c).unwrap_or("").trim();
        let nonempty = |c: usize, name: &str| {
            let v = get(c);
            if v.is_empty() {
                Err(Error::bad_row(path, line, name, "must not be empty"))
            } else {
                Ok(v.to_owned())
            }
        };
        let user = nonempty(cu, "user")?;
        let item = nonempty(ci, "item")?;
        let timestamp = get(ct).parse::<i64>().map_err(|_| {
            Error::bad_row(
                path,
                line,
                "timestamp",
                format!("expected integer seconds, got {:?}", get(ct)),
            )
        })?;
        let event = ce.map(get).filter(|s| !s.is_empty()).map(str::to_owned);
        let weight = match cw.map(get).filter(|s| !s.is_empty()) {
            None => 1.0,
            Some(w) => w
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| {
                    Error::bad_row(
                        path,
                        line,
                        "weight",
                        format!("expected a finite number ≥ 0, got {w:?}"),
                    )
                })?,
        };
        out.push(Interaction {
            user,
            item,
            timestamp,
            event,
            weight,
        });
    }
    Ok(out)
}

/// Writes `items` as a `.jsonl` catalogue that [`read_catalog`] reads back
/// as the same items (atomically: a temporary file, then a rename).
pub fn write_catalog_jsonl(path: &Path, items: &[CatalogItem]) -> Result<()> {
    let mut out = Vec::new();
    for it in items {
        let mut obj = serde_json::Map::new();
        obj.insert("id".into(), Value::String(it.id.clone()));
        obj.insert("title".into(), Value::String(it.meta.title.clone()));
        obj.insert("text".into(), Value::String(it.meta.text.clone()));
        let list = |l: &[String]| Value::Array(l.iter().cloned().map(Value::String).collect());
        obj.insert("categories".into(), list(&it.meta.categories));
        obj.insert("tags".into(), list(&it.meta.tags));
        for (k, x) in &it.meta.numeric {
            let number = serde_json::Number::from_f64(*x).ok_or_else(|| {
                Error::invalid(format!("item {:?}: attribute {k:?} is not finite", it.id))
            })?;
            if obj.insert(k.clone(), Value::Number(number)).is_some() {
                return Err(Error::invalid(format!(
                    "item {:?}: a numeric attribute named {k:?} cannot be written beside the \
                     field of that name",
                    it.id
                )));
            }
        }
        serde_json::to_writer(&mut out, &obj).map_err(|e| Error::invalid(e.to_string()))?;
        out.push(b'\n');
    }
    vecrec_index::generation::write_atomic(path, &out).map_err(Error::from)
}

/// Writes `interactions` as a CSV interaction log (`user,item,timestamp,
/// event,weight`) that [`read_interactions`] reads back as the same rows.
pub fn write_interactions_csv(path: &Path, interactions: &[Interaction]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| Error::invalid(format!("{}: {e}", path.display()));
    w.write_record(["user", "item", "timestamp", "event", "weight"])
        .map_err(bad)?;
    for e in interactions {
        w.write_record([
            e.user.as_str(),
            e.item.as_str(),
            &e.timestamp.to_string(),
            e.event.as_deref().unwrap_or(""),
            &e.weight.to_string(),
        ])
        .map_err(bad)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    vecrec_index::generation::write_atomic(path, &bytes).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_catalogues_and_interactions_read_back_the_same() {
        let d = tempfile::tempdir().unwrap();
        let items = vec![
            CatalogItem {
                id: "a,1".into(),
                meta: ItemMeta {
                    title: "Quotes \" and, commas".into(),
                    text: "line one\nline two".into(),
                    categories: vec!["c1".into(), "c2".into()],
                    tags: vec!["t".into()],
                    numeric: [("year".to_string(), 1999.5)].into(),
                },
            },
            CatalogItem {
                id: "b".into(),
                meta: ItemMeta {
                    title: "Only a title".into(),
                    ..Default::default()
                },
            },
        ];
        let p = d.path().join("c.jsonl");
        write_catalog_jsonl(&p, &items).unwrap();
        assert_eq!(read_catalog(&p).unwrap(), items);
        let rows = vec![
            Interaction {
                user: "u,1".into(),
                item: "a,1".into(),
                timestamp: -5,
                event: Some("click".into()),
                weight: 0.25,
            },
            Interaction {
                user: "u2".into(),
                item: "b".into(),
                timestamp: 1_700_000_000,
                event: None,
                weight: 3.0,
            },
        ];
        let p = d.path().join("i.csv");
        write_interactions_csv(&p, &rows).unwrap();
        assert_eq!(read_interactions(&p).unwrap(), rows);
    }

    fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn jsonl_and_csv_catalogues_read_alike() {
        let d = tempfile::tempdir().unwrap();
        let j = write(
            &d,
            "c.jsonl",
            "{\"id\": 1, \"title\": \"A\", \"text\": \"x\", \"categories\": [\"c1\"], \"tags\": [\"t\"], \"year\": 1999}\n\n",
        );
        let c = write(
            &d,
            "c.csv",
            "id,title,text,categories,tags,year\n1,A,x,c1,t,1999\n",
        );
        let a = read_catalog(&j).unwrap();
        let b = read_catalog(&c).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].meta.numeric["year"], 1999.0);
        assert_eq!(a[0].embedding_text(), "A. x");
    }

    #[test]
    fn malformed_rows_name_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (
                "a.jsonl",
                "{\"id\":\"1\",\"title\":\"t\"}\n{\"id\":\"2\",\"title\":\"t\",\"year\":\"old\"}\n",
                ":2: field \"year\"",
            ),
            (
                "b.jsonl",
                "{\"id\":\"1\",\"title\":\"t\"}\n{\"id\":\"1\",\"title\":\"u\"}\n",
                ":2: field \"id\": duplicate",
            ),
            ("c.jsonl", "not json\n", ":1: field \"(line)\""),
            (
                "d.jsonl",
                "{\"title\":\"t\"}\n",
                ":1: field \"id\": missing",
            ),
            (
                "e.csv",
                "id,title,price\n1,a,2\n2,b,cheap\n",
                ":3: field \"price\"",
            ),
            (
                "f.jsonl",
                "{\"id\":\"1\",\"tags\":[1]}\n",
                ":1: field \"tags\"",
            ),
        ];
        for (name, body, want) in cases {
            let p = write(&d, name, body);
            let err = read_catalog(&p).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn interactions_are_validated() {
        let d = tempfile::tempdir().unwrap();
        let ok = write(
            &d,
            "i.csv",
            "user,item,timestamp,event,weight\nu,i,5,click,2\nu,j,6,,\n",
        );
        let v = read_interactions(&ok).unwrap();
        assert_eq!(v[0].weight, 2.0);
        assert_eq!(v[1].event, None);
        assert_eq!(v[1].weight, 1.0);
        for (body, want) in [
            (
                "user,item,timestamp\nu,i,yesterday\n",
                ":2: field \"timestamp\"",
            ),
            (
                "user,item,timestamp,weight\nu,i,1,-3\n",
                ":2: field \"weight\"",
            ),
            ("user,item,timestamp\n,i,1\n", ":2: field \"user\""),
            ("u,i,t\n", "field \"(header)\""),
            ("user,item,timestamp\nu,i\n", "(row)"),
        ] {
            let p = write(&d, "bad.csv", body);
            let err = read_interactions(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{body:?}: {err}");
        }
    }
}
