//! Live updates: items upserted or deleted and user events recorded while
//! serving, durable before they are acknowledged, visible at once, and folded
//! into a new generation by background compaction.
//!
//! Every change is one record of the write-ahead log `ROOT/wal/wal.log`
//! ([`vecrec_index::wal`]), appended and fsynced before the call returns, then
//! applied to an in-memory [`Delta`]. The delta keeps, per item id, the latest
//! operation (an upsert with its vector, or a tombstone) and, per user, the
//! events recorded since. A generation records in its manifest
//! (`extra.wal_seq`) the last log record folded into it; an engine applies only
//! the delta entries after that number, so a generation built by compaction
//! and a bulk rebuild by `vecrec-build` (which folds nothing) both see exactly
//! the changes they lack.
//!
//! What sees the changes: tombstones and replaced items are honoured by every
//! search and source; upserted items are searched exactly (brute force) beside
//! the graph by `SimilarItems`, `SearchText`, `GetItem` and the content-only
//! `Recommend`; recorded events extend the user's history at once for every
//! source. The trained sources (EASE, ALS, transitions, two-tower) learn about
//! new items only at the next compaction, which retrains them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};
use vecrec_index::wal::{Tail, Wal};
use vecrec_index::{ItemMeta, VectorStore};

use crate::catalog::{CatalogItem, Interaction};
pub use crate::config::LiveConfig;
use crate::error::{Error, Result};
use crate::layout::WAL_FILE;

/// One log record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Upsert {
        id: String,
        meta: ItemMeta,
        vector: Vec<f32>,
    },
    Delete {
        id: String,
    },
    Event {
        user: String,
        item: String,
        weight: f32,
        timestamp: i64,
    },
}

/// A record as the log stores it, refused unless it reads back as the same
/// record: JSON has no NaN or infinity (serde writes them as `null`, which
/// the reader then rejects), and a record that would not replay must never
/// be acknowledged, or every later start would stop at it.
fn encode(r: &Record) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(r).map_err(|e| Error::invalid(format!("record: {e}")))?;
    if serde_json::from_slice::<Record>(&bytes).is_err() {
        return Err(Error::invalid(
            "a write with a number that is not finite (NaN or infinity) cannot be logged",
        ));
    }
    Ok(bytes)
}

/// Reads a log record. Logs written before writes were checked at the edge
/// may hold a numeric attribute as `null` (a NaN or infinity that JSON could
/// not store): such an attribute is dropped with a warning rather than
/// stopping the start, since every other field of the write is intact.
fn decode(payload: &[u8]) -> serde_json::Result<Record> {
    match serde_json::from_slice(payload) {
        Ok(r) => Ok(r),
        Err(first) => {
            let mut v: serde_json::Value = serde_json::from_slice(payload)?;
            let Some(numeric) = v
                .get_mut("meta")
                .and_then(|m| m.get_mut("numeric"))
                .and_then(|n| n.as_object_mut())
            else {
                return Err(first);
            };
            let dropped: Vec<String> = numeric
                .iter()
                .filter(|(_, x)| x.is_null())
                .map(|(k, _)| k.clone())
                .collect();
            if dropped.is_empty() {
                return Err(first);
            }
            numeric.retain(|_, x| !x.is_null());
            let r = serde_json::from_value(v)?;
            tracing::warn!(
                ?dropped,
                "a logged upsert held numeric attributes that are not numbers; replayed without them"
            );
            Ok(r)
        }
    }
}

/// An upserted item.
#[derive(Clone, Debug)]
pub struct DeltaItem {
    /// Log record that wrote it.
    pub seq: u64,
    /// Its attributes.
    pub meta: ItemMeta,
    /// Its vector.
    pub vector: Vec<f32>,
}

