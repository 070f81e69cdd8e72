//! The bulk build: catalogue + interactions → embeddings → a new index
//! generation with item vectors, HNSW graph and user profiles, switched in
//! atomically. `vecrec-build` and `vecrec-eval` both call it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use vecrec_index::generation::{prune, GenerationWriter};
use vecrec_index::{write_index, HnswParams, Metric, StoreBuilder, VectorStore};

use crate::catalog::{CatalogItem, Interaction};
use crate::config::UserConfig;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::layout::{
    GenerationInfo, TwoTowerMeta, ALS_DIR, ALS_USERS_FILE, FUSION_FILE, TWO_TOWER_DIR,
    TWO_TOWER_META_FILE, USER_TOWER_FILE,
};
use crate::retrieve::sparse::SparseRows;
use crate::users::write_profiles;

/// Options of a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// HNSW parameters.
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
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            hnsw: HnswParams::default(),
            users: UserConfig::default(),
            keep_generations: 3,
            progress: true,
            train: Some(crate::retrieve::TrainOptions::default()),
            learn_fusion: Some(crate::config::HybridConfig::default()),
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
    /// Seconds spent embedding.
    pub embed_seconds: f64,
    /// Texts embedded per second.
    pub texts_per_second: f64,
    /// Seconds spent building the graph.
    pub hnsw_seconds: f64,
    /// Seconds spent training EASE and transitions.
    pub train_seconds: f64,
    /// Seconds for the whole build.
    pub total_seconds: f64,
}

