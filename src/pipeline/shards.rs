//! Partitioned builds: the catalogue split into shards by a stable hash of
//! each item's id ([`shard_of`]), one index root per shard
//! (`<root>/shard-<i>/`, each with its generations and `CURRENT`), so a
//! catalogue too large for one machine is served by several and merged by
//! `vecrec route` (docs/scale-out.md).
//!
//! A shard holds its own items' vectors, graph, int8 codes and metadata,
//! and every user: the profile made over the *whole* catalogue (so a shard
//! scores its items for a user exactly as one node would) beside the
//! history of its own items (which the answer leaves out as seen).
//!
//! A build with training first builds one node's generation over the whole
//! catalogue under `<root>/front/` (the front tier's: users, models,
//! fusion, reranker) and then *slices* it: each shard also holds its items'
//! rows of the ALS, two-tower and sequence tables (each an inner-product
//! index) and the columns of its items in the EASE and transitions
//! matrices (a row for every item of the catalogue), so it scores its items
//! for the sources exactly as the front's generation does.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use vecrec_index::generation::{prune, publish, write_atomic, GenerationWriter};
use vecrec_index::{write_index, Index, Metric, StoreBuilder};

use super::{bar, embed_stage, histories_by, BuildOptions, BuildReport, Stages};
use crate::catalog::{CatalogItem, Interaction};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::layout::{
    front_root, generation_name, shard_of, shard_root, short_hex, GenerationInfo, PendingFront,
    ShardInfo, SlicedMeta, ALS_DIR, CUT_DIR, EASE_ROWS, FRONT_ROWS_FILE, PENDING_FRONT_FILE,
    PUBLISHED_FRONT_FILE, SEQUENCE_DIR, SERVED_RUNS_DIR, SLICED_FILE, TRANSITIONS_ROWS,
    TWO_TOWER_DIR,
};
use crate::retrieve::sparse::SparseRows;
use crate::users::{profile_of, write_users, UserProfiles};

/// Which part of a partitioned build one process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardWork {
    /// Every shard, and with training the front first; all published
    /// together at the end.
    All,
    /// Shard `index` only (one pod of an indexed Job). Without training it
    /// is published at once. With training it is cut from the front that a
    /// [`ShardWork::Front`] build left pending for the same inputs (waiting
    /// up to `wait_front` for one to appear), and the build that cuts the
    /// last of its shards publishes the front and every shard together.
    One {
        /// The shard (0-based).
        index: usize,
        /// Longest wait for a pending front of these inputs.
        wait_front: Duration,
    },
    /// With training only: the front generation, trained over the whole
    /// catalogue and left pending (unpublished) for the `One` builds.
    Front,
}

/// Builds the part `work` of a partitioned build of `shards` under `root`:
/// embeds the whole catalogue once (through the embedding cache under
/// `root`, which every shard's build shares), makes every user's profile
/// over all of it, and writes each shard's generation. Returns one report
/// per generation written, in shard order (the front's alone for
/// [`ShardWork::Front`]).
pub fn build_shards(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
    shards: usize,
    work: ShardWork,
) -> Result<Vec<BuildReport>> {
    if shards == 0 {
        return Err(Error::invalid("--shards must be at least 1"));
    }
    let only = match work {
        ShardWork::One { index, .. } if index >= shards => {
            return Err(Error::invalid(format!(
                "--shard {index} is out of range: shards are numbered 0..{shards}"
            )))
        }
        ShardWork::One { index, .. } => Some(index),
        ShardWork::All | ShardWork::Front => None,
    };
    // The shards' cache parts (`embed_part`) spare the build their texts.
    let opts = &BuildOptions {
        embedding_parts: Some(root.to_owned()),
        ..opts.clone()
    };
    if opts.train.is_some() || opts.learn_fusion.is_some() {
        return build_sliced(root, encoder, items, interactions, opts, shards, work);
    }
    if work == ShardWork::Front {
        return Err(Error::invalid(
            "--front-only writes the front tier's trained generation: a --content-only \
             build has none",
        ));
    }
    let mut stages = Stages::new();
    let (vectors, embedded) = embed_stage(root, encoder, items, opts, &mut stages)?;
    let dim = encoder.dim();
    // Rows of the whole catalogue, as one node numbers them, so histories
    // (and so profiles) come out in the same order with the same ties.
    let row: HashMap<&str, u32> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i as u32))
        .collect();
    let (users, skipped) = histories_by(&|id| row.get(id).copied(), interactions);
    let profiles: Vec<Option<Vec<f32>>> = stages.run("profiles", || {
        let p = users
            .iter()
            .map(|(_, h)| profile_of(&|i| &vectors[i as usize], dim, h, &opts.users))
            .collect();
        Ok((p, format!("{} users", users.len())))
    })?;
    let whole = Whole {
        items,
        vectors: &vectors,
        users: &users,
        profiles: &profiles,
        interactions: (interactions.len() - skipped, skipped),
    };
    let mut reports = Vec::new();
    for s in (0..shards).filter(|s| only.is_none_or(|o| o == *s)) {
        let mut report = write_shard(root, encoder, &whole, opts, (s, shards), &mut stages, None)?;
        report.embedded = embedded.encoded;
        report.reused_embeddings = embedded.reused;
        report.texts_per_second = embedded.encoded as f64 / embedded.encode_seconds.max(1e-9);
        reports.push(report);
    }
    if let Some(last) = reports.last_mut() {
        last.stages = stages.into_list();
    }
    Ok(reports)
}

