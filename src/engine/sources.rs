//! The candidate sources of the hybrid pipeline: the trained models a
//! generation holds (EASE, transitions, ALS, two-tower, popularity, the
//! learned fusion and the reranker), opened together, and the lists each
//! source ranks for a history.

use std::path::Path;
use std::sync::Arc;

use vecrec_index::{Index, RowSet, SearchParams};

use super::{Engine, Opening};
use crate::config::{Config, RerankKind, SourceWeights};
use crate::error::{Error, Result};
use crate::fusion::SourceList;
use crate::rerank::Reranker;
use crate::retrieve::sparse::SparseRows;
use crate::retrieve::{recency_weights, top_n};
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
    /// The self-attentive sequence model's vector of the history, searched
    /// among its item table in its own HNSW index.
    Sequence,
}

impl Source {
    /// All sources.
    pub const ALL: [Source; 7] = [
        Source::Ease,
        Source::Transitions,
        Source::Content,
        Source::Popularity,
        Source::Als,
        Source::TwoTower,
        Source::Sequence,
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
            Source::Sequence => "sequence",
        }
    }

    /// The source called [`Source::name`] `name`.
    pub fn from_name(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its fusion weight in `w`.
    pub fn weight_in(self, w: &SourceWeights) -> f32 {
        match self {
            Source::Ease => w.ease,
            Source::Transitions => w.transitions,
            Source::Content => w.content,
            Source::Popularity => w.popularity,
            Source::Als => w.als,
            Source::TwoTower => w.two_tower,
            Source::Sequence => w.sequence,
        }
    }

    /// The stage name its latency is recorded under.
    pub(super) fn stage(self) -> &'static str {
        match self {
            Source::Ease => "source_ease",
            Source::Transitions => "source_transitions",
            Source::Content => "source_content",
            Source::Popularity => "source_popularity",
            Source::Als => "source_als",
            Source::TwoTower => "source_two_tower",
            Source::Sequence => "source_sequence",
        }
    }
}

/// Runs `f`, recording its latency under `stage`.
pub(super) fn timed<T>(stage: &'static str, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    telemetry::stage(stage, start.elapsed().as_secs_f64());
    out
}

/// Trained interaction-based sources of a generation.
#[derive(Debug)]
pub(super) struct Trained {
    /// EASE and transitions rows, scored where items are (one node, a
    /// shard); `None` on a router's front ([`Opening::Front`]).
    pub(super) item_rows: Option<(SparseRows, SparseRows)>,
    pub(super) popularity: Vec<f32>,
    pub(super) als: Index,
    /// User factors, users × factors, read through the map
    /// (`Trained::als_user`).
    pub(super) als_users: vecrec_index::format::CheckedFile,
    /// `YᵀY` of the item factors, for folding in new histories.
    pub(super) als_gram: Vec<f64>,
    /// The learned fusion model, when the build fitted one.
    pub(super) learned: Option<crate::fusion::LearnedModel>,
    /// The two-tower model, when the build trained one.
    pub(super) two_tower: Option<TwoTowerServing>,
    /// The sequence model, when the build trained one.
    pub(super) sequence: Option<SequenceServing>,
    /// The generation's cross-attention reranker, opened whenever the
    /// generation holds one (an experiment's arm may pick it).
    pub(super) din: Option<Arc<Reranker>>,
    /// The config's cross-encoder, when `rerank.kind` is `cross_encoder`.
    pub(super) cross_encoder: Option<Arc<Reranker>>,
}

/// A learned source's parts in generation `dir`: the index under `sub`,
/// the settings in `meta_file`, the ONNX model in `model_file` (checksummed
/// envelope), loaded into a pool of `pool` single-thread sessions.
fn open_learned<M: serde::de::DeserializeOwned>(
    dir: &Path,
    sub: &Path,
    meta_file: &'static str,
    model_file: &'static str,
    ort: &Path,
    pool: usize,
    opening: Opening,
) -> Result<(Index, M, OnnxModel)> {
    let index = opening.item_table(sub)?;
    let meta: M = vecrec_index::format::read_json(&dir.join(meta_file))?;
    let file = vecrec_index::format::CheckedFile::open(
        &dir.join(model_file),
        vecrec_index::format::Kind::MODEL,
        true,
    )?;
    let model = OnnxModel::load(
        ort,
        ModelSource::Bytes(model_file, file.payload()),
        pool,
        1,
        Device::Cpu,
    )?;
    Ok((index, meta, model))
}

