//! Seeded generator for a small, human-readable sample catalogue and
//! interaction log with planted tastes.
//!
//! The sample exists to show that a content-based recommender over BERT
//! (MiniLM) embeddings of item text works: every item belongs to one of twelve
//! categories of a media and shop catalogue, and its title, text and tags are
//! built from templates and a vocabulary that belongs to that category alone.
//! Texts of one category are therefore close in embedding space and texts of
//! different categories are far apart. Every user is given one or two
//! favourite categories, and 85% of each history is drawn from them, so a
//! recommender that embeds what a user read should find more of the same.
//!
//! All text comes from the tables in this file, written for this project, so
//! the sample carries no third-party data or licence. The output is a pure
//! function of [`SampleConfig`] for a given version of this module: the random
//! stream is ChaCha8 seeded from `seed`, and no step depends on floating-point
//! functions whose last bit could differ between platforms (popularity weights
//! are plain reciprocals and timestamp gaps are integers). Changing a table
//! changes every sample, which is acceptable because the sample is a
//! demonstration, not a stored format.
//!
//! Popularity follows a Zipf-Mandelbrot law with exponent 1 and offset
//! [`POPULARITY_OFFSET`] over a per-category random ranking, which gives a
//! visible but mild head (the most popular item of a 250-item category
//! receives about 3% of that category's draws).
//!
//! [`write_sample`] lays the sample out as `catalog.jsonl`,
//! `interactions.csv`, `users.csv` (the planted truth) and a `README.md`.

#![allow(missing_docs)] // Field names of the sample types say what they hold.

use std::fs::{self, File};
use std::path::Path;

use anyhow::Context;
use rand::distributions::WeightedIndex;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Share of each user's history drawn from their favourite categories.
pub const FAVOURITE_SHARE: f64 = 0.85;

/// Fewest items per category that [`SampleConfig::validate`] accepts.
pub const MIN_ITEMS_PER_CATEGORY: usize = 5;

/// Offset `q` of the Zipf-Mandelbrot popularity weight `1 / (rank + q)`.
pub const POPULARITY_OFFSET: f64 = 10.0;

/// Largest catalogue, user count and history length accepted, so that a typo
/// on the command line does not try to allocate the machine away.
pub const MAX_ITEMS: usize = 1_000_000;
/// Largest number of users accepted.
pub const MAX_USERS: usize = 1_000_000;
/// Longest history accepted.
pub const MAX_HISTORY: usize = 10_000;

/// Share of items that carry a second, related category.
const SECOND_CATEGORY_PERCENT: u32 = 25;
/// Share of users with two favourite categories rather than one.
const TWO_FAVOURITES_PERCENT: u32 = 40;
/// First user timeline starts in 2023: 2023-01-01T00:00:00Z ..
const YEAR_2023_START: i64 = 1_672_531_200;
/// .. 2024-01-01T00:00:00Z, in seconds since the Unix epoch.
const YEAR_2024_START: i64 = 1_704_067_200;
/// Gaps between a user's consecutive interactions, in seconds: one band is
/// chosen uniformly and a gap uniformly within it, which approximates a
/// log-uniform spread from a minute to three days using integers only.
const GAP_BANDS: [(i64, i64); 5] = [
    (60, 600),
    (600, 3_600),
    (3_600, 21_600),
    (21_600, 86_400),
    (86_400, 259_200),
];
/// Sentences per item text, and the word budget the text must meet.
const MAX_SENTENCES: usize = 3;
const MIN_TEXT_WORDS: usize = 15;
const MAX_TEXT_WORDS: usize = 60;

/// Why a [`SampleConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SampleError {
    /// Too few items to give every category its minimum share.
    #[error("need at least {min} items ({categories} categories x {per_category}), got {items}")]
    TooFewItems {
        items: usize,
        min: usize,
        categories: usize,
        per_category: usize,
    },
    /// A sample without users has no interactions to show.
    #[error("need at least 1 user, got 0")]
    NoUsers,
    /// Every user must have at least one interaction.
    #[error("min_history must be at least 1, got 0")]
    EmptyHistory,
    /// The history range is reversed.
    #[error("min_history ({min_history}) is greater than max_history ({max_history})")]
    HistoryRange {
        min_history: usize,
        max_history: usize,
    },
    /// The longest history needs more distinct favourite items than a single
    /// category holds, so a user would have to repeat an item.
    #[error(
        "max_history {max_history} needs {needed} distinct items in one category, \
         but each category has only {per_category}; raise items to at least {min_items} \
         or lower max_history"
    )]
    HistoryTooLong {
        max_history: usize,
        needed: usize,
        per_category: usize,
        min_items: usize,
    },
    /// A count is beyond what the generator is meant for.
    #[error("{what} must be at most {max}, got {value}")]
    TooLarge {
        what: &'static str,
        value: usize,
        max: usize,
    },
}

/// What to generate. The same config always yields the same sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleConfig {
    /// Seed of the ChaCha8 stream that drives every random choice.
    pub seed: u64,
    /// Number of catalogue items.
    pub items: usize,
    /// Number of users.
    pub users: usize,
    /// Shortest user history, in interactions.
    pub min_history: usize,
    /// Longest user history, in interactions (inclusive).
    pub max_history: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            items: 3000,
            users: 400,
            min_history: 15,
            max_history: 60,
        }
    }
}

