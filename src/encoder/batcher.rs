//! Dynamic micro-batching of the server's encoder, after Triton Inference
//! Server's dynamic batcher: the texts of concurrent requests are joined into
//! one forward pass, which costs far less than one pass each (a pass has a
//! fixed cost per graph node, and larger matrix products use the cores
//! better).
//!
//! Requests go into one line. Each worker thread owns a session with one
//! intra-op thread, so the workers, not ONNX Runtime's own pools, decide how
//! many cores encode, and nothing is oversubscribed on top of the tokio and
//! rayon threads. A worker that comes free takes every request waiting, up to
//! `max_texts` texts (a request is split only when it arrives to an empty
//! line and several workers are idle: then over those workers); when it has fewer, it waits
//! for more until `max_wait` has passed since the oldest request it holds
//! arrived, and only under load: while another worker is busy or when the
//! last batch joined several requests (a lone client's requests come one at a
//! time, and would only wait). Under light load a request therefore starts at
//! once; under heavy load batches fill while the workers are busy. Requests whose deadline has passed by the time a worker
//! takes them are answered [`Error::DeadlineExceeded`] without being encoded.
//!
//! A text's vector does not depend on its batch-mates: every row is padded
//! and masked, so joining requests changes no answer (tested to 1e-5).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Core;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::telemetry;

type Reply = SyncSender<Result<Vec<Vec<f32>>>>;

struct Job {
    texts: Vec<String>,
    deadline: Deadline,
    arrived: Instant,
    reply: Reply,
    /// Requests this job answers: 1, or 0 for the second and later parts of
    /// a request split over idle workers.
    requests: u64,
    /// A part of a split request: a batch of its own, so the parts run on
    /// different workers.
    solo: bool,
}

#[derive(Default)]
struct Line {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    line: Mutex<Line>,
    arrived: Condvar,
    /// Workers encoding now.
    busy: AtomicUsize,
    /// Requests in the last batch any worker took.
    last_batch: AtomicUsize,
    stats: Mutex<BatchStats>,
    max_texts: usize,
    max_wait: Duration,
}

/// What the batcher has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes run.
    pub batches: u64,
    /// Requests answered with vectors (expired ones excluded; a request
    /// split over idle workers counts once).
    pub requests: u64,
    /// Most requests joined into one pass.
    pub largest: usize,
}