/// The item rows a two-tower user vector is made from: each history item's
/// content vector and ALS factors.
#[derive(Clone, Copy)]
pub(super) struct ItemRows<'a> {
    pub(super) content: &'a vecrec_index::VectorStore,
    pub(super) als: &'a vecrec_index::VectorStore,
}

/// The served two-tower model.
#[derive(Debug)]
pub(super) struct TwoTowerServing {
    /// Item embeddings (inner product).
    pub(super) index: Index,
    /// The user tower through ONNX Runtime.
    pub(super) user: OnnxModel,
    pub(super) meta: crate::layout::TwoTowerMeta,
    /// The user tower's output for each stored user's stored history, once
    /// computed: it depends on nothing else, so a user's calls after the
    /// first skip the model run. Lives as long as the generation is served.
    stored: Vec<std::sync::OnceLock<Option<Vec<f32>>>>,
}

impl TwoTowerServing {
    fn open(
        dir: &Path,
        content: &vecrec_index::VectorStore,
        als: &Index,
        ort: &Path,
        pool: usize,
        opening: Opening,
        users: usize,
    ) -> Result<Option<Self>> {
        let sub = dir.join(crate::layout::TWO_TOWER_DIR);
        if !sub.is_dir() {
            return Ok(None);
        }
        let (index, meta, user) = open_learned::<crate::layout::TwoTowerMeta>(
            dir,
            &sub,
            crate::layout::TWO_TOWER_META_FILE,
            crate::layout::USER_TOWER_FILE,
            ort,
            pool,
            opening,
        )?;
        // Each item's features are its content vector and ALS factors
        // (`two_tower::push_item_features`), made for a history's items
        // when a call needs them: kept for every item, they were
        // (384 + 64) × 4 bytes an item of memory.
        if meta.input != content.dim() + als.store().dim()
            || index.store().len() != content.len()
            || als.store().len() != content.len()
        {
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
            stored: (0..users).map(|_| std::sync::OnceLock::new()).collect(),
        }))
    }

    /// [`TwoTowerServing::user_vector`] of stored user `u`'s stored
    /// `history`, computed on the user's first call only.
    pub(super) fn stored_user_vector(
        &self,
        items: ItemRows<'_>,
        u: u32,
        history: &[u32],
    ) -> Result<Option<Vec<f32>>> {
        let Some(slot) = self.stored.get(u as usize) else {
            return self.user_vector(items, history);
        };
        if let Some(v) = slot.get() {
            return Ok(v.clone());
        }
        let v = self.user_vector(items, history)?;
        Ok(slot.get_or_init(|| v).clone())
    }

    /// The user tower's vector for a history (oldest first) of the items
    /// `items` holds; `None` when empty.
    pub(super) fn user_vector(
        &self,
        items: ItemRows<'_>,
        history: &[u32],
    ) -> Result<Option<Vec<f32>>> {
        if history.is_empty() {
            return Ok(None);
        }
        let (start, w) =
            crate::retrieve::two_tower::pooling_weights(history.len(), &self.meta.options);
        let d = self.meta.input;
        let mut x = Vec::with_capacity(w.len() * d);
        for &i in &history[start..] {
            crate::retrieve::two_tower::push_item_features(
                items.content.vector(i),
                items.als.vector(i),
                &mut x,
            );
        }
        let (_, u) = self.user.run(vec![
            ("history", Input::F32(vec![1, w.len(), d], &x)),
            ("weights", Input::F32(vec![1, w.len()], &w)),
        ])?;
        Ok(Some(u))
    }
}

/// The served sequence model.
#[derive(Debug)]
pub(super) struct SequenceServing {
    /// Its item table (inner product).
    pub(super) index: Index,
    /// The network through ONNX Runtime.
    pub(super) model: OnnxModel,
    pub(super) meta: crate::layout::SequenceMeta,
}