impl SampleConfig {
    /// Checks that the config can produce a sample whose planted tastes hold
    /// exactly: every category gets enough items, and no user needs more
    /// distinct favourite items than one category has.
    pub fn validate(&self) -> Result<(), SampleError> {
        let categories = CATEGORIES.len();
        let min_items = categories * MIN_ITEMS_PER_CATEGORY;
        if self.items > MAX_ITEMS {
            return Err(SampleError::TooLarge {
                what: "items",
                value: self.items,
                max: MAX_ITEMS,
            });
        }
        if self.users > MAX_USERS {
            return Err(SampleError::TooLarge {
                what: "users",
                value: self.users,
                max: MAX_USERS,
            });
        }
        if self.max_history > MAX_HISTORY {
            return Err(SampleError::TooLarge {
                what: "max_history",
                value: self.max_history,
                max: MAX_HISTORY,
            });
        }
        if self.items < min_items {
            return Err(SampleError::TooFewItems {
                items: self.items,
                min: min_items,
                categories,
                per_category: MIN_ITEMS_PER_CATEGORY,
            });
        }
        if self.users == 0 {
            return Err(SampleError::NoUsers);
        }
        if self.min_history == 0 {
            return Err(SampleError::EmptyHistory);
        }
        if self.min_history > self.max_history {
            return Err(SampleError::HistoryRange {
                min_history: self.min_history,
                max_history: self.max_history,
            });
        }
        // Items are spread evenly, so the smallest category holds
        // floor(items / categories); a one-favourite user must find all their
        // favourite draws there.
        let per_category = self.items / categories;
        let needed = favourite_count(self.max_history);
        if needed > per_category {
            return Err(SampleError::HistoryTooLong {
                max_history: self.max_history,
                needed,
                per_category,
                min_items: needed * categories,
            });
        }
        Ok(())
    }
}

/// One catalogue entry, serialised as one line of `catalog.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleItem {
    /// Stable id such as `i00001`.
    pub id: String,
    pub title: String,
    /// One to three sentences, 15 to 60 words.
    pub text: String,
    /// Primary category first, then at most one related category.
    pub categories: Vec<String>,
    /// Two to five terms from the categories' vocabularies.
    pub tags: Vec<String>,
    /// Publication year, 1970 to 2024.
    pub year: i32,
    /// Price in currency units, 2.00 to 80.00, whole cents.
    pub price: f64,
}

/// One user and the taste planted in them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleUser {
    /// Stable id such as `u0001`.
    pub id: String,
    /// One or two category names; 85% of the user's history is drawn here.
    pub favourite_categories: Vec<String>,
}

/// One row of `interactions.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInteraction {
    pub user: String,
    pub item: String,
    /// Seconds since the Unix epoch, strictly increasing per user.
    pub timestamp: i64,
    /// `view`, `click` or `purchase`.
    pub event: String,
    /// 1.0, 2.0 or 4.0 for view, click and purchase.
    pub weight: f64,
}

/// A generated sample. Interactions are grouped by user (in user order) and
/// sorted by time within each user.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The config the sample was generated from, recorded in the README.
    pub config: SampleConfig,
    pub items: Vec<SampleItem>,
    pub users: Vec<SampleUser>,
    pub interactions: Vec<SampleInteraction>,
}

/// The names of the categories, in table order.
pub fn category_names() -> impl Iterator<Item = &'static str> {
    CATEGORIES.iter().map(|c| c.name)
}

/// Number of favourite interactions in a history of `len`; the rest is noise.
fn favourite_count(len: usize) -> usize {
    // Rounding half away from zero keeps the share at or above 75% for every
    // length, which the tests rely on.
    ((len as f64) * FAVOURITE_SHARE).round() as usize
}

/// Generates the sample described by `cfg`.
pub fn generate(cfg: &SampleConfig) -> anyhow::Result<Sample> {
    cfg.validate().context("invalid sample config")?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);

    let (items, primary) = generate_items(cfg, &mut rng);
    let users = generate_users(cfg, &mut rng);
    let interactions = generate_interactions(cfg, &items, &primary, &users, &mut rng)?;

    Ok(Sample {
        config: *cfg,
        items,
        users: users.into_iter().map(|u| u.user).collect(),
        interactions,
    })
}

/// A user plus favourite category indices.
struct DraftUser {
    user: SampleUser,
    favourites: Vec<usize>,
}

fn id_width(count: usize, min: usize) -> usize {
    count.to_string().len().max(min)
}

/// Returns the items and, alongside, each item's primary category index.
fn generate_items(cfg: &SampleConfig, rng: &mut ChaCha8Rng) -> (Vec<SampleItem>, Vec<usize>) {
    // A balanced, shuffled assignment: every category gets floor or ceil of
    // items / categories, and ids do not reveal the category.
    let mut primary: Vec<usize> = (0..cfg.items).map(|i| i % CATEGORIES.len()).collect();
    primary.shuffle(rng);

    let width = id_width(cfg.items, 5);
    let items = primary
        .iter()
        .enumerate()
        .map(|(i, &cat)| generate_item(format!("i{:0width$}", i + 1), cat, rng))
        .collect();
    (items, primary)
}

