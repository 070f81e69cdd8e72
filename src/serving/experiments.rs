//! The experiments in force and how a `Recommend` call is served under
//! them. The list comes from the configuration (`[[experiments]]`) and is
//! re-read from the config file on SIGHUP; a file whose experiments are
//! refused keeps the running ones. A call with a user id is served the arm
//! the user is assigned ([`crate::experiment::assign`]), or the arm it
//! forces; in an interleaving experiment the control's and the treatment's
//! lists are joined by team draft and every item names its team. An arm
//! may rerank with its own cross-encoder, opened when the experiments are
//! loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::{Config, ExperimentConfig, ExperimentMode, RerankKind};
use crate::engine::{open_cross_encoder, Engine, RecommendOptions, Scored, UserRef};
use crate::error::{Clip, Error, Result};
use crate::experiment::{self, Team};
use crate::exposure::{self, Entry, ExposureLog};
use crate::rerank::Reranker;
use crate::telemetry;

/// The experiments in force, swapped on SIGHUP.
#[derive(Debug, Default)]
pub struct Experiments {
    file: Option<PathBuf>,
    list: RwLock<Arc<Vec<Running>>>,
}

/// One experiment with the rerankers its arms load themselves.
#[derive(Clone, Debug)]
struct Running {
    config: Arc<ExperimentConfig>,
    rerankers: Arc<Vec<Option<Arc<Reranker>>>>,
}

/// What a call is served under.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The enabled experiment.
    pub experiment: Arc<ExperimentConfig>,
    /// The arm (index into `experiment.arms`); in interleaving the treatment.
    pub arm: usize,
    /// Whether the request forced the arm.
    pub forced: bool,
    /// Per arm, the cross-encoder it loaded, if it names one.
    rerankers: Arc<Vec<Option<Arc<Reranker>>>>,
}

/// One served item with the arm whose list placed it (interleaving only).
pub struct Served {
    /// The item.
    pub item: Scored,
    /// Its team's arm name, or empty.
    pub arm: String,
}

/// Loads `cfg`'s experiments: each arm that names a cross-encoder gets it
/// opened now, so a missing or broken model refuses the config (at start
/// or on reload) instead of failing calls.
fn load(cfg: &Config) -> Result<Vec<Running>> {
    let mut out = Vec::with_capacity(cfg.experiments.len());
    for e in &cfg.experiments {
        let mut rerankers = Vec::with_capacity(e.arms.len());
        for a in &e.arms {
            if a.rerank_kind != Some(RerankKind::CrossEncoder) {
                rerankers.push(None);
                continue;
            }
            let mut arm_cfg = cfg.clone();
            a.apply(&mut arm_cfg);
            let ort = crate::runtime::locate_ort(cfg.encoder.ort_dylib.as_deref())?;
            let r = open_cross_encoder(&arm_cfg, &arm_cfg.rerank, &ort).map_err(|err| {
                Error::Config(format!(
                    "experiment {:?}, arm {:?}: cross_encoder_model: {err}",
                    e.name, a.name
                ))
            })?;
            rerankers.push(Some(Arc::new(r)));
        }
        out.push(Running {
            config: Arc::new(e.clone()),
            rerankers: Arc::new(rerankers),
        });
    }
    Ok(out)
}

impl Experiments {
    /// The experiments of `cfg`; `file` is the config file re-read on reload.
    pub fn new(cfg: &Config, file: Option<PathBuf>) -> Result<Self> {
        Ok(Self {
            file,
            list: RwLock::new(Arc::new(load(cfg)?)),
        })
    }

    /// Re-reads the config file's experiments; on refusal the running ones
    /// stay and the error says why. Returns how many are defined.
    pub fn reload(&self) -> Result<usize> {
        self.reload_checked(|_| Ok(()))
    }

    /// [`Experiments::reload`], refused also when `check` refuses the
    /// config read (the one whose experiments are then loaded).
    pub fn reload_checked(&self, check: impl FnOnce(&Config) -> Result<()>) -> Result<usize> {
        let Some(file) = &self.file else {
            return Ok(self.list.read().len());
        };
        let cfg = Config::load(Some(file))?;
        check(&cfg)?;
        let list = load(&cfg)?;
        let n = list.len();
        *self.list.write() = Arc::new(list);
        Ok(n)
    }

