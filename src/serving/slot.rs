//! Atomic generation swaps while serving.
//!
//! The service answers from an [`EngineSlot`]: each request clones the current
//! `Arc<Engine>` and keeps it until it finishes, so a swap never disturbs a
//! request in flight, and the old generation's memory maps are released when
//! its last request ends. A background task checks the index root's `CURRENT`
//! pointer every `server.reload_interval_ms` (and at once on SIGHUP); when it
//! names a new generation, the task opens it off the request path and swaps it
//! in. A generation that fails to open is logged and the old one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::engine::Engine;
use crate::error::Result;
use crate::layout::GenerationInfo;

/// The engine currently served, replaceable atomically.
#[derive(Debug)]
pub struct EngineSlot {
    root: PathBuf,
    current: RwLock<Arc<Engine>>,
    /// The engine served before the last swap, kept open for
    /// `server.previous_generation_s` ([`EngineSlot::previous`]).
    previous: RwLock<Option<Previous>>,
    /// Whether a shard's uncompacted log was reported (once).
    shard_log_noted: AtomicBool,
    /// Keep the engine swapped out open ([`EngineSlot::keeping_previous`]);
    /// a shard of a partitioned hybrid build always does.
    keep_previous: bool,
}

/// A generation swapped out, still open for calls that name it.
#[derive(Debug)]
struct Previous {
    engine: Arc<Engine>,
    /// When it closes.
    until: Instant,
    /// The log record the generation swapped in folded: its log prunes
    /// through it once this closes, since this one reads the records the
    /// new generation folded from the log.
    prune: u64,
}

impl EngineSlot {
    /// A slot serving `engine`, opened from the index root `root`.
    pub fn new(root: &Path, engine: Arc<Engine>) -> Self {
        Self {
            root: root.to_owned(),
            current: RwLock::new(engine),
            previous: RwLock::new(None),
            shard_log_noted: AtomicBool::new(false),
            keep_previous: false,
        }
    }

    /// The index root this slot serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The engine to answer the next request with.
    pub fn get(&self) -> Arc<Engine> {
        self.current.read().clone()
    }

    /// This slot, keeping the engine it swaps out open for
    /// `server.previous_generation_s` (the router's front: a shard may
    /// still serve the slices of the front it replaced).
    pub fn keeping_previous(mut self) -> Self {
        self.keep_previous = true;
        self
    }

    /// The engine served before the last swap, while it is kept open
    /// (`server.previous_generation_s` after the swap).
    pub fn previous(&self) -> Option<Arc<Engine>> {
        let p = self.previous.read();
        p.as_ref()
            .filter(|p| Instant::now() < p.until)
            .map(|p| p.engine.clone())
    }

    /// Closes the previous engine once its time is up and no call holds
    /// it any more (at once with `now`), and prunes the log records the
    /// generation that replaced it folded. A prune that fails is logged
    /// and tried again at the next check.
    fn close_previous(&self, now: bool) {
        let mut p = self.previous.write();
        let due = p.as_ref().is_some_and(|p| {
            now || (Instant::now() >= p.until && Arc::strong_count(&p.engine) == 1)
        });
        if !due {
            return;
        }
        let closed = p.take().expect("checked");
        // The log's rewrite is done without the lock (only this reload
        // path sets or closes the previous engine).
        drop(p);
        if let (Some(l), true) = (closed.engine.live(), closed.prune > 0) {
            if let Err(e) = l.prune(closed.prune) {
                tracing::error!(error = %e, "the log could not drop the records the served generation folded; trying again at the next check");
                // Closed to calls: only the prune is pending.
                *self.previous.write() = Some(Previous {
                    until: Instant::now(),
                    ..closed
                });
            }
        }
    }