/// The line and its worker threads; dropping it lets the workers finish the
/// line and stop.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Batcher {
    /// Starts `workers` threads encoding through `core`.
    pub(crate) fn start(
        core: Arc<Core>,
        workers: usize,
        max_texts: usize,
        max_wait: Duration,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            line: Mutex::new(Line::default()),
            arrived: Condvar::new(),
            busy: AtomicUsize::new(0),
            last_batch: AtomicUsize::new(0),
            stats: Mutex::new(BatchStats::default()),
            max_texts: max_texts.max(1),
            max_wait,
        });
        let workers = (0..workers.max(1))
            .map(|i| {
                let (shared, core) = (shared.clone(), core.clone());
                std::thread::Builder::new()
                    .name(format!("encoder-{i}"))
                    .spawn(move || work(&shared, &core))
                    .map_err(|e| Error::Encoder(format!("cannot start an encoder worker: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shared, workers })
    }

    /// What the batcher has done so far.
    pub(crate) fn stats(&self) -> BatchStats {
        *self.shared.stats.lock()
    }

    /// Encodes `texts` (at most `max_texts`) with whatever else is waiting;
    /// blocks the calling thread until the answer. When the line is empty
    /// and several workers are idle, the texts are split over them, so a
    /// lone batch request (Embed, UpsertItems) uses every core instead of one.
    pub(crate) fn encode(&self, texts: Vec<String>, deadline: Deadline) -> Result<Vec<Vec<f32>>> {
        let answers = {
            let mut line = self.shared.line.lock();
            if line.closed {
                return Err(Error::Encoder("the encoder is shutting down".into()));
            }
            let idle = self
                .workers
                .len()
                .saturating_sub(self.shared.busy.load(Ordering::Acquire));
            let parts = if line.jobs.is_empty() {
                idle.clamp(1, texts.len().max(1))
            } else {
                1
            };
            let arrived = Instant::now();
            let mut answers = Vec::with_capacity(parts);
            let mut rest = texts;
            for part in 0..parts {
                let n = rest.len().div_ceil(parts - part);
                let tail = rest.split_off(n);
                let (reply, answer) = sync_channel(1);
                line.jobs.push_back(Job {
                    texts: std::mem::replace(&mut rest, tail),
                    deadline,
                    arrived,
                    reply,
                    requests: u64::from(part == 0),
                    solo: parts > 1,
                });
                answers.push(answer);
            }
            answers
        };
        if answers.len() > 1 {
            self.shared.arrived.notify_all();
        } else {
            self.shared.arrived.notify_one();
        }
        let mut out = Vec::new();
        for answer in answers {
            out.extend(
                answer
                    .recv()
                    .map_err(|_| Error::Encoder("an encoder worker stopped".into()))??,
            );
        }
        Ok(out)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.line.lock().closed = true;
        self.shared.arrived.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Takes the jobs at the front of the line that fit in `room` texts (at least
/// one job when the batch is still empty).
fn take(line: &mut Line, batch: &mut Vec<Job>, texts: &mut usize, max_texts: usize) {
    while let Some(next) = line.jobs.front() {
        let alone = next.solo || batch.first().is_some_and(|j: &Job| j.solo);
        if !batch.is_empty() && (alone || *texts + next.texts.len() > max_texts) {
            break;
        }
        *texts += next.texts.len();
        batch.extend(line.jobs.pop_front());
    }
}

fn work(shared: &Shared, core: &Core) {
    loop {
        let mut batch = Vec::new();
        let mut texts = 0;
        {
            let mut line = shared.line.lock();
            while line.jobs.is_empty() && !line.closed {
                shared.arrived.wait(&mut line);
            }
            if line.jobs.is_empty() {
                return;
            }
            take(&mut line, &mut batch, &mut texts, shared.max_texts);
            // Waiting only pays when more requests are coming: when another
            // worker is busy, or the last batch joined several requests. A
            // lone client's requests come one at a time and never wait.
            let load = shared.busy.load(Ordering::Acquire) > 0
                || shared.last_batch.load(Ordering::Relaxed) > 1;
            let until = batch[0].arrived + shared.max_wait;
            while load && !batch[0].solo && texts < shared.max_texts && !line.closed {
                if shared.arrived.wait_until(&mut line, until).timed_out() {
                    take(&mut line, &mut batch, &mut texts, shared.max_texts);
                    break;
                }
                take(&mut line, &mut batch, &mut texts, shared.max_texts);
            }
            // Wake another worker for what is left.
            if !line.jobs.is_empty() {
                shared.arrived.notify_one();
            }
            shared.last_batch.store(batch.len(), Ordering::Relaxed);
            shared.busy.fetch_add(1, Ordering::AcqRel);
        }
        run(core, batch, &shared.stats);
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Encodes the live jobs of `batch` in one call and answers each.
fn run(core: &Core, batch: Vec<Job>, stats: &Mutex<BatchStats>) {
    let taken = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for job in batch {
        telemetry::stage("encode_queue", (taken - job.arrived).as_secs_f64());
        match job.deadline.check("encode") {
            Ok(()) => live.push(job),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    if live.is_empty() {
        return;
    }
    let all: Vec<&str> = live
        .iter()
        .flat_map(|j| j.texts.iter().map(String::as_str))
        .collect();
    {
        let mut s = stats.lock();
        s.batches += 1;
        s.requests += live.iter().map(|j| j.requests).sum::<u64>();
        s.largest = s.largest.max(live.len());
    }
    metrics::histogram!(telemetry::ENCODER_BATCH_TEXTS).record(all.len() as f64);
    metrics::histogram!(telemetry::ENCODER_BATCH_REQUESTS).record(live.len() as f64);
    let result = core.encode(&all, &|_| {});
    telemetry::stage("encode", taken.elapsed().as_secs_f64());
    match result {
        Ok(mut vectors) => {
            // Hand each job its own rows, in order.
            for job in live.into_iter().rev() {
                let rest = vectors.split_off(vectors.len() - job.texts.len());
                let _ = job.reply.send(Ok(rest));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for job in live {
                let _ = job.reply.send(Err(Error::Encoder(msg.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> (Job, std::sync::mpsc::Receiver<Result<Vec<Vec<f32>>>>) {
        let (reply, rx) = sync_channel(1);
        (
            Job {
                texts: vec!["t".into(); n],
                deadline: Deadline::NONE,
                arrived: Instant::now(),
                reply,
                requests: 1,
                solo: false,
            },
            rx,
        )
    }

    #[test]
    fn a_batch_takes_whole_jobs_up_to_its_size() {
        let mut line = Line::default();
        let mut keep = Vec::new();
        for n in [3, 4, 2, 9] {
            let (j, rx) = job(n);
            line.jobs.push_back(j);
            keep.push(rx);
        }
        let (mut batch, mut texts) = (Vec::new(), 0);
        take(&mut line, &mut batch, &mut texts, 8);
        // 3 + 4 fit; 2 more would make 9 > 8, so the line keeps [2, 9].
        assert_eq!(batch.len(), 2);
        assert_eq!(texts, 7);
        assert_eq!(line.jobs.len(), 2);
        // An empty batch takes one job even when it alone is too large.
        let mut line = Line::default();
        let (j, _rx) = job(20);
        line.jobs.push_back(j);
        let (mut batch, mut texts) = (Vec::new(), 0);
        take(&mut line, &mut batch, &mut texts, 8);
        assert_eq!((batch.len(), texts), (1, 20));
        // The parts of a split request each make a batch of their own.
        let mut line = Line::default();
        for _ in 0..2 {
            let (mut j, rx) = job(3);
            j.solo = true;
            line.jobs.push_back(j);
            keep.push(rx);
        }
        let (mut batch, mut texts) = (Vec::new(), 0);
        take(&mut line, &mut batch, &mut texts, 8);
        assert_eq!((batch.len(), texts, line.jobs.len()), (1, 3, 1));
    }
}