/// What [`embed_part`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EmbedPartReport {
    /// The cache part written.
    pub path: std::path::PathBuf,
    /// The shard's distinct texts.
    pub texts: usize,
    /// Texts embedded now.
    pub embedded: usize,
    /// Texts found in the build's cache or in the part before.
    pub reused: usize,
    /// Seconds inside the encoder.
    pub encode_seconds: f64,
}

/// Embeds only shard `i` of `shards`'s texts into its cache part under the
/// partitioned build's `root` (`vecrec-build --shards N --shard i
/// --embed-only`), taking the texts the build's cache or the part already
/// hold from there. Every pod of a rebuild Job embeds its own shard's texts
/// this way, at the same time, and each shard's build then finds every text
/// in the parts; a text no part holds yet is embedded by the build itself,
/// so the parts never decide what a build computes, only how fast.
pub fn embed_part(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    shards: usize,
    i: usize,
    progress: bool,
) -> Result<EmbedPartReport> {
    if i >= shards {
        return Err(Error::invalid(format!(
            "--shard {i} is out of range: shards are numbered 0..{shards}"
        )));
    }
    let own: Vec<CatalogItem> = items
        .iter()
        .filter(|it| shard_of(&it.id, shards) == i)
        .cloned()
        .collect();
    let fp = super::cache::fingerprint(encoder)?;
    let path = super::cache::part_path(root, &fp, i, shards);
    // The caches of a build without training (under the root) and with
    // (the front's), and the part an earlier rebuild wrote.
    let cache = |dir: &Path| {
        super::cache::EmbeddingCache::open(&dir.join(super::cache::CACHE_DIR), &fp, encoder.dim())
    };
    let (vectors, keys, done) = super::embed_cached_with(
        &[
            cache(root),
            cache(&front_root(root)),
            super::cache::EmbeddingCache::open_file(&path, encoder.dim()),
        ],
        &fp,
        encoder,
        &own,
        progress,
    )?;
    super::cache::write_file(&path, &keys, &vectors)?;
    Ok(EmbedPartReport {
        path,
        texts: keys.iter().collect::<std::collections::HashSet<_>>().len(),
        embedded: done.encoded,
        reused: done.reused,
        encode_seconds: done.encode_seconds,
    })
}

/// The whole catalogue a shard is cut from, numbered as one node numbers it.
struct Whole<'a> {
    items: &'a [CatalogItem],
    /// One vector per item.
    vectors: &'a [Vec<f32>],
    /// Each user's history over the whole catalogue.
    users: &'a [(String, Vec<(u32, f32)>)],
    /// Each user's profile over the whole catalogue.
    profiles: &'a [Option<Vec<f32>>],
    /// Interactions read and skipped (unknown items).
    interactions: (usize, usize),
}

/// Writes what a shard's generation holds beyond its content index, given
/// the generation's directory and the shard's row of each catalogue row it
/// owns.
type Slicer<'a> = dyn Fn(&Path, &[Option<u32>]) -> Result<()> + 'a;

