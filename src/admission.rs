//! Admission control: a bound on requests worked on at once and on requests
//! waiting for a place.
//!
//! A request that finds a free place starts at once. One that finds none
//! waits in line, for at most `max_wait` and never past its deadline. The
//! line holds at most `max_queued` requests, so beyond capacity the server
//! sheds (`RESOURCE_EXHAUSTED`) instead of queueing without bound.
//!
//! The line is first come, first served while it has room: a burst, or a
//! client with more callers than places, waits its turn and nobody is
//! refused. Once the line is full the server is overloaded, and the line
//! turns *last come, first served* for [`LIFO_HOLD`] after the last time it
//! was full (adaptive LIFO, as Facebook's servers and Wangle do): an arrival
//! takes the place of the request that has waited longest, which is answered
//! `RESOURCE_EXHAUSTED` at that moment, and a freed place goes to the newest
//! request. Under sustained overload the requests that are served have
//! hardly waited, so their latency stays near the unloaded latency, and the
//! ones refused are those whose callers have waited longest, not the ones
//! that just arrived. A line of `max_queued` 0 refuses every request that
//! finds no free place.
//!
//! While the line is last come, first served it is also a *controlled
//! delay* line (CoDel, as in "Fail at Scale"): a freed place goes to a
//! waiter only if it has waited at most as long as a place is usually held
//! (the moving average of the line's recent service times, at least
//! [`MIN_OVERLOAD_WAIT`]). If the newest waiter has waited longer, so has
//! everyone behind it, and the whole line is answered `RESOURCE_EXHAUSTED`.
//! Without this, the waiters that sat behind newer ones are served when the
//! overload ends and the line drains, each after waiting for the whole line
//! (32 service times), which made the served requests' p99 under overload
//! fifteen times the unloaded p99.
//!
//! And while overloaded, a line works on at most `overload_limit` requests
//! at once (one per core by default) instead of `limit`: with a request
//! always waiting, more places add little throughput and much latency (by
//! Little's law, places over throughput: eight SearchText calls in the
//! encoder's batches took five times as long as one: median 48 ms against
//! 9.3 ms). Freed places are not handed on until the count is down to it;
//! places so left free when the overload ends go to those in line before
//! any newcomer, by the same rule as a freed place.
//!
//! Work that runs on the runtime's own threads (SimilarItems) never fills
//! its line: its place is freed before the next handler runs, so past
//! saturation its calls wait for a runtime thread instead, where no line
//! sees them. [`RuntimeLag`] measures that wait (how long a yielding probe
//! task takes to run again), and while it has stayed above
//! [`LAG_TARGET`] for [`LAG_INTERVAL`] (behind, not a burst: controlled
//! delay on the runtime's queue, with "Fail at Scale"'s 5 ms and 100 ms)
//! such calls are refused as their handlers start, until the runtime
//! catches up. (A refusal there saves only the call's own work; for a call
//! as cheap as SimilarItems, reading and answering it costs nearly as much,
//! so far past saturation the runtime still cannot keep up.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::telemetry;

/// How long the line stays last-come-first-served after it was last full.
pub const LIFO_HOLD: Duration = Duration::from_millis(100);

/// The shortest wait after which an overloaded line sheds a waiter instead
/// of serving it, however short the line's service times.
pub const MIN_OVERLOAD_WAIT: Duration = Duration::from_micros(500);

/// The runtime's lag below which it counts as keeping up.
pub const LAG_TARGET: Duration = Duration::from_millis(5);

/// How long the lag must stay above [`LAG_TARGET`] before calls on the
/// runtime's threads are refused.
pub const LAG_INTERVAL: Duration = Duration::from_millis(100);

/// How often the probe measures the runtime's lag.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(5);

/// Weight of the newest service time in the line's moving average.
const SERVICE_EWMA_WEIGHT: f64 = 0.05;

/// The limits and the state of one line.
#[derive(Debug)]
pub struct Admission {
    name: &'static str,
    limit: usize,
    /// The limit while the line is overloaded (at most `limit`).
    overload_limit: usize,
    max_queued: usize,
    max_wait: Option<Duration>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    line: VecDeque<Waiter>,
    next_id: u64,
    /// Last come, first served until then.
    lifo_until: Option<Instant>,
    /// Moving average of how long a place is held, in seconds (0 before
    /// the first release).
    service_s: f64,
}

