//! A shard of a partitioned hybrid index (docs/scale-out.md): the item-side
//! half of every trained source over the shard's own items. The front tier
//! (`vecrec route --front`) computes the user-side half once per request
//! ([`Engine::user_input`]) and asks every shard for its lists
//! ([`Engine::shard_lists`]); a shard scores each of its items exactly as
//! one node scores it, so the merged lists are one node's.

use vecrec_index::format::ListTable;
use vecrec_index::Index;

use super::sources::{each_source, ItemTables, Source};
use super::{admitted_rows, Engine, RecommendOptions, Scored, UserRef};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::fusion::{FusionMethod, SourceList};
use crate::layout::{
    SlicedMeta, ALS_DIR, EASE_ROWS, FRONT_ROWS_FILE, SEQUENCE_DIR, SLICED_FILE, TRANSITIONS_ROWS,
};
use crate::retrieve::sparse::SparseRows;
use crate::users::UserProfiles;

/// A shard's slice of the trained sources: EASE and transitions with a row
/// for every item of the catalogue and a column for each own item, the
/// learned item tables' rows of its own items, its items' popularity.
#[derive(Debug)]
pub(super) struct Sliced {
    ease: SparseRows,
    transitions: SparseRows,
    popularity: Vec<f32>,
    als: Index,
    two_tower: Option<Index>,
    sequence: Option<Index>,
    /// Each own item's number in the front generation, increasing.
    front_rows: ListTable,
    meta: SlicedMeta,
}

impl Sliced {
    /// Opens the slice in generation `index`; `None` when it holds none.
    pub(super) fn open(index: &Index, users: &UserProfiles) -> Result<Option<Self>> {
        let dir = index.dir();
        if !dir.join(SLICED_FILE).is_file() {
            return Ok(None);
        }
        let meta: SlicedMeta = vecrec_index::format::read_json(&dir.join(SLICED_FILE))?;
        let n = index.store().len();
        let sub = |name: &str| -> Result<Option<Index>> {
            let p = dir.join(name);
            if !p.is_dir() {
                return Ok(None);
            }
            let sub = Index::open_rows(&p)?;
            if sub.store().len() != n {
                return Err(Error::Config(format!(
                    "{}: {} rows for a shard of {n} items",
                    p.display(),
                    sub.store().len()
                )));
            }
            Ok(Some(sub))
        };
        let front_rows =
            ListTable::open(&dir.join(FRONT_ROWS_FILE), true, meta.front_items as u32)?;
        {
            let ok = front_rows.len() == 1 && {
                let rows = front_rows.get(0);
                rows.len() == n && rows.windows(2).all(|w| w[0] < w[1])
            };
            if !ok {
                return Err(Error::Config(format!(
                    "{}: the front numbers of a shard of {n} items must be {n} increasing numbers",
                    dir.join(FRONT_ROWS_FILE).display()
                )));
            }
        }
        let als = sub(ALS_DIR)?.ok_or_else(|| {
            Error::Config(format!(
                "{}: a sliced shard without ALS rows",
                dir.display()
            ))
        })?;
        // A user's history in the shard holds its own items only, so the
        // counts (`popularity`) are the catalogue's counts of those items.
        let sliced = Self {
            ease: SparseRows::open_shape(dir, EASE_ROWS, meta.front_items, n)?,
            transitions: SparseRows::open_shape(dir, TRANSITIONS_ROWS, meta.front_items, n)?,
            popularity: users.popularity(n),
            als,
            two_tower: sub(crate::layout::TWO_TOWER_DIR)?,
            sequence: sub(SEQUENCE_DIR)?,
            front_rows,
            meta,
        };
        sliced.tables().prepare_scans();
        Ok(Some(sliced))
    }

    fn tables(&self) -> ItemTables<'_> {
        ItemTables {
            ease: &self.ease,
            transitions: &self.transitions,
            popularity: &self.popularity,
            als: &self.als,
            two_tower: self.two_tower.as_ref(),
            sequence: self.sequence.as_ref(),
        }
    }

    /// The width source `s`'s input must have (`None`: any, unread).
    fn input_width(&self, s: Source, content: usize) -> Option<usize> {
        match s {
            Source::Ease | Source::Transitions | Source::Popularity => None,
            Source::Content => Some(content),
            Source::Als => Some(self.als.store().dim()),
            Source::TwoTower => self.two_tower.as_ref().map(|i| i.store().dim()),
            Source::Sequence => self.sequence.as_ref().map(|i| i.store().dim()),
        }
    }
}

/// One source's best items of a shard: (the front's item number, score),
/// best first.
pub type ShardList = (Source, Vec<(u32, f32)>);