/// A recorded event.
#[derive(Clone, Debug)]
pub struct DeltaEvent {
    /// Log record that wrote it.
    pub seq: u64,
    /// External item id.
    pub item: String,
    /// Weight.
    pub weight: f32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

/// The changes replayed from the log, latest operation per item.
#[derive(Debug, Default)]
pub struct Delta {
    items: HashMap<String, DeltaItem>,
    deleted: HashMap<String, u64>,
    events: HashMap<String, Vec<DeltaEvent>>,
    last_seq: u64,
}

impl Delta {
    fn apply(&mut self, seq: u64, r: Record) {
        match r {
            Record::Upsert { id, meta, vector } => {
                self.deleted.remove(&id);
                self.items.insert(id, DeltaItem { seq, meta, vector });
            }
            Record::Delete { id } => {
                self.items.remove(&id);
                self.deleted.insert(id, seq);
            }
            Record::Event {
                user,
                item,
                weight,
                timestamp,
            } => self.events.entry(user).or_default().push(DeltaEvent {
                seq,
                item,
                weight,
                timestamp,
            }),
        }
        self.last_seq = seq;
    }

    /// Number of the last record applied.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Takes from `old` what it holds of records numbered before `first`
    /// (the first record this delta was replayed from), under what this
    /// delta holds: an item this delta names stays as it is here.
    fn keep_older(&mut self, old: &Delta, first: u64) {
        for (id, x) in &old.items {
            if x.seq < first && !self.items.contains_key(id) && !self.deleted.contains_key(id) {
                self.items.insert(id.clone(), x.clone());
            }
        }
        for (id, seq) in &old.deleted {
            if *seq < first && !self.items.contains_key(id) && !self.deleted.contains_key(id) {
                self.deleted.insert(id.clone(), *seq);
            }
        }
        for (user, events) in &old.events {
            let older: Vec<DeltaEvent> = events.iter().filter(|e| e.seq < first).cloned().collect();
            if !older.is_empty() {
                let newer = self.events.remove(user).unwrap_or_default();
                self.events
                    .insert(user.clone(), older.into_iter().chain(newer).collect());
            }
        }
        self.last_seq = self.last_seq.max(old.last_seq);
    }
}

/// The delta as seen by a generation that folded records up to `applied`.
#[derive(Debug)]
pub struct View<'a> {
    delta: RwLockReadGuard<'a, Delta>,
    applied: u64,
}

impl View<'_> {
    /// An item upserted after the generation, if any.
    pub fn item(&self, id: &str) -> Option<&DeltaItem> {
        self.delta.items.get(id).filter(|x| x.seq > self.applied)
    }

    /// Whether the item was deleted after the generation.
    pub fn is_deleted(&self, id: &str) -> bool {
        self.delta
            .deleted
            .get(id)
            .is_some_and(|s| *s > self.applied)
    }

    /// Items upserted after the generation.
    pub fn items(&self) -> impl Iterator<Item = (&String, &DeltaItem)> {
        self.delta.items.iter().filter(|x| x.1.seq > self.applied)
    }

    /// Internal ids of the generation's items that were deleted or replaced since.
    pub fn masked<S: FromIterator<u32>>(&self, store: &VectorStore) -> S {
        self.delta
            .deleted
            .iter()
            .filter(|x| *x.1 > self.applied)
            .map(|x| x.0)
            .chain(self.items().map(|x| x.0))
            .filter_map(|id| store.internal_id(id))
            .collect()
    }

    /// Events recorded for `user` after the generation, oldest first.
    pub fn events(&self, user: &str) -> impl Iterator<Item = &DeltaEvent> {
        self.delta
            .events
            .get(user)
            .into_iter()
            .flatten()
            .filter(|e| e.seq > self.applied)
    }

    /// Users with recorded events in the log (some may be older than the
    /// generation; [`View::events`] filters those).
    pub fn event_users(&self) -> impl Iterator<Item = &String> {
        self.delta.events.keys()
    }

    /// Items deleted after the generation (and not upserted again since).
    pub fn deleted(&self) -> impl Iterator<Item = &String> {
        self.delta
            .deleted
            .iter()
            .filter(|x| *x.1 > self.applied)
            .map(|x| x.0)
    }

    /// Whether nothing changed since the generation.
    pub fn is_empty(&self) -> bool {
        self.delta.last_seq <= self.applied
    }

    /// Records after the generation.
    pub fn pending(&self) -> u64 {
        self.delta.last_seq.saturating_sub(self.applied)
    }

    /// The last record number.
    pub fn last_seq(&self) -> u64 {
        self.delta.last_seq
    }
}

