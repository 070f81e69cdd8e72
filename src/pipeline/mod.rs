//! The bulk build: catalogue + interactions → embeddings → a new index
//! generation with item vectors, HNSW graph, user profiles and every trained
//! source, switched in atomically. `vecrec-build` and `vecrec-eval` both call
//! it.
//!
//! Every model is trained once per build: the learned fusion is fitted on
//! the models just trained ([`fusion_fit`]). Texts whose vectors the
//! previous build already made are taken from the embedding cache
//! ([`cache`]). Each stage's time and peak memory are recorded
//! ([`stages`]).

pub mod cache;
mod folded;
mod fusion_fit;
pub mod lock;
mod rerank_fit;
mod served;
mod shards;
pub mod stages;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vecrec_index::generation::{prune, GenerationWriter};
use vecrec_index::{write_index, HnswParams, Metric, StoreBuilder, VectorStore};

use crate::catalog::{CatalogItem, Interaction};
use crate::config::UserConfig;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::layout::{
    GenerationInfo, TwoTowerMeta, ALS_DIR, ALS_GRAM_FILE, ALS_USERS_FILE, FUSION_FILE,
    TWO_TOWER_DIR, TWO_TOWER_META_FILE, USER_TOWER_FILE,
};
use crate::retrieve::sparse::SparseRows;
use crate::users::write_profiles;
pub use folded::{
    fold_logs, folded_already, folded_dir, read_folded, write_folded, FOLDED_CATALOG,
    FOLDED_INTERACTIONS,
};
pub use lock::{lock_build, own_run, read_lease, release_run, BuildLock, Lease};
pub use served::served_inputs;
pub use shards::{
    build_shards, check_run, embed_part, folded_cut, inputs_digest, pending_of_run,
    EmbedPartReport, FoldedCut, ShardWork,
};
pub use stages::{bar, spinner, stage_table, StageReport, Stages};

/// Options of a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// HNSW parameters. The catalogue's index is written with int8 codes
    /// (`quantize`, default true here), which the server walks and then
    /// rescores exactly; the ALS and two-tower sub-indexes never have codes.
    pub hnsw: HnswParams,
    /// How user profiles are made.
    pub users: UserConfig,
    /// Generations kept after the build (the live one always stays).
    pub keep_generations: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Training of the interaction-based sources; `None` skips them (content only).
    pub train: Option<crate::retrieve::TrainOptions>,
    /// Fit the learned fusion model on a temporal holdout of the interactions,
    /// scoring candidates with these hybrid settings; `None` skips it.
    pub learn_fusion: Option<crate::config::HybridConfig>,
    /// Take the vectors of texts embedded by an earlier build from the
    /// index root's embedding cache, and keep this build's there.
    pub embedding_cache: bool,
    /// The hybrid settings whose fused head the reranker learns to order
    /// (`train.reranker.listwise`); `None`: the defaults. The learned
    /// fusion pre-ranks with geometric fusion, as the engine does.
    pub head_hybrid: Option<crate::config::HybridConfig>,
    /// The root of a partitioned build whose shards' embedding cache parts
    /// (`--embed-only`) the build reads besides its own cache; set by
    /// [`build_shards`].
    pub embedding_parts: Option<PathBuf>,
    /// Move the root's `CURRENT` to the new generation (default). Off, the
    /// generation is committed beside the live one and the caller
    /// publishes it ([`vecrec_index::generation::publish`]): a partitioned
    /// build publishes the front and its shards together.
    pub publish: bool,
    /// The last log record folded into the inputs of each root written
    /// (`live::Changes`, `vecrec-build --fold-log`): the one root's at 0,
    /// or shard *i*'s at *i*. Each generation records its own as
    /// `wal_seq`, so its server applies only later records. Empty: none.
    pub folded_through: Vec<u64>,
    /// The split rebuild a `--front-only` or `--shard i` build of a
    /// partitioned build belongs to (`--run`, shared by the pods of one
    /// Job): its shards cut from the front it left pending, whatever
    /// inputs it folded. `None`: fronts are matched by their inputs only.
    pub run: Option<String>,
}