impl SequenceServing {
    fn open(
        dir: &Path,
        items: usize,
        ort: &Path,
        pool: usize,
        opening: Opening,
    ) -> Result<Option<Self>> {
        let sub = dir.join(crate::layout::SEQUENCE_DIR);
        if !sub.is_dir() {
            return Ok(None);
        }
        let (index, meta, model) = open_learned::<crate::layout::SequenceMeta>(
            dir,
            &sub,
            crate::layout::SEQUENCE_META_FILE,
            crate::layout::SEQUENCE_MODEL_FILE,
            ort,
            pool,
            opening,
        )?;
        if index.store().len() != items || index.store().dim() != meta.options.dim {
            return Err(Error::Config(format!(
                "{}: the sequence model's table holds {} rows of {} values; this generation has {items} items and the model was trained with {}",
                dir.display(),
                index.store().len(),
                index.store().dim(),
                meta.options.dim
            )));
        }
        Ok(Some(Self { index, model, meta }))
    }

    /// The model's vector for a history (oldest first; the newest
    /// `max_len` items are read); `None` when empty.
    pub(super) fn user_vector(&self, history: &[u32]) -> Result<Option<Vec<f32>>> {
        if history.is_empty() {
            return Ok(None);
        }
        let ids = &history[history.len().saturating_sub(self.meta.options.max_len)..];
        let store = self.index.store();
        let d = store.dim();
        let table = store.vectors();
        let mut x = Vec::with_capacity(ids.len() * d);
        for &i in ids {
            x.extend_from_slice(&table[i as usize * d..(i as usize + 1) * d]);
        }
        let mask = crate::retrieve::sequence::causal_mask(ids.len());
        let (_, u) = self.model.run(vec![
            ("history", Input::F32(vec![1, ids.len(), d], &x)),
            ("mask", Input::F32(vec![ids.len(), ids.len()], &mask)),
        ])?;
        Ok(Some(u))
    }
}

impl Trained {
    /// Stored user `u`'s ALS factors (`f` of them).
    fn als_user(&self, u: u32, f: usize) -> Result<&[f32]> {
        let all: &[f32] = self.als_users.payload_as()?;
        Ok(&all[u as usize * f..(u as usize + 1) * f])
    }

    /// Opens the trained sources of the generation `index`; `None` for a
    /// content-only generation.
    pub(super) fn open(
        index: &Index,
        users: &UserProfiles,
        cfg: &Config,
        opening: Opening,
    ) -> Result<Option<Self>> {
        if !SparseRows::exists(index.dir(), crate::layout::EASE_ROWS)
            || index.dir().join(crate::layout::SLICED_FILE).is_file()
        {
            return Ok(None);
        }
        let store = index.store();
        {
            let n = store.len();
            let als = opening.item_table(&index.dir().join(crate::layout::ALS_DIR))?;
            let f = als.store().dim();
            let uf = vecrec_index::format::CheckedFile::open(
                &index.dir().join(crate::layout::ALS_USERS_FILE),
                vecrec_index::format::Kind::VECTORS,
                true,
            )?;
            let user_values = uf.payload_as::<f32>()?.len();
            if als.store().len() != n || user_values != users.len() * f {
                return Err(vecrec_index::IndexError::Corrupt {
                    path: index.dir().to_owned(),
                    reason: format!("ALS factors for {} items and {} user values disagree with {n} items and {} users", als.store().len(), user_values, users.len()),
                }
                .into());
            }
            let als_gram = als_gram(index.dir(), &als)?;
            let has_neural = index.dir().join(crate::layout::TWO_TOWER_DIR).is_dir()
                || index.dir().join(crate::layout::SEQUENCE_DIR).is_dir();
            let has_din = index.dir().join(crate::layout::DIN_FILE).is_file();
            let wants_cross = cfg.rerank.kind == RerankKind::CrossEncoder;
            let ort = if has_neural || has_din || wants_cross {
                Some(crate::runtime::locate_ort(
                    cfg.encoder.ort_dylib.as_deref(),
                )?)
            } else {
                None
            };
            // A session for every Recommend call that may run at once, so
            // none waits for another's model run.
            let pool = cfg.server.cpu_limit();
            let two_tower = match &ort {
                Some(o) => {
                    TwoTowerServing::open(index.dir(), store, &als, o, pool, opening, users.len())?
                }
                None => None,
            };
            let sequence = match &ort {
                Some(o) => SequenceServing::open(index.dir(), n, o, pool, opening)?,
                None => None,
            };
            // Only where the config asks for the model: by default none is
            // trained and the source is skipped (`SequenceOptions::enabled`),
            // which is no cause for a warning at every open.
            if sequence.is_none()
                && cfg.train.neural
                && cfg.train.sequence.enabled
                && cfg.hybrid.sequence_weight > 0.0
            {
                tracing::warn!(
                    generation = %index.dir().display(),
                    "[train] neural and [train.sequence] enabled are true and \
                     hybrid.sequence_weight is {}, but this \
                     generation has no sequence model: the source answers nothing until a \
                     rebuild trains one",
                    cfg.hybrid.sequence_weight
                );
            }
            let cross_encoder = match (cfg.rerank.kind, &ort) {
                (RerankKind::CrossEncoder, Some(o)) => {
                    Some(Arc::new(open_cross_encoder(cfg, &cfg.rerank, o)?))
                }
                _ => None,
            };
            let din = match &ort {
                Some(o) if has_din => Some(Arc::new(Reranker::open_din(
                    index.dir(),
                    o,
                    pool,
                    cfg.rerank.threads,
                )?)),
                _ => None,
            };
            // The front never scores items, so never reads these rows.
            let item_rows = match opening {
                Opening::Front => None,
                Opening::Whole => Some((
                    SparseRows::open(index.dir(), crate::layout::EASE_ROWS, n)?,
                    SparseRows::open(index.dir(), crate::layout::TRANSITIONS_ROWS, n)?,
                )),
            };
            let trained = Trained {
                item_rows,
                popularity: users.popularity(n),
                als,
                als_users: uf,
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
                sequence,
                din,
                cross_encoder,
            };
            // A router's front has no item tables (`tables` refuses): it
            // never searches them.
            if let Ok(tables) = trained.tables() {
                tables.prepare_scans();
            }
            Ok(Some(trained))
        }
    }
}

