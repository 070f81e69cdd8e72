//! Compaction: folds the served generation and the pending live changes into
//! a new generation through the bulk build. The server runs it in the
//! background ([`super::slot::compact_loop`]) once `live.compact_after` log
//! records are pending, swaps the new generation in and prunes the log.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::catalog::CatalogItem;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::layout::GenerationInfo;
use crate::live::DeltaItem;

/// Folds the engine's generation and every pending change into a new
/// generation under `root` (retraining the sources), recording the last log
/// record folded in. Returns the new generation, or `None` when nothing was
/// pending. The caller swaps it in and then calls [`crate::live::Live::prune`].
///
/// Histories keep their order but not their timestamps: the stored histories
/// hold no times, so the rebuilt interactions are numbered in order, recorded
/// events after the stored history.
pub fn compact(root: &Path, engine: &Engine) -> Result<Option<PathBuf>> {
    let live = engine
        .live()
        .ok_or_else(|| Error::Config("live updates are off".into()))?;
    if let Some(s) = GenerationInfo::of(engine.index().manifest()).shard {
        // A rebuild here would remake the users' profiles from this shard's
        // items alone, and its answers would stop matching one node's.
        return Err(Error::Config(format!(
            "shard {} of {} is not compacted (its users' profiles span every shard): \
             rebuild with vecrec-build --shards to fold the log in",
            s.index, s.of
        )));
    }
    let (items, vectors, interactions, last) = {
        let view = live.view(engine.applied_seq());
        if view.is_empty() {
            return Ok(None);
        }
        let store = engine.index().store();
        let masked: HashSet<u32> = view.masked(store);
        let mut items = Vec::new();
        let mut vectors = Vec::new();
        for i in 0..store.len() as u32 {
            if masked.contains(&i) {
                continue;
            }
            items.push(CatalogItem {
                id: store.external_id(i).to_owned(),
                meta: store.item(i),
            });
            vectors.push(store.vector(i).to_vec());
        }
        let mut fresh: Vec<(&String, &DeltaItem)> = view.items().collect();
        fresh.sort_by_key(|x| x.1.seq);
        for (id, x) in fresh {
            items.push(CatalogItem {
                id: id.clone(),
                meta: x.meta.clone(),
            });
            vectors.push(x.vector.clone());
        }
        let users = engine.users();
        let mut interactions = Vec::new();
        let mut seen_users = HashSet::new();
        let mut push_user = |user: &str, stored: Vec<(String, f32)>| {
            let logged = view.events(user).map(|e| (e.item.clone(), e.weight));
            crate::live::push_numbered(
                &mut interactions,
                user,
                stored.into_iter().chain(logged),
                |item| view.is_deleted(item),
            );
        };
        for u in 0..users.len() as u32 {
            let id = users.id(u).to_owned();
            let stored = users
                .history(u)
                .into_iter()
                .map(|(i, w)| (store.external_id(i).to_owned(), w))
                .collect();
            push_user(&id, stored);
            seen_users.insert(id);
        }
        let mut new_users: Vec<&String> = view
            .event_users()
            .filter(|u| !seen_users.contains(*u))
            .collect();
        new_users.sort();
        for u in new_users {
            push_user(u, Vec::new());
        }
        (items, vectors, interactions, view.last_seq())
    };
    let cfg = engine.config();
    let trained = engine.is_hybrid_capable();
    let opts = crate::pipeline::BuildOptions {
        hnsw: engine.index().manifest().hnsw,
        users: cfg.users.clone(),
        progress: false,
        train: trained.then(|| cfg.train.clone()),
        learn_fusion: (trained && engine.has_learned_fusion()).then(|| cfg.hybrid.clone()),
        ..Default::default()
    };
    let info = GenerationInfo {
        wal_seq: last,
        ..GenerationInfo::of(engine.index().manifest())
    };
    let report =
        crate::pipeline::build_generation(root, &items, &vectors, &interactions, &opts, info)?;
    tracing::info!(
        generation = %report.generation.display(),
        items = report.items,
        folded_through = last,
        seconds = report.total_seconds,
        "compacted live updates into a new generation"
    );
    Ok(Some(report.generation))
}