impl State {
    /// The longest a waiter may have waited and still be given a place
    /// while the line is overloaded.
    fn overload_wait(&self) -> Duration {
        Duration::from_secs_f64(self.service_s).max(MIN_OVERLOAD_WAIT)
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    arrived: Instant,
    /// `Ok`: a place was handed over; `Err`: shed from the line.
    tell: oneshot::Sender<std::result::Result<(), Shed>>,
}

/// Why a waiter was taken out of the line without a place, and how long it
/// had waited.
#[derive(Debug)]
enum Shed {
    /// A newcomer took its place in a full line.
    Displaced(Duration),
    /// The line was overloaded and it had waited longer than a place is
    /// usually held.
    Stale(Duration),
}

/// A place held by an admitted request; dropping it hands the place to the
/// next request in line, or frees it.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    /// When the place was taken.
    since: Instant,
}

impl Permit {
    fn new(admission: &Arc<Admission>) -> Self {
        Self {
            admission: admission.clone(),
            since: Instant::now(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(Some(self.since.elapsed()));
    }
}

/// Takes a waiter out of the line when its wait ends some other way (the
/// deadline, the wait bound, or the caller going away); a place handed over
/// meanwhile is passed on.
struct Leave<'a> {
    admission: &'a Admission,
    id: u64,
    /// `None` once the answer has been taken.
    told: Option<oneshot::Receiver<std::result::Result<(), Shed>>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        {
            let mut s = self.admission.state.lock();
            s.line.retain(|w| w.id != self.id);
            self.admission.gauges(&s);
        }
        // Anything sent was sent under the lock, so it is visible now.
        if let Some(Ok(Ok(()))) = self.told.as_mut().map(|t| t.try_recv()) {
            self.admission.release(None);
        }
    }
}

impl Admission {
    /// A line named `name` (the `line` label of its metrics): at most `limit`
    /// requests at once (at least 1), and at most `overload_limit` while
    /// overloaded; `max_queued` waiting, each for at most `max_wait` (`None`:
    /// until its deadline).
    pub fn new(
        name: &'static str,
        limit: usize,
        overload_limit: usize,
        max_queued: usize,
        max_wait: Option<Duration>,
    ) -> Arc<Self> {
        let limit = limit.max(1);
        Arc::new(Self {
            name,
            limit,
            overload_limit: overload_limit.clamp(1, limit),
            max_queued,
            max_wait,
            state: Mutex::new(State::default()),
        })
    }

    /// Most requests worked on at once.
    pub fn in_flight_limit(&self) -> usize {
        self.limit
    }

    /// Most requests worked on at once while the line is overloaded.
    pub fn overload_limit(&self) -> usize {
        self.overload_limit
    }

    /// Whether the line is overloaded at `now` (it was full within the last
    /// [`LIFO_HOLD`]).
    fn overloaded(s: &State, now: Instant) -> bool {
        s.lifo_until.is_some_and(|t| now < t)
    }

    /// The limit on requests worked on at once that holds at `now`.
    fn limit_now(&self, s: &State, now: Instant) -> usize {
        if Self::overloaded(s, now) {
            self.overload_limit
        } else {
            self.limit
        }
    }

