use super::write::{render_catalog, render_interactions, render_readme, render_users};
use super::*;
use std::collections::{HashMap, HashSet};
use std::fs;

fn small() -> SampleConfig {
    SampleConfig {
        seed: 7,
        items: 600,
        users: 60,
        min_history: 5,
        max_history: 40,
    }
}

fn render_all(sample: &Sample) -> Vec<u8> {
    let mut out = render_catalog(sample).unwrap();
    out.extend(render_interactions(sample).unwrap());
    out.extend(render_users(sample).unwrap());
    out.extend(render_readme(sample).into_bytes());
    out
}

#[test]
fn same_seed_gives_identical_bytes() {
    let a = generate(&small()).unwrap();
    let b = generate(&small()).unwrap();
    assert_eq!(render_all(&a), render_all(&b));
}

#[test]
fn different_seed_gives_different_sample() {
    let a = generate(&small()).unwrap();
    let b = generate(&SampleConfig { seed: 8, ..small() }).unwrap();
    assert_ne!(render_catalog(&a).unwrap(), render_catalog(&b).unwrap());
    assert_ne!(
        render_interactions(&a).unwrap(),
        render_interactions(&b).unwrap()
    );
}

#[test]
fn default_config_is_valid_and_sized() {
    let cfg = SampleConfig::default();
    let sample = generate(&cfg).unwrap();
    assert_eq!(sample.items.len(), 3000);
    assert_eq!(sample.users.len(), 400);
    let n = sample.interactions.len();
    assert!((400 * 15..=400 * 60).contains(&n), "{n} interactions");
}

#[test]
fn interactions_reference_existing_users_and_items() {
    let sample = generate(&small()).unwrap();
    let items: HashSet<&str> = sample.items.iter().map(|i| i.id.as_str()).collect();
    let users: HashSet<&str> = sample.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(items.len(), sample.items.len(), "item ids are unique");
    assert_eq!(users.len(), sample.users.len(), "user ids are unique");
    for row in &sample.interactions {
        assert!(
            users.contains(row.user.as_str()),
            "unknown user {}",
            row.user
        );
        assert!(
            items.contains(row.item.as_str()),
            "unknown item {}",
            row.item
        );
    }
    assert_eq!(sample.items[0].id, "i00001");
    assert_eq!(sample.users[0].id, "u0001");
}

#[test]
fn histories_have_no_repeats_and_increasing_time() {
    let cfg = small();
    let sample = generate(&cfg).unwrap();
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut lengths: HashMap<&str, usize> = HashMap::new();
    for row in &sample.interactions {
        assert!(
            seen.insert((row.user.as_str(), row.item.as_str())),
            "{} saw {} twice",
            row.user,
            row.item
        );
        if let Some(&prev) = last.get(row.user.as_str()) {
            assert!(row.timestamp > prev, "time went back for {}", row.user);
        }
        last.insert(&row.user, row.timestamp);
        *lengths.entry(&row.user).or_default() += 1;
        let expected = match row.event.as_str() {
            "view" => 1.0,
            "click" => 2.0,
            "purchase" => 4.0,
            other => panic!("unknown event {other}"),
        };
        assert_eq!(row.weight, expected);
        // 2023-01-01 to well within 2024 for 40 gaps of at most 3 days.
        assert!((YEAR_2023_START..YEAR_2024_START + 200 * 86_400).contains(&row.timestamp));
    }
    assert_eq!(lengths.len(), cfg.users, "every user has a history");
    for (user, len) in lengths {
        assert!(
            (cfg.min_history..=cfg.max_history).contains(&len),
            "{user} has {len}"
        );
    }
}

#[test]
fn planted_tastes_hold() {
    let sample = generate(&SampleConfig::default()).unwrap();
    let primary: HashMap<&str, &str> = sample
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.categories[0].as_str()))
        .collect();
    let favourites: HashMap<&str, &[String]> = sample
        .users
        .iter()
        .map(|u| (u.id.as_str(), u.favourite_categories.as_slice()))
        .collect();
    let mut per_user: HashMap<&str, (usize, usize)> = HashMap::new();
    for row in &sample.interactions {
        let fav = favourites[row.user.as_str()]
            .iter()
            .any(|c| c == primary[row.item.as_str()]);
        let entry = per_user.entry(&row.user).or_default();
        entry.0 += usize::from(fav);
        entry.1 += 1;
    }
    let (mut hits, mut total) = (0, 0);
    for (user, (h, t)) in per_user {
        assert!(h * 4 >= t * 3, "{user}: {h} of {t} on favourites");
        hits += h;
        total += t;
    }
    let share = hits as f64 / total as f64;
    assert!(share >= 0.8, "aggregate favourite share {share}");
    for user in &sample.users {
        assert!((1..=2).contains(&user.favourite_categories.len()));
    }
}