/// Writes shard `s` of `shards` of `whole` as a new generation under its
/// root: its items' vectors, graph and metadata, every user with the
/// history of its items; `slice` (given the shard's row of each of the
/// catalogue's rows it owns) writes what else the generation holds.
fn write_shard(
    root: &Path,
    encoder: &Encoder,
    whole: &Whole<'_>,
    opts: &BuildOptions,
    (s, shards): (usize, usize),
    stages: &mut Stages,
    slice: Option<&Slicer<'_>>,
) -> Result<BuildReport> {
    let t = Instant::now();
    let dim = encoder.dim();
    let items = whole.items;
    let owner: Vec<usize> = items.iter().map(|it| shard_of(&it.id, shards)).collect();
    let dir = shard_root(root, s);
    let writer = GenerationWriter::begin(&dir)?;
    let info = GenerationInfo {
        users: Some(opts.users.clone()),
        encoder_model: Some(encoder.files().model.display().to_string()),
        encoder_dim: Some(dim),
        shard: Some(ShardInfo {
            index: s,
            of: shards,
        }),
        wal_seq: opts.folded_through.get(s).copied().unwrap_or(0),
    };
    // The shard's row of each of the catalogue's rows it owns.
    let mut local: Vec<Option<u32>> = vec![None; items.len()];
    let manifest = stages.run(&format!("shard {s}: hnsw"), || {
        let mut sb = StoreBuilder::new(dim, Metric::Cosine)?;
        for (i, (item, v)) in items.iter().zip(whole.vectors).enumerate() {
            if owner[i] == s {
                local[i] = Some(sb.add(&item.id, v, item.meta.clone())?);
            }
        }
        let n = sb.len();
        let pb = bar(n, format!("shard {s}"), opts.progress);
        let m = write_index(writer.dir(), &sb, &opts.hnsw, info.to_json(), &|d| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        Ok((m, format!("{n} items × {dim}")))
    })?;
    let with_profile = stages.run(&format!("shard {s}: users"), || {
        let own: Vec<(String, Vec<(u32, f32)>)> = whole
            .users
            .iter()
            .map(|(u, h)| {
                let h = h
                    .iter()
                    .filter_map(|&(i, w)| local[i as usize].map(|l| (l, w)))
                    .collect();
                (u.clone(), h)
            })
            .collect();
        let n = write_users(writer.dir(), dim, &own, &|u| whole.profiles[u].clone())?;
        Ok((n, format!("{} users", own.len())))
    })?;
    if let Some(slice) = slice {
        stages.run(&format!("shard {s}: sources"), || {
            slice(writer.dir(), &local)?;
            Ok(((), "sliced".to_owned()))
        })?;
    }
    // A sliced shard goes live with its front (see `build_sliced`).
    let generation = if slice.is_some() {
        writer.commit_unpublished()?
    } else {
        writer.commit()?
    };
    prune(&dir, opts.keep_generations)?;
    let mut report = BuildReport::indexed(
        generation,
        (local.iter().flatten().count(), with_profile),
        whole.interactions,
        manifest.hnsw_build_seconds,
        t,
    );
    report.peak_rss_mib = stages.peak_mib();
    Ok(report)
}

/// A partitioned build with training: one node's generation over the whole
/// catalogue under `<root>/front/`, then the shards cut from it, as `work`
/// says: everything in this process, the front only, or one shard cut
/// from a pending front.
fn build_sliced(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
    shards: usize,
    work: ShardWork,
) -> Result<Vec<BuildReport>> {
    let front_root = front_root(root);
    let fp = super::cache::fingerprint(encoder)?;
    let inputs = build_digest(&fp, items, interactions, opts);
    if work != ShardWork::All && published_is(&front_root, shards, &inputs)? {
        // A rebuild of these inputs and settings finished already (a Job
        // run again): there is nothing to train or cut. The shards of a
        // run learn so from the front's record of it.
        tracing::info!("the front and shards of these inputs and settings are served already");
        if let (ShardWork::Front, Some(run)) = (work, &opts.run) {
            let served = read_pending(&front_root.join(PUBLISHED_FRONT_FILE))?
                .expect("published_is read it");
            let marker = run_marker(&front_root, run)?;
            let dir = marker.parent().expect("under the front root");
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let record = PendingFront {
                run: Some(run.clone()),
                ..served
            };
            write_front_record(&marker, &record)?;
            super::lock::prune_markers(dir, KEPT_RUN_MARKERS)?;
        }
        return Ok(Vec::new());
    }
    if let ShardWork::One { index, wait_front } = work {
        let pending = wait_for_front(&front_root, shards, &inputs, wait_front)?;
        let front_dir = front_root.join(&pending.generation);
        // The front's inputs hold the log records it folded, whether or
        // not this build was told to fold: its shard records them, or its
        // servers would apply them again.
        let folded = BuildOptions {
            folded_through: if pending.folded_through.is_empty() {
                opts.folded_through.clone()
            } else {
                pending.folded_through.clone()
            },
            ..opts.clone()
        };
        let opts = &folded;
        // The vectors the front was built from, from the caches it wrote.
        let raw = {
            let mut caches = vec![super::cache::EmbeddingCache::open(
                &front_root.join(super::cache::CACHE_DIR),
                &fp,
                encoder.dim(),
            )];
            caches.extend(super::cache::open_parts(root, &fp, encoder.dim()));
            super::embed_cached_with(&caches, &fp, encoder, items, opts.progress)?.0
        };
        let mut stages = Stages::new();
        let mut reports = cut_shards(
            root,
            encoder,
            &front_dir,
            items,
            raw,
            pending.interactions,
            opts,
            (&[index], shards),
            &mut stages,
        )?;
        let cut = front_root.join(CUT_DIR).join(&pending.generation);
        std::fs::create_dir_all(&cut).map_err(|e| Error::io(&cut, e))?;
        let name = generation_name(&reports[0].generation);
        super::lock::check_held(root)?;
        write_atomic(
            &cut.join(format!("shard-{index}")),
            cut_marker(&name, opts.run.as_deref()).as_bytes(),
        )?;
        publish_if_cut(root, shards)?;
        if let Some(last) = reports.last_mut() {
            last.stages = stages.into_list();
        }
        return Ok(reports);
    }
    if work == ShardWork::Front {
        let pending = read_pending(&front_root.join(PENDING_FRONT_FILE))?;
        if let Some(p) = pending.filter(|p| p.is_for(front_root.as_path(), shards, &inputs)) {
            // Shard builds may already be cutting from it (a rebuild that
            // stopped part way, run again): training again would leave the
            // shards cut from two fronts, and neither would be published.
            tracing::info!(front = %p.generation, "a front of these inputs and settings is pending already; not training again");
            if opts.run.is_some() && p.run != opts.run {
                // This run's shards cut from it, and only they count (each
                // marker names its run): the rebuild it took over stopped,
                // and its pods' markers could publish before this one's
                // pods are done.
                // Its inputs hold what it folded, whatever this build folded.
                let folded_through = if opts.folded_through.is_empty() {
                    p.folded_through.clone()
                } else {
                    opts.folded_through.clone()
                };
                write_pending(
                    &front_root,
                    &PendingFront {
                        run: opts.run.clone(),
                        folded_through,
                        ..p
                    },
                )?;
                // Its pods may have cut every shard already (from the front
                // pending under the other run's name).
                publish_if_cut(root, shards)?;
            }
            return Ok(Vec::new());
        }
    }
    // Nothing goes live until every shard is cut: the front and the shards
    // are published together at the end, so a router and its shards see a
    // mismatch only for the moments their reloads take.
    // The front has no log of its own: what was folded is the shards'.
    let front_opts = BuildOptions {
        publish: false,
        folded_through: Vec::new(),
        ..opts.clone()
    };
    // The shards' content vectors as the front got them, before its store
    // normalised them, so each shard normalises exactly the same numbers.
    let (front_report, raw) =
        super::build_with_vectors(&front_root, encoder, items, interactions, &front_opts)?;
    let counts = (
        front_report.interactions,
        front_report.skipped_unknown_items,
    );
    if work == ShardWork::Front {
        let pending = PendingFront {
            generation: generation_name(&front_report.generation),
            shards,
            inputs,
            interactions: counts,
            folded_through: opts.folded_through.clone(),
            run: opts.run.clone(),
        };
        // Markers of fronts no longer pending would never be read again.
        super::lock::check_held(root)?;
        let cut = front_root.join(CUT_DIR);
        super::lock::removed(std::fs::remove_dir_all(&cut), &cut)?;
        write_pending(&front_root, &pending)?;
        return Ok(vec![front_report]);
    }
    let mut stages = Stages::new();
    let all: Vec<usize> = (0..shards).collect();
    let mut reports = cut_shards(
        root,
        encoder,
        &front_report.generation,
        items,
        raw,
        counts,
        opts,
        (&all, shards),
        &mut stages,
    )?;
    super::lock::check_held(root)?;
    for (s, r) in reports.iter().enumerate() {
        publish(&shard_root(root, s), &r.generation)?;
    }
    publish(&front_root, &front_report.generation)?;
    // A front left pending by an earlier split build is older than this
    // one: nothing may cut from it and publish it over this build.
    let built = PendingFront {
        generation: generation_name(&front_report.generation),
        shards,
        inputs,
        interactions: counts,
        folded_through: opts.folded_through.clone(),
        run: None,
    };
    record_published(&front_root, &built, None)?;
    if let Some(last) = reports.last_mut() {
        last.stages = stages.into_list();
    }
    Ok(reports)
}

/// A digest (SHA-256, first 16 bytes, hex) of a build's inputs: every
/// item's id, embedded text and attributes, and every interaction, in
/// order. Shard builds cut only from a front built from the same.
pub fn inputs_digest(items: &[CatalogItem], interactions: &[Interaction]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((items.len() as u64).to_le_bytes());
    for it in items {
        let meta = serde_json::to_string(&it.meta).expect("serialisable");
        for part in [it.id.as_str(), &it.embedding_text(), &meta] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    h.update((interactions.len() as u64).to_le_bytes());
    for x in interactions {
        for part in [x.user.as_str(), &x.item, x.event.as_deref().unwrap_or("\0")] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(x.timestamp.to_le_bytes());
        h.update(x.weight.to_bits().to_le_bytes());
    }
    short_hex(&h.finalize())
}

/// [`inputs_digest`] with the encoder's fingerprint and the build's
/// settings (training, fusion, users, HNSW): what a pending front must
/// match for a shard build to cut from it.
fn build_digest(
    encoder_fingerprint: &[u8; 32],
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
) -> String {
    use sha2::{Digest, Sha256};
    let settings = serde_json::json!({
        "train": opts.train,
        "learn_fusion": opts.learn_fusion,
        "head_hybrid": opts.head_hybrid,
        "users": opts.users,
        "hnsw": opts.hnsw,
    });
    let mut h = Sha256::new();
    h.update(inputs_digest(items, interactions).as_bytes());
    h.update(encoder_fingerprint);
    h.update(settings.to_string().as_bytes());
    short_hex(&h.finalize())
}

/// The front left pending under `front_root` for `shards` shards of the
/// inputs `inputs`, waiting up to `wait` (checking every second) for one.
fn wait_for_front(
    front_root: &Path,
    shards: usize,
    inputs: &str,
    wait: Duration,
) -> Result<PendingFront> {
    let path = front_root.join(PENDING_FRONT_FILE);
    let until = Instant::now() + wait;
    let mut told = false;
    loop {
        let found = read_pending(&path)?;
        let other = match &found {
            Some(p) if p.is_for(front_root, shards, inputs) => return Ok(found.expect("matched")),
            Some(p) => format!(
                "the front pending there ({}) is for {} shards of other inputs or settings, or gone",
                p.generation, p.shards
            ),
            None => "none is pending there".to_owned(),
        };
        if Instant::now() >= until {
            return Err(Error::invalid(format!(
                "no front to cut this shard from under {} ({other}): run `vecrec-build \
                 --shards {shards} --front-only` with the same catalogue, interactions and \
                 configuration first, or give --wait-front SECONDS to wait for it",
                front_root.display()
            )));
        }
        if !told {
            tracing::info!(front = %front_root.display(), "waiting for the front to cut this shard from ({other})");
            told = true;
        }
        std::thread::sleep(Duration::from_secs(1).min(until - Instant::now()));
    }
}

/// Records `pending` as the front pending under `front_root`.
fn write_pending(front_root: &Path, pending: &PendingFront) -> Result<()> {
    // Written only by a build that still holds the root's lease.
    if let Some(root) = front_root.parent() {
        super::lock::check_held(root)?;
    }
    write_front_record(&front_root.join(PENDING_FRONT_FILE), pending)
}

/// Writes a front's record (`PENDING.json`, `PUBLISHED.json`, a run's
/// marker) to `path` whole, by one rename.
fn write_front_record(path: &Path, record: &PendingFront) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).expect("serialisable");
    write_atomic(path, &json)?;
    Ok(())
}