/// What the front tier sends a shard for one Recommend call.
#[derive(Clone, Debug, Default)]
pub struct ShardQuery {
    /// The history as the front generation numbers the catalogue's items,
    /// oldest first.
    pub history: Vec<u32>,
    /// Each source wanted, with its user-side input ([`Engine::user_input`]).
    pub inputs: Vec<(Source, Vec<f32>)>,
    /// Items kept out of every list (seen items), as the front numbers them.
    pub exclude: Vec<u32>,
    /// Attribute filter.
    pub filter: Option<Filter>,
    /// The front generation the history is numbered by (its directory
    /// name), for messages.
    pub front_generation: String,
    /// The digest of that front's numbering ([`crate::layout::ids_digest`]);
    /// empty: not checked.
    pub front_ids: String,
    /// The router's `hybrid.candidates` (0: the shard's own), so the lists
    /// depend on the router's settings only.
    pub candidates: usize,
    /// The router's `hybrid.ease_decay` (0: the shard's own).
    pub ease_decay: f32,
    /// The router's `hybrid.transitions_decay` (0: the shard's own).
    pub transitions_decay: f32,
}

/// What a shard asked for the lists of a front it was not sliced from
/// answers, first: the router then serves the call from its previous front
/// (a rebuild that the router and the shards swap in at different times).
pub const OTHER_FRONT: &str = "this shard was sliced from another front generation";

impl Engine {
    /// Whether this generation is a shard sliced from the front whose
    /// numbering has the digest `front_ids` (empty: any).
    pub fn slices_front(&self, front_ids: &str) -> bool {
        front_ids.is_empty()
            || self
                .sliced
                .as_ref()
                .is_some_and(|s| s.meta.front_ids == front_ids)
    }

    /// A shard's lists for the front tier: for each source of `q`, its
    /// `hybrid.candidates` best own items (as the front numbers them, with
    /// the score one node gives them) among those not excluded, deleted or
    /// filtered out.
    pub fn shard_lists(&self, q: &ShardQuery) -> Result<Vec<ShardList>> {
        let sliced = self.sliced.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this generation is not a shard of a partitioned hybrid build \
                 (vecrec-build --shards N without --content-only)"
                    .into(),
            )
        })?;
        if !self.slices_front(&q.front_ids) {
            return Err(Error::FailedPrecondition(format!(
                "{OTHER_FRONT} ({}); the router serves {}, which numbers the items otherwise: \
                 point the router and every shard at the same build",
                sliced.meta.front_generation, q.front_generation
            )));
        }
        if let Some(bad) = q
            .history
            .iter()
            .find(|&&h| h as usize >= sliced.meta.front_items)
        {
            return Err(Error::invalid(format!(
                "history item number {bad} is out of range: the front generation {} has {} items",
                sliced.meta.front_generation, sliced.meta.front_items
            )));
        }
        let dim = self.index.store().dim();
        for (s, v) in &q.inputs {
            if let Some(w) = sliced.input_width(*s, dim).filter(|&w| w != v.len()) {
                return Err(Error::invalid(format!(
                    "the {} source takes a {w}-wide vector, not {}",
                    s.name(),
                    v.len()
                )));
            }
        }
        let store = self.index.store();
        let front_rows = sliced.front_rows.get(0);
        // Own items' numbers are increasing: a seen item is found by halving.
        // The sources search among the rows left in this set: one bit a row.
        let masked: Vec<u32> = match self.view().filter(|v| !v.is_empty()) {
            Some(v) => v.masked(store),
            None => Vec::new(),
        };
        let seen = q
            .exclude
            .iter()
            .filter_map(|f| front_rows.binary_search(f).ok().map(|l| l as u32));
        let admitted = admitted_rows(store, seen.chain(masked), q.filter.as_ref());
        let tables = sliced.tables();
        let engine = self.with_config(|c| {
            if q.candidates > 0 {
                c.hybrid.candidates = q.candidates;
            }
            if q.ease_decay > 0.0 {
                c.hybrid.ease_decay = q.ease_decay;
            }
            if q.transitions_decay > 0.0 {
                c.hybrid.transitions_decay = q.transitions_decay;
            }
        });
        let one = |(s, input): &(Source, Vec<f32>)| -> Result<ShardList> {
            let list = engine.item_list(&tables, *s, &q.history, input, &admitted)?;
            Ok((
                *s,
                list.into_iter()
                    .filter_map(|(i, score)| front_rows.get(i as usize).map(|&f| (f, score)))
                    .collect(),
            ))
        };
        each_source(&q.inputs, one)
    }
}

/// The front tier's half of a Recommend call over a partitioned hybrid
/// build: the user's side, computed once, and what every shard is sent.
#[derive(Clone, Debug)]
pub struct FrontQuery {
    /// The history, as the front numbers items, with weights, oldest first.
    pub history: Vec<(u32, f32)>,
    /// The sources fused, in fusion order.
    pub sources: Vec<Source>,
    /// What every shard is sent: the sources with something to search with.
    pub shard: ShardQuery,
    /// The fusion method.
    pub method: FusionMethod,
    /// Items wanted.
    pub k: usize,
}

