//! Partitioned builds: the catalogue split into shards by a stable hash of
//! each item's id ([`shard_of`]), one index root per shard
//! (`<root>/shard-<i>/`, each with its generations and `CURRENT`), so a
//! catalogue too large for one machine is served by several and merged by
//! `vecrec route` (docs/scale-out.md).
//!
//! A shard holds its own items' vectors, graph, int8 codes and metadata,
//! and every user: the profile made over the *whole* catalogue (so a shard
//! scores its items for a user exactly as one node would) beside the
//! history of its own items (which the answer leaves out as seen). The
//! content pipeline only: the interaction-trained sources are not sliced
//! yet, so a build with training is refused.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use vecrec_index::generation::{prune, GenerationWriter};
use vecrec_index::{write_index, Metric, StoreBuilder};

use super::{bar, embed_stage, histories_by, BuildOptions, BuildReport, Stages};
use crate::catalog::{CatalogItem, Interaction};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::layout::{shard_of, shard_root, GenerationInfo, ShardInfo};
use crate::users::{profile_of, write_users};

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
    if opts.train.is_some() || opts.learn_fusion.is_some() {
        return Err(Error::invalid(
            "a partitioned build holds the content index only (the trained sources are not \
             sliced by shard yet): add --content-only",
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
    let owner: Vec<usize> = items.iter().map(|it| shard_of(&it.id, shards)).collect();
    let mut reports = Vec::new();
    for s in (0..shards).filter(|s| only.is_none_or(|o| o == *s)) {
        let t = Instant::now();
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
            for (i, (item, v)) in items.iter().zip(&vectors).enumerate() {
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
            let own: Vec<(String, Vec<(u32, f32)>)> = users
                .iter()
                .map(|(u, h)| {
                    let h = h
                        .iter()
                        .filter_map(|&(i, w)| local[i as usize].map(|l| (l, w)))
                        .collect();
                    (u.clone(), h)
                })
                .collect();
            let n = write_users(writer.dir(), dim, &own, &|u| profiles[u].clone())?;
            Ok((n, format!("{} users", own.len())))
        })?;
        let generation = writer.commit()?;
        prune(&dir, opts.keep_generations)?;
        let mut report = BuildReport::indexed(
            generation,
            (local.iter().flatten().count(), with_profile),
            (interactions.len() - skipped, skipped),
            manifest.hnsw_build_seconds,
            t,
        );
        report.peak_rss_mib = stages.peak_mib();
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