    /// The plan for a call by `user` forcing `force` (empty: none).
    pub fn plan(&self, user: &str, force: &str) -> Result<Option<Plan>> {
        let list = self.list.read().clone();
        let Some(running) = list.iter().find(|e| e.config.enabled) else {
            if force.is_empty() {
                return Ok(None);
            }
            return Err(Error::invalid(format!(
                "force_arm {}: no experiment is running",
                Clip(force)
            )));
        };
        let e = &running.config;
        let (arm, forced) = if !force.is_empty() {
            let arm = e.arms.iter().position(|a| a.name == force).ok_or_else(|| {
                Error::invalid(format!(
                    "force_arm {}: experiment {:?} has no such arm",
                    Clip(force),
                    e.name
                ))
            })?;
            (arm, true)
        } else if user.is_empty() {
            return Ok(None);
        } else {
            (experiment::assign(e, user), false)
        };
        // In interleaving every user sees both lists; the plan names the
        // treatment (a forced control shows the control alone).
        let arm = match e.mode {
            ExperimentMode::Interleave if !forced => 1,
            _ => arm,
        };
        Ok(Some(Plan {
            experiment: e.clone(),
            arm,
            forced,
            rerankers: running.rerankers.clone(),
        }))
    }
}

/// `items` served outside an experiment's teams.
pub fn plain(items: Vec<Scored>) -> Vec<Served> {
    items
        .into_iter()
        .map(|item| Served {
            item,
            arm: String::new(),
        })
        .collect()
}

/// Serves a `Recommend` call under `plan` (none: the engine as configured).
pub fn recommend(
    engine: &Engine,
    who: UserRef<'_>,
    opts: &RecommendOptions,
    plan: Option<&Plan>,
    request_id: &str,
) -> Result<Vec<Served>> {
    let Some(p) = plan else {
        return Ok(plain(engine.recommend(who, opts)?));
    };
    if !p.interleaves() {
        return Ok(plain(p.variant(engine, p.arm).recommend(who, opts)?));
    }
    let control = p.variant(engine, 0).recommend(who, opts)?;
    let treatment = p.variant(engine, 1).recommend(who, opts)?;
    Ok(interleave(&p.experiment, &control, &treatment, request_id))
}

impl Plan {
    /// `engine` as arm `arm` serves it: its settings, and its own
    /// cross-encoder if it names one.
    pub fn variant(&self, engine: &Engine, arm: usize) -> Engine {
        let v = engine.with_config(|c| self.experiment.arms[arm].apply(c));
        match &self.rerankers[arm] {
            Some(r) => v.with_reranker(r.clone()),
            None => v,
        }
    }

    /// Whether the call shows both arms' lists joined (an interleaving
    /// experiment, arm not forced); otherwise it is served [`Plan::arm`].
    pub fn interleaves(&self) -> bool {
        self.experiment.mode == ExperimentMode::Interleave && !self.forced
    }

    /// The experiment's and the served arm's names.
    pub fn names(&self) -> (String, String) {
        (
            self.experiment.name.clone(),
            self.experiment.arms[self.arm].name.clone(),
        )
    }
}

/// Team-draft interleaving of the control's and the treatment's lists of
/// the two-arm experiment `e`, seeded by `request_id`: every item carries
/// its team's arm name.
pub fn interleave(
    e: &ExperimentConfig,
    control: &[Scored],
    treatment: &[Scored],
    request_id: &str,
) -> Vec<Served> {
    let k = control.len().max(treatment.len());
    let ids = |l: &[Scored]| l.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let mixed = experiment::team_draft(
        &ids(control),
        &ids(treatment),
        k,
        experiment::seed_of(request_id),
    );
    let find = |l: &[Scored], id: &str| l.iter().find(|s| s.id == id).cloned();
    mixed
        .into_iter()
        .filter_map(|(id, team)| {
            let (list, arm) = match team {
                Team::Control => (control, &e.arms[0].name),
                Team::Treatment => (treatment, &e.arms[1].name),
            };
            find(list, &id).map(|item| Served {
                item,
                arm: arm.clone(),
            })
        })
        .collect()
}

/// Served lists remembered for counting their feedback by arm.
const RECENT_REQUESTS: usize = 65_536;

/// Where a server (or a router) puts what its experiments served and the
/// feedback on it: the exposure log under `root` (started on the first
/// entry), the experiment metrics, and the recent lists that credit
/// feedback to its arm on /metrics.
#[derive(Debug)]
pub struct Journal {
    root: PathBuf,
    log: std::sync::OnceLock<Option<ExposureLog>>,
    /// The experiment whose definition was logged last.
    defined: parking_lot::Mutex<Option<Arc<ExperimentConfig>>>,
    recent: Recent,
}