/// How a build trains the reranker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rerank {
    /// As `train.reranker.listwise` says.
    AsConfigured,
    /// Not at all (the scratch build of the reranker's held-out heads).
    Skip,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            hnsw: HnswParams {
                quantize: true,
                ..HnswParams::default()
            },
            users: UserConfig::default(),
            keep_generations: 3,
            progress: true,
            train: Some(crate::retrieve::TrainOptions::default()),
            learn_fusion: Some(crate::config::HybridConfig::default()),
            embedding_cache: true,
            head_hybrid: None,
            embedding_parts: None,
            publish: true,
            folded_through: Vec::new(),
            run: None,
        }
    }
}

/// What a build did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildReport {
    /// The new generation directory.
    pub generation: PathBuf,
    /// Items indexed.
    pub items: usize,
    /// Users with a profile.
    pub users: usize,
    /// Interactions used.
    pub interactions: usize,
    /// Interactions skipped because their item is not in the catalogue.
    pub skipped_unknown_items: usize,
    /// Texts run through the encoder.
    pub embedded: usize,
    /// Texts whose vectors came from the embedding cache.
    pub reused_embeddings: usize,
    /// Seconds spent embedding (cache included).
    pub embed_seconds: f64,
    /// Texts run through the encoder per second of encoding.
    pub texts_per_second: f64,
    /// Seconds spent building the graph.
    pub hnsw_seconds: f64,
    /// Seconds spent training the sources and fitting fusion.
    pub train_seconds: f64,
    /// Seconds for the whole build.
    pub total_seconds: f64,
    /// The peak resident memory of the process during the build, MiB.
    pub peak_rss_mib: f64,
    /// Each stage's time and peak memory, in order.
    pub stages: Vec<StageReport>,
}

impl BuildReport {
    /// The report of a generation of `(items, users with a profile)` from
    /// `(interactions used, skipped)`, whose graph took `hnsw_seconds`,
    /// started at `start`; nothing embedded or trained yet, no stages.
    fn indexed(
        generation: PathBuf,
        (items, users): (usize, usize),
        (interactions, skipped): (usize, usize),
        hnsw_seconds: f64,
        start: Instant,
    ) -> Self {
        Self {
            generation,
            items,
            users,
            interactions,
            skipped_unknown_items: skipped,
            embedded: 0,
            reused_embeddings: 0,
            embed_seconds: 0.0,
            texts_per_second: 0.0,
            hnsw_seconds,
            train_seconds: 0.0,
            total_seconds: start.elapsed().as_secs_f64(),
            peak_rss_mib: 0.0,
            stages: Vec::new(),
        }
    }
}

/// The stages that train models (for [`BuildReport::train_seconds`]).
const TRAIN_STAGES: &[&str] = &[
    "ease",
    "transitions",
    "als",
    "two-tower",
    "sequence",
    "rerank-holdout",
    "reranker",
    "fusion-fit",
];

/// What the reranker stage of a build trains on.
enum RerankPlan {
    /// No reranker.
    None,
    /// (History prefix → next item) pairs with sampled negatives.
    Sequences,
    /// Held-out fused heads ([`rerank_fit`]), with the sources their features follow.
    Heads(Vec<crate::rerank::din::HeadExample>, Vec<String>),
}

/// Embeds the catalogue's texts with a progress bar.
pub fn embed_catalog(
    encoder: &Encoder,
    items: &[CatalogItem],
    progress: bool,
) -> Result<Vec<Vec<f32>>> {
    let texts: Vec<String> = items.iter().map(CatalogItem::embedding_text).collect();
    let pb = bar(texts.len(), "embedding", progress);
    let v = encoder.encode_with_progress(&texts, &|d| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    Ok(v)
}

/// What [`embed_cached`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Embedded {
    /// Texts run through the encoder.
    pub encoded: usize,
    /// Texts taken from the cache.
    pub reused: usize,
    /// Seconds inside the encoder.
    pub encode_seconds: f64,
}