fn generate_item(id: String, cat: usize, rng: &mut ChaCha8Rng) -> SampleItem {
    let category = &CATEGORIES[cat];
    let title = generate_title(category, rng);

    // Terms are drawn without replacement so a text never repeats a phrase.
    let terms: Vec<&str> = category
        .vocab
        .choose_multiple(rng, category.vocab.len())
        .copied()
        .collect();
    let mut next_term = 0;
    let mut sentence_order: Vec<&str> = category.sentences.to_vec();
    sentence_order.shuffle(rng);
    let target = rng.gen_range(1..=MAX_SENTENCES);

    let mut sentences: Vec<String> = Vec::new();
    let mut words = 0;
    for template in sentence_order {
        if sentences.len() >= MAX_SENTENCES
            || (sentences.len() >= target && words >= MIN_TEXT_WORDS)
        {
            break;
        }
        let slots = slot_count(template);
        let sentence = fill(template, &terms[next_term..next_term + slots]);
        let sentence_words = sentence.split_whitespace().count();
        if words + sentence_words > MAX_TEXT_WORDS {
            break;
        }
        next_term += slots;
        words += sentence_words;
        sentences.push(sentence);
    }
    let text = sentences.join(" ");

    // Tags prefer the terms the text actually uses, so a tag filter and the
    // text agree; a related category contributes one of its own terms.
    let mut tag_count = rng.gen_range(2..=5);
    let mut categories = vec![category.name.to_owned()];
    let mut second_tag = None;
    if rng.gen_range(0..100) < SECOND_CATEGORY_PERCENT {
        let related = category
            .related
            .choose(rng)
            .expect("every category has a related one");
        let other = category_by_name(related);
        categories.push(other.name.to_owned());
        second_tag = other.vocab.choose(rng).copied();
        tag_count -= 1;
    }
    let mut tags: Vec<String> = terms
        .iter()
        .take(tag_count)
        .map(|t| (*t).to_owned())
        .collect();
    tags.extend(second_tag.map(str::to_owned));

    let year = rng.gen_range(1970..=2024);
    let price = f64::from(rng.gen_range(200u32..=8000)) / 100.0;

    SampleItem {
        id,
        title,
        text,
        categories,
        tags,
        year,
        price,
    }
}

fn generate_title(category: &Category, rng: &mut ChaCha8Rng) -> String {
    let pattern = category
        .title_patterns
        .choose(rng)
        .expect("title patterns are non-empty");
    let adjective = category
        .title_adjectives
        .choose(rng)
        .expect("title adjectives are non-empty");
    let mut nouns = category.title_nouns.choose_multiple(rng, 2);
    let noun = nouns.next().expect("at least two title nouns");
    let other = nouns.next().expect("at least two title nouns");
    pattern
        .replace("{A}", adjective)
        .replace("{N}", noun)
        .replace("{M}", other)
}

/// Number of `{k}` slots in a sentence template; slots are numbered from 0.
fn slot_count(template: &str) -> usize {
    (0..10)
        .take_while(|k| template.contains(&format!("{{{k}}}")))
        .count()
}

fn fill(template: &str, terms: &[&str]) -> String {
    terms
        .iter()
        .enumerate()
        .fold(template.to_owned(), |s, (k, term)| {
            s.replace(&format!("{{{k}}}"), term)
        })
}

fn category_by_name(name: &str) -> &'static Category {
    CATEGORIES
        .iter()
        .find(|c| c.name == name)
        .expect("related categories name existing ones")
}

fn generate_users(cfg: &SampleConfig, rng: &mut ChaCha8Rng) -> Vec<DraftUser> {
    let width = id_width(cfg.users, 4);
    (0..cfg.users)
        .map(|u| {
            let count = if rng.gen_range(0..100) < TWO_FAVOURITES_PERCENT {
                2
            } else {
                1
            };
            let favourites: Vec<usize> =
                rand::seq::index::sample(rng, CATEGORIES.len(), count).into_vec();
            DraftUser {
                user: SampleUser {
                    id: format!("u{:0width$}", u + 1),
                    favourite_categories: favourites
                        .iter()
                        .map(|&c| CATEGORIES[c].name.to_owned())
                        .collect(),
                },
                favourites,
            }
        })
        .collect()
}

/// Per-category popularity: a random ranking of the category's items and a
/// sampler over ranks.
struct Popularity {
    ranked: Vec<usize>,
    sampler: WeightedIndex<f64>,
}

