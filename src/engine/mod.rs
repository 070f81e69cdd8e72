//! The engine: one opened index generation, its user profiles and the encoder,
//! answering the queries the gRPC service and the evaluation both run.

use std::path::Path;
use std::sync::Arc;

use vecrec_index::{Index, RowSet};

use crate::config::Config;
use crate::deadline::Deadline;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::fusion::{fuse, FusionMethod, SourceList};
use crate::ids::IdSet;
use crate::layout::GenerationInfo;
use crate::live::Live;
use crate::rerank::{RerankInput, Reranker};
use crate::users::{profile, UserProfiles};

mod search;
mod shard;
mod sources;
#[cfg(test)]
mod tests;
mod writes;

use shard::Sliced;
pub use shard::{FrontQuery, ShardQuery, OTHER_FRONT};
pub(crate) use sources::open_cross_encoder;
pub use sources::Source;
use sources::{timed, Trained};
pub use writes::ItemState;

/// One ranked item.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// Internal id.
    pub internal: u32,
    /// External id.
    pub id: String,
    /// Similarity, larger is better (cosine for the content pipeline).
    pub score: f32,
}

/// Whom to recommend for.
#[derive(Clone, Copy, Debug)]
pub enum UserRef<'a> {
    /// A user known to the index.
    Id(&'a str),
    /// An explicit history of item ids, oldest first.
    History(&'a [String]),
}

/// Options of a recommendation.
#[derive(Clone, Debug, Default)]
pub struct RecommendOptions {
    /// Fusion method for this request; `None` takes the config's.
    pub fusion: Option<FusionMethod>,
    /// Number of items.
    pub k: usize,
    /// Keep items of the history in the answer.
    pub include_seen: bool,
    /// Attribute filter.
    pub filter: Option<Filter>,
    /// When the answer stops being wanted: checked between stages.
    pub deadline: Deadline,
}

/// The user-profile settings the generation's profiles were precomputed with.
fn built_users(index: &Index) -> Option<crate::config::UserConfig> {
    GenerationInfo::of(index.manifest()).users
}

/// The rows a hybrid call's sources may answer: every row of `store` but
/// `excluded`, and of those, the ones passing `filter` (tested once a row
/// left, an empty filter passing all).
fn admitted_rows(
    store: &vecrec_index::VectorStore,
    excluded: impl IntoIterator<Item = u32>,
    filter: Option<&Filter>,
) -> RowSet {
    let mut set = RowSet::full(store.len());
    excluded.into_iter().for_each(|i| set.remove(i));
    if let Some(f) = filter.filter(|f| !f.is_empty()) {
        set.retain(|i| f.matches(&store.attributes(i)));
    }
    set
}

/// Whether item `i` may be answered: not `excluded`, and passing the filter if any.
fn admissible(
    store: &vecrec_index::VectorStore,
    excluded: bool,
    filter: Option<&Filter>,
    i: u32,
) -> bool {
    !excluded && filter.is_none_or(|f| f.matches(&store.attributes(i)))
}

/// How much of a generation an engine opens, and checks, before it serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Opening {
    /// Everything, every file read whole and checked first (one node, a
    /// shard). The learned sources' item tables, read by row number only,
    /// keep no id or attribute tables ([`Index::open_rows`]).
    #[default]
    Whole,
    /// The front generation of a partitioned build, on the router
    /// (`vecrec route --front`), which reads items' rows only for a call's
    /// history and candidates: the users and the models are read and
    /// checked now; the item tables (content vectors, ALS, two-tower and
    /// sequence tables) are mapped with their headers and sizes checked
    /// ([`Index::open_unverified`]) and read whole by one background thread
    /// started once the engine opened ([`Engine::wait_verified`]), whose
    /// damage found fails every later call; the EASE and transitions rows,
    /// scored on the shards only, are not opened. The open then no longer
    /// reads the whole catalogue.
    Front,
}

impl Opening {
    /// Opens the learned item table (ALS, two-tower, sequence) in `dir`.
    fn item_table(self, dir: &Path) -> Result<Index> {
        Ok(match self {
            Opening::Whole => Index::open_rows(dir)?,
            // Checked in the background once the whole engine opened.
            Opening::Front => Index::open_unverified(dir)?,
        })
    }
}