/// The delta of `records` read from the log at `path`, on top of a
/// generation that folded records up to `applied`.
fn replay(path: &Path, records: Vec<vecrec_index::wal::Record>, applied: u64) -> Result<Delta> {
    let mut delta = Delta {
        last_seq: applied,
        ..Default::default()
    };
    for (seq, payload) in records {
        let r = decode(&payload).map_err(|e| vecrec_index::IndexError::Corrupt {
            path: path.to_owned(),
            reason: format!("log record {seq}: {e}"),
        })?;
        delta.apply(seq, r);
    }
    delta.last_seq = delta.last_seq.max(applied);
    Ok(delta)
}

/// The log under a root as read without opening it for writing, which a
/// running server may hold ([`vecrec_index::wal::WriterLock`]): what a
/// restart would replay now, less the torn frame of an append in progress.
#[derive(Debug)]
pub struct Snapshot {
    delta: RwLock<Delta>,
}

impl Snapshot {
    /// Reads the log under `root` (no log: nothing changed).
    pub fn read(root: &Path, applied: u64) -> Result<Self> {
        let path = root.join(WAL_FILE);
        let records = match std::fs::read(&path) {
            Ok(bytes) => vecrec_index::wal::read_records(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(Self {
            delta: RwLock::new(replay(&path, records, applied)?),
        })
    }

    /// The delta as a generation that folded records up to `applied` sees it.
    pub fn view(&self, applied: u64) -> View<'_> {
        View {
            delta: self.delta.read(),
            applied,
        }
    }
}

/// What a write to a follower answers, first: the router
/// (`route::Router`) knows by it a replica that takes no writes.
pub const FOLLOWER: &str = "this replica follows the log that another replica writes";

/// What a follower asked to answer from a record it has not read yet
/// answers, first ([`crate::engine::Engine::check_read_through`]): the
/// router then asks another replica, the writer last.
pub const BEHIND: &str = "this replica has not read its log that far yet";

/// Who appends to the log.
#[derive(Debug)]
enum Role {
    /// This process: it holds the log open for writing.
    Writer(Mutex<Wal>),
    /// Another process (a replica sharing this index root, by host name
    /// when known): this one reads what it appends ([`Live::refresh`]) and
    /// takes no writes.
    Follower(Mutex<Tail>, Option<String>),
}

/// The changes a root's log holds beyond the generation its `CURRENT`
/// names, for a bulk build to fold into its inputs
/// (`vecrec-build --fold-log`): the build writes `through` as the new
/// generation's `wal_seq`, so its server applies only later records and
/// prunes these from the log once it serves it.
#[derive(Debug, Default)]
pub struct Changes {
    /// The latest upsert of each item, oldest first.
    pub upserts: Vec<CatalogItem>,
    /// Items deleted (and not upserted again since).
    pub deleted: Vec<String>,
    /// Events recorded, user by user (users in id order), each user's
    /// oldest first.
    pub events: Vec<Interaction>,
    /// The last record taken in (the generation's own `wal_seq` when the
    /// log holds nothing beyond it).
    pub through: u64,
}

impl Changes {
    /// Reads the log under `root` (a running server may hold it: the
    /// torn frame of an append in progress is left out) beyond what the
    /// root's current generation folded. No generation or no log: none.
    pub fn pending(root: &Path) -> Result<Self> {
        Self::pending_beyond(root, 0)
    }

    /// [`Changes::pending`] beyond record `start` too, when that is later
    /// than what the served generation folded: the records up to it are
    /// in the inputs already (an earlier fold wrote them, and its build
    /// was not published).
    pub fn pending_beyond(root: &Path, start: u64) -> Result<Self> {
        let served = crate::layout::GenerationInfo::served(root)?.map_or(0, |g| g.wal_seq);
        let applied = served.max(start);
        let snapshot = Snapshot::read(root, applied)?;
        let view = snapshot.view(applied);
        let mut upserts: Vec<(&String, &DeltaItem)> = view.items().collect();
        upserts.sort_by_key(|x| x.1.seq);
        let mut deleted: Vec<String> = view.deleted().cloned().collect();
        deleted.sort();
        let mut users: Vec<&String> = view.event_users().collect();
        users.sort();
        let events = users
            .into_iter()
            .flat_map(|u| {
                view.events(u).map(move |e| Interaction {
                    user: u.clone(),
                    item: e.item.clone(),
                    timestamp: e.timestamp,
                    event: None,
                    weight: e.weight,
                })
            })
            .collect();
        Ok(Self {
            upserts: upserts
                .into_iter()
                .map(|(id, x)| CatalogItem {
                    id: id.clone(),
                    meta: x.meta.clone(),
                })
                .collect(),
            deleted,
            events,
            through: view.last_seq().max(applied),
        })
    }