    /// Most requests waiting at once.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Requests being worked on now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().in_flight
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.state.lock().line.len()
    }

    fn gauges(&self, s: &State) {
        metrics::gauge!(telemetry::IN_FLIGHT, "line" => self.name).set(s.in_flight as f64);
        metrics::gauge!(telemetry::QUEUED, "line" => self.name).set(s.line.len() as f64);
    }

    fn shed(&self, rpc: &'static str, reason: &'static str) {
        metrics::counter!(telemetry::SHED, "rpc" => rpc, "line" => self.name, "reason" => reason)
            .increment(1);
    }

    /// Admits a request of `rpc` due by `deadline`: a place now, or a place
    /// after a wait in line; [`Error::Overloaded`] at once when there is no
    /// line, when displaced from a full line, or after `max_wait`;
    /// [`Error::DeadlineExceeded`] when the deadline passes in line.
    pub async fn admit(self: &Arc<Self>, rpc: &'static str, deadline: Deadline) -> Result<Permit> {
        let arrived = Instant::now();
        let (tell, told) = oneshot::channel();
        let id = {
            let mut s = self.state.lock();
            let limit = self.limit_now(&s, arrived);
            // Places left free when an overload ended go to those in line
            // first, not to this newcomer.
            while s.in_flight < limit && Self::hand_over(&mut s, arrived) {
                s.in_flight += 1;
            }
            if s.in_flight < limit {
                s.in_flight += 1;
                self.gauges(&s);
                return Ok(Permit::new(self));
            }
            if self.max_queued == 0 {
                drop(s);
                self.shed(rpc, "no_line");
                return Err(Error::Overloaded(format!(
                    "{} requests in progress and no line; try again later",
                    self.limit
                )));
            }
            if s.line.len() >= self.max_queued {
                s.lifo_until = arrived.checked_add(LIFO_HOLD);
                if let Some(oldest) = s.line.pop_front() {
                    let _ = oldest
                        .tell
                        .send(Err(Shed::Displaced(arrived - oldest.arrived)));
                }
            }
            let id = s.next_id;
            s.next_id += 1;
            s.line.push_back(Waiter { id, arrived, tell });
            self.gauges(&s);
            id
        };
        let mut leave = Leave {
            admission: self,
            id,
            told: Some(told),
        };
        let until = match (
            self.max_wait.and_then(|w| arrived.checked_add(w)),
            deadline.instant(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let told = leave.told.as_mut().expect("set above");
        let answer = match until {
            Some(t) => tokio::time::timeout_at(t.into(), told).await.ok(),
            None => Some(told.await),
        };
        if answer.is_some() {
            // Answered: nothing is left to pass on.
            leave.told = None;
        }
        drop(leave);
        telemetry::stage("queue", arrived.elapsed().as_secs_f64());
        match answer {
            Some(Ok(Ok(()))) => Ok(Permit::new(self)),
            Some(Ok(Err(Shed::Displaced(waited)))) => {
                self.shed(rpc, "displaced");
                Err(Error::Overloaded(format!(
                    "the line of {} was full and this request, the longest waiting \
                     ({} ms), gave its place to a newer one; try again later",
                    self.max_queued,
                    waited.as_millis()
                )))
            }
            Some(Ok(Err(Shed::Stale(waited)))) => {
                self.shed(rpc, "stale");
                Err(Error::Overloaded(format!(
                    "this request waited {:.1} ms for a place, longer than a place \
                     is usually held, while newer requests were served first; try again later",
                    waited.as_secs_f64() * 1e3
                )))
            }
            Some(Err(_)) => Err(Error::Overloaded("the server is shutting down".into())),
            None => self.timed_out(rpc, deadline),
        }
    }

    /// The wait ended by the clock (a place handed over meanwhile has been
    /// passed on).
    fn timed_out(self: &Arc<Self>, rpc: &'static str, deadline: Deadline) -> Result<Permit> {
        if deadline.expired() {
            deadline.check("admission")?;
        }
        self.shed(rpc, "queue_wait");
        Err(Error::Overloaded(format!(
            "no place freed within {} ms; try again later",
            self.max_wait.unwrap_or_default().as_millis()
        )))
    }

    /// A place is given back, after being held for `held` (`None`: handed
    /// over but never used): it goes to a request in line (the oldest, or
    /// while the line is overloaded the newest, if it has not waited too
    /// long: see the module's comment), else it is freed.
    fn release(&self, held: Option<Duration>) {
        let mut s = self.state.lock();
        if let Some(h) = held {
            s.service_s = if s.service_s == 0.0 {
                h.as_secs_f64()
            } else {
                s.service_s + SERVICE_EWMA_WEIGHT * (h.as_secs_f64() - s.service_s)
            };
        }
        let now = Instant::now();
        // Overloaded with more at work than its limit then, the place is
        // not handed on.
        if s.in_flight > self.limit_now(&s, now) || !Self::hand_over(&mut s, now) {
            s.in_flight -= 1;
        }
        self.gauges(&s);
    }

    /// Gives a place to a request in line by the rule that holds at `now`
    /// (the oldest; while overloaded the newest, unless it has waited too
    /// long, and then the whole line is shed: see the module's comment).
    /// `false` if nobody took it.
    fn hand_over(s: &mut State, now: Instant) -> bool {
        let lifo = Self::overloaded(s, now);
        let stale = lifo.then(|| s.overload_wait());
        loop {
            let next = if lifo {
                s.line.pop_back()
            } else {
                s.line.pop_front()
            };
            let Some(w) = next else { return false };
            let waited = now.saturating_duration_since(w.arrived);
            if stale.is_some_and(|limit| waited > limit) {
                // Everyone behind has waited longer still.
                let _ = w.tell.send(Err(Shed::Stale(waited)));
                for o in s.line.drain(..) {
                    let waited = now.saturating_duration_since(o.arrived);
                    let _ = o.tell.send(Err(Shed::Stale(waited)));
                }
                return false;
            }
            // A waiter whose caller went away (its receiver dropped) is
            // skipped.
            if w.tell.send(Ok(())).is_ok() {
                return true;
            }
        }
    }
}

/// How far behind the runtime's threads are (see the module's comment).
#[derive(Debug)]
pub struct RuntimeLag {
    state: Mutex<LagState>,
}

#[derive(Debug, Default)]
struct LagState {
    /// When a measured lag was last within [`LAG_TARGET`] (`None` before
    /// the first measurement).
    calm_at: Option<Instant>,
    /// The last lag measured.
    last: Duration,
}

impl RuntimeLag {
    /// A lag not yet measured, which never counts as behind until
    /// [`RuntimeLag::probe`] (or [`RuntimeLag::observe`]) measures it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LagState::default()),
        })
    }

    /// Records a lag of `lag` measured at `now`.
    pub fn observe(&self, now: Instant, lag: Duration) {
        let mut s = self.state.lock();
        s.last = lag;
        let calm_at = *s.calm_at.get_or_insert(now);
        if lag <= LAG_TARGET {
            s.calm_at = Some(calm_at.max(now));
        }
    }

    /// The last lag measured, if at `now` the runtime has been behind for
    /// longer than [`LAG_INTERVAL`]; `None` while it keeps up or before
    /// any measurement.
    pub fn behind(&self, now: Instant) -> Option<Duration> {
        let s = self.state.lock();
        let calm_at = s.calm_at?;
        (now.saturating_duration_since(calm_at) > LAG_INTERVAL).then_some(s.last.max(LAG_TARGET))
    }

    /// Measures the lag of the runtime it runs on, every
    /// [`LAG_PROBE_EVERY`], until dropped: how long a yield takes to be
    /// polled again, which is how long the tasks queued before it take.
    pub async fn probe(self: Arc<Self>) {
        loop {
            let t = Instant::now();
            tokio::task::yield_now().await;
            let now = Instant::now();
            let lag = now - t;
            self.observe(now, lag);
            metrics::gauge!(telemetry::RUNTIME_LAG).set(lag.as_secs_f64());
            tokio::time::sleep(LAG_PROBE_EVERY).await;
        }
    }
}