/// The file under `front_root` that says rebuild `run` found its build
/// served already; a run id is a file name of letters, digits, `.`, `_`
/// and `-` (a Job's uid is one), at most 128 long.
fn run_marker(front_root: &Path, run: &str) -> Result<std::path::PathBuf> {
    check_run(run)?;
    Ok(front_root.join(SERVED_RUNS_DIR).join(format!("{run}.json")))
}

/// Markers of rebuilds that found their build served kept, the newest.
const KEPT_RUN_MARKERS: usize = 16;

/// Refuses a rebuild id (`--run`) that is empty, too long, or not a plain
/// file name: an empty one (an unset variable) would make every rebuild
/// the same one.
pub fn check_run(run: &str) -> Result<()> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if run.is_empty() || run.len() > 128 || run.starts_with('.') || !run.chars().all(plain) {
        return Err(Error::invalid(format!(
            "--run {run:?}: a rebuild id is 1 to 128 letters, digits, '.', '_' or '-' (not \
             starting with '.'), the same for every pod of one rebuild and new for the next"
        )));
    }
    Ok(())
}

/// The front of the split rebuild `run` of `shards` shards under `root`:
/// pending, published by it, or (when its `--front-only` found the same
/// build served already) the one served. `None`: that rebuild's front is
/// not written yet.
pub fn pending_of_run(root: &Path, shards: usize, run: &str) -> Result<Option<PendingFront>> {
    let front_root = front_root(root);
    let marker = run_marker(&front_root, run)?;
    for file in [
        front_root.join(PENDING_FRONT_FILE),
        front_root.join(PUBLISHED_FRONT_FILE),
        marker,
    ] {
        if let Some(p) = read_pending(&file)? {
            if p.run.as_deref() == Some(run) && p.shards == shards {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// The inputs a shard of a folding split rebuild is cut with
/// ([`folded_cut`]).
#[derive(Debug)]
pub struct FoldedCut {
    /// The catalogue the front was trained on (`OUT/folded/`).
    pub items: Vec<CatalogItem>,
    /// Its interactions.
    pub interactions: Vec<Interaction>,
    /// The last record of each shard's log they hold.
    pub folded_through: Vec<u64>,
}

/// What shard builds of the folding split rebuild `opts.run` (`--shard i
/// --fold-log`) cut from: the inputs its `--front-only` folded and wrote
/// to `OUT/folded/` under `root`, once its front is pending (waiting up
/// to `wait`, checking every second). `None` when that rebuild has
/// nothing to cut: its front found the same build served already, or it
/// was published.
pub fn folded_cut(
    root: &Path,
    encoder: &Encoder,
    opts: &BuildOptions,
    shards: usize,
    wait: Duration,
) -> Result<Option<FoldedCut>> {
    let run = opts.run.as_deref().ok_or_else(|| {
        Error::invalid("a shard of a folding split rebuild needs the rebuild's --run")
    })?;
    let front_root = front_root(root);
    let until = Instant::now() + wait;
    let mut told = false;
    loop {
        if let Some(p) = pending_of_run(root, shards, run)? {
            let published = read_pending(&front_root.join(PUBLISHED_FRONT_FILE))?;
            if published.is_some_and(|s| s.generation == p.generation)
                || run_marker(&front_root, run)?.is_file()
            {
                return Ok(None);
            }
            if p.folded_through.len() != shards {
                return Err(Error::invalid(format!(
                    "the front of rebuild {run} folded no logs: cut its shards with the inputs \
                     it was given, without --fold-log"
                )));
            }
            let (items, interactions) = super::read_folded(root)?;
            let fp = super::cache::fingerprint(encoder)?;
            if build_digest(&fp, &items, &interactions, opts) != p.inputs {
                return Err(Error::invalid(format!(
                    "{} no longer holds the inputs the front of rebuild {run} was trained on \
                     (another folding build wrote it since), or this build's configuration \
                     differs from the front's: run the rebuild again",
                    super::folded_dir(root).display()
                )));
            }
            return Ok(Some(FoldedCut {
                items,
                interactions,
                folded_through: p.folded_through,
            }));
        }
        if Instant::now() >= until {
            return Err(Error::invalid(format!(
                "no front of rebuild {run} under {}: run `vecrec-build --shards {shards} \
                 --front-only --fold-log --run {run}` first, or give --wait-front SECONDS to \
                 wait for it",
                front_root.display()
            )));
        }
        if !told {
            tracing::info!(
                run,
                "waiting for the front of this rebuild to cut the shard from"
            );
            told = true;
        }
        std::thread::sleep(Duration::from_secs(1).min(until - Instant::now()));
    }
}

/// The front recorded in `path` (`PENDING.json` or `PUBLISHED.json`,
/// written whole by one rename), if any.
fn read_pending(path: &Path) -> Result<Option<PendingFront>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// What a shard's build leaves under `cut/<front>/shard-i`: its new
/// generation's name, and on a second line the rebuild (`--run`) it
/// belongs to.
fn cut_marker(generation: &str, run: Option<&str>) -> String {
    match run {
        Some(run) => format!("{generation}\n{run}\n"),
        None => generation.to_owned(),
    }
}

/// The generation a cut marker names, if it belongs to `run`.
fn marked_for<'a>(marker: &'a str, run: Option<&str>) -> Option<&'a str> {
    let mut lines = marker.lines();
    let generation = lines.next()?.trim();
    let by = lines.next().map(str::trim).filter(|r| !r.is_empty());
    (by == run).then_some(generation)
}

/// Publishes the front pending now and every shard cut from it once each
/// shard's build of its rebuild (`run`) has left its generation's name
/// under `cut/`; until then does nothing. Two builds finishing together
/// may both publish: the same names, each written atomically.
fn publish_if_cut(root: &Path, shards: usize) -> Result<()> {
    let front_root = front_root(root);
    let Some(pending) = read_pending(&front_root.join(PENDING_FRONT_FILE))? else {
        return Ok(());
    };
    let pending = &pending;
    let cut = front_root.join(CUT_DIR).join(&pending.generation);
    let mut names = Vec::with_capacity(shards);
    for s in 0..shards {
        match std::fs::read_to_string(cut.join(format!("shard-{s}"))) {
            Ok(marker) => match marked_for(&marker, pending.run.as_deref()) {
                Some(name) => names.push(name.to_owned()),
                None => return Ok(()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&cut, e)),
        }
    }
    // Every generation named must still be there (nothing pruned it)
    // before anything is published.
    let dirs: Vec<std::path::PathBuf> = names
        .iter()
        .enumerate()
        .map(|(s, name)| shard_root(root, s).join(name.trim()))
        .collect();
    if let Some(missing) = dirs.iter().find(|d| !d.is_dir()) {
        return Err(Error::invalid(format!(
            "{} is marked cut from front {} but is gone: build that shard again",
            missing.display(),
            pending.generation
        )));
    }
    if let Err(e) = super::lock::check_held(root) {
        // Another pod of this rebuild, finishing at the same time,
        // published these cuts and released the lease just now.
        let published = read_pending(&front_root.join(PUBLISHED_FRONT_FILE))?;
        if published.is_some_and(|p| p.generation == pending.generation) {
            return Ok(());
        }
        return Err(e);
    }
    for (s, dir) in dirs.iter().enumerate() {
        publish(&shard_root(root, s), dir)?;
    }
    publish(&front_root, &front_root.join(&pending.generation))?;
    tracing::info!(front = %pending.generation, shards, "published the front and every shard cut from it");
    record_published(&front_root, pending, Some(pending))?;
    // The rebuild is over: its pods' lease goes with it.
    if let Some(run) = &pending.run {
        super::lock::release_run(root, run);
    }
    Ok(())
}

/// Records `served` as the front published last (`PUBLISHED.json`, for
/// [`published_is`]) and removes the pending record and the cut markers:
/// only if the pending one is `only` when given (a newer front may be
/// pending), always otherwise.
fn record_published(
    front_root: &Path,
    served: &PendingFront,
    only: Option<&PendingFront>,
) -> Result<()> {
    write_front_record(&front_root.join(PUBLISHED_FRONT_FILE), served)?;
    let file = front_root.join(PENDING_FRONT_FILE);
    let pending = read_pending(&file)?;
    if pending.is_some() && only.is_none_or(|o| pending.as_ref() == Some(o)) {
        super::lock::removed(std::fs::remove_file(&file), &file)?;
        let cut = front_root.join(CUT_DIR);
        super::lock::removed(std::fs::remove_dir_all(&cut), &cut)?;
    }
    Ok(())
}

/// Whether the front served now was published for `shards` shards of the
/// digest `inputs` (its `PUBLISHED.json` names it and `CURRENT` too).
fn published_is(front_root: &Path, shards: usize, inputs: &str) -> Result<bool> {
    let Some(p) = read_pending(&front_root.join(PUBLISHED_FRONT_FILE))? else {
        return Ok(false);
    };
    let live = vecrec_index::generation::current_generation(front_root).ok();
    Ok(p.shards == shards
        && p.inputs == inputs
        && live.is_some_and(|l| generation_name(&l) == p.generation))
}

/// Cuts shards `which` of `shards` from the front generation `front_dir`
/// (built from `items`, whose vectors before normalising are `raw`, in
/// catalogue order): each gets its items' content index and users and its
/// slice of every trained source, committed unpublished.
#[allow(clippy::too_many_arguments)]
fn cut_shards(
    root: &Path,
    encoder: &Encoder,
    front_dir: &Path,
    items: &[CatalogItem],
    raw: Vec<Vec<f32>>,
    interactions: (usize, usize),
    opts: &BuildOptions,
    (which, shards): (&[usize], usize),
    stages: &mut Stages,
) -> Result<Vec<BuildReport>> {
    let front = Index::open(front_dir)?;
    let store = front.store();
    let n = store.len();
    let dim = store.dim();
    let row: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i))
        .collect();
    // The front's items, rows, users and profiles, numbered as it numbers them.
    let front_items: Vec<CatalogItem> = (0..n as u32)
        .map(|i| CatalogItem {
            id: store.external_id(i).to_owned(),
            meta: store.item(i),
        })
        .collect();
    let vectors: Vec<Vec<f32>> = (0..n as u32)
        .map(|i| {
            let id = store.external_id(i);
            row.get(id).map(|&r| raw[r].clone()).ok_or_else(|| {
                Error::invalid(format!("the front holds {id}, the catalogue does not"))
            })
        })
        .collect::<Result<_>>()?;
    drop(raw);
    let profiles_file = UserProfiles::open(front.dir(), n, dim)?;
    let users: Vec<(String, Vec<(u32, f32)>)> = (0..profiles_file.len() as u32)
        .map(|u| (profiles_file.id(u).to_owned(), profiles_file.history(u)))
        .collect();
    let profiles: Vec<Option<Vec<f32>>> = (0..profiles_file.len() as u32)
        .map(|u| profiles_file.vector(u).map(<[f32]>::to_vec))
        .collect();
    let whole = Whole {
        items: &front_items,
        vectors: &vectors,
        users: &users,
        profiles: &profiles,
        interactions,
    };
    let dir = front.dir();
    let ease = SparseRows::open(dir, EASE_ROWS, n)?;
    let transitions = SparseRows::open(dir, TRANSITIONS_ROWS, n)?;
    let tables: Vec<(&str, Index)> = [ALS_DIR, TWO_TOWER_DIR, SEQUENCE_DIR]
        .into_iter()
        .filter(|sub| dir.join(sub).is_dir())
        .map(|sub| Ok((sub, Index::open_rows(&dir.join(sub))?)))
        .collect::<Result<_>>()?;
    let meta = SlicedMeta {
        front_items: n,
        front_ids: crate::layout::ids_digest(front.dir())?,
        front_generation: generation_name(dir),
    };
    let slice = |out: &Path, local: &[Option<u32>]| -> Result<()> {
        // The front's rows of the shard's items, in the shard's order.
        let own: Vec<u32> = (0..n as u32)
            .filter(|&i| local[i as usize].is_some())
            .collect();
        let ids: Vec<&str> = own.iter().map(|&i| store.external_id(i)).collect();
        for (sub, table) in &tables {
            let d = table.store().dim();
            let all = table.store().vectors();
            let rows: Vec<f32> = own
                .iter()
                .flat_map(|&i| &all[i as usize * d..(i as usize + 1) * d])
                .copied()
                .collect();
            super::write_sub_index(
                &out.join(sub),
                &ids,
                &rows,
                d,
                &opts.hnsw,
                serde_json::json!({ "sliced_from": sub }),
                bar(own.len(), format!("{sub} slice"), opts.progress),
            )?;
        }
        for (name, m) in [(EASE_ROWS, &ease), (TRANSITIONS_ROWS, &transitions)] {
            let rows: Vec<Vec<(u32, f32)>> = (0..n as u32)
                .map(|h| {
                    m.row(h)
                        .into_iter()
                        .filter_map(|(j, w)| local[j as usize].map(|l| (l, w)))
                        .collect()
                })
                .collect();
            SparseRows::write(out, name, &rows)?;
        }
        vecrec_index::format::ListTable::write(&out.join(FRONT_ROWS_FILE), &[&own])?;
        vecrec_index::format::write_json(&out.join(SLICED_FILE), &meta)?;
        Ok(())
    };
    let mut reports = Vec::new();
    for &s in which {
        let report = write_shard(
            root,
            encoder,
            &whole,
            opts,
            (s, shards),
            stages,
            Some(&slice),
        )?;
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut marker counts only for the rebuild that wrote it.
    #[test]
    fn a_cut_marker_counts_for_its_own_rebuild_only() {
        let marker = cut_marker("gen-000004", Some("r2"));
        assert_eq!(marked_for(&marker, Some("r2")), Some("gen-000004"));
        assert_eq!(marked_for(&marker, Some("r1")), None);
        assert_eq!(marked_for(&marker, None), None);
        let plain = cut_marker("gen-000004", None);
        assert_eq!(marked_for(&plain, None), Some("gen-000004"));
        assert_eq!(marked_for(&plain, Some("r2")), None);
    }

    /// A shard cuts only from a front of the same inputs: the digest moves
    /// with any item's text or id and any interaction's field or order.
    #[test]
    fn the_inputs_digest_moves_with_every_input() {
        let item = |id: &str, title: &str| {
            let mut it = CatalogItem {
                id: id.into(),
                meta: Default::default(),
            };
            it.meta.title = title.into();
            it
        };
        let event = |user: &str, item: &str, weight: f32| Interaction {
            user: user.into(),
            item: item.into(),
            timestamp: 7,
            event: None,
            weight,
        };
        let items = vec![item("a", "Alpha"), item("b", "Beta")];
        let inter = vec![event("u", "a", 1.0), event("v", "b", 1.0)];
        let base = inputs_digest(&items, &inter);
        assert_eq!(base.len(), 32);
        let mut texts = items.clone();
        texts[1].meta.title = "Gamma".into();
        let mut weights = inter.clone();
        weights[0].weight = 2.0;
        let mut times = inter.clone();
        times[1].timestamp = 8;
        let mut kinds = inter.clone();
        kinds[0].event = Some("view".into());
        let swapped: Vec<Interaction> = inter.iter().rev().cloned().collect();
        // "ab" + "" and "a" + "b" must not collide.
        let joined = vec![event("ua", "", 1.0)];
        let split = vec![event("u", "a", 1.0)];
        let others = [
            inputs_digest(&texts, &inter),
            inputs_digest(&items[..1], &inter),
            inputs_digest(&items, &weights),
            inputs_digest(&items, &times),
            inputs_digest(&items, &kinds),
            inputs_digest(&items, &swapped),
            inputs_digest(&items, &inter[..1]),
        ];
        for (i, d) in others.iter().enumerate() {
            assert_ne!(d, &base, "change {i} kept the digest");
        }
        assert_ne!(
            inputs_digest(&items, &joined),
            inputs_digest(&items, &split)
        );
        assert_eq!(inputs_digest(&items.clone(), &inter.clone()), base);
    }
}