    /// [`Changes::pending`] of each of the `shards` shard roots of the
    /// partitioned build under `root`, in shard order.
    pub fn pending_shards(root: &Path, shards: usize) -> Result<Vec<Self>> {
        Self::pending_shards_beyond(root, &vec![0; shards])
    }

    /// [`Changes::pending_beyond`] of each shard root under `root`, shard
    /// `s` beyond record `starts[s]`.
    pub fn pending_shards_beyond(root: &Path, starts: &[u64]) -> Result<Vec<Self>> {
        starts
            .iter()
            .enumerate()
            .map(|(s, &start)| Self::pending_beyond(&crate::layout::shard_root(root, s), start))
            .collect()
    }

    /// Whether the log holds nothing to fold.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deleted.is_empty() && self.events.is_empty()
    }

    /// `items` and `interactions` with `changes` (of every root built)
    /// folded in, as one node's compaction folds its log: upserted items
    /// replace theirs or join the catalogue's end, deleted ones leave it,
    /// and so do the interactions naming them; recorded events join the
    /// interactions.
    pub fn fold(
        changes: &[Changes],
        items: &mut Vec<CatalogItem>,
        interactions: &mut Vec<Interaction>,
    ) {
        let deleted: std::collections::HashSet<&str> = changes
            .iter()
            .flat_map(|c| c.deleted.iter().map(String::as_str))
            .collect();
        let mut upserted: HashMap<&str, &CatalogItem> = HashMap::new();
        let mut order = Vec::new();
        for it in changes.iter().flat_map(|c| &c.upserts) {
            if upserted.insert(it.id.as_str(), it).is_none() {
                order.push(it.id.as_str());
            }
        }
        items.retain(|it| !deleted.contains(it.id.as_str()));
        for it in items.iter_mut() {
            if let Some(new) = upserted.remove(it.id.as_str()) {
                it.meta = new.meta.clone();
            }
        }
        items.extend(
            order
                .into_iter()
                .filter_map(|id| upserted.get(id))
                .map(|it| (*it).clone()),
        );
        interactions.retain(|e| !deleted.contains(e.item.as_str()));
        interactions.extend(
            changes
                .iter()
                .flat_map(|c| &c.events)
                .filter(|e| !deleted.contains(e.item.as_str()))
                .cloned(),
        );
    }
}

/// Appends `user`'s interactions to `out` as a compaction rebuilds them
/// from a generation and a log: `history` (the stored history, then the
/// events recorded since, oldest first) numbered in order, since stored
/// histories hold no times, less the items `deleted` says are gone.
pub fn push_numbered(
    out: &mut Vec<Interaction>,
    user: &str,
    history: impl IntoIterator<Item = (String, f32)>,
    deleted: impl Fn(&str) -> bool,
) {
    let mut t = 0i64;
    for (item, weight) in history {
        if deleted(&item) {
            continue;
        }
        out.push(Interaction {
            user: user.to_owned(),
            item,
            timestamp: t,
            event: None,
            weight,
        });
        t += 1;
    }
}

/// The log and its replayed delta.
#[derive(Debug)]
pub struct Live {
    path: PathBuf,
    role: Role,
    delta: RwLock<Delta>,
    compacting: AtomicBool,
    /// Records a follower may lack, `(after, through]`: those its writer
    /// pruned (folded into a generation) before the follower read them,
    /// until the follower serves a generation that folded them
    /// ([`Live::read_through`]); `through` is `u64::MAX` while the
    /// rewritten log holds no record to tell where they end.
    hole: Mutex<Option<(u64, u64)>>,
}

impl Live {
    /// Opens (or creates) the log under `root` and replays it; `applied` is the
    /// last record the served generation folded in.
    pub fn open(root: &Path, applied: u64) -> Result<Self> {
        let path = root.join(WAL_FILE);
        let (mut wal, records) = Wal::open(&path)?;
        if let Some(offset) = wal.torn_tail_cut() {
            tracing::warn!(
                path = %path.display(),
                offset,
                replayed = records.len(),
                "cut the torn tail of an append that a crash interrupted (never acknowledged)"
            );
        }
        wal.advance_to(applied + 1);
        let delta = replay(&path, records, applied)?;
        Ok(Self {
            path,
            role: Role::Writer(Mutex::new(wal)),
            delta: RwLock::new(delta),
            compacting: AtomicBool::new(false),
            hole: Mutex::new(None),
        })
    }