impl Admission {
    /// The refusal of a call of `rpc` on the runtime's threads while the
    /// runtime is `lag` behind, counted as shed.
    pub fn refuse_behind(&self, rpc: &'static str, lag: Duration) -> Error {
        self.shed(rpc, "runtime_behind");
        Error::Overloaded(format!(
            "the server's threads are {:.1} ms behind (longer than {} ms for over {} ms); try \
             again later",
            lag.as_secs_f64() * 1e3,
            LAG_TARGET.as_millis(),
            LAG_INTERVAL.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_queued(a: &Admission, n: usize) {
        let t = Instant::now();
        while a.queued() < n {
            assert!(t.elapsed() < Duration::from_secs(5), "never {n} in line");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn without_a_line_a_request_is_refused_at_once() {
        let a = Admission::new("t", 2, 2, 0, None);
        let p1 = a.admit("t", Deadline::NONE).await.unwrap();
        let _p2 = a.admit("t", Deadline::NONE).await.unwrap();
        assert_eq!(a.in_flight(), 2);
        let started = Instant::now();
        let refused = a.admit("t", Deadline::NONE).await;
        assert!(matches!(refused, Err(Error::Overloaded(_))), "{refused:?}");
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(p1);
        assert_eq!(a.in_flight(), 1);
        let _p3 = a.admit("t", Deadline::NONE).await.unwrap();
        assert_eq!(a.in_flight(), 2);
    }

    /// With room in the line, places go in arrival order.
    #[tokio::test]
    async fn a_line_with_room_is_first_come_first_served() {
        let a = Admission::new("t", 1, 1, 4, None);
        let p = a.admit("t", Deadline::NONE).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (a2, tx) = (a.clone(), tx.clone());
            tokio::spawn(async move {
                let p = a2.admit("t", Deadline::NONE).await.unwrap();
                tx.send(i).unwrap();
                drop(p);
            });
            until_queued(&a, i + 1).await;
        }
        drop(p);
        let order: Vec<usize> = vec![
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ];
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(a.in_flight(), 0);
    }

    /// A full line sheds its longest-waiting request, takes the newcomer and
    /// serves the newest first.
    #[tokio::test]
    async fn a_full_line_sheds_the_oldest_and_serves_the_newest() {
        let a = Admission::new("t", 1, 1, 2, None);
        let p = a.admit("t", Deadline::NONE).await.unwrap();
        let mut waiting = Vec::new();
        for i in 0..3usize {
            let a2 = a.clone();
            waiting.push(tokio::spawn(async move {
                a2.admit("t", Deadline::NONE).await.map(|p| (i, p))
            }));
            until_queued(&a, (i + 1).min(2)).await;
            if i == 2 {
                // The first waiter is displaced as the third arrives.
                tokio::time::timeout(Duration::from_secs(5), async {
                    while !waiting[0].is_finished() {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .unwrap();
            }
        }
        let first = waiting.remove(0).await.unwrap();
        assert!(matches!(first, Err(Error::Overloaded(_))), "{first:?}");
        // The freed place goes to the newest (the third), not the second.
        drop(p);
        let third = waiting.pop().unwrap().await.unwrap().unwrap();
        assert_eq!(third.0, 2);
        assert!(!waiting[0].is_finished());
        // The second has now waited far longer than places are held on
        // average, and the line is still overloaded (within LIFO_HOLD of the
        // third's arrival): it is shed, not served.
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(third);
        let second = waiting.pop().unwrap().await.unwrap();
        assert!(matches!(second, Err(Error::Overloaded(_))), "{second:?}");
        assert_eq!((a.in_flight(), a.queued()), (0, 0));
    }

    /// Overloads a line of one place in line whose places are all taken:
    /// two waiters arrive, the first is displaced (asserted), and the
    /// second's call is returned, still waiting.
    async fn overload(a: &Arc<Admission>) -> tokio::task::JoinHandle<Result<Permit>> {
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let a2 = a.clone();
            waiting.push(tokio::spawn(
                async move { a2.admit("t", Deadline::NONE).await },
            ));
            until_queued(a, 1).await;
        }
        let first = waiting.remove(0).await.unwrap();
        assert!(matches!(first, Err(Error::Overloaded(_))), "{first:?}");
        waiting.remove(0)
    }

    /// While overloaded, a freed place goes to the newest waiter only if it
    /// has waited no longer than a place is usually held; otherwise every
    /// waiter is shed and the place is freed.
    #[tokio::test]
    async fn an_overloaded_line_sheds_waiters_older_than_a_service_time() {
        let a = Admission::new("t", 1, 1, 1, None);
        // One short service sets the average to well under the waits below.
        drop(a.admit("t", Deadline::NONE).await.unwrap());
        let p = a.admit("t", Deadline::NONE).await.unwrap();
        let second = overload(&a).await;
        tokio::time::sleep(MIN_OVERLOAD_WAIT * 20).await;
        drop(p);
        let second = second.await.unwrap();
        let Err(Error::Overloaded(why)) = second else {
            panic!("served after waiting too long: {second:?}");
        };
        assert!(why.contains("longer than a place"), "{why}");
        assert_eq!((a.in_flight(), a.queued()), (0, 0));
    }

    /// While overloaded, a line works on at most its overload limit: freed
    /// places are not handed on until the count is down to it.
    #[tokio::test]
    async fn an_overloaded_line_works_on_fewer_at_once() {
        let a = Admission::new("t", 2, 1, 1, None);
        let p1 = a.admit("t", Deadline::NONE).await.unwrap();
        let p2 = a.admit("t", Deadline::NONE).await.unwrap();
        // Places held much longer than the waits below, so none is stale.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = overload(&a).await;
        drop(p1);
        assert_eq!(
            (a.in_flight(), a.queued()),
            (1, 1),
            "the place was handed on"
        );
        drop(p2);
        let second = second.await.unwrap();
        assert!(second.is_ok(), "{second:?}");
        drop(second);
        assert_eq!((a.in_flight(), a.queued()), (0, 0));
    }

    /// Places left free when an overload ends go to the line before a
    /// newcomer.
    #[tokio::test]
    async fn after_an_overload_the_line_goes_first() {
        let a = Admission::new("t", 2, 1, 1, None);
        let p1 = a.admit("t", Deadline::NONE).await.unwrap();
        let p2 = a.admit("t", Deadline::NONE).await.unwrap();
        let waiter = overload(&a).await;
        drop(p1);
        assert_eq!((a.in_flight(), a.queued()), (1, 1));
        tokio::time::sleep(LIFO_HOLD + Duration::from_millis(20)).await;
        // The overload is over; the newcomer finds a free place but the
        // waiter gets it, and the newcomer waits.
        let a2 = a.clone();
        let newcomer =
            tokio::spawn(async move { a2.admit("t", Deadline::NONE).await.map(|_p| ()) });
        let served = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter was passed over")
            .unwrap()
            .unwrap();
        until_queued(&a, 1).await;
        assert!(!newcomer.is_finished());
        drop(p2);
        assert!(newcomer.await.unwrap().is_ok());
        drop(served);
        assert_eq!((a.in_flight(), a.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_wait_in_line_ends_at_the_deadline_or_the_wait_bound() {
        let a = Admission::new("t", 1, 1, 4, None);
        let _p = a.admit("t", Deadline::NONE).await.unwrap();
        let r = a
            .admit("t", Deadline::after(Duration::from_millis(20)))
            .await;
        assert!(
            matches!(r, Err(Error::DeadlineExceeded { stage: "admission" })),
            "{r:?}"
        );
        assert_eq!(a.queued(), 0);
        let b = Admission::new("t", 1, 1, 4, Some(Duration::from_millis(20)));
        let _q = b.admit("t", Deadline::NONE).await.unwrap();
        let r = b.admit("t", Deadline::NONE).await;
        assert!(matches!(r, Err(Error::Overloaded(_))), "{r:?}");
        assert_eq!(b.queued(), 0);
    }

    /// A caller that goes away while in line leaves it, and a place freed
    /// later is not handed to it.
    #[tokio::test]
    async fn a_caller_gone_from_the_line_gets_no_place() {
        let a = Admission::new("t", 1, 1, 4, None);
        let p = a.admit("t", Deadline::NONE).await.unwrap();
        let a2 = a.clone();
        let gone = tokio::spawn(async move { a2.admit("t", Deadline::NONE).await.map(|_| ()) });
        until_queued(&a, 1).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(a.queued(), 0);
        drop(p);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn the_runtime_is_behind_only_after_a_lag_above_target_for_the_interval() {
        let lag = RuntimeLag::new();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert_eq!(lag.behind(ms(500)), None, "never measured: not behind");
        lag.observe(ms(1), Duration::from_millis(1));
        assert_eq!(lag.behind(ms(2)), None);
        // A burst: long lags, but for less than the interval.
        lag.observe(ms(20), Duration::from_millis(30));
        lag.observe(ms(90), Duration::from_millis(40));
        assert_eq!(lag.behind(ms(95)), None, "a burst is not being behind");
        // Past the interval since the last calm measurement.
        lag.observe(ms(150), Duration::from_millis(12));
        assert_eq!(lag.behind(ms(150)), Some(Duration::from_millis(12)));
        // One measurement within the target ends it.
        lag.observe(ms(160), Duration::from_millis(2));
        assert_eq!(lag.behind(ms(170)), None);
        // No measurement at all (the probe itself stuck) is behind too.
        assert!(lag.behind(ms(400)).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_probe_sees_a_runtime_kept_busy_and_its_recovery() {
        let lag = RuntimeLag::new();
        let probe = tokio::spawn(lag.clone().probe());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            lag.behind(Instant::now()),
            None,
            "an idle runtime is not behind"
        );
        // Tasks that hold the only worker for 20 ms each, 12 in a row.
        let hogs: Vec<_> = (0..12)
            .map(|_| {
                tokio::spawn(async {
                    std::thread::sleep(Duration::from_millis(20));
                })
            })
            .collect();
        let mut seen = false;
        for h in hogs {
            h.await.unwrap();
            seen |= lag.behind(Instant::now()).is_some();
        }
        assert!(seen, "240 ms of a held worker never counted as behind");
        let t = Instant::now();
        while lag.behind(Instant::now()).is_some() {
            assert!(t.elapsed() < Duration::from_secs(5), "never caught up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        probe.abort();
    }
}