    /// Opens the live generation if it differs from the served one and swaps it
    /// in; returns whether a swap happened. The one served before stays
    /// open for `server.previous_generation_s` ([`EngineSlot::previous`]).
    pub fn reload_if_changed(&self) -> Result<bool> {
        self.close_previous(false);
        let served = self.get();
        let live = vecrec_index::generation::current_generation(&self.root)?;
        if live == served.index().dir() {
            return Ok(false);
        }
        let mut next = Engine::open_as(
            &self.root,
            served.config().clone(),
            served.encoder_arc(),
            served.opening(),
        )?;
        // A front opened lazily is swapped in once checked whole, as an
        // eager open would have been: damage found keeps the served one.
        next.wait_verified()?;
        let live = served.live().cloned();
        if let Some(l) = &live {
            next.attach_live(l.clone());
        }
        let applied = next.applied_seq();
        tracing::info!(from = %served.index().dir().display(), to = %next.index().dir().display(), "generation swapped in");
        // An older previous one closes now: one is kept at a time.
        self.close_previous(true);
        let keep = Duration::from_secs(served.config().server.previous_generation_s);
        if !keep.is_zero() && (self.keep_previous || served.is_sliced_shard()) {
            // Kept before the swap, so a call that finds the new engine
            // finds the old one too. Its log prunes when it closes: it reads
            // from the log what the new generation folded.
            *self.previous.write() = Some(Previous {
                engine: served,
                until: Instant::now() + keep,
                prune: applied,
            });
            *self.current.write() = Arc::new(next);
            return Ok(true);
        }
        *self.current.write() = Arc::new(next);
        // The log may now forget what the served generation folded in.
        if let (Some(l), true) = (live, applied > 0) {
            l.prune(applied)?;
        }
        Ok(true)
    }

    /// Compacts pending live updates into a new generation when at least
    /// `threshold` are pending and no compaction is running; the next reload
    /// swaps it in. Returns whether a generation was written. A shard of a
    /// partitioned build is never compacted (its users' profiles span every
    /// shard): its log is kept, which is said once, as a warning. Nor is a
    /// log this process follows: its writer compacts, if anyone does.
    pub fn compact_if_due(&self, threshold: usize) -> Result<bool> {
        let engine = self.get();
        let Some(live) = engine.live().cloned() else {
            return Ok(false);
        };
        let pending = live.view(engine.applied_seq()).pending();
        if (pending as usize) < threshold.max(1) {
            return Ok(false);
        }
        if live.is_follower() {
            return Ok(false);
        }
        if let Some(s) = GenerationInfo::of(engine.index().manifest()).shard {
            if !self.shard_log_noted.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    shard = s.index,
                    of = s.of,
                    pending,
                    "a shard's log is not compacted (its users' profiles span every shard): \
                     its records stay in the log and apply over every later generation"
                );
            }
            return Ok(false);
        }
        if !live.begin_compaction() {
            return Ok(false);
        }
        // The build runs on a pool of its own: on the global pool, a
        // request's parallel source lists would queue behind the build's
        // long training tasks (seconds) instead of sharing the cores.
        let result =
            build_pool().and_then(|pool| pool.install(|| super::compact(&self.root, &engine)));
        live.end_compaction();
        let written = result?.is_some();
        if written {
            metrics::counter!(crate::telemetry::COMPACTIONS).increment(1);
            self.reload_if_changed()?;
        }
        Ok(written)
    }
}

/// The thread pool a compaction's build runs on, apart from the global
/// pool that serves requests.
fn build_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(crate::config::cores())
        .thread_name(|i| format!("vecrec-compact-{i}"))
        .build()
        .map_err(|e| {
            crate::error::Error::Config(format!("cannot start the compaction threads: {e}"))
        })
}

/// Compacts live updates in the background: every `interval`, when at least
/// `threshold` log records are pending.
pub async fn compact_loop(slot: Arc<EngineSlot>, interval: Duration, threshold: usize) {
    loop {
        tokio::time::sleep(interval).await;
        let s = slot.clone();
        match tokio::task::spawn_blocking(move || s.compact_if_due(threshold)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "compaction failed; live updates stay in the log")
            }
            Err(e) => tracing::error!(error = %e, "compaction task failed"),
        }
    }
}

/// Reads what the writer of a followed log appended, every `interval`,
/// until the process ends (a log this process writes: returns at once).
pub async fn follow_loop(slot: Arc<EngineSlot>, interval: Duration) {
    let mut failing = false;
    loop {
        let Some(live) = slot.get().live().cloned() else {
            return;
        };
        if !live.is_follower() {
            return;
        }
        let result = tokio::task::spawn_blocking(move || live.refresh()).await;
        match result {
            Ok(Ok(_)) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot read the followed log; serving what was read")
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(error = %e, "follow task failed"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Watches the index root until the process ends: every `interval`, and on SIGHUP.
pub async fn watch(slot: Arc<EngineSlot>, interval: Duration) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {},
                _ = hup_recv => tracing::info!("SIGHUP: checking for a new generation"),
            }
        }
        #[cfg(not(unix))]
        tokio::time::sleep(interval).await;
        let s = slot.clone();
        match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "new generation cannot be opened; still serving the old one")
            }
            Err(e) => tracing::error!(error = %e, "reload task failed"),
        }
    }
}
