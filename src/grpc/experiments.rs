//! The experiments in force and how a `Recommend` call is served under
//! them. The list comes from the configuration (`[[experiments]]`) and is
//! re-read from the config file on SIGHUP; a file whose experiments are
//! refused keeps the running ones. A call with a user id is served the arm
//! the user is assigned ([`crate::experiment::assign`]), or the arm it
//! forces; in an interleaving experiment the control's and the treatment's
//! lists are joined by team draft and every item names its team.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::{Config, ExperimentConfig, ExperimentMode};
use crate::engine::{Engine, RecommendOptions, Scored, UserRef};
use crate::error::{Clip, Error, Result};
use crate::experiment::{self, Team};

/// The experiments in force, swapped on SIGHUP.
#[derive(Debug, Default)]
pub struct Experiments {
    file: Option<PathBuf>,
    list: RwLock<Arc<Vec<Arc<ExperimentConfig>>>>,
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
}

/// One served item with the arm whose list placed it (interleaving only).
pub struct Served {
    /// The item.
    pub item: Scored,
    /// Its team's arm name, or empty.
    pub arm: String,
}

/// Each experiment behind its own `Arc`, so a call's plan shares it.
fn shared(list: Vec<ExperimentConfig>) -> Vec<Arc<ExperimentConfig>> {
    list.into_iter().map(Arc::new).collect()
}

impl Experiments {
    /// The experiments of `cfg`; `file` is the config file re-read on reload.
    pub fn new(cfg: &Config, file: Option<PathBuf>) -> Self {
        Self {
            file,
            list: RwLock::new(Arc::new(shared(cfg.experiments.clone()))),
        }
    }

    /// Re-reads the config file's experiments; on refusal the running ones
    /// stay and the error says why. Returns how many are defined.
    pub fn reload(&self) -> Result<usize> {
        let Some(file) = &self.file else {
            return Ok(self.list.read().len());
        };
        let cfg = Config::load(Some(file))?;
        let n = cfg.experiments.len();
        *self.list.write() = Arc::new(shared(cfg.experiments));
        Ok(n)
    }

    /// The plan for a call by `user` forcing `force` (empty: none).
    pub fn plan(&self, user: &str, force: &str) -> Result<Option<Plan>> {
        let list = self.list.read().clone();
        let Some(e) = list.iter().find(|e| e.enabled) else {
            if force.is_empty() {
                return Ok(None);
            }
            return Err(Error::invalid(format!(
                "force_arm {}: no experiment is running",
                Clip(force)
            )));
        };
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
        }))
    }
}

/// Serves a `Recommend` call under `plan` (none: the engine as configured).
pub fn recommend(
    engine: &Engine,
    who: UserRef<'_>,
    opts: &RecommendOptions,
    plan: Option<&Plan>,
    request_id: &str,
) -> Result<Vec<Served>> {
    let plain = |items: Vec<Scored>| {
        items
            .into_iter()
            .map(|item| Served {
                item,
                arm: String::new(),
            })
            .collect()
    };
    let Some(p) = plan else {
        return Ok(plain(engine.recommend(who, opts)?));
    };
    let e = &p.experiment;
    let variant = |arm: usize| engine.with_config(|c| e.arms[arm].apply(c));
    if e.mode == ExperimentMode::Ab || p.forced {
        let v = variant(p.arm);
        return Ok(plain(v.recommend(who, opts)?));
    }
    let control = variant(0).recommend(who, opts)?;
    let treatment = variant(1).recommend(who, opts)?;
    let k = control.len().max(treatment.len());
    let ids = |l: &[Scored]| l.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let mixed = experiment::team_draft(
        &ids(&control),
        &ids(&treatment),
        k,
        experiment::seed_of(request_id),
    );
    let find = |l: &[Scored], id: &str| l.iter().find(|s| s.id == id).cloned();
    Ok(mixed
        .into_iter()
        .filter_map(|(id, team)| {
            let (list, arm) = match team {
                Team::Control => (&control, &e.arms[0].name),
                Team::Treatment => (&treatment, &e.arms[1].name),
            };
            find(list, &id).map(|item| Served {
                item,
                arm: arm.clone(),
            })
        })
        .collect())
}