    /// Follows the log under `root` that another process writes (replicas
    /// sharing one index root: one writes, the others follow), replayed
    /// over a generation that folded records up to `applied`. The log need
    /// not exist yet. Writes are refused with [`FOLLOWER`]; what the writer
    /// appends is seen at each [`Live::refresh`]. `writer`, the writer's
    /// host name when known, is named in the refusal.
    pub fn follow(root: &Path, applied: u64, writer: Option<&str>) -> Result<Self> {
        let path = root.join(WAL_FILE);
        let mut tail = Tail::new(&path);
        let records = tail.follow()?.records;
        let delta = replay(&path, records, applied)?;
        Ok(Self {
            path,
            role: Role::Follower(Mutex::new(tail), writer.map(str::to_owned)),
            delta: RwLock::new(delta),
            compacting: AtomicBool::new(false),
            hole: Mutex::new(None),
        })
    }

    /// Refuses a write here if another process writes this log (the
    /// server asks before it charges or admits the call).
    pub fn check_writable(&self) -> Result<()> {
        match self.role {
            Role::Writer(_) => Ok(()),
            Role::Follower(..) => Err(self.refusal()),
        }
    }

    fn refusal(&self) -> Error {
        let writer = match &self.role {
            Role::Follower(_, Some(host)) => format!("the replica on host {host}"),
            _ => "that replica".to_owned(),
        };
        Error::FailedPrecondition(format!(
            "{FOLLOWER} ({}): send writes to {writer}, or through `vecrec route`, which finds it",
            self.path.display()
        ))
    }

    /// The number of the last record applied (read, for a follower).
    pub fn last_seq(&self) -> u64 {
        self.delta.read().last_seq
    }

    /// Whether another process writes this log ([`Live::follow`]).
    pub fn is_follower(&self) -> bool {
        matches!(self.role, Role::Follower(..))
    }

    /// A follower reads what the writer appended since the last look and
    /// applies it; returns how many records it read (a writer: none).
    ///
    /// When the writer rewrote the log (without the records a generation
    /// folded, after a compaction or a `--fold-log` build), the file is
    /// replayed again, and what this follower holds of records older than
    /// the file's first is kept: the generation this follower serves may
    /// not have folded them yet, and its own [`Live::prune`] drops them once
    /// it serves one that has. A record that does not decode is an error,
    /// and the next look reads the whole file again.
    pub fn refresh(&self) -> Result<usize> {
        let Role::Follower(tail, _) = &self.role else {
            return Ok(0);
        };
        self.refresh_locked(&mut tail.lock())
    }

    /// [`Live::refresh`] unless another refresh is under way (`None`):
    /// for a caller that must not wait.
    pub fn try_refresh(&self) -> Result<Option<usize>> {
        let Role::Follower(tail, _) = &self.role else {
            return Ok(Some(0));
        };
        match tail.try_lock() {
            Some(mut t) => self.refresh_locked(&mut t).map(Some),
            None => Ok(None),
        }
    }

    /// The last record a follower serving a generation that folded
    /// records up to `applied` holds with every record before it: what it
    /// has read, less what it may lack ([`Live`]'s `hole`). A writer holds
    /// every record.
    pub fn read_through(&self, applied: u64) -> u64 {
        let last = self.last_seq();
        match *self.hole.lock() {
            Some((after, through)) if applied < through => applied.max(after),
            _ => applied.max(last),
        }
    }