impl Engine {
    /// The front tier's side of a Recommend call, on the front generation of
    /// a partitioned hybrid build: the user's history (a stored user, or an
    /// explicit history of the catalogue's items), each fused source's
    /// user-side input ([`Engine::user_input`]) and the seen items to keep
    /// out.
    ///
    /// `recorded` holds a stored user's events since the build (item id and
    /// weight, oldest first), which the shard that keeps them answers
    /// (`UserEvents`); as on one node they extend the stored history, make
    /// a user of an id the build never saw, and stop the stored user-side
    /// vectors from being used. Items the front does not number (upserted to
    /// a shard since the build) cannot shape the answer and are left out of
    /// the history; they are never in it anyway (see `SourceItems`).
    ///
    /// An explicit history's ids that `new` holds (upserted to their shard
    /// since the build, as its `ItemStates` said) are left out in the same
    /// way, where one the front does not number otherwise is `NOT_FOUND`.
    pub fn front_query(
        &self,
        who: UserRef<'_>,
        recorded: &[(String, f32)],
        new: &std::collections::HashSet<String>,
        opts: &RecommendOptions,
    ) -> Result<FrontQuery> {
        if !self.is_hybrid() {
            return Err(Error::FailedPrecondition(
                "the front generation has no trained sources: build with vecrec-build --shards N \
                 without --content-only"
                    .into(),
            ));
        }
        // What the background check of a front opened lazily has found.
        self.check_damage()?;
        let k = self.check_k(opts.k)?;
        let (history, user) = match who {
            UserRef::Id(id) => {
                let store = self.index.store();
                let events = recorded
                    .iter()
                    .filter_map(|(item, w)| store.internal_id(item).map(|i| (i, *w)));
                match self.users.lookup(id) {
                    None if recorded.is_empty() => {
                        return Err(Error::NotFound {
                            kind: "user",
                            id: id.to_owned(),
                        })
                    }
                    None => (events.collect(), None),
                    // New events: the stored vectors no longer describe the user.
                    Some(u) if !recorded.is_empty() => {
                        let mut h = self.users.history(u);
                        h.extend(events);
                        (h, None)
                    }
                    Some(u) => (self.users.history(u), Some(u)),
                }
            }
            UserRef::History(items) => {
                self.check_history(items)?;
                let store = self.index.store();
                let mut h = Vec::with_capacity(items.len());
                for id in items {
                    match store.internal_id(id) {
                        Some(i) => h.push((i, 1.0)),
                        None if new.contains(id) => {}
                        None => {
                            return Err(Error::NotFound {
                                kind: "item",
                                id: id.clone(),
                            })
                        }
                    }
                }
                (h, None)
            }
        };
        let method = opts.fusion.unwrap_or(self.cfg.hybrid.fusion);
        let sources = self.wanted_sources(method);
        let mut inputs = Vec::new();
        for &s in &sources {
            if let Some(v) = self.user_input(s, &history, user)? {
                inputs.push((s, v));
            }
        }
        let exclude = if opts.include_seen {
            Vec::new()
        } else {
            let mut seen: Vec<u32> = history.iter().map(|h| h.0).collect();
            seen.sort_unstable();
            seen.dedup();
            seen
        };
        Ok(FrontQuery {
            shard: ShardQuery {
                history: history.iter().map(|h| h.0).collect(),
                inputs,
                exclude,
                filter: opts.filter.clone(),
                front_generation: crate::layout::generation_name(self.index.dir()),
                front_ids: self.ids_digest()?,
                candidates: self.cfg.hybrid.candidates,
                ease_decay: self.cfg.hybrid.ease_decay,
                transitions_decay: self.cfg.hybrid.transitions_decay,
            },
            history,
            sources,
            method,
            k,
        })
    }

    /// The answer to `q` from the shards' lists: `lists[s]` holds every
    /// shard's items of source `q.sources[s]` (any order, as the front
    /// numbers them; numbers it does not have are dropped). Each source's
    /// lists are merged into its `hybrid.candidates` best (ties by the
    /// item's number, as one node breaks them), then reranked and fused as
    /// one node does.
    pub fn front_answer(
        &self,
        q: &FrontQuery,
        lists: Vec<Vec<(u32, f32)>>,
        deadline: Deadline,
    ) -> Result<Vec<Scored>> {
        self.check_damage()?;
        let store = self.index.store();
        let n = self.cfg.hybrid.candidates;
        let mut lists: Vec<SourceList> = q
            .sources
            .iter()
            .zip(lists)
            .map(|(&s, items)| {
                let mut items: Vec<(u32, f32)> = items
                    .into_iter()
                    .filter(|e| (e.0 as usize) < store.len())
                    .collect();
                items.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                items.dedup_by_key(|e| e.0);
                items.truncate(n);
                SourceList {
                    name: s.name(),
                    weight: self.weight(s),
                    items,
                }
            })
            .collect();
        self.push_reranked(&q.history, &mut lists, q.method, deadline)?;
        let fused = self.fuse_lists(&lists, q.method, deadline)?;
        Ok(fused
            .into_iter()
            .take(q.k)
            .map(|(i, score)| Scored {
                internal: i,
                id: store.external_id(i).to_owned(),
                score,
            })
            .collect())
    }
}
