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

#[cfg(test)]
mod tests;
mod vocab;
mod write;

use vocab::{Category, CATEGORIES};
pub use write::write_sample;