    fn refresh_locked(&self, tail: &mut Tail) -> Result<usize> {
        let found = tail.follow()?;
        let n = found.records.len();
        let mut decoded = Vec::with_capacity(n);
        for (seq, payload) in found.records {
            match decode(&payload) {
                Ok(r) => decoded.push((seq, r)),
                Err(e) => {
                    // Read it again next time rather than pass over it.
                    *tail = Tail::new(&self.path);
                    return Err(vecrec_index::IndexError::Corrupt {
                        path: self.path.clone(),
                        reason: format!("log record {seq}: {e}"),
                    }
                    .into());
                }
            }
        }
        let mut delta = self.delta.write();
        let read = delta.last_seq;
        let first = decoded.first().map(|r| r.0);
        let mut hole = self.hole.lock();
        if found.restarted {
            // What the writer pruned before this follower read it: from
            // what it had read up to the rewritten log's first record.
            let through = first.map_or(u64::MAX, |f| f - 1);
            if through > read {
                *hole = Some(match *hole {
                    Some((a, t)) => (a.min(read), t.max(through)),
                    None => (read, through),
                });
            }
            let mut fresh = Delta::default();
            for (seq, r) in decoded {
                fresh.apply(seq, r);
            }
            fresh.keep_older(&delta, first.unwrap_or(u64::MAX));
            *delta = fresh;
        } else {
            // A rewritten log that held nothing now shows where the
            // pruned records ended.
            if let (Some(f), Some((a, u64::MAX))) = (first, *hole) {
                *hole = Some((a, f - 1));
            }
            for (seq, r) in decoded {
                delta.apply(seq, r);
            }
        }
        Ok(n)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The delta as a generation that folded records up to `applied` sees it.
    pub fn view(&self, applied: u64) -> View<'_> {
        View {
            delta: self.delta.read(),
            applied,
        }
    }

    fn commit(&self, records: Vec<Record>) -> Result<u64> {
        let payloads = records.iter().map(encode).collect::<Result<Vec<_>>>()?;
        // The log lock is held until the delta has the records too, so readers
        // see them in log order.
        let Role::Writer(wal) = &self.role else {
            return Err(self.refusal());
        };
        let mut wal = wal.lock();
        let seqs = wal.append(&payloads)?;
        let mut delta = self.delta.write();
        for (seq, r) in seqs.iter().zip(records) {
            delta.apply(*seq, r);
        }
        Ok(delta.last_seq)
    }

    /// Durably upserts items with their vectors; returns the last record number.
    pub fn upsert(&self, items: Vec<(CatalogItem, Vec<f32>)>) -> Result<u64> {
        self.commit(
            items
                .into_iter()
                .map(|(it, vector)| Record::Upsert {
                    id: it.id,
                    meta: it.meta,
                    vector,
                })
                .collect(),
        )
    }

    /// Durably deletes items.
    pub fn delete(&self, ids: Vec<String>) -> Result<u64> {
        self.commit(ids.into_iter().map(|id| Record::Delete { id }).collect())
    }

    /// Durably records events.
    pub fn record(&self, events: Vec<Interaction>) -> Result<u64> {
        self.commit(
            events
                .into_iter()
                .map(|e| Record::Event {
                    user: e.user,
                    item: e.item,
                    weight: e.weight,
                    timestamp: e.timestamp,
                })
                .collect(),
        )
    }

    /// Drops the records a served generation folded in (up to `applied`)
    /// from the log (a writer; its followers read the rewritten file) and
    /// from memory.
    pub fn prune(&self, applied: u64) -> Result<()> {
        if let Role::Writer(wal) = &self.role {
            let mut wal = wal.lock();
            wal.retain_after(applied)?;
            wal.advance_to(applied + 1);
        }
        let mut d = self.delta.write();
        d.items.retain(|_, x| x.seq > applied);
        d.deleted.retain(|_, s| *s > applied);
        for ev in d.events.values_mut() {
            ev.retain(|e| e.seq > applied);
        }
        d.events.retain(|_, v| !v.is_empty());
        Ok(())
    }

    /// Claims the right to compact; `false` if a compaction is running.
    pub fn begin_compaction(&self) -> bool {
        !self.compacting.swap(true, Ordering::AcqRel)
    }