/// Opens the cross-encoder `rerank` names, with the sentence encoder's
/// tokenizer (from `cfg`) as the default.
pub(crate) fn open_cross_encoder(
    cfg: &Config,
    rerank: &crate::config::RerankConfig,
    ort: &Path,
) -> Result<Reranker> {
    let tok = crate::encoder::EncoderFiles::locate(&cfg.encoder)
        .ok()
        .map(|f| f.tokenizer);
    Reranker::open_cross_encoder(rerank, tok.as_deref(), ort, 2)
}

impl Engine {
    /// The search parameters of a source or a query asking for `k` items.
    pub(super) fn search_params(&self, k: usize) -> SearchParams {
        SearchParams {
            k,
            ef: self.cfg.search.ef.max(k),
            exact: self.cfg.search.exact,
        }
    }

    pub(super) fn weight(&self, s: Source) -> f32 {
        s.weight_in(&self.cfg.hybrid.weights())
    }

    /// The candidates of each source in `which` for a history (internal ids with
    /// weights, oldest first), computed in parallel, among the items in
    /// `admitted` (see [`Engine::admit`]).
    /// `user` is the user's number when the history is the stored one, so
    /// precomputed vectors can be used.
    pub fn source_lists(
        &self,
        history: &[(u32, f32)],
        user: Option<u32>,
        which: &[Source],
        admitted: &RowSet,
    ) -> Result<Vec<SourceList>> {
        let trained = self.trained()?;
        let ids: Vec<u32> = history.iter().map(|e| e.0).collect();
        let tables = trained.tables()?;
        let one = |&s: &Source| -> Result<SourceList> {
            let started = std::time::Instant::now();
            let list = match self.user_input(s, history, user)? {
                Some(input) => self.item_list(&tables, s, &ids, &input, admitted)?,
                None => Vec::new(),
            };
            telemetry::stage(s.stage(), started.elapsed().as_secs_f64());
            Ok(SourceList {
                name: s.name(),
                weight: self.weight(s),
                items: list,
            })
        };
        each_source(which, one)
    }

    fn trained(&self) -> Result<&Trained> {
        self.trained.as_deref().ok_or_else(|| {
            Error::Config(
                "this generation has no trained sources; rebuild it with vecrec-build".into(),
            )
        })
    }