#[test]
fn items_are_well_formed() {
    let sample = generate(&SampleConfig::default()).unwrap();
    let names: HashSet<&str> = category_names().collect();
    let mut per_category: HashMap<&str, usize> = HashMap::new();
    for item in &sample.items {
        let words = item.text.split_whitespace().count();
        assert!(
            (MIN_TEXT_WORDS..=MAX_TEXT_WORDS).contains(&words),
            "{}: {words} words: {}",
            item.id,
            item.text
        );
        let sentences = item.text.matches(['.', '?']).count();
        assert!(
            (1..=MAX_SENTENCES + 1).contains(&sentences),
            "{}",
            item.text
        );
        assert!(!item.text.contains('{') && !item.title.contains('{'));
        assert!(!item.title.is_empty());
        assert!((1..=2).contains(&item.categories.len()));
        assert!(item.categories.iter().all(|c| names.contains(c.as_str())));
        assert!((2..=5).contains(&item.tags.len()), "{:?}", item.tags);
        let unique: HashSet<&String> = item.tags.iter().collect();
        assert_eq!(unique.len(), item.tags.len(), "{:?}", item.tags);
        assert!((1970..=2024).contains(&item.year));
        assert!((2.0..=80.0).contains(&item.price));
        assert!(((item.price * 100.0).round() - item.price * 100.0).abs() < 1e-9);
        *per_category.entry(&item.categories[0]).or_default() += 1;
    }
    assert_eq!(per_category.len(), CATEGORIES.len());
    assert!(per_category.values().all(|&n| n == 250));
}

#[test]
fn tables_are_consistent() {
    let mut all_terms = HashSet::new();
    for c in CATEGORIES {
        assert!((20..=40).contains(&c.vocab.len()), "{}", c.name);
        for term in c.vocab {
            assert!(all_terms.insert(*term), "{term} appears twice");
        }
        for related in c.related {
            assert_ne!(*related, c.name);
            category_by_name(related);
        }
        assert!(c.title_nouns.len() >= 2);
        for s in c.sentences {
            assert!((1..=3).contains(&slot_count(s)), "{s}");
        }
        // Three sentences must fit the word budget.
        let mut longest: Vec<usize> = c
            .sentences
            .iter()
            .map(|s| s.split_whitespace().count() + 3 * slot_count(s))
            .collect();
        longest.sort_unstable();
        assert!(longest.iter().rev().take(3).sum::<usize>() <= MAX_TEXT_WORDS + 10);
    }
}

#[test]
fn catalog_lines_have_numeric_year_and_price() {
    let sample = generate(&small()).unwrap();
    let catalog = String::from_utf8(render_catalog(&sample).unwrap()).unwrap();
    assert_eq!(catalog.lines().count(), sample.items.len());
    let first: serde_json::Value = serde_json::from_str(catalog.lines().next().unwrap()).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["id", "title", "text", "categories", "tags", "year", "price"] {
        assert!(keys.contains(&key), "missing {key}");
    }
    assert!(first["year"].is_i64());
    assert!(first["price"].is_f64());
    for line in catalog.lines() {
        let item: SampleItem = serde_json::from_str(line).unwrap();
        assert!(item.id.starts_with('i'));
    }
}

#[test]
fn write_sample_leaves_complete_files_only() {
    let sample = generate(&small()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested").join("sample");
    write_sample(&sample, &out).unwrap();
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README.md",
            "catalog.jsonl",
            "interactions.csv",
            "users.csv"
        ]
    );

    let interactions = fs::read_to_string(out.join("interactions.csv")).unwrap();
    assert!(interactions.starts_with("user,item,timestamp,event,weight\n"));
    assert_eq!(interactions.lines().count(), sample.interactions.len() + 1);
    let mut reader = csv::Reader::from_path(out.join("interactions.csv")).unwrap();
    let rows: Vec<SampleInteraction> = reader.deserialize().map(Result::unwrap).collect();
    assert_eq!(rows, sample.interactions);

    let users = fs::read_to_string(out.join("users.csv")).unwrap();
    assert!(users.starts_with("user,favourite_categories\n"));
    assert_eq!(users.lines().count(), sample.users.len() + 1);

    let readme = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("seed 7"));

    // Writing again replaces the files in place.
    write_sample(&sample, &out).unwrap();
    assert_eq!(fs::read_dir(&out).unwrap().count(), 4);
}

#[test]
fn bad_configs_are_refused() {
    let ok = SampleConfig::default();
    let cases = [
        (
            SampleConfig { items: 59, ..ok },
            SampleError::TooFewItems {
                items: 59,
                min: 60,
                categories: 12,
                per_category: 5,
            },
        ),
        (SampleConfig { users: 0, ..ok }, SampleError::NoUsers),
        (
            SampleConfig {
                min_history: 0,
                ..ok
            },
            SampleError::EmptyHistory,
        ),
        (
            SampleConfig {
                min_history: 61,
                ..ok
            },
            SampleError::HistoryRange {
                min_history: 61,
                max_history: 60,
            },
        ),
        (
            SampleConfig { items: 600, ..ok },
            SampleError::HistoryTooLong {
                max_history: 60,
                needed: 51,
                per_category: 50,
                min_items: 612,
            },
        ),
        (
            SampleConfig {
                items: MAX_ITEMS + 1,
                ..ok
            },
            SampleError::TooLarge {
                what: "items",
                value: MAX_ITEMS + 1,
                max: MAX_ITEMS,
            },
        ),
    ];
    for (cfg, expected) in cases {
        assert_eq!(cfg.validate(), Err(expected.clone()));
        let err = generate(&cfg).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains(&expected.to_string()),
            "{message} lacks {expected}"
        );
    }
    // The smallest valid catalogue still works end to end.
    let tiny = SampleConfig {
        items: 60,
        users: 3,
        min_history: 1,
        max_history: 5,
        seed: 1,
    };
    let sample = generate(&tiny).unwrap();
    assert_eq!(sample.items.len(), 60);
}
