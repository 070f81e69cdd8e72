//! The engine: one opened index generation, its user profiles and the encoder,
//! answering the queries the gRPC service and the evaluation both run.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use vecrec_index::{Index, ItemMeta, SearchParams};

use crate::catalog::{CatalogItem, Interaction};
use crate::config::Config;
use crate::deadline::Deadline;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::fusion::{fuse, FusionMethod, SourceList};
use crate::live::Live;
use crate::rerank::{RerankInput, RerankKind, Reranker};
use crate::retrieve::sparse::SparseRows;
use crate::retrieve::{popularity, recency_weights, top_n};
use crate::runtime::{Device, Input, ModelSource, OnnxModel};
use crate::telemetry;
use crate::users::{profile, UserProfiles};

/// The candidate sources of the hybrid pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// EASE item-item weights.
    Ease,
    /// Time-ordered co-occurrence.
    Transitions,
    /// BERT-vector nearest neighbours of the user profile.
    Content,
    /// Interaction counts.
    Popularity,
    /// ALS factors, searched in their own HNSW index.
    Als,
    /// The two-tower user encoder's vector, searched among the item tower's
    /// embeddings in their own HNSW index.
    TwoTower,
}

impl Source {
    /// All sources.
    pub const ALL: [Source; 6] = [
        Source::Ease,
        Source::Transitions,
        Source::Content,
        Source::Popularity,
        Source::Als,
        Source::TwoTower,
    ];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Ease => "ease",
            Source::Transitions => "transitions",
            Source::Content => "content",
            Source::Popularity => "popularity",
            Source::Als => "als",
            Source::TwoTower => "two_tower",
        }
    }

    /// The stage name its latency is recorded under.
    fn stage(self) -> &'static str {
        match self {
            Source::Ease => "source_ease",
            Source::Transitions => "source_transitions",
            Source::Content => "source_content",
            Source::Popularity => "source_popularity",
            Source::Als => "source_als",
            Source::TwoTower => "source_two_tower",
        }
    }
}

/// Runs `f`, recording its latency under `stage`.
fn timed<T>(stage: &'static str, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    telemetry::stage(stage, start.elapsed().as_secs_f64());
    out
}

/// Trained interaction-based sources of a generation.
#[derive(Debug)]
struct Trained {
    ease: SparseRows,
    transitions: SparseRows,
    popularity: Vec<f32>,
    als: Index,
    /// User factors, users × factors.
    als_users: Vec<f32>,
    /// `YᵀY` of the item factors, for folding in new histories.
    als_gram: Vec<f64>,
    /// The learned fusion model, when the build fitted one.
    learned: Option<crate::fusion::LearnedModel>,
    /// The two-tower model, when the build trained one.
    two_tower: Option<TwoTowerServing>,
    /// The reranker in force, if any.
    reranker: Option<Reranker>,
}

/// The served two-tower model.
#[derive(Debug)]
struct TwoTowerServing {
    /// Item embeddings (inner product).
    index: Index,
    /// The user tower through ONNX Runtime.
    user: OnnxModel,
    meta: crate::layout::TwoTowerMeta,
    /// Item features, items × `meta.input`.
    features: Vec<f32>,
}

impl TwoTowerServing {
    fn open(
        dir: &Path,
        content: &vecrec_index::VectorStore,
        als: &Index,
        ort: &Path,
    ) -> Result<Option<Self>> {
        let sub = dir.join(crate::layout::TWO_TOWER_DIR);
        if !sub.is_dir() {
            return Ok(None);
        }
        let index = Index::open(&sub)?;
        let meta: crate::layout::TwoTowerMeta =
            vecrec_index::format::read_json(&dir.join(crate::layout::TWO_TOWER_META_FILE))?;
        let file = vecrec_index::format::CheckedFile::open(
            &dir.join(crate::layout::USER_TOWER_FILE),
            vecrec_index::format::Kind::MODEL,
            true,
        )?;
        let user = OnnxModel::load(
            ort,
            ModelSource::Bytes(crate::layout::USER_TOWER_FILE, file.payload()),
            2,
            1,
            Device::Cpu,
        )?;
        let features = crate::retrieve::two_tower::item_features(
            content.vectors(),
            content.dim(),
            als.store().vectors(),
            als.store().dim(),
        );
        if features.len() != content.len() * meta.input || index.store().len() != content.len() {
            return Err(Error::Config(format!(
                "{}: the two-tower model was trained for {}-wide item features of {} items; this generation has {} items",
                dir.display(),
                meta.input,
                index.store().len(),
                content.len()
            )));
        }
        Ok(Some(Self {
            index,
            user,
            meta,
            features,
        }))
    }