    /// The rows the two-tower user vector reads, from this generation.
    fn item_rows<'a>(&'a self, trained: &'a Trained) -> ItemRows<'a> {
        ItemRows {
            content: self.index.store(),
            als: trained.als.store(),
        }
    }

    /// What source `s` needs from the user's side for a history (internal
    /// ids with weights, oldest first): the vector it searches with (the
    /// profile, the ALS factors, the user tower's or the sequence model's
    /// output), an empty one for the sources that read the history
    /// itself, `None` when the user gives it nothing to search with.
    /// `user` is the user's number when the history is the stored one.
    /// This half of a source needs the users and the models; the front tier
    /// of a partitioned index computes it once and sends it to every shard.
    pub fn user_input(
        &self,
        s: Source,
        history: &[(u32, f32)],
        user: Option<u32>,
    ) -> Result<Option<Vec<f32>>> {
        let trained = self.trained()?;
        let ids = || history.iter().map(|e| e.0).collect::<Vec<u32>>();
        Ok(match s {
            Source::Ease | Source::Transitions | Source::Popularity => Some(Vec::new()),
            Source::Als => {
                let f = trained.als.store().dim();
                let x = match user {
                    Some(u) => trained.als_user(u, f)?.to_vec(),
                    None => {
                        let mut obs = ids();
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
                Some(x).filter(|x| x.iter().any(|v| *v != 0.0))
            }
            Source::TwoTower => match (&trained.two_tower, user) {
                (None, _) => None,
                (Some(tt), Some(u)) => tt.stored_user_vector(self.item_rows(trained), u, &ids())?,
                (Some(tt), None) => tt.user_vector(self.item_rows(trained), &ids())?,
            },
            Source::Sequence => match &trained.sequence {
                None => None,
                Some(sq) => sq.user_vector(&ids())?,
            },
            Source::Content => {
                let pre = if self.use_precomputed {
                    user.and_then(|u| self.users.vector(u))
                } else {
                    None
                };
                match pre {
                    Some(v) => Some(v.to_vec()),
                    None => profile(self.index.store(), history, &self.cfg.users),
                }
            }
        })
    }

    /// The items' half of source `s`: its `hybrid.candidates` best items
    /// among this generation's items in `admitted`, by score,
    /// for the history `ids` (the catalogue's item numbers, oldest first)
    /// and the user's `input` from [`Engine::user_input`]. One node runs it
    /// over its whole catalogue; a shard over its own items, with the
    /// same scores, so the merged lists are one node's.
    pub(super) fn item_list(
        &self,
        tables: &ItemTables<'_>,
        s: Source,
        ids: &[u32],
        input: &[f32],
        admitted: &RowSet,
    ) -> Result<Vec<(u32, f32)>> {
        let n = self.cfg.hybrid.candidates;
        let h = &self.cfg.hybrid;
        let items = self.index.store().len();
        let accept = |i: u32| admitted.contains(i);
        let dense = |rows: &SparseRows, decay: f32| {
            let mut acc = vec![0f32; items];
            for (i, w) in recency_weights(ids, decay) {
                rows.axpy(i, w, &mut acc);
            }
            top_n(&acc, n, &accept)
        };
        // An inner-product index's best items for a vector, by score, among
        // those `admitted` holds whose row is not zero. A zero row
        // (ALS's factors of an item without interactions) scores 0 against
        // every user, so its place in the list would be an accident of the
        // search order, which fusion would count as evidence; `top_n`
        // leaves out what it scores 0 in the same way. Left out in the
        // search (not after it), a list still holds `n` items where more
        // are there, so a shard's lists merge into one node's.
        let by_vector = |index: &Index, v: &[f32]| -> Result<Vec<(u32, f32)>> {
            let known = admitted.without(index.store().find_zero_rows());
            let (found, _) = index.search_in(v, &self.search_params(n), &known)?;
            Ok(found.into_iter().map(|f| (f.id, -f.distance)).collect())
        };
        Ok(match s {
            Source::Ease => dense(tables.ease, h.ease_decay),
            Source::Transitions => dense(tables.transitions, h.transitions_decay),
            Source::Popularity => top_n(tables.popularity, n, &accept),
            Source::Als => by_vector(tables.als, input)?,
            Source::TwoTower => match tables.two_tower {
                None => Vec::new(),
                Some(index) => by_vector(index, input)?,
            },
            Source::Sequence => match tables.sequence {
                None => Vec::new(),
                Some(index) => by_vector(index, input)?,
            },
            Source::Content => {
                let (found, _) = self.ann(input, &self.search_params(n), Some(&accept))?;
                let metric = self.index.store().metric();
                found
                    .into_iter()
                    .map(|f| (f.id, metric.score(f.distance)))
                    .collect()
            }
        })
    }
}

/// The item-side tables the sources search: a whole generation's, or a
/// shard's slice of them ([`Sliced`]).
pub(super) struct ItemTables<'a> {
    pub(super) ease: &'a SparseRows,
    pub(super) transitions: &'a SparseRows,
    pub(super) popularity: &'a [f32],
    pub(super) als: &'a Index,
    pub(super) two_tower: Option<&'a Index>,
    pub(super) sequence: Option<&'a Index>,
}

impl ItemTables<'_> {
    /// Readies the tables searched by vector now, while the generation
    /// opens, not in the first call that asks: finds their zero rows
    /// (what `item_list` leaves out) and makes the int8 copies of their
    /// rows that an exact search scans first (`VectorStore::build_row_codes`:
    /// the planner searches them exactly whenever the zero rows it leaves
    /// out are many, as ALS's are).
    pub(super) fn prepare_scans(&self) {
        for index in [Some(self.als), self.two_tower, self.sequence]
            .into_iter()
            .flatten()
        {
            index.store().find_zero_rows();
            index.store().build_row_codes();
        }
    }
}