fn generate_interactions(
    cfg: &SampleConfig,
    items: &[SampleItem],
    primary: &[usize],
    users: &[DraftUser],
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Vec<SampleInteraction>> {
    let mut by_category: Vec<Vec<usize>> = vec![Vec::new(); CATEGORIES.len()];
    for (i, &c) in primary.iter().enumerate() {
        by_category[c].push(i);
    }
    let popularity = by_category
        .into_iter()
        .map(|mut ranked| {
            ranked.shuffle(rng);
            let weights = (0..ranked.len()).map(|r| 1.0 / (r as f64 + POPULARITY_OFFSET));
            let sampler = WeightedIndex::new(weights).context("build popularity sampler")?;
            Ok(Popularity { ranked, sampler })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut interactions = Vec::new();
    let mut used = vec![false; items.len()];
    for user in users {
        let len = rng.gen_range(cfg.min_history..=cfg.max_history);
        let favourite = favourite_count(len);
        // Which positions in the timeline are favourites is shuffled, so the
        // noise is spread through the history rather than bunched at its end.
        let mut is_favourite: Vec<bool> = (0..len).map(|k| k < favourite).collect();
        is_favourite.shuffle(rng);

        let mut picked: Vec<usize> = Vec::with_capacity(len);
        let mut remaining: Vec<usize> = user
            .favourites
            .iter()
            .map(|&c| popularity[c].ranked.len())
            .collect();
        let mut timestamp = rng.gen_range(YEAR_2023_START..YEAR_2024_START);
        for fav in is_favourite {
            let item = if fav {
                // Choose among favourites that still have unseen items;
                // validation guarantees one category alone has enough.
                let open: Vec<usize> = (0..user.favourites.len())
                    .filter(|&k| remaining[k] > 0)
                    .collect();
                let k = *open
                    .choose(rng)
                    .context("favourite categories exhausted; config validation is too weak")?;
                remaining[k] -= 1;
                draw_popular(&popularity[user.favourites[k]], &used, rng)
            } else {
                draw_noise(primary, &user.favourites, &used, rng)
            };
            used[item] = true;
            picked.push(item);

            let (event, weight) = draw_event(fav, rng);
            interactions.push(SampleInteraction {
                user: user.user.id.clone(),
                item: items[item].id.clone(),
                timestamp,
                event: event.to_owned(),
                weight,
            });
            let (lo, hi) = *GAP_BANDS.choose(rng).expect("gap bands are non-empty");
            timestamp += rng.gen_range(lo..hi);
        }
        for item in picked {
            used[item] = false;
        }
    }
    Ok(interactions)
}

/// Draws an unseen item of one category with the popularity skew. Rejection
/// is cheap while few items are seen; the scan afterwards bounds the worst
/// case and keeps the result deterministic.
fn draw_popular(pop: &Popularity, used: &[bool], rng: &mut ChaCha8Rng) -> usize {
    for _ in 0..32 {
        let item = pop.ranked[pop.sampler.sample(rng)];
        if !used[item] {
            return item;
        }
    }
    *pop.ranked
        .iter()
        .find(|&&i| !used[i])
        .expect("caller checked the category has unseen items")
}

/// Draws an unseen item uniformly from outside the user's favourite
/// categories, so the planted share of favourites is exact.
fn draw_noise(
    primary: &[usize],
    favourites: &[usize],
    used: &[bool],
    rng: &mut ChaCha8Rng,
) -> usize {
    let eligible = |i: usize| !used[i] && !favourites.contains(&primary[i]);
    for _ in 0..32 {
        let item = rng.gen_range(0..primary.len());
        if eligible(item) {
            return item;
        }
    }
    let start = rng.gen_range(0..primary.len());
    (0..primary.len())
        .map(|k| (start + k) % primary.len())
        .find(|&i| eligible(i))
        .expect("at least ten other categories outnumber any history's noise")
}

/// Planted engagement: users act more strongly on what they like.
fn draw_event(favourite: bool, rng: &mut ChaCha8Rng) -> (&'static str, f64) {
    let (click, purchase) = if favourite { (30, 12) } else { (12, 3) };
    let roll = rng.gen_range(0..100);
    if roll < purchase {
        ("purchase", 4.0)
    } else if roll < purchase + click {
        ("click", 2.0)
    } else {
        ("view", 1.0)
    }
}

/// Writes `catalog.jsonl`, `interactions.csv`, `users.csv` and `README.md`
/// into `out_dir`, creating it if needed. Each file is written to a temporary
/// name, synced and renamed, so a reader never sees a half-written file.
pub fn write_sample(sample: &Sample, out_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out_dir)
        .with_context(|| format!("create output directory {}", out_dir.display()))?;
    let files: [(&str, Vec<u8>); 4] = [
        ("catalog.jsonl", render_catalog(sample)?),
        ("interactions.csv", render_interactions(sample)?),
        ("users.csv", render_users(sample)?),
        ("README.md", render_readme(sample).into_bytes()),
    ];
    for (name, bytes) in &files {
        let path = out_dir.join(name);
        write_atomic(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    }
    // Persist the renames themselves where the platform allows syncing a
    // directory; elsewhere the files are complete but may not survive a crash.
    if let Ok(dir) = File::open(out_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(vecrec_index::generation::write_atomic(path, bytes)?)
}

/// `catalog.jsonl`: one JSON object per item, fields in declaration order.
fn render_catalog(sample: &Sample) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for item in &sample.items {
        serde_json::to_writer(&mut out, item)
            .with_context(|| format!("serialise item {}", item.id))?;
        out.push(b'\n');
    }
    Ok(out)
}

/// `interactions.csv` with header `user,item,timestamp,event,weight`.
fn render_interactions(sample: &Sample) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in &sample.interactions {
        writer.serialize(row).context("serialise interaction")?;
    }
    writer.into_inner().context("flush interactions")
}

/// `users.csv` with header `user,favourite_categories`, joined with `|`.
fn render_users(sample: &Sample) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(["user", "favourite_categories"])
        .context("write users header")?;
    for user in &sample.users {
        writer
            .write_record([user.id.as_str(), &user.favourite_categories.join("|")])
            .context("serialise user")?;
    }
    writer.into_inner().context("flush users")
}

fn render_readme(sample: &Sample) -> String {
    let cfg = &sample.config;
    format!(
        "# vecrec sample\n\n\
         A synthetic, licence-clean sample generated by `vecrec-sample` with seed {seed} \
         ({items} items, {users} users, {interactions} interactions, histories of \
         {min}..={max} per user); the same seed and counts always produce the same files. \
         `catalog.jsonl` holds one JSON object per item (`id`, `title`, `text`, \
         `categories`, `tags`, and numeric `year` and `price`), written from per-category \
         templates over {ncat} categories so that texts of one category are semantically \
         close. `interactions.csv` (`user,item,timestamp,event,weight`) is the interaction \
         log, grouped by user and ordered by time, with timestamps in seconds since the \
         Unix epoch and weights 1.0, 2.0 and 4.0 for view, click and purchase. `users.csv` \
         (`user,favourite_categories`, joined with `|`) is the planted truth: about \
         {share:.0}% of each user's history comes from their favourite categories and the \
         rest is uniform noise from other categories, so a content-based recommender should \
         rank a user's favourite categories first.\n",
        seed = cfg.seed,
        items = sample.items.len(),
        users = sample.users.len(),
        interactions = sample.interactions.len(),
        min = cfg.min_history,
        max = cfg.max_history,
        ncat = CATEGORIES.len(),
        share = FAVOURITE_SHARE * 100.0,
    )
}

/// One category of the catalogue and the words its items are made of.
///
/// Vocabulary terms are plural or mass noun phrases so that they read well in
/// article-free templates ("recipes for {0} and {1}"); the space category's
/// templates supply "the" themselves.
struct Category {
    name: &'static str,
    /// Names of categories an item may carry as its second category.
    related: &'static [&'static str],
    /// Topical terms: used in texts and as tags. Unique across categories.
    vocab: &'static [&'static str],
    title_adjectives: &'static [&'static str],
    title_nouns: &'static [&'static str],
    /// `{A}` adjective, `{N}` and `{M}` two different nouns.
    title_patterns: &'static [&'static str],
    /// Sentences with slots `{0}`, `{1}`, `{2}` for distinct terms.
    sentences: &'static [&'static str],
}

