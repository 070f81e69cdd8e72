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
use std::time::Instant;

use vecrec_index::generation::{prune, publish, GenerationWriter};
use vecrec_index::{write_index, Index, Metric, StoreBuilder};

use super::{bar, embed_stage, histories_by, BuildOptions, BuildReport, Stages};
use crate::catalog::{CatalogItem, Interaction};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::layout::{
    front_root, shard_of, shard_root, GenerationInfo, ShardInfo, SlicedMeta, ALS_DIR, EASE_ROWS,
    FRONT_ROWS_FILE, SEQUENCE_DIR, SLICED_FILE, TRANSITIONS_ROWS, TWO_TOWER_DIR,
};
use crate::retrieve::sparse::SparseRows;
use crate::users::{profile_of, write_users, UserProfiles};

/// Builds shard `only` of `shards` (or every shard) under `root`: embeds
/// the whole catalogue once (through the embedding cache under `root`,
/// which every shard's build shares), makes every user's profile over all
/// of it, and writes each shard's generation. Returns one report per shard
/// built, in shard order.
pub fn build_shards(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
    shards: usize,
    only: Option<usize>,
) -> Result<Vec<BuildReport>> {
    if shards == 0 {
        return Err(Error::invalid("--shards must be at least 1"));
    }
    if let Some(i) = only.filter(|&i| i >= shards) {
        return Err(Error::invalid(format!(
            "--shard {i} is out of range: shards are numbered 0..{shards}"
        )));
    }
    // The shards' cache parts (`embed_part`) spare the build their texts.
    let opts = &BuildOptions {
        embedding_parts: Some(root.to_owned()),
        ..opts.clone()
    };
    if opts.train.is_some() || opts.learn_fusion.is_some() {
        return build_sliced(root, encoder, items, interactions, opts, shards, only);
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
    let (vectors, keys, done) = super::embed_cached_with(
        &[
            super::cache::EmbeddingCache::open(
                &root.join(super::cache::CACHE_DIR),
                &fp,
                encoder.dim(),
            ),
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
        ..Default::default()
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
/// catalogue under `<root>/front/`, then shard `only` (or every shard) cut
/// from it.
fn build_sliced(
    root: &Path,
    encoder: &Encoder,
    items: &[CatalogItem],
    interactions: &[Interaction],
    opts: &BuildOptions,
    shards: usize,
    only: Option<usize>,
) -> Result<Vec<BuildReport>> {
    if only.is_some() {
        return Err(Error::invalid(
            "a build with training writes the front and every shard together (each shard is cut \
             from the one front): drop --shard, or add --content-only",
        ));
    }
    let front_root = front_root(root);
    // Nothing goes live until every shard is cut: the front and the shards
    // are published together at the end, so a router and its shards see a
    // mismatch only for the moments their reloads take.
    let front_opts = BuildOptions {
        publish: false,
        ..opts.clone()
    };
    // The shards' content vectors as the front got them, before its store
    // normalised them, so each shard normalises exactly the same numbers.
    let (front_report, raw) =
        super::build_with_vectors(&front_root, encoder, items, interactions, &front_opts)?;
    let front = Index::open(&front_report.generation)?;
    let store = front.store();
    let n = store.len();
    let dim = store.dim();
    let mut stages = Stages::new();
    let row: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i))
        .collect();
    // The front's items, rows, users and profiles, numbered as it numbers them.
    let front_items: Vec<CatalogItem> = (0..n as u32)
        .map(|i| CatalogItem {
            id: store.external_id(i).to_owned(),
            meta: store.meta(i).clone(),
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
        interactions: (
            front_report.interactions,
            front_report.skipped_unknown_items,
        ),
    };
    let dir = front.dir();
    let ease = SparseRows::open(dir, EASE_ROWS, n)?;
    let transitions = SparseRows::open(dir, TRANSITIONS_ROWS, n)?;
    let tables: Vec<(&str, Index)> = [ALS_DIR, TWO_TOWER_DIR, SEQUENCE_DIR]
        .into_iter()
        .filter(|sub| dir.join(sub).is_dir())
        .map(|sub| Ok((sub, Index::open(&dir.join(sub))?)))
        .collect::<Result<_>>()?;
    let meta = SlicedMeta {
        front_items: n,
        front_ids: crate::layout::ids_digest(front.dir())?,
        front_generation: dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
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
    for s in 0..shards {
        let report = write_shard(
            root,
            encoder,
            &whole,
            opts,
            (s, shards),
            &mut stages,
            Some(&slice),
        )?;
        reports.push(report);
    }
    for (s, r) in reports.iter().enumerate() {
        publish(&shard_root(root, s), &r.generation)?;
    }
    publish(&front_root, &front_report.generation)?;
    if let Some(last) = reports.last_mut() {
        last.stages = stages.into_list();
    }
    Ok(reports)
}