    /// The user tower's vector for a history (oldest first); `None` when empty.
    fn user_vector(&self, history: &[u32]) -> Result<Option<Vec<f32>>> {
        if history.is_empty() {
            return Ok(None);
        }
        let (start, w) =
            crate::retrieve::two_tower::pooling_weights(history.len(), &self.meta.options);
        let d = self.meta.input;
        let mut x = Vec::with_capacity(w.len() * d);
        for &i in &history[start..] {
            x.extend_from_slice(&self.features[i as usize * d..(i as usize + 1) * d]);
        }
        let (_, u) = self.user.run(vec![
            ("history", Input::F32(vec![1, w.len(), d], &x)),
            ("weights", Input::F32(vec![1, w.len()], &w)),
        ])?;
        Ok(Some(u))
    }
}

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
    let v = index.manifest().extra.get("users")?;
    serde_json::from_value(v.clone()).ok()
}

/// Whether item `i` may be answered: not excluded, and passing the filter if any.
fn admissible(
    store: &vecrec_index::VectorStore,
    exclude: &HashSet<u32>,
    filter: Option<&Filter>,
    i: u32,
) -> bool {
    !exclude.contains(&i) && filter.is_none_or(|f| f.matches(store.meta(i)))
}

/// Name of the reranker's list in the fusion and in the learned model's features.
pub const RERANKER: &str = "reranker";

/// The engine over one generation.
#[derive(Debug)]
pub struct Engine {
    index: Index,
    users: UserProfiles,
    encoder: Option<Arc<Encoder>>,
    cfg: Config,
    use_precomputed: bool,
    trained: Option<Trained>,
    live: Option<Arc<Live>>,
    applied_seq: u64,
}

/// The `internal` id of an item upserted since the generation was built (it
/// has no place in the generation's store).
pub const LIVE_ITEM: u32 = u32::MAX;