/// Name of the reranker's list in the fusion and in the learned model's features.
pub const RERANKER: &str = "reranker";

/// The engine over one generation. Cloning is cheap (the generation's
/// index, profiles and trained sources are shared), so a variant with other
/// pipeline settings ([`Engine::with_config`]) costs a copy of the config.
#[derive(Clone, Debug)]
pub struct Engine {
    index: Arc<Index>,
    users: Arc<UserProfiles>,
    encoder: Option<Arc<Encoder>>,
    cfg: Config,
    use_precomputed: bool,
    trained: Option<Arc<Trained>>,
    live: Option<Arc<Live>>,
    applied_seq: u64,
    arm_reranker: Option<Arc<Reranker>>,
    /// A shard's slice of the trained sources, on a shard of a partitioned
    /// hybrid build.
    sliced: Option<Arc<Sliced>>,
    /// The digest of the generation's numbering, once asked for.
    ids_digest: Arc<std::sync::OnceLock<String>>,
    /// How the generation was opened.
    opening: Opening,
    /// The thread checking an [`Opening::Front`] open's item tables.
    checks: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// The `internal` id of an item upserted since the generation was built (it
/// has no place in the generation's store).
pub const LIVE_ITEM: u32 = u32::MAX;

impl Engine {
    /// Opens the live generation under `root`.
    pub fn open(root: &Path, cfg: Config, encoder: Option<Arc<Encoder>>) -> Result<Self> {
        Self::with_index(Index::open_current(root)?, cfg, encoder, Opening::Whole)
    }

    /// Opens the live generation under `root` as `opening` says
    /// ([`Opening::Front`]: a router's front, which gets no encoder).
    pub fn open_as(
        root: &Path,
        cfg: Config,
        encoder: Option<Arc<Encoder>>,
        opening: Opening,
    ) -> Result<Self> {
        match opening {
            Opening::Whole => Self::open(root, cfg, encoder),
            Opening::Front => {
                let dir = vecrec_index::generation::current_generation(root)?;
                let index = Index::open_unverified(&dir)?;
                // Ids are looked up from the first call on.
                index.store().prepare_ids();
                Self::with_index(index, cfg, None, Opening::Front)
            }
        }
    }

    /// How this engine's generation was opened.
    pub fn opening(&self) -> Opening {
        self.opening
    }

    /// Waits for the background checks an [`Opening::Front`] open left
    /// running (none after [`Opening::Whole`]) and returns what they found.
    pub fn wait_verified(&self) -> Result<()> {
        if let Some(h) = self.checks.lock().take() {
            if h.join().is_err() {
                return Err(Error::Config("the front's check stopped on a panic".into()));
            }
        }
        // Every check is waited for, and the first damage returned.
        let found = [
            self.index.wait_verified().map_err(Error::from),
            self.trained.as_ref().map_or(Ok(()), |t| t.wait_verified()),
        ];
        found.into_iter().collect()
    }

    /// Whether the background checks of an [`Opening::Front`] open have
    /// ended (true after [`Opening::Whole`]); [`Engine::wait_verified`]
    /// then returns at once.
    pub fn verification_done(&self) -> bool {
        self.checks.lock().as_ref().is_none_or(|h| h.is_finished())
    }

    /// The damage the background checks of an [`Opening::Front`] open have
    /// found so far, as the error every call then returns.
    pub fn check_damage(&self) -> Result<()> {
        self.index.check_damage()?;
        match &self.trained {
            Some(t) => t.check_damage(),
            None => Ok(()),
        }
    }

    /// Opens the generation directory `dir`, live or not (the build fits
    /// fusion on the generation it is writing).
    pub fn open_generation(dir: &Path, cfg: Config, encoder: Option<Arc<Encoder>>) -> Result<Self> {
        Self::with_index(Index::open(dir)?, cfg, encoder, Opening::Whole)
    }