const CATEGORIES: &[Category] = &[
    Category {
        name: "space science fiction",
        related: &["horror", "programming"],
        vocab: &[
            "starship crew",
            "dying nebula",
            "warp drive",
            "alien signal",
            "orbital station",
            "distant galaxy",
            "black hole",
            "colony ship",
            "android pilot",
            "first contact mission",
            "asteroid belt",
            "hyperspace jump",
            "fusion reactor",
            "ice moon",
            "generation ship",
            "solar sail",
            "cryosleep pods",
            "terraformed planet",
            "galactic empire",
            "rogue artificial intelligence",
            "wormhole",
            "interstellar war",
            "space pirates",
            "zero-gravity corridors",
            "mission control room",
            "alien ruins",
            "lost fleet",
            "red dwarf star",
            "Mars colony",
            "space elevator",
            "exoplanet",
            "alien mothership",
        ],
        title_adjectives: &[
            "Silent",
            "Last",
            "Distant",
            "Burning",
            "Frozen",
            "Hollow",
            "Shattered",
            "Endless",
            "Crimson",
            "Forgotten",
        ],
        title_nouns: &[
            "Nebula", "Starship", "Horizon", "Orbit", "Galaxy", "Frontier", "Comet", "Colony",
            "Void", "Eclipse",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{N} of the {A} Stars",
            "Beyond the {A} {N}",
            "Children of the {N}",
            "The {N} Protocol",
            "{A} {N}",
        ],
        sentences: &[
            "A gripping tale of the {0} stranded near the {1}.",
            "When contact with the {0} is lost, a young navigator must reach the {1} before the oxygen runs out.",
            "Hard science fiction full of the {0}, the {1} and the quiet dread of deep space.",
            "Light years from Earth, the secret of the {0} is tied to the {1}.",
            "An epic space opera about the {0}, the {1} and a crew with nowhere left to run.",
            "The captain uncovers a message hidden in the {0} that could end the {1}.",
            "Readers who love the {0} and the {1} will find this voyage hard to put down.",
        ],
    },
    Category {
        name: "cooking and recipes",
        related: &["gardening", "yoga and wellness"],
        vocab: &[
            "weeknight pasta",
            "sourdough bread",
            "cast iron skillets",
            "roast chicken",
            "fresh herbs",
            "garlic butter",
            "homemade stock",
            "tomato sauce",
            "olive oil",
            "slow cooker stews",
            "chocolate cake",
            "seasonal vegetables",
            "spice rubs",
            "stir fries",
            "pizza dough",
            "lemon tarts",
            "braised short ribs",
            "knife skills",
            "one-pot dinners",
            "meal prep",
            "risotto",
            "grilled salmon",
            "vegetable curries",
            "pantry staples",
            "sheet pan suppers",
            "pastry cream",
            "family recipes",
            "dinner party menus",
            "roasted root vegetables",
            "homemade noodles",
        ],
        title_adjectives: &[
            "Weeknight",
            "Rustic",
            "Simple",
            "Sunday",
            "Golden",
            "Homemade",
            "Everyday",
            "Slow",
            "Seasonal",
            "Crispy",
        ],
        title_nouns: &[
            "Pasta", "Kitchen", "Bread", "Supper", "Table", "Feast", "Roast", "Pantry", "Skillet",
            "Bakes",
        ],
        title_patterns: &[
            "{A} {N} Secrets",
            "The {A} {N}",
            "{A} {N}",
            "{N} for Every Season",
            "The {A} {N} Cookbook",
            "{N} and {M}",
        ],
        sentences: &[
            "Simple recipes for {0} and {1}, ready in under thirty minutes.",
            "A home cook's guide to {0}, {1} and the joy of feeding friends.",
            "Learn how {0} and {1} can turn an ordinary weeknight into a feast.",
            "Step by step, the chef explains {0}, {1} and {2} without fuss.",
            "From {0} to {1}, every dish is tested in a real family kitchen.",
            "Packed with tips on {0} and {1}, this cookbook makes dinner easy.",
            "Warm, practical recipes built around {0}, {1} and a well-stocked pantry.",
        ],
    },
    Category {
        name: "gardening",
        related: &["cooking and recipes", "pets and dogs"],
        vocab: &[
            "raised beds",
            "compost heaps",
            "tomato seedlings",
            "heirloom seeds",
            "pruning shears",
            "rose bushes",
            "vegetable patches",
            "greenhouses",
            "perennial borders",
            "mulch",
            "companion planting",
            "fruit trees",
            "herb gardens",
            "organic fertiliser",
            "garden soil",
            "watering cans",
            "potting benches",
            "spring bulbs",
            "climbing beans",
            "slug control",
            "wildflower meadows",
            "cold frames",
            "hedge trimming",
            "seed trays",
            "allotments",
            "lawn care",
            "dahlias",
            "pollinators",
            "crop rotation",
            "rainwater barrels",
        ],
        title_adjectives: &[
            "Green", "Wild", "Secret", "Patient", "Blooming", "Kitchen", "Cottage", "Modern",
            "Small", "Organic",
        ],
        title_nouns: &[
            "Garden",
            "Allotment",
            "Greenhouse",
            "Seasons",
            "Roots",
            "Harvest",
            "Border",
            "Orchard",
            "Seeds",
            "Soil",
        ],
        title_patterns: &[
            "The {A} {N}",
            "The {A} Gardener",
            "{N} and {M}",
            "{A} {N}: A Practical Guide",
            "A Year in the {A} {N}",
        ],
        sentences: &[
            "A practical guide to {0}, {1} and a garden that feeds you all year.",
            "Learn when to sow, prune and harvest, with chapters on {0} and {1}.",
            "Get your hands in the soil with advice on {0}, {1} and {2}.",
            "Season by season, an experienced gardener explains {0} and {1}.",
            "From {0} to {1}, this book helps even a small plot flourish.",
            "Clear diagrams show how {0} and {1} work together in a healthy garden.",
        ],
    },
    Category {
        name: "jazz music",
        related: &["medieval history", "yoga and wellness"],
        vocab: &[
            "saxophone solos",
            "bebop",
            "swing era dance halls",
            "upright bass",
            "big bands",
            "trumpet improvisation",
            "blue notes",
            "smoky clubs",
            "piano trios",
            "modal jazz",
            "walking bass lines",
            "brushed drums",
            "jam sessions",
            "Harlem nightlife",
            "vinyl records",
            "cool jazz",
            "hard bop",
            "scat singing",
            "chord changes",
            "jazz standards",
            "New Orleans brass bands",
            "Blue Note recordings",
            "late night sets",
            "jazz fusion",
            "trombone choruses",
            "vibraphone melodies",
            "jazz festivals",
            "torch song ballads",
            "syncopated rhythms",
            "after-hours jam sessions",
        ],
        title_adjectives: &[
            "Blue", "Midnight", "Smoky", "Golden", "Cool", "Velvet", "Late", "Swinging",
            "Electric", "Lonely",
        ],
        title_nouns: &[
            "Note",
            "Groove",
            "Saxophone",
            "Session",
            "Standard",
            "Ballad",
            "Rhythm",
            "Club",
            "Trumpet",
            "Quartet",
        ],
        title_patterns: &[
            "{A} {N}",
            "The {A} {N}",
            "{N} After Midnight",
            "Kind of {A}",
            "Notes from the {A} {N}",
            "The {N} Sessions",
        ],
        sentences: &[
            "An affectionate history of {0}, {1} and the musicians who made them swing.",
            "Step into the world of {0} and {1}, where every night brought a new sound.",
            "A listener's guide to {0}, {1} and {2}, with recordings worth hunting down.",
            "The story of a young saxophonist chasing {0} through the jazz clubs of the fifties.",
            "Rich with {0} and {1}, this book captures the heartbeat of jazz.",
            "Interviews and session notes reveal how {0} shaped {1}.",
            "From {0} to {1}, the music never stops moving.",
        ],
    },
    Category {
        name: "football",
        related: &["mountain hiking"],
        vocab: &[
            "Premier League drama",
            "World Cup dreams",
            "penalty shootouts",
            "transfer windows",
            "midfield maestros",
            "goalkeepers",
            "strikers",
            "tactical formations",
            "high pressing",
            "derby matches",
            "youth academies",
            "offside decisions",
            "free kicks",
            "corner kicks",
            "league title races",
            "relegation battles",
            "stadium atmosphere",
            "club captains",
            "football managers",
            "Champions League nights",
            "counter attacks",
            "fan culture",
            "training ground drills",
            "injury time winners",
            "hat tricks",
            "football boots",
            "season ticket holders",
            "cup finals",
            "scouting networks",
            "dressing room secrets",
        ],
        title_adjectives: &[
            "Beautiful",
            "Final",
            "Golden",
            "Red",
            "Last",
            "Perfect",
            "Great",
            "Glorious",
            "Lost",
            "Unbeaten",
        ],
        title_nouns: &[
            "Game", "Season", "Derby", "Goal", "Final", "Captain", "Pitch", "Kick", "Striker",
            "Trophy",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{A} {N}",
            "One {A} {N}",
            "Inside the {N}",
            "The {N} Diaries",
            "{N} of the Century",
        ],
        sentences: &[
            "An inside story of {0}, {1} and a football season that went down to the last day.",
            "The manager reveals how {0} and {1} decide matches at the highest level.",
            "From {0} to {1}, a celebration of the beautiful game.",
            "Told through the eyes of a young striker, it captures {0}, {1} and the roar of the crowd.",
            "Tactics, heartbreak and glory: {0}, {1} and {2} all feature.",
            "A supporter's account of {0} and {1}, full of passion and late goals.",
        ],
    },
    Category {
        name: "mountain hiking",
        related: &["yoga and wellness", "football", "pets and dogs"],
        vocab: &[
            "alpine trails",
            "summit ridges",
            "mountain huts",
            "trekking poles",
            "switchbacks",
            "glacier crossings",
            "base camps",
            "hiking boots",
            "trail maps",
            "high passes",
            "altitude sickness",
            "wild camping",
            "mountain weather",
            "scree slopes",
            "waterfalls",
            "national parks",
            "backpacking gear",
            "sunrise summits",
            "rope teams",
            "compass navigation",
            "day hikes",
            "long distance trails",
            "rocky peaks",
            "valley views",
            "mountain lakes",
            "forest paths",
            "emergency shelters",
            "layered clothing",
            "bivouacs",
            "ridge walks",
        ],
        title_adjectives: &[
            "High",
            "Long",
            "Wild",
            "Quiet",
            "Lonely",
            "Steep",
            "Northern",
            "Hidden",
            "Windswept",
            "Open",
        ],
        title_nouns: &[
            "Trail", "Summit", "Ridge", "Pass", "Peak", "Valley", "Mountain", "Path", "Hut",
            "Horizon",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{A} {N}",
            "Walking the {A} {N}",
            "{N} to {M}",
            "Above the {N}",
            "The {N} Guide",
        ],
        sentences: &[
            "A trail guide to {0}, {1} and the quiet of the high mountains.",
            "Lace up your boots for routes that cross {0} and {1}.",
            "Practical advice on {0}, {1} and {2} for safe days in the hills.",
            "An account of a long walk through {0}, with nights spent near {1}.",
            "Maps and stories cover {0} and {1} from spring to late autumn.",
            "From {0} to {1}, every chapter smells of pine and cold mountain air.",
        ],
    },
    Category {
        name: "medieval history",
        related: &["horror", "jazz music"],
        vocab: &[
            "castles",
            "knights",
            "crusades",
            "feudal lords",
            "monasteries",
            "illuminated manuscripts",
            "plague years",
            "peasant revolts",
            "royal courts",
            "cathedral builders",
            "siege warfare",
            "Norman invaders",
            "chivalry",
            "heraldry",
            "merchant guilds",
            "Viking raids",
            "Magna Carta",
            "longbow archers",
            "holy relics",
            "market towns",
            "noble dynasties",
            "jousting tournaments",
            "pilgrimage routes",
            "Byzantine emperors",
            "English kings",
            "church power",
            "manor estates",
            "medieval medicine",
            "monastic chronicles",
            "stone keeps",
        ],
        title_adjectives: &[
            "Iron",
            "Holy",
            "Forgotten",
            "Broken",
            "Royal",
            "Stone",
            "Black",
            "Last",
            "Hidden",
            "Ancient",
        ],
        title_nouns: &[
            "Crown",
            "Castle",
            "Knight",
            "Kingdom",
            "Crusade",
            "Throne",
            "Abbey",
            "Sword",
            "Chronicle",
            "Realm",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{N} and {M}",
            "The {N} of the North",
            "The Age of the {N}",
            "{A} {N}",
            "The Fall of the {A} {N}",
        ],
        sentences: &[
            "A vivid history of {0}, {1} and the people who lived in their shadow.",
            "Drawing on old chronicles, the author explores {0} and {1}.",
            "From {0} to {1}, the Middle Ages come alive on every page.",
            "An accessible account of {0}, {1} and {2} in medieval Europe.",
            "How did {0} shape {1}? This book offers surprising answers.",
            "Rich in detail about {0} and {1}, it brings a lost world back into view.",
        ],
    },
    Category {
        name: "personal finance",
        related: &["programming"],
        vocab: &[
            "index funds",
            "emergency savings",
            "household budgets",
            "credit card debt",
            "retirement planning",
            "compound interest",
            "pension contributions",
            "mortgage payments",
            "stock market investing",
            "tax allowances",
            "financial independence",
            "frugal living",
            "side income",
            "dividend investing",
            "net worth",
            "inflation",
            "government bonds",
            "savings accounts",
            "spending habits",
            "early retirement",
            "money mindset",
            "insurance policies",
            "student loans",
            "passive income",
            "asset allocation",
            "rainy day funds",
            "payday routines",
            "financial goals",
            "property investing",
            "low cost investing",
        ],
        title_adjectives: &[
            "Wealthy",
            "Frugal",
            "Simple",
            "Richer",
            "Smart",
            "Quiet",
            "Debt-Free",
            "Steady",
            "Modest",
            "Savvy",
        ],
        title_nouns: &[
            "Money",
            "Budget",
            "Wealth",
            "Investor",
            "Savings",
            "Fortune",
            "Pension",
            "Future",
            "Portfolio",
            "Millionaire",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{A} {N}",
            "The {N} Plan",
            "{A} {N} Made Simple",
            "The {A} {N} Handbook",
        ],
        sentences: &[
            "A plain-spoken guide to {0}, {1} and taking control of your money.",
            "Learn how {0} and {1} can work together to build lasting wealth.",
            "Clear worksheets cover {0}, {1} and {2} without jargon.",
            "From {0} to {1}, small habits add up to financial freedom.",
            "The author explains {0} and {1} with real numbers and honest mistakes.",
            "Stop worrying about money: start with {0}, then master {1}.",
        ],
    },
    Category {
        name: "pets and dogs",
        related: &["gardening", "mountain hiking"],
        vocab: &[
            "puppy training",
            "dog walks",
            "rescue dogs",
            "loyal companions",
            "obedience classes",
            "dog treats",
            "vet visits",
            "grooming",
            "border collies",
            "golden retrievers",
            "house training",
            "leash manners",
            "dog parks",
            "fetch games",
            "separation anxiety",
            "senior dogs",
            "kittens",
            "pet nutrition",
            "agility courses",
            "chew toys",
            "dog breeds",
            "animal shelters",
            "cosy dog beds",
            "wagging tails",
            "sheepdogs",
            "pet insurance",
            "family pets",
            "clicker training",
            "sniffing walks",
            "dog behaviour",
        ],
        title_adjectives: &[
            "Good", "Loyal", "Happy", "Faithful", "Muddy", "Clever", "Little", "Brave", "Gentle",
            "Best",
        ],
        title_nouns: &[
            "Dog",
            "Puppy",
            "Companion",
            "Friend",
            "Tail",
            "Walk",
            "Pup",
            "Collie",
            "Retriever",
            "Terrier",
        ],
        title_patterns: &[
            "The {A} {N}",
            "A {A} {N}",
            "The {N} Who Came Home",
            "The {A} {N} Handbook",
            "My {A} {N}",
        ],
        sentences: &[
            "A warm guide to {0}, {1} and life with a happy dog.",
            "Patient advice on {0} and {1} for first-time dog owners.",
            "The heartwarming story of {0}, {1} and a family that never gave up.",
            "From {0} to {1}, every chapter helps you understand your pet.",
            "Practical tips on {0}, {1} and {2} from an experienced trainer.",
            "Full of {0} and {1}, this book is a love letter to dogs.",
        ],
    },
    Category {
        name: "horror",
        related: &["space science fiction", "medieval history"],
        vocab: &[
            "haunted houses",
            "creeping dread",
            "ghost stories",
            "cursed villages",
            "abandoned asylums",
            "shadow figures",
            "blood moons",
            "possessed dolls",
            "nightmares",
            "graveyards",
            "ancient evil",
            "whispering voices",
            "locked attics",
            "demonic rituals",
            "fog-bound moors",
            "monsters in the woods",
            "vampires",
            "werewolves",
            "seances",
            "dark cellars",
            "screams in the night",
            "sinister priests",
            "body horror",
            "cults",
            "midnight visitors",
            "old curses",
            "flickering candles",
            "hollow eyes",
            "uninvited guests",
            "crawling terror",
        ],
        title_adjectives: &[
            "Hollow",
            "Silent",
            "Crimson",
            "Rotten",
            "Dark",
            "Whispering",
            "Cursed",
            "Black",
            "Bleeding",
            "Nameless",
        ],
        title_nouns: &[
            "House", "Shadow", "Night", "Grave", "Cellar", "Woods", "Curse", "Hour", "Doll",
            "Scream",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{A} {N}",
            "The {A} {N} Returns",
            "The {N} at Midnight",
            "Whispers from the {A} {N}",
        ],
        sentences: &[
            "A chilling tale of {0}, {1} and the things that wait in the dark.",
            "When the lights go out, {0} and {1} are only the beginning.",
            "Horror fans will shiver at {0}, {1} and {2}.",
            "Nobody in the village will speak of {0}, or of {1}.",
            "A slow-burning nightmare of {0} and {1} that lingers long after the last page.",
            "Something stirs among {0} and {1}, and it is hungry.",
        ],
    },
    Category {
        name: "programming",
        related: &["personal finance", "space science fiction"],
        vocab: &[
            "Rust",
            "clean code",
            "unit tests",
            "design patterns",
            "refactoring",
            "functional programming",
            "data structures",
            "algorithms",
            "concurrency",
            "memory safety",
            "compilers",
            "type systems",
            "version control",
            "code review",
            "debugging",
            "web servers",
            "databases",
            "distributed systems",
            "performance tuning",
            "open source",
            "command line tools",
            "software architecture",
            "API design",
            "continuous integration",
            "error handling",
            "Python scripts",
            "async runtimes",
            "microservices",
            "garbage collection",
            "test-driven development",
        ],
        title_adjectives: &[
            "Pragmatic",
            "Clean",
            "Practical",
            "Effective",
            "Modern",
            "Fearless",
            "Functional",
            "Elegant",
            "Concurrent",
            "Idiomatic",
        ],
        title_nouns: &[
            "Code",
            "Programmer",
            "Compilers",
            "Software",
            "Systems",
            "Algorithms",
            "Patterns",
            "Types",
            "Refactoring",
            "Debugging",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{A} {N}",
            "{N} in Practice",
            "{A} {N} from Scratch",
            "Mastering {N}",
            "{N} and {M}",
        ],
        sentences: &[
            "A hands-on guide to {0}, {1} and writing software that lasts.",
            "Learn {0} and {1} through small projects and clear examples.",
            "Experienced engineers explain {0}, {1} and {2} with working code.",
            "From {0} to {1}, every chapter ends with programming exercises.",
            "This book demystifies {0} and shows where {1} fits in.",
            "Practical lessons on {0} and {1} for developers who want to level up.",
        ],
    },
    Category {
        name: "yoga and wellness",
        related: &["mountain hiking", "cooking and recipes"],
        vocab: &[
            "morning yoga",
            "breathing exercises",
            "mindfulness meditation",
            "sun salutations",
            "flexibility",
            "stress relief",
            "restful sleep",
            "gentle stretching",
            "yoga mats",
            "inner calm",
            "posture",
            "core strength",
            "herbal tea",
            "self-care rituals",
            "balance poses",
            "relaxation",
            "guided meditation",
            "healthy habits",
            "back pain relief",
            "mindful eating",
            "yoga retreats",
            "deep breathing",
            "body awareness",
            "evening wind-down routines",
            "pilates",
            "gratitude journaling",
            "wellbeing",
            "restorative yoga",
            "mobility",
            "quiet mornings",
        ],
        title_adjectives: &[
            "Quiet", "Gentle", "Mindful", "Calm", "Balanced", "Healing", "Daily", "Still",
            "Bright", "Peaceful",
        ],
        title_nouns: &[
            "Breath",
            "Body",
            "Mind",
            "Balance",
            "Practice",
            "Calm",
            "Flow",
            "Stillness",
            "Morning",
            "Spirit",
        ],
        title_patterns: &[
            "The {A} {N}",
            "{A} {N}",
            "{N} and {M}",
            "Finding Your {N}",
            "The {N} Method",
        ],
        sentences: &[
            "A gentle guide to {0}, {1} and a calmer everyday life.",
            "Simple routines for {0} and {1} that fit into a busy morning.",
            "Find balance with chapters on {0}, {1} and {2}.",
            "The teacher shares {0} and {1} for a healthier body and mind.",
            "From {0} to {1}, each practice takes less than twenty minutes.",
            "Slow down and breathe: {0} and {1} made approachable for beginners.",
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

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
        let first: serde_json::Value =
            serde_json::from_str(catalog.lines().next().unwrap()).unwrap();
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
}