impl Engine {
    /// Opens the live generation under `root`.
    pub fn open(root: &Path, cfg: Config, encoder: Option<Arc<Encoder>>) -> Result<Self> {
        let index = Index::open_current(root)?;
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
        let trained = if SparseRows::exists(index.dir(), crate::layout::EASE_ROWS) {
            let n = store.len();
            let histories: Vec<Vec<u32>> = (0..users.len() as u32)
                .map(|u| users.history(u).iter().map(|h| h.0).collect())
                .collect();
            let als = Index::open(&index.dir().join(crate::layout::ALS_DIR))?;
            let f = als.store().dim();
            let uf = vecrec_index::format::CheckedFile::open(
                &index.dir().join(crate::layout::ALS_USERS_FILE),
                vecrec_index::format::Kind::VECTORS,
                true,
            )?;
            let als_users: Vec<f32> = uf.payload_as::<f32>()?.to_vec();
            if als.store().len() != n || als_users.len() != users.len() * f {
                return Err(vecrec_index::IndexError::Corrupt {
                    path: index.dir().to_owned(),
                    reason: format!("ALS factors for {} items and {} user values disagree with {n} items and {} users", als.store().len(), als_users.len(), users.len()),
                }
                .into());
            }
            let als_gram = crate::retrieve::als::gram(als.store().vectors(), f);
            let has_neural = index.dir().join(crate::layout::TWO_TOWER_DIR).is_dir();
            let wants_cross = cfg.rerank.kind == RerankKind::CrossEncoder;
            let ort = if has_neural || wants_cross {
                Some(crate::runtime::locate_ort(
                    cfg.encoder.ort_dylib.as_deref(),
                )?)
            } else {
                None
            };
            let two_tower = match &ort {
                Some(o) => TwoTowerServing::open(index.dir(), store, &als, o)?,
                None => None,
            };
            let reranker = match (cfg.rerank.kind, &ort) {
                (RerankKind::CrossEncoder, Some(o)) => {
                    let tok = crate::encoder::EncoderFiles::locate(&cfg.encoder)
                        .ok()
                        .map(|f| f.tokenizer);
                    Some(Reranker::open_cross_encoder(
                        &cfg.rerank,
                        tok.as_deref(),
                        o,
                        2,
                    )?)
                }
                (RerankKind::Din, Some(o))
                    if index.dir().join(crate::layout::DIN_FILE).is_file() =>
                {
                    Some(Reranker::open_din(index.dir(), o, 2, cfg.rerank.threads)?)
                }
                _ => None,
            };
            Some(Trained {
                ease: SparseRows::open(index.dir(), crate::layout::EASE_ROWS, n)?,
                transitions: SparseRows::open(index.dir(), crate::layout::TRANSITIONS_ROWS, n)?,
                popularity: popularity(&histories, n),
                als,
                als_users,
                als_gram,
                learned: {
                    let p = index.dir().join(crate::layout::FUSION_FILE);
                    if p.exists() {
                        Some(vecrec_index::format::read_json(&p)?)
                    } else {
                        None
                    }
                },
                two_tower,
                reranker,
            })
        } else {
            None
        };
        tracing::info!(
            hybrid = trained.is_some(),
            generation = %index.dir().display(),
            items = store.len(),
            users = users.len(),
            dim = store.dim(),
            "index opened"
        );
        let applied_seq = index
            .manifest()
            .extra
            .get("wal_seq")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        Ok(Self {
            index,
            users,
            encoder,
            cfg,
            use_precomputed,
            trained,
            live: None,
            applied_seq,
        })
    }

    /// The last write-ahead-log record folded into this generation (0 for a bulk build).
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// Serves the live updates of `live` on top of this generation.
    pub fn attach_live(&mut self, live: Arc<Live>) {
        self.live = Some(live);
    }

    /// The live-update log, when attached.
    pub fn live(&self) -> Option<&Arc<Live>> {
        self.live.as_ref()
    }

