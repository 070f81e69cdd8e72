//! Admission control: a bound on requests worked on at once and on requests
//! waiting for a place, over all connections.
//!
//! A request that finds a free place starts at once. One that finds none
//! waits in line while the line is shorter than `max_queued`, for at most
//! `max_wait` and never past its deadline; one that finds the line full is
//! refused at once with [`Error::Overloaded`] (`RESOURCE_EXHAUSTED`), so
//! beyond capacity the server sheds instead of queueing without bound, and
//! the requests it admits keep their latency. (The bound on work in progress
//! and the short line in front of it follow the usual practice for CPU-bound
//! servers; an unbounded line only turns overload into timeouts for
//! everybody.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::telemetry;

/// The limits and the state of the line.
#[derive(Debug)]
pub struct Admission {
    places: Arc<Semaphore>,
    limit: usize,
    queued: AtomicUsize,
    max_queued: usize,
    max_wait: Option<Duration>,
}

/// A place held by an admitted request; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The permit field is released after this body runs, so count it as gone.
        metrics::gauge!(telemetry::IN_FLIGHT)
            .set(self.admission.in_flight().saturating_sub(1) as f64);
    }
}

impl Admission {
    /// At most `limit` requests at once (at least 1), `max_queued` waiting,
    /// each for at most `max_wait` (`None`: until its deadline).
    pub fn new(limit: usize, max_queued: usize, max_wait: Option<Duration>) -> Arc<Self> {
        let limit = limit.max(1);
        Arc::new(Self {
            places: Arc::new(Semaphore::new(limit)),
            limit,
            queued: AtomicUsize::new(0),
            max_queued,
            max_wait,
        })
    }

    /// Most requests worked on at once.
    pub fn in_flight_limit(&self) -> usize {
        self.limit
    }

    /// Requests being worked on now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.places.available_permits()
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Admits a request of `rpc` due by `deadline`: a place now, a place after
    /// a wait in line, or an error at once when the line is full
    /// ([`Error::Overloaded`]), after `max_wait` in line (the same), or when
    /// the deadline passes in line ([`Error::DeadlineExceeded`]).
    pub async fn admit(self: &Arc<Self>, rpc: &'static str, deadline: Deadline) -> Result<Permit> {
        let held = |p| {
            metrics::gauge!(telemetry::IN_FLIGHT).set(self.in_flight() as f64);
            Permit {
                _permit: p,
                admission: self.clone(),
            }
        };
        if let Ok(p) = self.places.clone().try_acquire_owned() {
            return Ok(held(p));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(telemetry::SHED, "rpc" => rpc, "reason" => "queue_full").increment(1);
            return Err(Error::Overloaded(format!(
                "{} requests in progress and {} waiting; try again later",
                self.limit, self.max_queued
            )));
        }
        metrics::gauge!(telemetry::QUEUED).set(self.queued() as f64);
        let arrived = Instant::now();
        let wait_until = self.max_wait.and_then(|w| arrived.checked_add(w));
        let until = match (wait_until, deadline.instant()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let acquire = self.places.clone().acquire_owned();
        let got = match until {
            Some(t) => tokio::time::timeout_at(t.into(), acquire).await.ok(),
            None => Some(acquire.await),
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(telemetry::QUEUED).set(self.queued() as f64);
        telemetry::stage("queue", arrived.elapsed().as_secs_f64());
        match got {
            Some(Ok(p)) => Ok(held(p)),
            Some(Err(_)) => Err(Error::Overloaded("the server is shutting down".into())),
            None if deadline.expired() => {
                deadline.check("admission")?;
                unreachable!("an expired deadline fails its check")
            }
            None => {
                metrics::counter!(telemetry::SHED, "rpc" => rpc, "reason" => "queue_wait")
                    .increment(1);
                Err(Error::Overloaded(format!(
                    "no place freed within {} ms; try again later",
                    self.max_wait.unwrap_or_default().as_millis()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_line_a_request_is_refused_at_once() {
        let a = Admission::new(2, 1, None);
        let p1 = a.admit("t", Deadline::NONE).await.unwrap();
        let _p2 = a.admit("t", Deadline::NONE).await.unwrap();
        assert_eq!(a.in_flight(), 2);
        // The third waits in line; the fourth finds the line full.
        let a3 = a.clone();
        let waiter = tokio::spawn(async move { a3.admit("t", Deadline::NONE).await });
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let refused = a.admit("t", Deadline::NONE).await;
        assert!(matches!(refused, Err(Error::Overloaded(_))), "{refused:?}");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refusal was not immediate"
        );
        // Freeing a place admits the one in line.
        drop(p1);
        let p3 = waiter.await.unwrap().unwrap();
        assert_eq!(a.queued(), 0);
        assert_eq!(a.in_flight(), 2);
        drop(p3);
        assert_eq!(a.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_wait_in_line_ends_at_the_deadline_or_the_wait_bound() {
        let a = Admission::new(1, 4, None);
        let _p = a.admit("t", Deadline::NONE).await.unwrap();
        let r = a
            .admit("t", Deadline::after(Duration::from_millis(20)))
            .await;
        assert!(
            matches!(r, Err(Error::DeadlineExceeded { stage: "admission" })),
            "{r:?}"
        );
        assert_eq!(a.queued(), 0);
        let b = Admission::new(1, 4, Some(Duration::from_millis(20)));
        let _q = b.admit("t", Deadline::NONE).await.unwrap();
        let r = b.admit("t", Deadline::NONE).await;
        assert!(matches!(r, Err(Error::Overloaded(_))), "{r:?}");
    }
}