impl Trained {
    pub(super) fn tables(&self) -> Result<ItemTables<'_>> {
        let (ease, transitions) = self.item_rows.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this engine holds a router's front, which scores no items: the shards do".into(),
            )
        })?;
        Ok(ItemTables {
            ease,
            transitions,
            popularity: &self.popularity,
            als: &self.als,
            two_tower: self.two_tower.as_ref().map(|t| &t.index),
            sequence: self.sequence.as_ref().map(|t| &t.index),
        })
    }

    /// The learned item tables, as the indexes they are stored in.
    fn item_indexes(&self) -> impl Iterator<Item = &Index> {
        std::iter::once(&self.als)
            .chain(self.two_tower.as_ref().map(|t| &t.index))
            .chain(self.sequence.as_ref().map(|t| &t.index))
    }

    /// Waits for the checks of the item tables an [`Opening::Front`] open
    /// left (running them here, one after another, where none was
    /// started), and returns what they found.
    pub(super) fn wait_verified(&self) -> Result<()> {
        // Every check is waited for, and the first damage returned.
        let found: Vec<_> = self.item_indexes().map(|i| i.wait_verified()).collect();
        Ok(found.into_iter().collect::<vecrec_index::Result<()>>()?)
    }

    /// The damage the background checks have found so far, if any.
    pub(super) fn check_damage(&self) -> Result<()> {
        for i in self.item_indexes() {
            i.check_damage()?;
        }
        Ok(())
    }
}

/// `YᵀY` of the ALS item factors `als` (`f` wide): read from the
/// generation's [`crate::layout::ALS_GRAM_FILE`] where the build wrote it,
/// computed over every item otherwise (a generation written before it was).
pub(super) fn als_gram(dir: &Path, als: &Index) -> Result<Vec<f64>> {
    let f = als.store().dim();
    let path = dir.join(crate::layout::ALS_GRAM_FILE);
    if !path.is_file() {
        tracing::info!(generation = %dir.display(), "no stored ALS Gram matrix: computing it over every item");
        return Ok(crate::retrieve::als::gram(als.store().vectors(), f));
    }
    let file = vecrec_index::format::CheckedFile::open(
        &path,
        vecrec_index::format::Kind::MATRIX_F64,
        true,
    )?;
    let g = file.payload_as::<f64>()?;
    let [rows, cols, ..] = file.fields();
    if g.len() != f * f || [rows, cols] != [f as u64, f as u64] {
        return Err(vecrec_index::IndexError::Corrupt {
            path,
            reason: format!(
                "a {rows} × {cols} matrix of {} values for the Gram matrix of {f} ALS \
                 factors ({f} × {f} wanted)",
                g.len()
            ),
        }
        .into());
    }
    Ok(g.to_vec())
}