    fn view(&self) -> Option<crate::live::View<'_>> {
        self.live.as_ref().map(|l| l.view(self.applied_seq))
    }

    fn live_or_err(&self) -> Result<&Arc<Live>> {
        self.live.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "live updates are off on this server ([live] enabled = false)".into(),
            )
        })
    }

    /// Embeds and durably upserts items (new ids, or replacing existing ones);
    /// returns the last log record number. Visible to searches at once.
    pub fn upsert_items(&self, items: Vec<CatalogItem>) -> Result<u64> {
        let live = self.live_or_err()?;
        if items.is_empty() {
            return Err(Error::invalid("items must not be empty"));
        }
        if items.len() > self.cfg.limits.max_batch {
            return Err(Error::invalid(format!(
                "{} items, over the limit of {} per request",
                items.len(),
                self.cfg.limits.max_batch
            )));
        }
        let mut seen = HashSet::new();
        for (k, it) in items.iter().enumerate() {
            if it.id.trim().is_empty() {
                return Err(Error::invalid(format!("items[{k}].id must not be empty")));
            }
            if !seen.insert(it.id.as_str()) {
                return Err(Error::invalid(format!(
                    "items[{k}].id {:?} appears twice in the request",
                    it.id
                )));
            }
            self.check_text(&format!("items[{k}] title and text"), &it.embedding_text())?;
        }
        let texts: Vec<String> = items.iter().map(CatalogItem::embedding_text).collect();
        let vectors = self.encoder()?.encode(&texts)?;
        live.upsert(items.into_iter().zip(vectors).collect())
    }

    /// Durably deletes items; every id must exist. Returns the last log record number.
    pub fn delete_items(&self, ids: Vec<String>) -> Result<u64> {
        let live = self.live_or_err()?;
        if ids.is_empty() {
            return Err(Error::invalid("ids must not be empty"));
        }
        if ids.len() > self.cfg.limits.max_batch {
            return Err(Error::invalid(format!(
                "{} ids, over the limit of {} per request",
                ids.len(),
                self.cfg.limits.max_batch
            )));
        }
        for id in &ids {
            self.item_meta(id)?;
        }
        live.delete(ids)
    }

    /// Durably records user events; the users' next recommendations use them.
    pub fn record_events(&self, events: Vec<Interaction>) -> Result<u64> {
        let live = self.live_or_err()?;
        if events.is_empty() {
            return Err(Error::invalid("events must not be empty"));
        }
        if events.len() > self.cfg.limits.max_batch {
            return Err(Error::invalid(format!(
                "{} events, over the limit of {} per request",
                events.len(),
                self.cfg.limits.max_batch
            )));
        }
        for (k, e) in events.iter().enumerate() {
            if e.user.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "events[{k}].user_id must not be empty"
                )));
            }
            if !(e.weight >= 0.0 && e.weight.is_finite()) {
                return Err(Error::invalid(format!(
                    "events[{k}].weight must be a finite number ≥ 0, got {}",
                    e.weight
                )));
            }
            self.item_meta(&e.item)?;
        }
        live.record(events)
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

    /// Changes how user vectors are made; precomputed profiles are used only
    /// when the settings equal the build's.
    pub fn set_users(&mut self, users: crate::config::UserConfig) {
        self.use_precomputed = built_users(&self.index).as_ref() == Some(&users);
        self.cfg.users = users;
    }

    /// Switches between exact and graph search.
    pub fn set_exact(&mut self, exact: bool) {
        self.cfg.search.exact = exact;
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

    /// Internal id of an item of the generation, or `NotFound` (also for
    /// items deleted since).
    pub fn item(&self, id: &str) -> Result<u32> {
        let not_found = || Error::NotFound {
            kind: "item",
            id: id.to_owned(),
        };
        if self.view().is_some_and(|v| v.is_deleted(id)) {
            return Err(not_found());
        }
        self.index.store().internal_id(id).ok_or_else(not_found)
    }

    /// Attributes of an item, live updates included.
    pub fn item_meta(&self, id: &str) -> Result<ItemMeta> {
        if let Some(x) = self.view().as_ref().and_then(|v| v.item(id)) {
            return Ok(x.meta.clone());
        }
        Ok(self.index.store().meta(self.item(id)?).clone())
    }

    /// The vector of an item, live updates included.
    fn item_vector(&self, id: &str) -> Result<Vec<f32>> {
        if let Some(x) = self.view().as_ref().and_then(|v| v.item(id)) {
            return Ok(x.vector.clone());
        }
        Ok(self.index.store().vector(self.item(id)?).to_vec())
    }

    /// Nearest items to `query`: the graph (or exact) search over the
    /// generation, minus `exclude` and anything deleted or replaced since,
    /// merged with the items upserted since (except `exclude_ids`).
    fn search(
        &self,
        query: &[f32],
        k: usize,
        exclude: &HashSet<u32>,
        exclude_ids: &[String],
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>> {
        let store = self.index.store();
        let filter = filter.filter(|f| !f.is_empty());
        let view = self.view();
        let masked;
        let exclude = match &view {
            Some(v) if !v.is_empty() => {
                masked = exclude
                    .iter()
                    .copied()
                    .chain(v.masked(store))
                    .collect::<HashSet<u32>>();
                &masked
            }
            _ => exclude,
        };
        let accept = |i: u32| admissible(store, exclude, filter, i);
        let need_filter = !exclude.is_empty() || filter.is_some();
        let params = SearchParams {
            k,
            ef: self.cfg.search.ef.max(k),
            exact: self.cfg.search.exact,
        };
        let (found, _plan) = self.index.search(
            query,
            &params,
            if need_filter { Some(&accept) } else { None },
        )?;
        let metric = store.metric();
        let mut out: Vec<Scored> = found
            .into_iter()
            .map(|n| Scored {
                internal: n.id,
                id: store.external_id(n.id).to_owned(),
                score: metric.score(n.distance),
            })
            .collect();
        // Items upserted since the build: scored exactly beside the graph.
        if let Some(v) = view.filter(|v| !v.is_empty()) {
            let skip: HashSet<&str> = exclude_ids.iter().map(String::as_str).collect();
            out.extend(
                v.items()
                    .filter(|(id, x)| {
                        !skip.contains(id.as_str()) && filter.is_none_or(|f| f.matches(&x.meta))
                    })
                    .map(|(id, x)| Scored {
                        internal: LIVE_ITEM,
                        id: id.clone(),
                        score: metric.score(metric.distance(query, &x.vector)),
                    }),
            );
            out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            out.truncate(k);
        }
        Ok(out)
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

    /// Changes the hybrid pipeline's settings (validation sweeps use this).
    pub fn set_hybrid(&mut self, hybrid: crate::config::HybridConfig) {
        self.cfg.hybrid = hybrid;
    }

    fn weight(&self, s: Source) -> f32 {
        let h = &self.cfg.hybrid;
        match s {
            Source::Ease => h.ease_weight,
            Source::Transitions => h.transitions_weight,
            Source::Content => h.content_weight,
            Source::Popularity => h.popularity_weight,
            Source::Als => h.als_weight,
            Source::TwoTower => h.two_tower_weight,
        }
    }

    /// The candidates of each source in `which` for a history (internal ids with
    /// weights, oldest first), computed in parallel; `accept` filters items.
    /// `user` is the user's number when the history is the stored one, so
    /// precomputed vectors can be used.
    pub fn source_lists(
        &self,
        history: &[(u32, f32)],
        user: Option<u32>,
        which: &[Source],
        accept: &(dyn Fn(u32) -> bool + Sync),
    ) -> Result<Vec<SourceList>> {
        use rayon::prelude::*;
        let trained = self.trained.as_ref().ok_or_else(|| {
            Error::Config(
                "this generation has no trained sources; rebuild it with vecrec-build".into(),
            )
        })?;
        let h = &self.cfg.hybrid;
        let n = h.candidates;
        let ids: Vec<u32> = history.iter().map(|e| e.0).collect();
        let items = self.index.store().len();
        let dense = |rows: &SparseRows, decay: f32| {
            let mut acc = vec![0f32; items];
            for (i, w) in recency_weights(&ids, decay) {
                rows.axpy(i, w, &mut acc);
            }
            top_n(&acc, n, accept)
        };
        which
            .par_iter()
            .map(|&s| {
                let started = std::time::Instant::now();
                let list = match s {
                    Source::Ease => dense(&trained.ease, h.ease_decay),
                    Source::Transitions => dense(&trained.transitions, h.transitions_decay),
                    Source::Popularity => top_n(&trained.popularity, n, accept),
                    Source::Als => {
                        let f = trained.als.store().dim();
                        let x = match user {
                            Some(u) => {
                                trained.als_users[u as usize * f..(u as usize + 1) * f].to_vec()
                            }
                            None => {
                                let mut obs = ids.clone();
                                obs.sort_unstable();
                                obs.dedup();
                                let opts = crate::retrieve::als::AlsOptions {
                                    factors: f,
                                    ..self.cfg.train.als.clone()
                                };
                                crate::retrieve::als::solve_row(
                                    trained.als.store().vectors(),
                                    &trained.als_gram,
                                    &obs,
                                    &opts,
                                )
                            }
                        };
                        if x.iter().all(|v| *v == 0.0) {
                            Vec::new()
                        } else {
                            let params = SearchParams {
                                k: n,
                                ef: self.cfg.search.ef.max(n),
                                exact: self.cfg.search.exact,
                            };
                            let (found, _) = trained.als.search(&x, &params, Some(accept))?;
                            found.into_iter().map(|f| (f.id, -f.distance)).collect()
                        }
                    }
                    Source::TwoTower => match &trained.two_tower {
                        None => Vec::new(),
                        Some(tt) => match tt.user_vector(&ids)? {
                            None => Vec::new(),
                            Some(u) => {
                                let params = SearchParams {
                                    k: n,
                                    ef: self.cfg.search.ef.max(n),
                                    exact: self.cfg.search.exact,
                                };
                                let (found, _) = tt.index.search(&u, &params, Some(accept))?;
                                found.into_iter().map(|f| (f.id, -f.distance)).collect()
                            }
                        },
                    },
                    Source::Content => {
                        let pre = if self.use_precomputed {
                            user.and_then(|u| self.users.vector(u))
                        } else {
                            None
                        };
                        let v = match pre {
                            Some(v) => v.to_vec(),
                            None => match profile(self.index.store(), history, &self.cfg.users) {
                                Some(v) => v,
                                None => {
                                    return Ok(SourceList {
                                        name: s.name(),
                                        weight: self.weight(s),
                                        items: Vec::new(),
                                    })
                                }
                            },
                        };
                        let params = SearchParams {
                            k: n,
                            ef: self.cfg.search.ef.max(n),
                            exact: self.cfg.search.exact,
                        };
                        let (found, _) = self.index.search(&v, &params, Some(accept))?;
                        let metric = self.index.store().metric();
                        found
                            .into_iter()
                            .map(|f| (f.id, metric.score(f.distance)))
                            .collect()
                    }
                };
                telemetry::stage(s.stage(), started.elapsed().as_secs_f64());
                Ok(SourceList {
                    name: s.name(),
                    weight: self.weight(s),
                    items: list,
                })
            })
            .collect()
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

    /// The reranker in force, if the generation or the config has one.
    pub fn reranker(&self) -> Option<&Reranker> {
        self.trained.as_ref().and_then(|t| t.reranker.as_ref())
    }

    /// Changes the reranking settings other than the kind (validation sweeps use this).
    pub fn set_rerank_weight(&mut self, weight: f32) {
        self.cfg.rerank.weight = weight;
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
        accept: &(dyn Fn(u32) -> bool + Sync),
        method: FusionMethod,
    ) -> Result<Vec<SourceList>> {
        self.candidate_lists_within(history, user, accept, method, Deadline::NONE)
    }

    /// [`Engine::candidate_lists`], checking `deadline` before each stage.
    fn candidate_lists_within(
        &self,
        history: &[(u32, f32)],
        user: Option<u32>,
        accept: &(dyn Fn(u32) -> bool + Sync),
        method: FusionMethod,
        deadline: Deadline,
    ) -> Result<Vec<SourceList>> {
        deadline.check("sources")?;
        let which: Vec<Source> = if method == FusionMethod::Learned {
            Source::ALL.to_vec()
        } else {
            Source::ALL
                .into_iter()
                .filter(|s| self.weight(*s) > 0.0)
                .collect()
        };
        let mut lists = self.source_lists(history, user, &which, accept)?;
        if self.reranks(method) {
            deadline.check("rerank")?;
            let pre_method = if method == FusionMethod::Learned {
                FusionMethod::Geometric
            } else {
                method
            };
            let head: Vec<u32> = fuse(pre_method, &lists, self.cfg.hybrid.rrf_k)
                .into_iter()
                .take(self.cfg.rerank.candidates)
                .map(|e| e.0)
                .collect();
            lists.push(timed("rerank", || self.rerank_list(history, &head))?);
        }
        Ok(lists)
    }

    /// The reranker's scores of `candidates` as a ranked list.
    pub fn rerank_list(&self, history: &[(u32, f32)], candidates: &[u32]) -> Result<SourceList> {
        let trained = self.trained.as_ref();
        let reranker = self
            .reranker()
            .ok_or_else(|| Error::invalid("this index has no reranker"))?;
        let ids: Vec<u32> = history.iter().map(|h| h.0).collect();
        let empty: &[f32] = &[];
        let scores = reranker.score(&RerankInput {
            history: &ids,
            candidates,
            embeddings: trained
                .and_then(|t| t.two_tower.as_ref())
                .map_or(empty, |tt| tt.index.store().vectors()),
            popularity: trained.map_or(empty, |t| &t.popularity),
            store: self.index.store(),
        })?;
        let mut items: Vec<(u32, f32)> = candidates.iter().copied().zip(scores).collect();
        items.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(SourceList {
            name: RERANKER,
            weight: self.cfg.rerank.weight,
            items,
        })
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
        let mut exclude: HashSet<u32> = if opts.include_seen {
            HashSet::new()
        } else {
            history.iter().map(|h| h.0).collect()
        };
        if opts.include_seen {
            live_seen.clear();
        }
        // Release the delta before anything below reads it again: a second
        // read lock behind a waiting writer would deadlock (the lock is fair).
        let masked = match &view {
            Some(v) if self.is_hybrid() && !v.is_empty() => v.masked(store),
            _ => HashSet::new(),
        };
        drop(view);
        if self.is_hybrid() {
            // The content-only path below masks in `search`; here the sources
            // see the mask through `accept`.
            exclude.extend(masked);
            let filter = opts.filter.as_ref().filter(|f| !f.is_empty());
            let accept = |i: u32| admissible(store, &exclude, filter, i);
            let method = opts.fusion.unwrap_or(self.cfg.hybrid.fusion);
            let lists =
                self.candidate_lists_within(&history, user_number, &accept, method, opts.deadline)?;
            opts.deadline.check("fusion")?;
            let fused = timed("fusion", || {
                Ok::<_, Error>(if method == FusionMethod::Learned {
                    self.learned_model()?.fuse(&lists)
                } else {
                    fuse(method, &lists, self.cfg.hybrid.rrf_k)
                })
            })?;
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
        let vector = match precomputed {
            Some(v) => v.to_vec(),
            None => profile(store, &history, &self.cfg.users)
                .ok_or_else(|| Error::invalid("the history carries no positive weight"))?,
        };
        opts.deadline.check("search")?;
        timed("search", || {
            self.search(&vector, k, &exclude, &live_seen, opts.filter.as_ref())
        })
    }

    /// Items nearest to a catalogue item (never the item itself).
    pub fn similar_items(
        &self,
        item: &str,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>> {
        let k = self.check_k(k)?;
        let v = self.item_vector(item)?;
        let own: HashSet<u32> = self.index.store().internal_id(item).into_iter().collect();
        timed("search", || {
            self.search(&v, k, &own, &[item.to_owned()], filter)
        })
    }

    /// Items nearest to a text query.
    pub fn search_text(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>> {
        self.search_text_within(query, k, filter, Deadline::NONE)
    }

    /// [`Engine::search_text`] for a request due by `deadline`, checked
    /// before encoding and before searching.
    pub fn search_text_within(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
        deadline: Deadline,
    ) -> Result<Vec<Scored>> {
        let k = self.check_k(k)?;
        self.check_text("query", query)?;
        let v = self
            .encoder()?
            .encode_within(&[query], deadline)?
            .pop()
            .unwrap_or_default();
        deadline.check("search")?;
        timed("search", || {
            self.search(&v, k, &HashSet::new(), &[], filter)
        })
    }

    /// Embeddings of texts.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.embed_within(texts, Deadline::NONE)
    }

    /// [`Engine::embed`] for a request due by `deadline`, checked before encoding.
    pub fn embed_within(&self, texts: &[String], deadline: Deadline) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Err(Error::invalid("texts must not be empty"));
        }
        if texts.len() > self.cfg.limits.max_batch {
            return Err(Error::invalid(format!(
                "{} texts, over the limit of {} per request",
                texts.len(),
                self.cfg.limits.max_batch
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            self.check_text(&format!("texts[{i}]"), t)?;
        }
        self.encoder()?.encode_within(texts, deadline)
    }
}
