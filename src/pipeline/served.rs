//! The inputs of a partitioned rebuild taken from what is served
//! (`vecrec-build --shards N --compact`): the front generation's whole
//! catalogue and users' histories, with the shards' logs folded in, as one
//! node's compaction rebuilds from its generation and its log.

use std::collections::HashSet;
use std::path::Path;

use crate::catalog::{CatalogItem, Interaction};
use crate::error::{Error, Result};
use crate::layout::{front_root, shard_root};
use crate::live::Changes;
use crate::users::UserProfiles;

/// The catalogue and interactions the served build of the partitioned
/// index under `root` holds (its front generation: every item, every
/// user's history in order), with what each of the `shards` shards' logs
/// holds beyond its served generation folded in; and each log's changes
/// (their `through` is what the new shard generations record).
///
/// As in one node's compaction, histories keep their order but not their
/// times (each user's interactions are numbered in order, the recorded
/// events after the stored history), an upserted item replaces the one it
/// names or joins the catalogue's end, and a deleted item leaves the
/// catalogue and every history.
pub fn served_inputs(
    root: &Path,
    shards: usize,
) -> Result<(Vec<CatalogItem>, Vec<Interaction>, Vec<Changes>)> {
    let front = front_root(root);
    let dir = vecrec_index::generation::current_generation(&front).map_err(|e| {
        Error::Config(format!(
            "{}: no front generation to rebuild from ({e}); --compact rebuilds a partitioned \
             build with training from what it serves",
            front.display()
        ))
    })?;
    let index = vecrec_index::Index::open(&dir)?;
    let store = index.store();
    let users = UserProfiles::open(&dir, store.len(), store.dim())?;
    let front_name = crate::layout::generation_name(&dir);
    for s in 0..shards {
        check_shard(&shard_root(root, s), s, shards, &front_name)?;
    }
    let changes = Changes::pending_shards(root, shards)?;

    let deleted: HashSet<&str> = changes
        .iter()
        .flat_map(|c| c.deleted.iter().map(String::as_str))
        .collect();
    let mut items: Vec<CatalogItem> = (0..store.len() as u32)
        .map(|i| CatalogItem {
            id: store.external_id(i).to_owned(),
            meta: store.item(i),
        })
        .collect();
    let mut interactions = Vec::new();
    let mut events: std::collections::BTreeMap<&str, Vec<&Interaction>> = Default::default();
    for e in changes.iter().flat_map(|c| &c.events) {
        events.entry(e.user.as_str()).or_default().push(e);
    }
    // Users known only from events, in id order.
    let known: HashSet<&str> = (0..users.len() as u32).map(|u| users.id(u)).collect();
    let new_users: Vec<&str> = events
        .keys()
        .copied()
        .filter(|u| !known.contains(u))
        .collect();
    let mut push = |user: &str, stored: Vec<(String, f32)>| {
        let logged = events
            .remove(user)
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.item.clone(), e.weight));
        crate::live::push_numbered(
            &mut interactions,
            user,
            stored.into_iter().chain(logged),
            |item| deleted.contains(item),
        );
    };
    for u in 0..users.len() as u32 {
        let stored = users
            .history(u)
            .into_iter()
            .map(|(i, w)| (store.external_id(i).to_owned(), w))
            .collect();
        push(users.id(u), stored);
    }
    for u in new_users {
        push(u, Vec::new());
    }
    // Items: the generation's, then the logs' upserts, as a fold.
    let mut no_rows = Vec::new();
    Changes::fold(&changes, &mut items, &mut no_rows);
    Ok((items, interactions, changes))
}

/// Refuses a root that does not serve shard `s` of `shards` (another
/// shard count would leave some shard's log unread), or serves one cut
/// from another front than `front` (a publish that stopped between the
/// shards and the front: the front's catalogue and histories lack what
/// the shard's generation folded, and its log no longer holds).
fn check_shard(shard: &Path, s: usize, shards: usize, front: &str) -> Result<()> {
    if let Ok(dir) = vecrec_index::generation::current_generation(shard) {
        let sliced = dir.join(crate::layout::SLICED_FILE);
        if sliced.is_file() {
            let meta: crate::layout::SlicedMeta = vecrec_index::format::read_json(&sliced)?;
            if meta.front_generation != front {
                return Err(Error::Config(format!(
                    "{} serves a generation cut from front {}, but the front serves {front}: a \
                     rebuild's publish stopped part way. Run that rebuild again (for a split \
                     one, any of its `vecrec-build --shards {shards} --shard i` builds) to \
                     finish it, then compact",
                    shard.display(),
                    meta.front_generation
                )));
            }
        }
    }
    let served = crate::layout::GenerationInfo::served(shard)?.ok_or_else(|| {
        Error::Config(format!(
            "{} serves no generation, not shard {s} of {shards} (--shards)",
            shard.display()
        ))
    })?;
    match served.shard {
        Some(i) if i.index == s && i.of == shards => Ok(()),
        found => Err(Error::Config(format!(
            "{} serves {}, not shard {s} of {shards} (--shards)",
            shard.display(),
            found.map_or("no shard".to_owned(), |i| format!(
                "shard {} of {}",
                i.index, i.of
            ))
        ))),
    }
}
