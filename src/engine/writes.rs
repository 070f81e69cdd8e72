//! The live write path: items upserted (embedded here) and deleted, user
//! events recorded, each checked and then made durable in the log before
//! it is acknowledged.

use std::collections::HashSet;
use std::sync::Arc;

use super::Engine;
use crate::catalog::{CatalogItem, Interaction};
use crate::error::{Error, Result};
use crate::live::Live;

impl Engine {
    /// Serves the live updates of `live` on top of this generation.
    pub fn attach_live(&mut self, live: Arc<Live>) {
        self.live = Some(live);
    }

    /// The live-update log, when attached.
    pub fn live(&self) -> Option<&Arc<Live>> {
        self.live.as_ref()
    }

    pub(super) fn view(&self) -> Option<crate::live::View<'_>> {
        self.live.as_ref().map(|l| l.view(self.applied_seq))
    }

    /// Refuses to answer from a follower that has not read its log
    /// through record `n` (a write its writer acknowledged to the caller),
    /// once it has read what the writer appended since its last look, so a
    /// caller that sends the sequence its write got back reads that write
    /// on any replica that answers. A writer, or an engine without live
    /// updates, always answers.
    pub fn check_read_through(&self, n: u64) -> Result<()> {
        let Some(live) = self.live.as_ref().filter(|l| l.is_follower()) else {
            return Ok(());
        };
        let have = || live.read_through(self.applied_seq);
        if have() >= n {
            return Ok(());
        }
        // Not behind another refresh: declining costs the caller one more
        // replica, waiting would hold a runtime thread.
        live.try_refresh()?;
        if have() >= n {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "{}: it has read through record {}, the call needs record {n}",
            crate::live::BEHIND,
            have()
        )))
    }

    /// The log, written here or followed; refused when live updates are off.
    fn live_or_err(&self) -> Result<&Arc<Live>> {
        self.live.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "live updates are off on this server ([live] enabled = false)".into(),
            )
        })
    }

    /// The log to write to; refused as [`Engine::live_or_err`] does, and
    /// when another replica writes the log this one follows.
    fn writable_live(&self) -> Result<&Arc<Live>> {
        let live = self.live_or_err()?;
        live.check_writable()?;
        Ok(live)
    }

    /// Embeds and durably upserts items (new ids, or replacing existing ones);
    /// returns the last log record number. Visible to searches at once.
    pub fn upsert_items(&self, items: Vec<CatalogItem>) -> Result<u64> {
        let live = self.writable_live()?;
        self.check_batch("items", items.len())?;
        let shard = crate::layout::GenerationInfo::of(self.index.manifest()).shard;
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
            if let Some(s) = shard {
                let owner = crate::layout::shard_of(&it.id, s.of);
                if owner != s.index {
                    return Err(Error::FailedPrecondition(format!(
                        "items[{k}] {:?} belongs to shard {owner} of {}, and this server holds \
                         shard {}: write through `vecrec route`",
                        it.id, s.of, s.index
                    )));
                }
            }
        }
        let texts: Vec<String> = items.iter().map(CatalogItem::embedding_text).collect();
        let vectors = self.encoder()?.encode(&texts)?;
        live.upsert(items.into_iter().zip(vectors).collect())
    }

    /// Durably deletes items; every id must exist. Returns the last log record number.
    pub fn delete_items(&self, ids: Vec<String>) -> Result<u64> {
        let live = self.writable_live()?;
        self.check_batch("ids", ids.len())?;
        for id in &ids {
            self.check_item(id)?;
        }
        live.delete(ids)
    }

    /// Durably records user events; the users' next recommendations use them.
    ///
    /// A shard sliced from a front (`vecrec-build --shards N` with training)
    /// keeps the events of the users whose ids hash to it, for the router
    /// (`UserEvents`), and those name items of every shard: it checks the
    /// items it owns, and the router checks the others against the front and
    /// their owners before it sends them.
    pub fn record_events(&self, events: Vec<Interaction>) -> Result<u64> {
        let live = self.writable_live()?;
        self.check_batch("events", events.len())?;
        // Read from the manifest only on a sliced shard.
        let sliced = self
            .sliced
            .as_ref()
            .and_then(|_| crate::layout::GenerationInfo::of(self.index.manifest()).shard);
        let foreign =
            |item: &str| sliced.is_some_and(|s| crate::layout::shard_of(item, s.of) != s.index);
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
            if e.item.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "events[{k}].item_id must not be empty"
                )));
            }
            if !foreign(&e.item) {
                self.check_item(&e.item)?;
            }
        }
        live.record(events)
    }

    /// The events recorded for `user` since this generation, oldest first,
    /// less those whose item was deleted here since (as one node's
    /// Recommend skips them; a shard knows only its own items' deletes);
    /// `FAILED_PRECONDITION` without live updates (a router then knows this
    /// server keeps none).
    pub fn recorded_events(&self, user: &str) -> Result<Vec<crate::live::DeltaEvent>> {
        self.live_or_err()?;
        Ok(self
            .view()
            .map(|v| {
                v.events(user)
                    .filter(|e| !v.is_deleted(&e.item))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// What each item of `ids` has become since the served generation
    /// (`ItemStates`, asked by the front tier of a partitioned build);
    /// `FAILED_PRECONDITION` when live updates are off, since then nothing
    /// changes.
    pub fn item_states(&self, ids: &[String]) -> Result<Vec<ItemState>> {
        self.live_or_err()?;
        // As many as a history may name, or a write may carry.
        let most = self.cfg.limits.max_history.max(self.cfg.limits.max_batch);
        if ids.is_empty() || ids.len() > most {
            return Err(Error::invalid(format!(
                "{} item_ids: give 1 to {most}",
                ids.len()
            )));
        }
        let store = self.index.store();
        let view = self.view();
        Ok(ids
            .iter()
            .map(|id| match &view {
                Some(v) if v.is_deleted(id) => ItemState::Deleted,
                _ if store.internal_id(id).is_some() => ItemState::Built,
                Some(v) if v.item(id).is_some() => ItemState::New,
                _ => ItemState::Unknown,
            })
            .collect())
    }

    /// Checks the size of a request's batch: at least one entry, at most
    /// `limits.max_batch`.
    pub(crate) fn check_batch(&self, what: &str, len: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::invalid(format!("{what} must not be empty")));
        }
        if len > self.cfg.limits.max_batch {
            return Err(Error::invalid(format!(
                "{len} {what}, over the limit of {} per request",
                self.cfg.limits.max_batch
            )));
        }
        Ok(())
    }
}

/// What an item has become since the served generation ([`Engine::item_states`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemState {
    /// Neither in the generation nor upserted since.
    Unknown,
    /// In the generation and not deleted since (perhaps replaced).
    Built,
    /// Deleted since the generation.
    Deleted,
    /// Upserted since, and not in the generation.
    New,
}