    /// Ends a compaction claimed with [`Live::begin_compaction`].
    pub fn end_compaction(&self) {
        self.compacting.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(year: f64) -> Record {
        Record::Upsert {
            id: "x".into(),
            meta: ItemMeta {
                title: "t".into(),
                numeric: [("year".to_string(), year)].into(),
                ..Default::default()
            },
            vector: vec![0.5, -0.5],
        }
    }

    fn it(id: &str, title: &str) -> CatalogItem {
        CatalogItem {
            id: id.into(),
            meta: ItemMeta {
                title: title.into(),
                ..Default::default()
            },
        }
    }

    fn row(user: &str, item: &str, timestamp: i64) -> Interaction {
        Interaction {
            user: user.into(),
            item: item.into(),
            timestamp,
            event: None,
            weight: 1.0,
        }
    }

    #[test]
    fn folding_replaces_appends_and_deletes_as_compaction_does() {
        let mut items = vec![it("a", "A"), it("b", "B"), it("c", "C")];
        let mut rows = vec![row("u", "a", 1), row("u", "b", 2), row("v", "c", 3)];
        let changes = [
            Changes {
                upserts: vec![it("n1", "N1"), it("a", "A2")],
                deleted: vec!["b".into()],
                events: vec![row("u", "n1", 9), row("w", "b", 9)],
                through: 7,
            },
            Changes {
                upserts: vec![it("n2", "N2")],
                events: vec![row("v", "a", 10)],
                ..Default::default()
            },
        ];
        Changes::fold(&changes, &mut items, &mut rows);
        let got: Vec<(&str, &str)> = items
            .iter()
            .map(|i| (i.id.as_str(), i.meta.title.as_str()))
            .collect();
        assert_eq!(got, [("a", "A2"), ("c", "C"), ("n1", "N1"), ("n2", "N2")]);
        assert_eq!(
            rows,
            [
                row("u", "a", 1),
                row("v", "c", 3),
                row("u", "n1", 9),
                row("v", "a", 10)
            ]
        );
    }

    /// A follower that read the log only up to some record, while its
    /// writer pruned beyond it (what a new generation folded), holds
    /// every record only up to where it had read, until it serves a
    /// generation that folded the rest; one that read everything holds
    /// all it read.
    #[test]
    fn a_follower_reads_through_only_what_it_holds_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Live::open(dir.path(), 0).unwrap();
        let follower = Live::follow(dir.path(), 0, None).unwrap();
        let events = |t: i64| vec![row("u", "a", t)];
        for t in 1..=2 {
            writer.record(events(t)).unwrap();
        }
        follower.refresh().unwrap();
        assert_eq!(follower.read_through(0), 2);
        for t in 3..=5 {
            writer.record(events(t)).unwrap();
        }
        // A generation folded through 5 is served; the log forgets 1..=5.
        writer.prune(5).unwrap();
        // Nothing after the pruned records yet: where they end is unknown.
        follower.refresh().unwrap();
        assert_eq!(follower.read_through(0), 2);
        assert_eq!(follower.read_through(5), 5);
        let sixth = writer.record(events(6)).unwrap();
        assert_eq!(sixth, 6);
        follower.refresh().unwrap();
        assert_eq!(follower.last_seq(), 6);
        // It lacks 3 to 5 until it serves the generation that folded them.
        assert_eq!(follower.read_through(0), 2);
        assert_eq!(follower.read_through(4), 4);
        assert_eq!(follower.read_through(5), 6);
        // The writer holds every record it wrote.
        assert_eq!(writer.read_through(0), 6);
        assert_eq!(follower.try_refresh().unwrap(), Some(0));
    }

    #[test]
    fn a_record_that_would_not_replay_is_never_logged() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(encode(&upsert(bad)).is_err(), "{bad}");
        }
        let bad_weight = Record::Event {
            user: "u".into(),
            item: "i".into(),
            weight: f32::NAN,
            timestamp: 0,
        };
        assert!(encode(&bad_weight).is_err());
        let ok = encode(&upsert(1995.0)).unwrap();
        assert!(matches!(decode(&ok).unwrap(), Record::Upsert { .. }));
    }

    #[test]
    fn a_null_attribute_in_an_old_log_is_dropped_not_fatal() {
        // What the log held before writes were checked: NaN stored as null.
        let old = serde_json::to_vec(&upsert(f64::NAN)).unwrap();
        assert!(String::from_utf8_lossy(&old).contains("null"));
        let Record::Upsert { id, meta, vector } = decode(&old).unwrap() else {
            panic!("not an upsert")
        };
        assert_eq!(id, "x");
        assert!(meta.numeric.is_empty());
        assert_eq!(vector, [0.5, -0.5]);
        // Anything else that does not parse is still damage.
        assert!(decode(br#"{"op":"upsert","id":"x"}"#).is_err());
    }
}