    fn with_index(
        index: Index,
        cfg: Config,
        encoder: Option<Arc<Encoder>>,
        opening: Opening,
    ) -> Result<Self> {
        let store = index.store();
        let users = UserProfiles::open(index.dir(), store.len(), store.dim())?;
        if let Some(enc) = &encoder {
            if enc.dim() != store.dim() {
                return Err(Error::Config(format!(
                    "the encoder makes {}-dimensional vectors but the index holds {}-dimensional ones; rebuild the index with this model",
                    enc.dim(),
                    store.dim()
                )));
            }
        }
        let use_precomputed = built_users(&index).as_ref() == Some(&cfg.users);
        if !use_precomputed {
            tracing::info!(
                "user settings differ from the build's; user vectors are computed per request"
            );
        }
        let trained = Trained::open(&index, &users, &cfg, opening)?;
        let sliced = Sliced::open(&index, &users)?;
        tracing::info!(
            hybrid = trained.is_some(),
            generation = %index.dir().display(),
            items = store.len(),
            users = users.len(),
            dim = store.dim(),
            "index opened"
        );
        let applied_seq = GenerationInfo::of(index.manifest()).wal_seq;
        let index = Arc::new(index);
        let trained = trained.map(Arc::new);
        // Opened whole: the check starts now, so an open that failed part
        // way leaves none running. One thread checks the tables one after
        // another, so one table's transient id table is held at a time.
        let checks = match opening {
            Opening::Whole => None,
            Opening::Front => {
                let (index, trained) = (index.clone(), trained.clone());
                let handle = std::thread::Builder::new()
                    .name("vecrec-verify".into())
                    .spawn(move || {
                        // Each index keeps what it found; read by check_damage.
                        let _ = index.wait_verified();
                        if let Some(t) = trained {
                            let _ = t.wait_verified();
                        }
                    })
                    .map_err(|e| Error::Config(format!("starting the front's check: {e}")))?;
                Some(handle)
            }
        };
        Ok(Self {
            index,
            users: Arc::new(users),
            encoder,
            cfg,
            use_precomputed,
            trained,
            live: None,
            applied_seq,
            arm_reranker: None,
            sliced: sliced.map(Arc::new),
            ids_digest: Arc::default(),
            opening,
            checks: Arc::new(parking_lot::Mutex::new(checks)),
        })
    }