impl Journal {
    /// A journal writing its log under `root/experiments/`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            log: Default::default(),
            defined: Default::default(),
            recent: Recent::new(RECENT_REQUESTS),
        }
    }

    /// Logs the list `items` (item id, team) that `request_id` served to
    /// `user` under `plan`, after the experiment's definition if it
    /// changed, and counts the request and its time (`started`).
    pub fn served<'a>(
        &self,
        plan: &Plan,
        request_id: &str,
        user: &str,
        items: impl IntoIterator<Item = (&'a str, &'a str)>,
        started: std::time::Instant,
    ) {
        self.define(&plan.experiment);
        self.record(Entry::served(
            request_id,
            exposure::now_ms(),
            user,
            &plan.experiment,
            plan.arm,
            plan.forced,
            items,
        ));
        let (experiment, arm) = plan.names();
        let labels = [("experiment", experiment), ("arm", arm)];
        metrics::counter!(telemetry::EXPERIMENT_REQUESTS, &labels).increment(1);
        metrics::histogram!(telemetry::EXPERIMENT_SECONDS, &labels)
            .record(started.elapsed().as_secs_f64());
    }

    /// Logs `e`'s definition before its first exposure here, and again
    /// after each reload (a reload makes a new `Arc`).
    fn define(&self, e: &Arc<ExperimentConfig>) {
        {
            let mut last = self.defined.lock();
            if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, e)) {
                return;
            }
            *last = Some(e.clone());
        }
        self.record(Entry::definition(e, exposure::now_ms()));
    }

    /// Hands `entry` to the exposure log, starting it on first use, and
    /// counts it on /metrics (feedback under the arm, or in interleaving
    /// the team, of the list it names, when that list is still recent).
    pub fn record(&self, entry: Entry) {
        match &entry {
            Entry::Exposure {
                request_id,
                experiment,
                arm,
                items,
                ..
            } => {
                let labels = [("experiment", experiment.clone()), ("arm", arm.clone())];
                metrics::counter!(telemetry::EXPERIMENT_EXPOSURES, &labels)
                    .increment(items.len() as u64);
                self.recent.remember(
                    request_id,
                    experiment,
                    arm,
                    items.iter().map(|s| (s.item.as_str(), s.team.as_str())),
                );
            }
            Entry::Feedback {
                request_id,
                item,
                kind,
                ..
            } => {
                let (experiment, arm) = self
                    .recent
                    .credit(request_id, item)
                    .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
                let labels = [
                    ("experiment", experiment),
                    ("arm", arm),
                    ("kind", kind.clone()),
                ];
                metrics::counter!(telemetry::EXPERIMENT_FEEDBACK, &labels).increment(1);
            }
            Entry::Definition { .. } => {}
        }
        let log = self
            .log
            .get_or_init(|| match ExposureLog::start(&self.root, Default::default()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "the exposure log cannot start; exposures are lost");
                    None
                }
            });
        if let Some(l) = log {
            l.record(entry);
        }
    }
}

/// The arms of recently served lists, so that feedback naming a request id
/// can be counted by arm on /metrics without reading the exposure log
/// back: the newest `capacity` requests are kept, the oldest forgotten
/// first (feedback on a forgotten list still reaches the log and the
/// report, it is only counted under arm `unknown`).
#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    inner: parking_lot::Mutex<RecentInner>,
}

#[derive(Debug, Default)]
struct RecentInner {
    order: std::collections::VecDeque<String>,
    by_id: std::collections::HashMap<String, Remembered>,
}

#[derive(Debug)]
struct Remembered {
    experiment: String,
    arm: String,
    /// In interleaving, each item's team.
    teams: std::collections::HashMap<String, String>,
}

impl Recent {
    /// Remembers the newest `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Default::default(),
        }
    }

    /// Remembers that `request_id` served `arm` of `experiment`, with each
    /// item's team (empty outside interleaving).
    pub fn remember<'a>(
        &self,
        request_id: &str,
        experiment: &str,
        arm: &str,
        items: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let teams = items
            .into_iter()
            .filter(|(_, team)| !team.is_empty())
            .map(|(i, t)| (i.to_owned(), t.to_owned()))
            .collect();
        let mut g = self.inner.lock();
        if g.order.len() == self.capacity {
            if let Some(old) = g.order.pop_front() {
                g.by_id.remove(&old);
            }
        }
        g.order.push_back(request_id.to_owned());
        g.by_id.insert(
            request_id.to_owned(),
            Remembered {
                experiment: experiment.to_owned(),
                arm: arm.to_owned(),
                teams,
            },
        );
    }

    /// The (experiment, arm) credited with feedback on `item` of the list
    /// `request_id` answered: in interleaving, the item's team.
    pub fn credit(&self, request_id: &str, item: &str) -> Option<(String, String)> {
        let g = self.inner.lock();
        let r = g.by_id.get(request_id)?;
        let arm = r.teams.get(item).unwrap_or(&r.arm);
        Some((r.experiment.clone(), arm.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_lists_credit_their_arm_or_team_and_the_oldest_are_forgotten() {
        let r = Recent::new(2);
        r.remember("a", "e", "b", [("i1", ""), ("i2", "")]);
        r.remember("b", "e", "b", [("i1", "control"), ("i2", "b")]);
        assert_eq!(r.credit("a", "i2"), Some(("e".into(), "b".into())));
        assert_eq!(r.credit("b", "i1"), Some(("e".into(), "control".into())));
        r.remember("c", "e", "control", [("i3", "")]);
        assert_eq!(r.credit("a", "i1"), None, "the oldest was forgotten");
        assert!(r.credit("b", "i2").is_some() && r.credit("c", "i3").is_some());
    }
}