/// Embeds the catalogue's texts, taking those embedded by the last build
/// from the cache under `root` (and, given the root of a partitioned build,
/// from the shards' cache parts under it: `--embed-only`) and writing this
/// build's vectors back. Equal texts are embedded once.
pub fn embed_cached(
    root: &Path,
    parts: Option<&Path>,
    encoder: &Encoder,
    items: &[CatalogItem],
    progress: bool,
) -> Result<(Vec<Vec<f32>>, Embedded)> {
    let dir = root.join(cache::CACHE_DIR);
    let fp = cache::fingerprint(encoder)?;
    let mut caches = vec![cache::EmbeddingCache::open(&dir, &fp, encoder.dim())];
    if let Some(p) = parts {
        caches.extend(cache::open_parts(p, &fp, encoder.dim()));
    }
    let (vectors, keys, done) = embed_cached_with(&caches, &fp, encoder, items, progress)?;
    drop(caches);
    if let Err(e) = cache::write(&dir, &fp, &keys, &vectors) {
        tracing::warn!(error = %e, "the embedding cache could not be written; the next build embeds every text");
    }
    Ok((vectors, done))
}

/// Embeds the texts of `items` that none of `caches` (of the encoder's
/// fingerprint `fp`) holds, once per distinct text, and returns every
/// item's vector and cache key in catalogue order.
fn embed_cached_with(
    caches: &[cache::EmbeddingCache],
    fp: &[u8; 32],
    encoder: &Encoder,
    items: &[CatalogItem],
    progress: bool,
) -> Result<(Vec<Vec<f32>>, Vec<cache::Key>, Embedded)> {
    let old = |k: &cache::Key| caches.iter().find_map(|c| c.get(k));
    let texts: Vec<String> = items.iter().map(CatalogItem::embedding_text).collect();
    let keys: Vec<cache::Key> = texts.iter().map(|t| cache::key(fp, t)).collect();
    // The first item of every text the caches lack, in catalogue order.
    let mut missing: HashSet<cache::Key> = HashSet::new();
    let todo: Vec<usize> = (0..keys.len())
        .filter(|&i| old(&keys[i]).is_none() && missing.insert(keys[i]))
        .collect();
    let t = Instant::now();
    let pb = bar(todo.len(), "embedding", progress);
    let batch: Vec<&str> = todo.iter().map(|&i| texts[i].as_str()).collect();
    let fresh = encoder.encode_with_progress(&batch, &|d| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    let encode_seconds = t.elapsed().as_secs_f64();
    let mut reused = 0;
    // Fresh vectors come in the order of `todo` and move into place; only a
    // text that occurs twice is copied.
    let mut fresh = fresh.into_iter();
    let mut placed: HashMap<cache::Key, usize> = HashMap::new();
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(keys.len());
    for k in &keys {
        let v = if let Some(v) = old(k) {
            reused += 1;
            v.to_vec()
        } else if let Some(&at) = placed.get(k) {
            vectors[at].clone()
        } else {
            placed.insert(*k, vectors.len());
            fresh.next().expect("one fresh vector per missing text")
        };
        vectors.push(v);
    }
    drop(fresh);
    Ok((
        vectors,
        keys,
        Embedded {
            encoded: todo.len(),
            reused,
            encode_seconds,
        },
    ))
}

/// A user's history: (item row, weight), oldest first.
type History = Vec<(u32, f32)>;

/// Builds a new generation under `root` from items, their vectors and interactions.
pub fn build_generation(
    root: &Path,
    items: &[CatalogItem],
    vectors: &[Vec<f32>],
    interactions: &[Interaction],
    opts: &BuildOptions,
    info: GenerationInfo,
) -> Result<BuildReport> {
    build_generation_inner(
        root,
        items,
        vectors,
        interactions,
        opts,
        info,
        Stages::new(),
        Rerank::AsConfigured,
    )
}

/// [`build_generation`], adding to the stages already recorded.
#[allow(clippy::too_many_arguments)]
fn build_generation_inner(
    root: &Path,
    items: &[CatalogItem],
    vectors: &[Vec<f32>],
    interactions: &[Interaction],
    opts: &BuildOptions,
    info: GenerationInfo,
    mut stages: Stages,
    rerank: Rerank,
) -> Result<BuildReport> {
    let start = Instant::now();
    let dim = vectors.first().map_or(0, Vec::len);
    let writer = GenerationWriter::begin(root)?;
    let info = GenerationInfo {
        users: Some(opts.users.clone()),
        ..info
    };
    let manifest = stages.run("hnsw", || {
        let mut sb = StoreBuilder::new(dim, Metric::Cosine)?;
        for (item, v) in items.iter().zip(vectors) {
            sb.add(&item.id, v, item.meta.clone())?;
        }
        let pb = bar(items.len(), "hnsw", opts.progress);
        let m = write_index(writer.dir(), &sb, &opts.hnsw, info.to_json(), &|d| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        Ok((m, format!("{} items × {dim}", items.len())))
    })?;

    let store = VectorStore::open(writer.dir(), false)?;
    let (users, skipped, with_profile) = stages.run("profiles", || {
        let (users, skipped) = histories(&store, interactions);
        let n = write_profiles(writer.dir(), &store, &users, &opts.users)?;
        let work = format!(
            "{} users, {} interactions",
            users.len(),
            interactions.len() - skipped
        );
        Ok(((users, skipped, n), work))
    })?;
    if let Some(train) = &opts.train {
        let plan = if rerank == Rerank::Skip || !train.neural {
            RerankPlan::None
        } else if train.reranker.listwise {
            stages.run("rerank-holdout", || {
                let (heads, sources, work) =
                    rerank_fit::heads(root, items, vectors, &users, opts, train)?;
                Ok((RerankPlan::Heads(heads, sources), work))
            })?
        } else {
            RerankPlan::Sequences
        };
        train_sources(writer.dir(), &store, &users, train, opts, plan, &mut stages)?;
    }
    if let (Some(train), Some(hybrid)) = (&opts.train, &opts.learn_fusion) {
        stages.run("fusion-fit", || {
            let (model, work) = fusion_fit::fit(writer.dir(), &users, opts, train, hybrid)?;
            if let Some(model) = &model {
                vecrec_index::format::write_json(&writer.dir().join(FUSION_FILE), model)?;
            }
            Ok(((), work))
        })?;
    }
    drop(store);
    let generation = stages.run("commit", || {
        let g = if opts.publish {
            writer.commit()?
        } else {
            writer.commit_unpublished()?
        };
        prune(root, opts.keep_generations)?;
        Ok((g, String::new()))
    })?;
    let peak_rss_mib = stages.peak_mib();
    let train_seconds = stages.seconds_of(TRAIN_STAGES);
    let mut report = BuildReport::indexed(
        generation,
        (items.len(), with_profile),
        (interactions.len() - skipped, skipped),
        manifest.hnsw_build_seconds,
        start,
    );
    report.train_seconds = train_seconds;
    report.peak_rss_mib = peak_rss_mib;
    report.stages = stages.into_list();
    Ok(report)
}

/// Per user, oldest first (ties by item row), interactions with items the
/// store does not hold skipped; users sorted by id. Returns the histories
/// and the number skipped.
fn histories(store: &VectorStore, interactions: &[Interaction]) -> (Vec<(String, History)>, usize) {
    histories_by(&|id| store.internal_id(id), interactions)
}

/// [`histories`] with items numbered by `row` (`None`: not in the catalogue).
fn histories_by(
    row: &dyn Fn(&str) -> Option<u32>,
    interactions: &[Interaction],
) -> (Vec<(String, History)>, usize) {
    let mut by_user: HashMap<&str, Vec<(i64, u32, f32)>> = HashMap::new();
    let mut skipped = 0;
    for it in interactions {
        match row(&it.item) {
            Some(i) => by_user
                .entry(&it.user)
                .or_default()
                .push((it.timestamp, i, it.weight)),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "interactions name items that are not in the catalogue; skipped"
        );
    }
    let mut users: Vec<(String, History)> = by_user
        .into_iter()
        .map(|(u, mut h)| {
            h.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            (
                u.to_owned(),
                h.into_iter().map(|(_, i, w)| (i, w)).collect(),
            )
        })
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    (users, skipped)
}

#[cfg(test)]
thread_local! {
    /// How many times this thread trained the sources (for the test that
    /// a build trains every model once).
    pub(crate) static TRAININGS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Trains every interaction-based source into the generation directory
/// `dir`, one stage each.
fn train_sources(
    dir: &Path,
    store: &VectorStore,
    users: &[(String, History)],
    train: &crate::retrieve::TrainOptions,
    opts: &BuildOptions,
    rerank: RerankPlan,
    stages: &mut Stages,
) -> Result<()> {
    #[cfg(test)]
    TRAININGS.with(|t| t.set(t.get() + 1));
    let histories: Vec<Vec<u32>> = users
        .iter()
        .map(|u| u.1.iter().map(|x| x.0).collect())
        .collect();
    let n = store.len();
    stages.run("ease", || {
        let sp = spinner("ease", opts.progress);
        let (ease, kind) = crate::retrieve::ease::train_ease_kind(&histories, n, train)?;
        SparseRows::write(dir, crate::layout::EASE_ROWS, &ease)?;
        sp.finish_and_clear();
        let with = ease.iter().filter(|r| !r.is_empty()).count();
        let how = match kind {
            crate::retrieve::ease::EaseKind::Exact => "exact".to_owned(),
            crate::retrieve::ease::EaseKind::Neighbourhood => {
                format!("neighbourhood of {}", train.ease_neighbours)
            }
        };
        Ok(((), format!("{how}, {with} items with weights")))
    })?;
    stages.run("transitions", || {
        let t = crate::retrieve::train_transitions(&histories, n, train);
        SparseRows::write(dir, crate::layout::TRANSITIONS_ROWS, &t)?;
        let nnz: usize = t.iter().map(Vec::len).sum();
        Ok(((), format!("{nnz} weights")))
    })?;
    let als = stages.run("als", || {
        let pb = bar(train.als.iterations, "als", opts.progress);
        let als = crate::retrieve::als::train_with_progress(&histories, n, &train.als, &|d| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        write_als(dir, store, &als, &opts.hnsw, opts.progress)?;
        let work = format!(
            "{} factors, {} iterations",
            als.factors, train.als.iterations
        );
        Ok((als, work))
    })?;
    if train.neural {
        write_neural(dir, store, &als, &histories, train, opts, rerank, stages)?;
    }
    Ok(())
}

/// Writes the ALS item factors as an inner-product index under `dir/als/` and
/// the user factors as `dir/als_users.bin`.
fn write_als(
    dir: &Path,
    store: &VectorStore,
    model: &crate::retrieve::als::AlsModel,
    hnsw: &HnswParams,
    progress: bool,
) -> Result<()> {
    let f = model.factors;
    write_sub_index(
        &dir.join(ALS_DIR),
        &store_ids(store),
        &model.items,
        f,
        hnsw,
        serde_json::json!({"als_factors": f}),
        bar(store.len(), "als hnsw", progress),
    )?;
    let users = model.users.len() / f.max(1);
    let mut w = vecrec_index::format::FileWriter::create(
        &dir.join(ALS_USERS_FILE),
        vecrec_index::format::Kind::VECTORS,
        [f as u64, users as u64, Metric::InnerProduct.code(), 0, 0],
    )?;
    w.write_pod(&model.users)?;
    w.finish()?;
    // What folding in a new history needs of every item, computed once
    // here rather than at every open.
    let gram = crate::retrieve::als::gram(&model.items, f);
    let mut w = vecrec_index::format::FileWriter::create(
        &dir.join(ALS_GRAM_FILE),
        vecrec_index::format::Kind::MATRIX_F64,
        [f as u64, f as u64, 0, 0, 0],
    )?;
    w.write_pod(&gram)?;
    w.finish()?;
    Ok(())
}

/// The external ids of `store`'s items, in store order.
fn store_ids(store: &VectorStore) -> Vec<&str> {
    (0..store.len() as u32)
        .map(|i| store.external_id(i))
        .collect()
}

/// Writes per-item vectors (a row of `dim` values for each of `ids`, in that
/// order) as an inner-product index in the directory `sub`, advancing `pb`
/// as the graph is built.
pub(super) fn write_sub_index(
    sub: &Path,
    ids: &[&str],
    rows: &[f32],
    dim: usize,
    hnsw: &HnswParams,
    extra: serde_json::Value,
    pb: indicatif::ProgressBar,
) -> Result<()> {
    let mut sb = StoreBuilder::new(dim, Metric::InnerProduct)?;
    for (id, v) in ids.iter().zip(rows.chunks_exact(dim)) {
        sb.add(id, v, Default::default())?;
    }
    std::fs::create_dir_all(sub).map_err(|e| crate::error::Error::io(sub, e))?;
    // Searched on their f32 vectors only (their codes would go unread).
    let hnsw = HnswParams {
        quantize: false,
        ..*hnsw
    };
    write_index(sub, &sb, &hnsw, extra, &|d| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    Ok(())
}

/// Writes a serialised model in the envelope.
pub fn write_model(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(vecrec_index::format::write_file(
        path,
        vecrec_index::format::Kind::MODEL,
        [bytes.len() as u64, 0, 0, 0, 0],
        bytes,
    )?)
}

/// Trains the self-attentive sequence model from the item `features`
/// (`items × input`) and writes it into the generation: its item table as
/// an inner-product index under `sequence/`, the network as ONNX.
#[allow(clippy::too_many_arguments)]
fn write_sequence(
    dir: &Path,
    store: &VectorStore,
    features: &[f32],
    input: usize,
    histories: &[Vec<u32>],
    train: &crate::retrieve::TrainOptions,
    opts: &BuildOptions,
    stages: &mut Stages,
) -> Result<()> {
    use crate::retrieve::sequence::{item_init, windows, Sasrec};
    let s = &train.sequence;
    stages.run("sequence", || {
        let t = Instant::now();
        let init = item_init(features, input, s.dim, s.seed);
        let pb = bar(s.epochs, "sequence", opts.progress);
        let (model, loss) = Sasrec::train(histories, init, s, &|d| pb.set_position(d as u64));
        pb.finish_and_clear();
        write_sub_index(
            &dir.join(crate::layout::SEQUENCE_DIR),
            &store_ids(store),
            model.item_vectors(),
            s.dim,
            &opts.hnsw,
            serde_json::json!({"sequence_dim": s.dim}),
            bar(store.len(), "seq hnsw", opts.progress),
        )?;
        write_model(&dir.join(crate::layout::SEQUENCE_MODEL_FILE), &model.onnx())?;
        let n_windows = windows(histories, s.max_len).len();
        let train_seconds = t.elapsed().as_secs_f64();
        vecrec_index::format::write_json(
            &dir.join(crate::layout::SEQUENCE_META_FILE),
            &crate::layout::SequenceMeta {
                options: s.clone(),
                windows: n_windows,
                train_loss: loss,
                train_seconds,
            },
        )?;
        tracing::info!(loss, seconds = train_seconds, "sequence model trained");
        let work = format!("{} epochs, {n_windows} windows, loss {loss:.4}", s.epochs);
        Ok(((), work))
    })
}

/// Trains the two-tower user encoder and the cross-attention reranker and
/// writes them into the generation, a stage each: item embeddings as an
/// inner-product index under `two_tower/`, the user tower and the reranker
/// as ONNX.
#[allow(clippy::too_many_arguments)]
fn write_neural(
    dir: &Path,
    store: &VectorStore,
    als: &crate::retrieve::als::AlsModel,
    histories: &[Vec<u32>],
    train: &crate::retrieve::TrainOptions,
    opts: &BuildOptions,
    rerank: RerankPlan,
    stages: &mut Stages,
) -> Result<()> {
    use crate::rerank::din::Din;
    use crate::retrieve::two_tower::{item_features, TwoTower};
    let dc = store.dim();
    let features = item_features(store.vectors(), dc, &als.items, als.factors);
    let input = dc + als.factors;
    let e = train.two_tower.dim;
    let (tower, emb) = stages.run("two-tower", || {
        let t = Instant::now();
        let pb = bar(train.two_tower.epochs, "two-tower", opts.progress);
        let (tower, loss) =
            TwoTower::train_split(histories, &features, input, dc, &train.two_tower, &|d| {
                pb.set_position(d as u64)
            });
        pb.finish_and_clear();
        let emb = tower.item_vectors(&features);
        write_sub_index(
            &dir.join(TWO_TOWER_DIR),
            &store_ids(store),
            &emb,
            e,
            &opts.hnsw,
            serde_json::json!({"two_tower_dim": e}),
            bar(store.len(), "tt hnsw", opts.progress),
        )?;
        write_model(&dir.join(USER_TOWER_FILE), &tower.user_onnx())?;
        let train_seconds = t.elapsed().as_secs_f64();
        vecrec_index::format::write_json(
            &dir.join(TWO_TOWER_META_FILE),
            &TwoTowerMeta {
                options: train.two_tower.clone(),
                input,
                train_loss: loss,
                train_seconds,
            },
        )?;
        tracing::info!(
            loss,
            seconds = train_seconds,
            "two-tower user encoder trained"
        );
        let work = format!("{} epochs, loss {loss:.4}", train.two_tower.epochs);
        Ok(((tower, emb), work))
    })?;
    if train.sequence.enabled {
        write_sequence(dir, store, &features, input, histories, train, opts, stages)?;
    }
    if let RerankPlan::None = rerank {
        return Ok(());
    }
    stages.run("reranker", || {
        let t = Instant::now();
        let opts_r = &train.reranker;
        let (din, loss, meta_extra) = match rerank {
            // No held-out head had a positive (users with one interaction
            // each, say): nothing to learn an order from, so the sequences.
            RerankPlan::Heads(heads, sources) if !heads.is_empty() => {
                let pb = bar(opts_r.head_epochs, "reranker", opts.progress);
                let (din, loss) =
                    Din::train_heads(&heads, &emb, e, opts_r, &|d| pb.set_position(d as u64));
                pb.finish_and_clear();
                let features = crate::rerank::din::head_feature_names(&sources);
                (din, loss, (sources, features, "heads", heads.len()))
            }
            _ => {
                let pop = crate::retrieve::popularity(histories, store.len());
                // Hard negatives: the two-tower model's best unseen items for each prefix.
                let pool = opts_r.hard_pool;
                let retrieve = |u: usize, t: usize| -> Vec<u32> {
                    let user = tower.user_vector(&features, &histories[u][..t]);
                    let scores: Vec<f32> = emb
                        .chunks_exact(e)
                        .map(|row| row.iter().zip(&user).map(|(a, b)| a * b).sum())
                        .collect();
                    crate::retrieve::top_n(&scores, pool, &|_| true)
                        .into_iter()
                        .map(|x| x.0)
                        .collect()
                };
                let pb = bar(opts_r.epochs, "reranker", opts.progress);
                let (din, loss) = Din::train_with_progress(
                    histories,
                    &emb,
                    e,
                    &pop,
                    Some(&retrieve),
                    opts_r,
                    &|d| pb.set_position(d as u64),
                );
                pb.finish_and_clear();
                let features = crate::rerank::din::FEATURES
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect();
                (din, loss, (Vec::new(), features, "sequences", 0))
            }
        };
        let (sources, features, trained_on, heads) = meta_extra;
        write_model(&dir.join(crate::layout::DIN_FILE), &din.onnx())?;
        vecrec_index::format::write_json(
            &dir.join(crate::layout::DIN_META_FILE),
            &crate::rerank::DinMeta {
                history: opts_r.history,
                embed: e,
                train_loss: loss,
                sources,
                features,
                trained_on: trained_on.to_owned(),
                heads,
            },
        )?;
        tracing::info!(
            loss,
            trained_on,
            heads,
            seconds = t.elapsed().as_secs_f64(),
            "cross-attention reranker trained"
        );
        let epochs = if heads > 0 {
            opts_r.head_epochs
        } else {
            opts_r.epochs
        };
        Ok((
            (),
            format!("{epochs} epochs on {trained_on}, loss {loss:.4}"),
        ))
    })
}

/// The "embedding" stage of a build: every item's vector, through the
/// embedding cache under `root` unless `opts.embedding_cache` is off.
fn embed_stage(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    opts: &BuildOptions,
    stages: &mut Stages,
) -> Result<(Vec<Vec<f32>>, Embedded)> {
    stages.run("embedding", || {
        let (v, done) = if opts.embedding_cache {
            embed_cached(
                root,
                opts.embedding_parts.as_deref(),
                encoder,
                items,
                opts.progress,
            )?
        } else {
            let t = Instant::now();
            let v = embed_catalog(encoder, items, opts.progress)?;
            let done = Embedded {
                encoded: items.len(),
                reused: 0,
                encode_seconds: t.elapsed().as_secs_f64(),
            };
            (v, done)
        };
        let work = format!(
            "{} texts: {} embedded, {} from the cache",
            items.len(),
            done.encoded,
            done.reused
        );
        Ok(((v, done), work))
    })
}

/// The whole build: embed (through the embedding cache unless
/// `opts.embedding_cache` is off), then [`build_generation`].
pub fn build(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
) -> Result<BuildReport> {
    Ok(build_with_vectors(root, encoder, items, interactions, opts)?.0)
}

/// [`build`], also returning the catalogue's vectors as the encoder made
/// them (before the store normalised them), in catalogue order.
pub(super) fn build_with_vectors(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
) -> Result<(BuildReport, Vec<Vec<f32>>)> {
    let t = Instant::now();
    let mut stages = Stages::new();
    let (vectors, done) = embed_stage(root, encoder, items, opts, &mut stages)?;
    let embed_seconds = t.elapsed().as_secs_f64();
    let info = GenerationInfo {
        encoder_model: Some(encoder.files().model.display().to_string()),
        encoder_dim: Some(encoder.dim()),
        wal_seq: opts.folded_through.first().copied().unwrap_or(0),
        ..Default::default()
    };
    let mut report = build_generation_inner(
        root,
        items,
        &vectors,
        interactions,
        opts,
        info,
        stages,
        Rerank::AsConfigured,
    )?;
    report.embedded = done.encoded;
    report.reused_embeddings = done.reused;
    report.embed_seconds = embed_seconds;
    report.texts_per_second = done.encoded as f64 / done.encode_seconds.max(1e-9);
    report.total_seconds = t.elapsed().as_secs_f64();
    Ok((report, vectors))
}