    /// The last write-ahead-log record folded into this generation (0 for a bulk build).
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// The opened index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The user profiles.
    pub fn users(&self) -> &UserProfiles {
        &self.users
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The shared encoder, if any (a reopened generation reuses it).
    pub fn encoder_arc(&self) -> Option<Arc<Encoder>> {
        self.encoder.clone()
    }

    /// The encoder, or an error if this engine was opened without one.
    pub fn encoder(&self) -> Result<&Encoder> {
        self.encoder
            .as_deref()
            .ok_or_else(|| Error::Config("this engine was opened without an encoder".into()))
    }

    fn check_k(&self, k: usize) -> Result<usize> {
        let k = if k == 0 { 10 } else { k };
        if k > self.cfg.limits.max_k {
            return Err(Error::invalid(format!(
                "k = {k} is over the limit of {}",
                self.cfg.limits.max_k
            )));
        }
        Ok(k)
    }

    /// Checks a text against the length limit.
    pub fn check_text(&self, what: &str, text: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(Error::invalid(format!("{what} must not be empty")));
        }
        if text.len() > self.cfg.limits.max_text_bytes {
            return Err(Error::invalid(format!(
                "{what} is {} bytes, over the limit of {}",
                text.len(),
                self.cfg.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// An explicit history must name at least one item and at most
    /// `limits.max_history`.
    fn check_history(&self, items: &[String]) -> Result<()> {
        if items.is_empty() {
            return Err(Error::invalid("give a user_id or a non-empty history"));
        }
        if items.len() > self.cfg.limits.max_history {
            return Err(Error::invalid(format!(
                "history has {} items, over the limit of {}",
                items.len(),
                self.cfg.limits.max_history
            )));
        }
        Ok(())
    }

    /// The digest of the generation's item numbering
    /// ([`crate::layout::ids_digest`]), read once.
    pub fn ids_digest(&self) -> Result<String> {
        if let Some(d) = self.ids_digest.get() {
            return Ok(d.clone());
        }
        let d = crate::layout::ids_digest(self.index.dir())?;
        Ok(self.ids_digest.get_or_init(|| d).clone())
    }

    /// Whether this generation is a shard of a partitioned hybrid build
    /// (it holds a slice of the front's trained sources).
    pub fn is_sliced_shard(&self) -> bool {
        self.sliced.is_some()
    }

    /// Whether the generation holds trained sources.
    pub fn is_hybrid_capable(&self) -> bool {
        self.trained.is_some()
    }

    /// Whether the generation holds a learned fusion model.
    pub fn has_learned_fusion(&self) -> bool {
        self.trained.as_ref().is_some_and(|t| t.learned.is_some())
    }

    /// Whether `Recommend` runs the multi-source pipeline.
    pub fn is_hybrid(&self) -> bool {
        self.cfg.hybrid.enabled && self.trained.is_some()
    }

    /// This engine with the settings `change` makes to its config: the same
    /// generation, encoder and live log, shared, not copied. The per-request
    /// variants of an experiment's arms are made this way. Settings read only
    /// at open (the encoder, the cross-encoder's files, limits) keep their
    /// opened values; `rerank.kind` picks among the rerankers opened (an
    /// arm's own cross-encoder comes through [`Engine::with_reranker`]).
    pub fn with_config(&self, change: impl FnOnce(&mut Config)) -> Engine {
        let mut e = self.clone();
        e.configure(change);
        e
    }

    /// Changes this engine's settings in place, with the same limits as
    /// [`Engine::with_config`] (validation sweeps use this); precomputed
    /// user profiles stay in use only while the user settings equal the
    /// build's.
    pub fn configure(&mut self, change: impl FnOnce(&mut Config)) {
        change(&mut self.cfg);
        self.use_precomputed = built_users(&self.index).as_ref() == Some(&self.cfg.users);
    }

    fn learned_model(&self) -> Result<&crate::fusion::LearnedModel> {
        self.trained
            .as_ref()
            .and_then(|t| t.learned.as_ref())
            .ok_or_else(|| {
                Error::invalid(
                    "this index has no learned fusion model; rebuild it with vecrec-build",
                )
            })
    }

    /// The reranker in force: an experiment arm's own ([`Engine::with_reranker`]),
    /// else the one `rerank.kind` names, if the generation or the config has it.
    pub fn reranker(&self) -> Option<&Reranker> {
        if let Some(r) = &self.arm_reranker {
            return Some(r);
        }
        let t = self.trained.as_ref()?;
        match self.cfg.rerank.kind {
            crate::config::RerankKind::Din => t.din.as_deref(),
            crate::config::RerankKind::CrossEncoder => t.cross_encoder.as_deref(),
        }
    }

    /// This engine reranking with `reranker` (an experiment arm's model,
    /// loaded with the experiments) instead of the configured one.
    pub fn with_reranker(mut self, reranker: Arc<Reranker>) -> Engine {
        self.arm_reranker = Some(reranker);
        self
    }

    /// Whether the reranker runs for a request fused with `method`.
    fn reranks(&self, method: FusionMethod) -> bool {
        self.reranker().is_some()
            && if method == FusionMethod::Learned {
                // Without a model yet (the build fitting one), rerank so the
                // reranker's score can become a feature.
                self.trained
                    .as_ref()
                    .and_then(|t| t.learned.as_ref())
                    .is_none_or(|m| m.sources.iter().any(|s| s == RERANKER))
            } else {
                self.cfg.rerank.weight > 0.0
            }
    }

    /// Every ranked list the final fusion of `method` sees: each source's
    /// candidates, then, when the reranker runs, its scores for the head of
    /// the sources fused without it (`rerank.candidates` items; the learned
    /// method pre-ranks with geometric fusion) as a list named [`RERANKER`].
    pub fn candidate_lists(
        &self,
        history: &[(u32, f32)],
        user: Option<u32>,
        admitted: &RowSet,
        method: FusionMethod,
    ) -> Result<Vec<SourceList>> {
        self.candidate_lists_within(history, user, admitted, method, Deadline::NONE)
    }

    /// [`Engine::candidate_lists`], checking `deadline` before each stage.
    fn candidate_lists_within(
        &self,
        history: &[(u32, f32)],
        user: Option<u32>,
        admitted: &RowSet,
        method: FusionMethod,
        deadline: Deadline,
    ) -> Result<Vec<SourceList>> {
        deadline.check("sources")?;
        let mut lists = self.source_lists(history, user, &self.wanted_sources(method), admitted)?;
        self.push_reranked(history, &mut lists, method, deadline)?;
        Ok(lists)
    }

    /// The sources a fusion by `method` reads: all for the learned model,
    /// those of weight above 0 otherwise, in [`Source::ALL`]'s order.
    pub fn wanted_sources(&self, method: FusionMethod) -> Vec<Source> {
        if method == FusionMethod::Learned {
            Source::ALL.to_vec()
        } else {
            Source::ALL
                .into_iter()
                .filter(|s| self.weight(*s) > 0.0)
                .collect()
        }
    }

    /// Adds the reranker's list of the head to the sources' `lists` when the
    /// reranker runs for `method` (see [`Engine::candidate_lists`]).
    pub fn push_reranked(
        &self,
        history: &[(u32, f32)],
        lists: &mut Vec<SourceList>,
        method: FusionMethod,
        deadline: Deadline,
    ) -> Result<()> {
        if self.reranks(method) {
            deadline.check("rerank")?;
            let reranked = timed("rerank", || self.rerank_head(history, lists, method))?;
            lists.push(reranked);
        }
        Ok(())
    }

    /// The final fusion of every list by `method`, best first.
    pub fn fuse_lists(
        &self,
        lists: &[SourceList],
        method: FusionMethod,
        deadline: Deadline,
    ) -> Result<Vec<(u32, f32)>> {
        deadline.check("fusion")?;
        timed("fusion", || {
            Ok(if method == FusionMethod::Learned {
                self.learned_model()?.fuse(lists)
            } else {
                fuse(method, lists, self.cfg.hybrid.rrf_k)
            })
        })
    }

    /// The rerank stage of `Recommend` over given source lists: the head
    /// (`rerank.candidates` items) of `lists` fused by `method` (the learned
    /// method pre-ranks with geometric fusion), scored by the reranker. The
    /// evaluator runs it on cached lists under trial weights.
    pub fn rerank_head(
        &self,
        history: &[(u32, f32)],
        lists: &[SourceList],
        method: FusionMethod,
    ) -> Result<SourceList> {
        let pre_method = if method == FusionMethod::Learned {
            FusionMethod::Geometric
        } else {
            method
        };
        let (head, fused): (Vec<u32>, Vec<f32>) = fuse(pre_method, lists, self.cfg.hybrid.rrf_k)
            .into_iter()
            .take(self.cfg.rerank.candidates)
            .unzip();
        self.rerank_with(history, &head, &fused, lists)
    }

    /// The reranker's scores of `candidates` as a ranked list, with nothing
    /// known of how they were chosen but their order (a head reranker sees
    /// no source scores).
    pub fn rerank_list(&self, history: &[(u32, f32)], candidates: &[u32]) -> Result<SourceList> {
        self.rerank_with(history, candidates, &[], &[])
    }

    /// The reranker's scores of the head `candidates` (with their `fused`
    /// scores, fused from `lists`) as a ranked list.
    fn rerank_with(
        &self,
        history: &[(u32, f32)],
        candidates: &[u32],
        fused: &[f32],
        lists: &[SourceList],
    ) -> Result<SourceList> {
        let trained = self.trained.as_ref();
        let reranker = self
            .reranker()
            .ok_or_else(|| Error::invalid("this index has no reranker"))?;
        let ids: Vec<u32> = history.iter().map(|h| h.0).collect();
        let empty: &[f32] = &[];
        let scores = reranker.score(&RerankInput {
            history: &ids,
            candidates,
            fused,
            lists,
            embeddings: trained
                .and_then(|t| t.two_tower.as_ref())
                .map_or(empty, |tt| tt.index.store().vectors()),
            popularity: trained.map_or(empty, |t| &t.popularity),
            store: self.index.store(),
        })?;
        // A reranker that reads text knows every item.
        let everything = !reranker.learned_from_interactions();
        let popularity = trained.map_or(empty, |t| &t.popularity);
        let items = rerank_known(candidates, scores, |i| {
            everything || popularity.get(i as usize).is_some_and(|&p| p > 0.0)
        });
        Ok(SourceList {
            name: RERANKER,
            weight: self.cfg.rerank.weight,
            items,
        })
    }

    /// The hybrid answer for a history before its cut to `k`: every
    /// candidate the sources propose among the items in `admitted`,
    /// reranked and fused by `method`, best first. `Recommend` is this, cut;
    /// the evaluator calls it to rank among a chosen set of items (the new
    /// items of the cold-start protocol).
    /// `deadline` is checked before each stage.
    pub fn fused_candidates(
        &self,
        history: &[(u32, f32)],
        user: Option<u32>,
        admitted: &RowSet,
        method: FusionMethod,
        deadline: Deadline,
    ) -> Result<Vec<(u32, f32)>> {
        let lists = self.candidate_lists_within(history, user, admitted, method, deadline)?;
        self.fuse_lists(&lists, method, deadline)
    }

    /// The mean vector of the live items named in `ids`, if any is there.
    fn live_profile(&self, ids: &[String]) -> Option<Vec<f32>> {
        let view = self.view()?;
        let mut v = vec![0f32; self.index.store().dim()];
        let mut n = 0usize;
        for item in ids.iter().filter_map(|id| view.item(id)) {
            v.iter_mut().zip(&item.vector).for_each(|(a, b)| *a += b);
            n += 1;
        }
        (n > 0).then(|| v.into_iter().map(|x| x / n as f32).collect())
    }

    /// The set of this generation's items that `accept` allows, as the
    /// hybrid sources take it ([`Engine::source_lists`]).
    pub fn admit(&self, accept: impl Fn(u32) -> bool) -> RowSet {
        RowSet::from_fn(self.index.store().len(), accept)
    }

    /// The set of every item of this generation but `excluded` (one
    /// removal each, not a test a row).
    pub fn admit_all_but(&self, excluded: impl IntoIterator<Item = u32>) -> RowSet {
        admitted_rows(self.index.store(), excluded, None)
    }

    /// Items for a user known by id or by an explicit history.
    pub fn recommend(&self, who: UserRef<'_>, opts: &RecommendOptions) -> Result<Vec<Scored>> {
        let k = self.check_k(opts.k)?;
        opts.deadline.check("recommend")?;
        let store = self.index.store();
        let view = self.view();
        // Live items named in a history have no place in the generation's
        // tables: they are kept out of the answer but cannot shape it.
        let mut live_seen: Vec<String> = Vec::new();
        let (history, precomputed, user_number) = match who {
            UserRef::Id(user) => {
                let known = self.users.lookup(user);
                let mut events: Vec<(u32, f32)> = Vec::new();
                if let Some(v) = &view {
                    for e in v.events(user) {
                        if v.is_deleted(&e.item) {
                            continue;
                        }
                        match store.internal_id(&e.item) {
                            Some(i) => events.push((i, e.weight)),
                            None => live_seen.push(e.item.clone()),
                        }
                    }
                }
                let recorded = !events.is_empty() || !live_seen.is_empty();
                match known {
                    None if !recorded => {
                        return Err(Error::NotFound {
                            kind: "user",
                            id: user.to_owned(),
                        })
                    }
                    None => (events, None, None),
                    // New events: the stored vectors no longer describe the user.
                    Some(u) if recorded => {
                        let mut h = self.users.history(u);
                        h.extend(events);
                        (h, None, None)
                    }
                    Some(u) => {
                        let pre = if self.use_precomputed {
                            self.users.vector(u)
                        } else {
                            None
                        };
                        (self.users.history(u), pre, Some(u))
                    }
                }
            }
            UserRef::History(items) => {
                self.check_history(items)?;
                let mut h = Vec::with_capacity(items.len());
                for id in items {
                    let deleted = view.as_ref().is_some_and(|v| v.is_deleted(id));
                    match store.internal_id(id).filter(|_| !deleted) {
                        Some(i) => h.push((i, 1.0)),
                        None if view.as_ref().is_some_and(|v| v.item(id).is_some()) => {
                            live_seen.push(id.clone())
                        }
                        None => {
                            return Err(Error::NotFound {
                                kind: "item",
                                id: id.clone(),
                            })
                        }
                    }
                }
                (h, None, None)
            }
        };
        let seen = history.iter().map(|h| h.0).filter(|_| !opts.include_seen);
        if opts.include_seen {
            live_seen.clear();
        }
        if self.is_hybrid() {
            // The content-only path below masks in `search`; here the sources
            // search among the rows left in a set made once a call, one bit
            // a row (word by word where no filter asks of each row).
            let masked: Vec<u32> = match view.as_ref().filter(|v| !v.is_empty()) {
                Some(v) => v.masked(store),
                None => Vec::new(),
            };
            // Release the delta before anything below reads it again: a
            // second read lock behind a waiting writer would deadlock (the
            // lock is fair).
            drop(view);
            let admitted = admitted_rows(store, seen.chain(masked), opts.filter.as_ref());
            let method = opts.fusion.unwrap_or(self.cfg.hybrid.fusion);
            let fused =
                self.fused_candidates(&history, user_number, &admitted, method, opts.deadline)?;
            return Ok(fused
                .into_iter()
                .take(k)
                .map(|(i, score)| Scored {
                    internal: i,
                    id: store.external_id(i).to_owned(),
                    score,
                })
                .collect());
        }
        drop(view);
        let exclude: IdSet = seen.collect();
        let vector = match precomputed {
            Some(v) => v.to_vec(),
            // A history of live items only (upserted since the generation
            // was built) is described by their vectors.
            None => profile(store, &history, &self.cfg.users)
                .or_else(|| self.live_profile(&live_seen))
                .ok_or_else(|| Error::invalid("the history carries no positive weight"))?,
        };
        opts.deadline.check("search")?;
        timed("search", || {
            self.search(&vector, k, &exclude, &live_seen, opts.filter.as_ref())
        })
    }
}

/// The reranker's list of `candidates` (best first as they came, with the
/// reranker's `scores`): the items `known` are reordered by score
/// (ties towards the lower id) among the places they hold, and any other
/// item keeps its place. Each place gets the score of its rank among all
/// the scores, so the list stays sorted; with every item known it is the
/// candidates sorted by score. A reranker that learned only from
/// interactions (the cross-attention reranker: its candidate rows and its
/// popularity feature come from them) knows only the items with an
/// interaction in the generation.
///
/// On the evaluation's new items (`vecrec-eval --validation-only`,
/// 2026-12-07) the reranker's own order scored NDCG@10 0.0914 on
/// validation, against 0.1449 for the fusion it reranks and 0.1275 for the
/// two-tower source alone: it had never seen a candidate without
/// interactions. Training it also on heads of items made new for the
/// purpose (a tenth of the held-out items losing their interactions in the
/// scratch sources) gave 0.1035 (one run), and the whole validation split
/// 0.1586 and 0.1550 (0.1563–0.1591 in six runs without), so it does not
/// reorder them instead.
fn rerank_known(
    candidates: &[u32],
    scores: Vec<f32>,
    known: impl Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    debug_assert_eq!(candidates.len(), scores.len());
    let mut ranked: Vec<(u32, f32)> = candidates
        .iter()
        .copied()
        .zip(scores.iter().copied())
        .filter(|&(i, _)| known(i))
        .collect();
    ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut by_rank = scores;
    by_rank.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut next = ranked.into_iter();
    candidates
        .iter()
        .zip(by_rank)
        .map(|(&i, score)| {
            let item = if known(i) {
                next.next().map_or(i, |e| e.0)
            } else {
                i
            };
            (item, score)
        })
        .collect()
}