/// `one` over every source of a request, each a task on the global thread
/// pool, and the results in order. Tasks handed in from outside the pool
/// (a request's blocking thread) join one first-in first-out line, so the
/// pool's threads finish the sources of the request that came first before
/// starting on the next one's: the oldest request has the cores, as a lone
/// request does, while the cores stay busy with the next one's sources
/// whenever the oldest has none left to start (see
/// `sources_of_the_first_request_run_first`). A caller that is a pool
/// thread itself (the evaluation's) keeps its tasks on its own queue.
pub(super) fn each_source<T: Sync, R: Send>(
    items: &[T],
    one: impl Fn(&T) -> Result<R> + Sync + Send,
) -> Result<Vec<R>> {
    let mut done: Vec<Option<Result<R>>> = items.iter().map(|_| None).collect();
    let one = &one;
    rayon::in_place_scope(|s| {
        for (item, slot) in items.iter().zip(done.iter_mut()) {
            s.spawn(move |_| *slot = Some(one(item)));
        }
    });
    done.into_iter()
        .map(|r| r.expect("a scope ends once each of its tasks has run"))
        .collect()
}

#[cfg(test)]
mod each_source_tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::each_source;

    /// Two requests' sources on the pool at once: none of the second's
    /// starts before the first's last one does, and each gets its own
    /// results back in order. The first's first wave (one a free pool
    /// thread) waits at a gate while the second hands its sources in, so
    /// at least four of the first's wait in the line behind the gate, and
    /// the second's behind them. A line that served the newest first, or a
    /// second request running its sources on its own thread, starts one of
    /// the second's a whole task (30 ms) or more before the first's last;
    /// 10 ms of slack absorbs a thread preempted between taking a task and
    /// noting its start.
    #[test]
    fn sources_of_the_first_request_run_first() {
        let threads = rayon::current_num_threads();
        let open = AtomicBool::new(false);
        let started: Mutex<Vec<(char, Instant)>> = Mutex::new(Vec::new());
        let (first_began, began) = mpsc::channel();
        let first_began = Mutex::new(Some(first_began));
        let tasks: Vec<usize> = (0..threads + 4).collect();
        let run = |who: char| {
            each_source(&tasks, |&i| {
                if let Some(tx) = first_began.lock().unwrap().take() {
                    tx.send(()).unwrap();
                }
                while !open.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                started.lock().unwrap().push((who, Instant::now()));
                std::thread::sleep(Duration::from_millis(30));
                Ok(i * 10)
            })
            .unwrap()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| run('a'));
            began.recv().unwrap();
            // The first has handed in all of its sources well before this
            // (a loop of spawns), and the second hands in its own while the
            // gate holds every pool thread the first's first wave took.
            std::thread::sleep(Duration::from_millis(20));
            let b = s.spawn(|| run('b'));
            std::thread::sleep(Duration::from_millis(100));
            open.store(true, Ordering::Release);
            (a.join().unwrap(), b.join().unwrap())
        });
        let want: Vec<usize> = tasks.iter().map(|i| i * 10).collect();
        assert_eq!((a, b), (want.clone(), want));
        let started = started.into_inner().unwrap();
        let last_a = started.iter().filter(|e| e.0 == 'a').map(|e| e.1).max();
        let first_b = started.iter().filter(|e| e.0 == 'b').map(|e| e.1).min();
        let (last_a, first_b) = (last_a.unwrap(), first_b.unwrap());
        assert!(
            first_b + Duration::from_millis(10) >= last_a,
            "a source of the second request started {:?} before the first's last",
            last_a - first_b
        );
    }

    /// A failing source fails the request; the others still ran.
    #[test]
    fn a_failed_source_fails_the_request() {
        let ran = Mutex::new(0);
        let r = each_source(&[0, 1, 2], |&i| {
            *ran.lock().unwrap() += 1;
            if i == 1 {
                Err(crate::error::Error::invalid("source 1 failed"))
            } else {
                Ok(i)
            }
        });
        assert!(r.is_err());
        assert_eq!(*ran.lock().unwrap(), 3);
    }
}