/// A progress bar of `len` steps with rate and ETA, or a hidden one when
/// `on` is false.
pub fn bar(len: usize, msg: impl Into<std::borrow::Cow<'static, str>>, on: bool) -> ProgressBar {
    if !on {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
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

/// Builds a new generation under `root` from items, their vectors and interactions.
pub fn build_generation(
    root: &Path,
    items: &[CatalogItem],
    vectors: &[Vec<f32>],
    interactions: &[Interaction],
    opts: &BuildOptions,
    info: GenerationInfo,
) -> Result<BuildReport> {
    let start = Instant::now();
    let dim = vectors.first().map_or(0, Vec::len);
    let mut sb = StoreBuilder::new(dim, Metric::Cosine)?;
    for (item, v) in items.iter().zip(vectors) {
        sb.add(&item.id, v, item.meta.clone())?;
    }
    let writer = GenerationWriter::begin(root)?;
    let pb = bar(items.len(), "hnsw", opts.progress);
    let info = GenerationInfo {
        users: Some(opts.users.clone()),
        ..info
    };
    let manifest = write_index(writer.dir(), &sb, &opts.hnsw, info.to_json(), &|d| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();

    // Histories: per user, oldest first, ties by item id, unknown items skipped.
    let store = VectorStore::open(writer.dir(), false)?;
    let mut by_user: HashMap<&str, Vec<(i64, u32, f32)>> = HashMap::new();
    let mut skipped = 0;
    for it in interactions {
        match store.internal_id(&it.item) {
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
    let mut users: Vec<(String, Vec<(u32, f32)>)> = by_user
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
    let with_profile = write_profiles(writer.dir(), &store, &users, &opts.users)?;
    let t_train = Instant::now();
    if let Some(train) = &opts.train {
        let histories: Vec<Vec<u32>> = users
            .iter()
            .map(|u| u.1.iter().map(|x| x.0).collect())
            .collect();
        let ease = crate::retrieve::train_ease(&histories, store.len(), train)?;
        SparseRows::write(writer.dir(), crate::layout::EASE_ROWS, &ease)?;
        let transitions = crate::retrieve::train_transitions(&histories, store.len(), train);
        SparseRows::write(writer.dir(), crate::layout::TRANSITIONS_ROWS, &transitions)?;
        let als = crate::retrieve::als::train(&histories, store.len(), &train.als)?;
        write_als(writer.dir(), &store, &als, &opts.hnsw)?;
        if train.neural {
            write_neural(writer.dir(), &store, &als, &histories, train, &opts.hnsw)?;
        }
    }
    if let (Some(_), Some(hybrid)) = (&opts.train, &opts.learn_fusion) {
        if let Some(model) = fit_fusion(root, items, vectors, interactions, opts, hybrid)? {
            vecrec_index::format::write_json(&writer.dir().join(FUSION_FILE), &model)?;
        }
    }
    let train_seconds = t_train.elapsed().as_secs_f64();
    drop(store);
    let generation = writer.commit()?;
    prune(root, opts.keep_generations)?;
    Ok(BuildReport {
        generation,
        items: items.len(),
        users: with_profile,
        interactions: interactions.len() - skipped,
        skipped_unknown_items: skipped,
        embed_seconds: 0.0,
        texts_per_second: 0.0,
        hnsw_seconds: manifest.hnsw_build_seconds,
        train_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Fits the learned fusion model: the newest ceil(n/5) interactions of every
/// user with n ≥ 2 are held out (the rule of EVAL.md), a temporary generation
/// is built from the rest, and every held-out user's candidates from all
/// sources become rows labelled by whether the user went on to interact with
/// them. Returns `None` when nothing can be held out.
fn fit_fusion(
    root: &Path,
    items: &[CatalogItem],
    vectors: &[Vec<f32>],
    interactions: &[Interaction],
    opts: &BuildOptions,
    hybrid: &crate::config::HybridConfig,
) -> Result<Option<crate::fusion::LearnedModel>> {
    use crate::engine::{Engine, Source};
    use std::collections::HashSet;
    let order: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(k, it)| (it.id.as_str(), k))
        .collect();
    let mut by_user: HashMap<&str, Vec<&Interaction>> = HashMap::new();
    for it in interactions
        .iter()
        .filter(|it| order.contains_key(it.item.as_str()))
    {
        by_user.entry(&it.user).or_default().push(it);
    }
    let (mut fit_part, mut held): (Vec<Interaction>, HashMap<String, HashSet<String>>) =
        (Vec::new(), HashMap::new());
    for (user, mut v) in by_user {
        v.sort_by(|a, b| {
            a.timestamp
                .cmp(&b.timestamp)
                .then(order[a.item.as_str()].cmp(&order[b.item.as_str()]))
        });
        let cut = if v.len() < 2 {
            v.len()
        } else {
            v.len() - v.len().div_ceil(5)
        };
        fit_part.extend(v[..cut].iter().map(|x| (*x).clone()));
        if cut < v.len() {
            held.insert(
                user.to_owned(),
                v[cut..].iter().map(|x| x.item.clone()).collect(),
            );
        }
    }
    if held.is_empty() {
        return Ok(None);
    }
    let tmp = root.join(format!(".fusion-fit-{}", std::process::id()));
    let sub = BuildOptions {
        learn_fusion: None,
        progress: false,
        keep_generations: 1,
        ..opts.clone()
    };
    let result = (|| {
        build_generation(
            &tmp,
            items,
            vectors,
            &fit_part,
            &sub,
            GenerationInfo::default(),
        )?;
        let cfg = crate::config::Config {
            users: opts.users.clone(),
            hybrid: hybrid.clone(),
            train: opts.train.clone().unwrap_or_default(),
            ..Default::default()
        };
        let engine = Engine::open(&tmp, cfg, None)?;
        let mut names: Vec<String> = Source::ALL.iter().map(|s| s.name().to_owned()).collect();
        if engine.reranker().is_some() {
            names.push(crate::engine::RERANKER.to_owned());
        }
        let mut rows = Vec::new();
        let mut users: Vec<&String> = held.keys().collect();
        users.sort();
        for user in users {
            let Some(u) = engine.users().lookup(user) else {
                continue;
            };
            let hist = engine.users().history(u);
            let seen: HashSet<u32> = hist.iter().map(|h| h.0).collect();
            let lists = engine.candidate_lists(
                &hist,
                Some(u),
                &|i| !seen.contains(&i),
                crate::fusion::FusionMethod::Learned,
            )?;
            let truth = &held[user];
            for (i, f) in crate::fusion::features(&names, &lists) {
                rows.push((f, truth.contains(engine.index().store().external_id(i))));
            }
        }
        Ok(crate::fusion::LearnedModel::fit(names, &rows, 1.0))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Writes the ALS item factors as an inner-product index under `dir/als/` and
/// the user factors as `dir/als_users.bin`.
fn write_als(
    dir: &Path,
    store: &VectorStore,
    model: &crate::retrieve::als::AlsModel,
    hnsw: &HnswParams,
) -> Result<()> {
    let f = model.factors;
    write_sub_index(
        &dir.join(ALS_DIR),
        store,
        &model.items,
        f,
        hnsw,
        serde_json::json!({"als_factors": f}),
    )?;
    let users = model.users.len() / f.max(1);
    let mut w = vecrec_index::format::FileWriter::create(
        &dir.join(ALS_USERS_FILE),
        vecrec_index::format::Kind::VECTORS,
        [f as u64, users as u64, Metric::InnerProduct.code(), 0, 0],
    )?;
    w.write_pod(&model.users)?;
    w.finish()?;
    Ok(())
}

/// Writes per-item vectors (`store.len() × dim`, in store order, same ids)
/// as an inner-product index in the directory `sub`.
fn write_sub_index(
    sub: &Path,
    store: &VectorStore,
    rows: &[f32],
    dim: usize,
    hnsw: &HnswParams,
    extra: serde_json::Value,
) -> Result<()> {
    let mut sb = StoreBuilder::new(dim, Metric::InnerProduct)?;
    for (i, v) in rows.chunks_exact(dim).take(store.len()).enumerate() {
        sb.add(store.external_id(i as u32), v, Default::default())?;
    }
    std::fs::create_dir_all(sub).map_err(|e| crate::error::Error::io(sub, e))?;
    write_index(sub, &sb, hnsw, extra, &|_| {})?;
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

/// Trains the two-tower user encoder and the cross-attention reranker and
/// writes them into the generation: item embeddings as an inner-product index
/// under `two_tower/`, the user tower and the reranker as ONNX.
fn write_neural(
    dir: &Path,
    store: &VectorStore,
    als: &crate::retrieve::als::AlsModel,
    histories: &[Vec<u32>],
    train: &crate::retrieve::TrainOptions,
    hnsw: &HnswParams,
) -> Result<()> {
    use crate::rerank::din::Din;
    use crate::retrieve::two_tower::{item_features, TwoTower};
    let t = Instant::now();
    let dc = store.dim();
    let features = item_features(store.vectors(), dc, &als.items, als.factors);
    let input = dc + als.factors;
    let (tower, loss) = TwoTower::train(histories, &features, input, &train.two_tower);
    let emb = tower.item_vectors(&features);
    let e = train.two_tower.dim;
    write_sub_index(
        &dir.join(TWO_TOWER_DIR),
        store,
        &emb,
        e,
        hnsw,
        serde_json::json!({"two_tower_dim": e}),
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
    let t = Instant::now();
    let pop = crate::retrieve::popularity(histories, store.len());
    // Hard negatives: the two-tower model's best unseen items for each prefix.
    let pool = train.reranker.hard_pool;
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
    let (din, loss) = Din::train(histories, &emb, e, &pop, Some(&retrieve), &train.reranker);
    write_model(&dir.join(crate::layout::DIN_FILE), &din.onnx())?;
    vecrec_index::format::write_json(
        &dir.join(crate::layout::DIN_META_FILE),
        &crate::rerank::DinMeta {
            history: train.reranker.history,
            embed: e,
            train_loss: loss,
        },
    )?;
    tracing::info!(
        loss,
        seconds = t.elapsed().as_secs_f64(),
        "cross-attention reranker trained"
    );
    Ok(())
}

/// The whole build: embed, then [`build_generation`].
pub fn build(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
) -> Result<BuildReport> {
    let t = Instant::now();
    let vectors = embed_catalog(encoder, items, opts.progress)?;
    let embed_seconds = t.elapsed().as_secs_f64();
    let info = GenerationInfo {
        encoder_model: Some(encoder.files().model.display().to_string()),
        encoder_dim: Some(encoder.dim()),
        ..Default::default()
    };
    let mut report = build_generation(root, items, &vectors, interactions, opts, info)?;
    report.embed_seconds = embed_seconds;
    report.texts_per_second = items.len() as f64 / embed_seconds.max(1e-9);
    report.total_seconds = t.elapsed().as_secs_f64();
    Ok(report)
}
