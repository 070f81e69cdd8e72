//! Simulated experiments (`vecrec-experiment simulate`): how the experiment
//! statistics behave on real recommendations before anyone's traffic
//! depends on them.
//!
//! The lists come from the real serving code: the engine in process, each
//! arm served through [`crate::serving::experiments`] exactly as a forced
//! `Recommend` is (the arm's overrides and reranker), interleaved by the
//! same team draft. Users are assigned by [`crate::experiment::assign`]
//! with a salt per seed, their lists logged as the server logs them
//! ([`Entry::served`]), clicks logged as feedback, and the report is
//! [`crate::analysis`]'s. A simulated user examines position `p` with
//! probability `1 / log2(p + 1)` and clicks an examined item when it is in
//! their held-out set. Each user's list per arm is computed once (the
//! engine is deterministic); a seed changes the salt, the users' order
//! and their clicks.
//!
//! Three questions per experiment (its first two arms): an A/A test (the
//! control against itself) over many seeds, whose false-positive rates
//! must match α; the A/B test of the control against the treatment; and
//! the number of users an A/B test (with and without CUPED) and an
//! interleaving test need to reach p < 0.05 in 80% of seeds. The A/A and
//! A/B seeds go through the exposure log on disk ([`ExposureLog`], read
//! back with [`crate::exposure::read_all`]); the power sweep, with up to
//! tens of thousands of users per seed, keeps its entries in memory.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::analysis::{report_with, Covariates, Report};
use crate::config::{Config, ExperimentConfig, ExperimentMode};
use crate::engine::{Engine, RecommendOptions, Scored, UserRef};
use crate::error::{Error, Result};
use crate::exposure::{Entry, ExposureLog};
use crate::serving::experiments::{interleave, recommend, Experiments};

/// A simulated user's source: a real user of the index with the items
/// they will click when shown, and a pre-experiment covariate.
#[derive(Clone, Debug)]
pub struct SimUser {
    /// The user's id in the index.
    pub id: String,
    /// Held-out items (external ids): the clicks to be.
    pub truth: HashSet<String>,
    /// Pre-experiment activity (CUPED's covariate).
    pub covariate: f64,
}

/// Settings of a simulation.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Seeds of the A/A and A/B runs.
    pub seeds: usize,
    /// Seeds per population size in the power sweep.
    pub power_seeds: usize,
    /// The largest population the sweep tries.
    pub max_users: usize,
    /// The smallest population the sweep tries (doubled each step).
    pub min_users: usize,
    /// List length.
    pub k: usize,
    /// Where the A/A and A/B runs write their exposure logs (one
    /// subdirectory per run, removed after reading).
    pub log_dir: std::path::PathBuf,
    /// Draw progress bars.
    pub progress: bool,
}

/// False-positive rates of an A/A test.
#[derive(Clone, Debug, Serialize)]
pub struct AaResult {
    /// Seeds run.
    pub seeds: usize,
    /// Users per seed.
    pub users: usize,
    /// Fixed-horizon p < 0.05 at the end.
    pub fixed_fpr: f64,
    /// Fixed-horizon p < 0.05 at any look after every 10% of users (the
    /// error a daily look at an uncorrected test makes).
    pub fixed_fpr_peeking: f64,
    /// Sequential (mSPRT) p < 0.05 at any look (it is the running minimum).
    pub sequential_fpr: f64,
    /// CUPED-adjusted fixed-horizon p < 0.05 at the end.
    pub cuped_fpr: f64,
    /// The SRM check flagged the split (p < 0.001).
    pub srm_flagged: f64,
}

/// Detection of a real difference by the A/B test.
#[derive(Clone, Debug, Serialize)]
pub struct AbResult {
    /// Seeds run.
    pub seeds: usize,
    /// Users per seed.
    pub users: usize,
    /// The control's CTR (median over seeds).
    pub control_ctr: f64,
    /// The treatment's CTR (median over seeds).
    pub treatment_ctr: f64,
    /// Median relative lift.
    pub median_lift: f64,
    /// Share of seeds with fixed-horizon p < 0.05 and the median lift's sign.
    pub detected: f64,
    /// Share of seeds with sequential p < 0.05 and the median lift's sign.
    pub sequential_detected: f64,
    /// Median CUPED variance reduction.
    pub cuped_variance_reduction: f64,
    /// Share of interleaved seeds (same users) with sign-test p < 0.05
    /// and the A/B lift's direction.
    pub interleaving_detected: f64,
    /// Median interleaving preference (positive favours the treatment).
    pub interleaving_preference: f64,
}

/// Power at one population size.
#[derive(Clone, Debug, Serialize)]
pub struct PowerPoint {
    /// Users per seed (drawn with replacement from the real ones).
    pub users: usize,
    /// Share of seeds where the A/B test had p < 0.05.
    pub ab: f64,
    /// The same with CUPED.
    pub ab_cuped: f64,
    /// Share of seeds where interleaving's sign test had p < 0.05.
    pub interleaving: f64,
}

/// One experiment's simulation.
#[derive(Clone, Debug, Serialize)]
pub struct ExperimentSim {
    /// Its name.
    pub experiment: String,
    /// Control and treatment arm names.
    pub arms: [String; 2],
    /// Users with a list (both arms answered).
    pub users: usize,
    /// The control against itself.
    pub aa: AaResult,
    /// The control against the treatment.
    pub ab: AbResult,
    /// The sweep, smallest population first.
    pub power: Vec<PowerPoint>,
    /// The smallest population where each test reached 80% power (none:
    /// not within the sweep).
    pub users_needed_ab: Option<usize>,
    /// The same with CUPED.
    pub users_needed_ab_cuped: Option<usize>,
    /// The same for interleaving.
    pub users_needed_interleaving: Option<usize>,
    /// The users an A/B test needs for 80% power by the normal
    /// approximation, from each user's expected clicks under the
    /// examination model (no sampling): it extends the sweep past its
    /// largest population and checks it where both are known.
    pub users_needed_ab_analytic: Option<f64>,
    /// The difference in expected CTR (treatment − control) it rests on.
    pub expected_ctr_difference: f64,
}

/// Expected CTR per arm and the per-user variance of its linearisation,
/// under the examination model, over users drawn uniformly from `users`.
fn expected(users: &[SimUser], lists: &[Vec<Scored>]) -> (f64, f64) {
    let per: Vec<(f64, f64, f64)> = users
        .iter()
        .zip(lists)
        .map(|(u, l)| {
            let w: Vec<f64> = l
                .iter()
                .enumerate()
                .map(|(p, s)| {
                    if u.truth.contains(&s.id) {
                        examined(p + 1)
                    } else {
                        0.0
                    }
                })
                .collect();
            let mean: f64 = w.iter().sum();
            let var: f64 = w.iter().map(|w| w * (1.0 - w)).sum();
            (mean, var, l.len() as f64)
        })
        .collect();
    let n = per.len().max(1) as f64;
    let shown = per.iter().map(|p| p.2).sum::<f64>() / n;
    if shown <= 0.0 {
        return (0.0, 0.0);
    }
    let r = per.iter().map(|p| p.0).sum::<f64>() / n / shown;
    let var = per
        .iter()
        .map(|p| ((p.0 - r * p.2) / shown).powi(2) + p.1 / (shown * shown))
        .sum::<f64>()
        / n;
    (r, var)
}

/// Users (both arms, split evenly) for 80% power at α 0.05, two-sided.
fn ab_users_analytic(users: &[SimUser], lists: &[Vec<Vec<Scored>>; 2]) -> (Option<f64>, f64) {
    let (rc, vc) = expected(users, &lists[0]);
    let (rt, vt) = expected(users, &lists[1]);
    let delta = rt - rc;
    const Z: f64 = 1.959_964 + 0.841_621;
    let n = (delta != 0.0).then(|| 2.0 * Z * Z * (vc + vt) / (delta * delta));
    (n, delta)
}

/// Each arm's list for each user, through the serving code (forced arm).
fn serve_lists(
    engine: &Engine,
    cfg: &Config,
    e: &ExperimentConfig,
    users: &[SimUser],
    k: usize,
    opts_progress: bool,
) -> Result<[Vec<Vec<Scored>>; 2]> {
    let mut one = e.clone();
    one.enabled = true;
    one.mode = ExperimentMode::Ab;
    let mut c = cfg.clone();
    c.experiments = vec![one];
    let experiments = Experiments::new(&c, None)?;
    let opts = RecommendOptions {
        k,
        ..Default::default()
    };
    let mut out: [Vec<Vec<Scored>>; 2] = [Vec::new(), Vec::new()];
    for (a, lists) in out.iter_mut().enumerate() {
        let bar = crate::pipeline::bar(
            users.len(),
            format!("{}: serving arm {}", e.name, e.arms[a].name),
            opts_progress,
        );
        for u in users {
            let plan = experiments.plan(&u.id, &e.arms[a].name)?;
            let served = recommend(engine, UserRef::Id(&u.id), &opts, plan.as_ref(), "sim")?;
            lists.push(served.into_iter().map(|s| s.item).collect());
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    Ok(out)
}

/// The probability that position `p` (1-based) is examined.
fn examined(p: usize) -> f64 {
    1.0 / ((p + 1) as f64).log2()
}

/// One simulated run: `draws` (simulated user id, index into `users`)
/// arrive in order, each is assigned (A/B) or interleaved, served its
/// list and clicks; returns the log's entries.
fn run(
    e: &ExperimentConfig,
    draws: &[(String, usize)],
    users: &[SimUser],
    lists: &[Vec<Vec<Scored>>; 2],
    rng: &mut ChaCha8Rng,
) -> Vec<Entry> {
    let mut entries = vec![Entry::definition(e, 0)];
    for (j, (sim, u)) in draws.iter().enumerate() {
        let rid = format!("{}-{j}", e.salt);
        let t = j as u64;
        let (arm, items): (usize, Vec<(String, String)>) = match e.mode {
            ExperimentMode::Ab => {
                let arm = crate::experiment::assign(e, sim);
                let items = lists[arm][*u]
                    .iter()
                    .map(|s| (s.id.clone(), String::new()))
                    .collect();
                (arm, items)
            }
            ExperimentMode::Interleave => {
                let mixed = interleave(e, &lists[0][*u], &lists[1][*u], &rid);
                (1, mixed.into_iter().map(|s| (s.item.id, s.arm)).collect())
            }
        };
        entries.push(Entry::served(
            &rid,
            t,
            sim,
            e,
            arm,
            false,
            items.iter().map(|(i, team)| (i.as_str(), team.as_str())),
        ));
        for (p, (item, _)) in items.iter().enumerate() {
            if rng.gen::<f64>() < examined(p + 1) && users[*u].truth.contains(item) {
                entries.push(Entry::feedback(&rid, t, sim, item, "click"));
            }
        }
    }
    entries
}

/// `entries` through the exposure log under `dir` and back.
fn through_log(entries: Vec<Entry>, dir: &Path) -> Result<Vec<Entry>> {
    {
        let log = ExposureLog::start(dir, Default::default())?;
        for e in entries {
            log.record(e);
        }
        log.flush()?;
    }
    let back = crate::exposure::read_all(dir)?;
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(back)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn share(hits: usize, of: usize) -> f64 {
    hits as f64 / of.max(1) as f64
}

/// The experiment `e` with the salt of `seed` and `mode`.
fn seeded(e: &ExperimentConfig, seed: usize, mode: ExperimentMode, tag: &str) -> ExperimentConfig {
    let mut s = e.clone();
    s.salt = format!("{}/{tag}{seed}", e.salt);
    s.mode = mode;
    s.arms.truncate(2);
    let total: f64 = s.arms.iter().map(|a| a.share).sum();
    for a in &mut s.arms {
        a.share /= total;
    }
    s
}

fn report_of(entries: &[Entry], e: &ExperimentConfig, x: &Covariates) -> Result<Report> {
    report_with(entries, &e.name, Some(x))
        .ok_or_else(|| Error::invalid(format!("no exposures of {:?} were logged", e.name)))
}

/// Simulates experiment `e` (its first two arms) over `users`.
pub fn simulate(
    engine: &Engine,
    cfg: &Config,
    e: &ExperimentConfig,
    users: &[SimUser],
    opts: &SimOptions,
) -> Result<ExperimentSim> {
    if e.arms.len() < 2 {
        return Err(Error::invalid(format!(
            "experiment {:?} needs two arms",
            e.name
        )));
    }
    let lists = serve_lists(engine, cfg, e, users, opts.k, opts.progress)?;
    let x: Covariates = users.iter().map(|u| (u.id.clone(), u.covariate)).collect();
    let everyone: Vec<(String, usize)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.id.clone(), i))
        .collect();
    let bar = crate::pipeline::bar(
        2 * opts.seeds,
        format!("{}: A/A and A/B seeds", e.name),
        opts.progress,
    );

    // A/A: the control's lists on both sides.
    let same = [lists[0].clone(), lists[0].clone()];
    let aa_runs: Vec<Report> = (0..opts.seeds)
        .into_par_iter()
        .map(|seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
            let mut draws = everyone.clone();
            draws.shuffle(&mut rng);
            let aa = seeded(e, seed, ExperimentMode::Ab, "aa");
            let entries = run(&aa, &draws, users, &same, &mut rng);
            let entries = through_log(entries, &opts.log_dir.join(format!("aa-{seed}")))?;
            bar.inc(1);
            report_of(&entries, &aa, &x)
        })
        .collect::<Result<_>>()?;
    let hits = |f: &dyn Fn(&Report) -> bool| aa_runs.iter().filter(|r| f(r)).count();
    let p_below = |p: Option<f64>| p.is_some_and(|p| p < 0.05);
    let fixed = hits(&|r| p_below(r.arms[1].p_value));
    let seq = hits(&|r| p_below(r.arms[1].sequential_p_value));
    let cup = hits(&|r| p_below(r.arms[1].cuped.as_ref().map(|c| c.p_value)));
    let srm = hits(&|r| r.srm_flag);
    // A look after every 10% of users: the even checkpoints of 20.
    let peek = hits(&|r| {
        r.over_time
            .iter()
            .skip(1)
            .step_by(2)
            .any(|c| c.lift_ci[0] > 0.0 || c.lift_ci[1] < 0.0)
    });
    let aa = AaResult {
        seeds: opts.seeds,
        users: users.len(),
        fixed_fpr: share(fixed, opts.seeds),
        fixed_fpr_peeking: share(peek, opts.seeds),
        sequential_fpr: share(seq, opts.seeds),
        cuped_fpr: share(cup, opts.seeds),
        srm_flagged: share(srm, opts.seeds),
    };

    // A/B and interleaving over the same users.
    let runs: Vec<(Report, Report)> = (0..opts.seeds)
        .into_par_iter()
        .map(|seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(1_000_000 + seed as u64);
            let mut draws = everyone.clone();
            draws.shuffle(&mut rng);
            let ab = seeded(e, seed, ExperimentMode::Ab, "ab");
            let entries = run(&ab, &draws, users, &lists, &mut rng);
            let entries = through_log(entries, &opts.log_dir.join(format!("ab-{seed}")))?;
            let r = report_of(&entries, &ab, &x)?;
            let il = seeded(e, seed, ExperimentMode::Interleave, "il");
            let ri = report_of(&run(&il, &draws, users, &lists, &mut rng), &il, &x)?;
            bar.inc(1);
            Ok((r, ri))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let lift = median(runs.iter().filter_map(|r| r.0.arms[1].lift).collect());
    let sign = if lift < 0.0 { -1.0 } else { 1.0 };
    let agrees = |l: Option<f64>| l.is_some_and(|l| l * sign > 0.0);
    let count = |f: &dyn Fn(&(Report, Report)) -> bool| runs.iter().filter(|r| f(r)).count();
    let ab = AbResult {
        seeds: opts.seeds,
        users: users.len(),
        control_ctr: median(runs.iter().map(|r| r.0.arms[0].ctr).collect()),
        treatment_ctr: median(runs.iter().map(|r| r.0.arms[1].ctr).collect()),
        median_lift: lift,
        detected: share(
            count(&|r| r.0.arms[1].p_value.unwrap_or(1.0) < 0.05 && agrees(r.0.arms[1].lift)),
            opts.seeds,
        ),
        sequential_detected: share(
            count(&|r| {
                r.0.arms[1].sequential_p_value.unwrap_or(1.0) < 0.05 && agrees(r.0.arms[1].lift)
            }),
            opts.seeds,
        ),
        cuped_variance_reduction: median(
            runs.iter()
                .filter_map(|r| r.0.arms[1].cuped.as_ref().map(|c| c.variance_reduction))
                .collect(),
        ),
        interleaving_detected: share(
            count(&|r| {
                r.1.interleaving
                    .as_ref()
                    .is_some_and(|i| i.p_value < 0.05 && i.preference * sign > 0.0)
            }),
            opts.seeds,
        ),
        interleaving_preference: median(
            runs.iter()
                .filter_map(|r| r.1.interleaving.as_ref().map(|i| i.preference))
                .collect(),
        ),
    };

    // The power sweep: populations drawn with replacement, doubled until
    // every test reaches 80% or the largest is tried.
    let mut power = Vec::new();
    let mut n = opts.min_users.max(2);
    let needed = |pts: &[PowerPoint], f: fn(&PowerPoint) -> f64| {
        pts.iter().find(|p| f(p) >= 0.8).map(|p| p.users)
    };
    while n <= opts.max_users {
        let bar = crate::pipeline::bar(
            opts.power_seeds,
            format!("{}: power with {n} users", e.name),
            opts.progress,
        );
        let outcomes: Vec<[bool; 3]> = (0..opts.power_seeds)
            .into_par_iter()
            .map(|seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(((n as u64) << 32) + seed as u64);
                let draws: Vec<(String, usize)> = (0..n)
                    .map(|j| {
                        let u = rng.gen_range(0..users.len());
                        (format!("{}#{j}", users[u].id), u)
                    })
                    .collect();
                let xs: Covariates = draws
                    .iter()
                    .map(|(sim, u)| (sim.clone(), users[*u].covariate))
                    .collect();
                let ab = seeded(e, seed, ExperimentMode::Ab, &format!("p{n}-"));
                let r = report_of(&run(&ab, &draws, users, &lists, &mut rng), &ab, &xs)?;
                let b = &r.arms[1];
                let il = seeded(e, seed, ExperimentMode::Interleave, &format!("q{n}-"));
                let ri = report_of(&run(&il, &draws, users, &lists, &mut rng), &il, &xs)?;
                bar.inc(1);
                Ok([
                    b.p_value.unwrap_or(1.0) < 0.05 && agrees(b.lift),
                    b.cuped
                        .as_ref()
                        .is_some_and(|c| c.p_value < 0.05 && c.lift * sign > 0.0),
                    ri.interleaving
                        .as_ref()
                        .is_some_and(|i| i.p_value < 0.05 && i.preference * sign > 0.0),
                ])
            })
            .collect::<Result<_>>()?;
        let count = |i: usize| outcomes.iter().filter(|o| o[i]).count();
        let (ab_hits, cuped_hits, il_hits) = (count(0), count(1), count(2));
        bar.finish_and_clear();
        let p = PowerPoint {
            users: n,
            ab: share(ab_hits, opts.power_seeds),
            ab_cuped: share(cuped_hits, opts.power_seeds),
            interleaving: share(il_hits, opts.power_seeds),
        };
        tracing::info!(
            experiment = %e.name,
            users = n,
            ab = p.ab,
            ab_cuped = p.ab_cuped,
            interleaving = p.interleaving,
            "power"
        );
        power.push(p);
        let tests: [fn(&PowerPoint) -> f64; 3] = [|p| p.ab, |p| p.ab_cuped, |p| p.interleaving];
        if tests.iter().all(|f| needed(&power, *f).is_some()) {
            break;
        }
        n *= 2;
    }
    let (analytic, delta) = ab_users_analytic(users, &lists);
    Ok(ExperimentSim {
        users_needed_ab_analytic: analytic,
        expected_ctr_difference: delta,
        experiment: e.name.clone(),
        arms: [e.arms[0].name.clone(), e.arms[1].name.clone()],
        users: users.len(),
        aa,
        ab,
        users_needed_ab: needed(&power, |p| p.ab),
        users_needed_ab_cuped: needed(&power, |p| p.ab_cuped),
        users_needed_interleaving: needed(&power, |p| p.interleaving),
        power,
    })
}

/// The whole `simulate` run over MovieLens.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// TEST users simulated (those with a TRAIN history and TEST items).
    pub test_users: usize,
    /// Settings.
    pub seeds: usize,
    /// Seeds per population size.
    pub power_seeds: usize,
    /// Per experiment of the config.
    pub experiments: Vec<ExperimentSim>,
}

/// The TEST users of a MovieLens split for an index built
/// on its TRAIN part: truth = TEST items, covariate = TRAIN interactions.
pub fn movielens_users(split: &crate::movielens::Split) -> Vec<SimUser> {
    let mut train: HashMap<u32, usize> = HashMap::new();
    for &(u, _, _) in &split.train {
        *train.entry(u).or_default() += 1;
    }
    let mut truth: std::collections::BTreeMap<u32, HashSet<String>> = Default::default();
    for &(u, i, _) in &split.test {
        truth.entry(u).or_default().insert(i.to_string());
    }
    truth
        .into_iter()
        .filter_map(|(u, t)| {
            train.get(&u).map(|&n| SimUser {
                id: u.to_string(),
                truth: t,
                covariate: n as f64,
            })
        })
        .collect()
}

/// Runs every experiment of `cfg` over `users` on `engine`.
pub fn simulate_all(
    engine: &Engine,
    cfg: &Config,
    users: &[SimUser],
    opts: &SimOptions,
) -> Result<SimReport> {
    if cfg.experiments.is_empty() {
        return Err(Error::Config(
            "the config defines no [[experiments]] to simulate".into(),
        ));
    }
    let mut out = Vec::new();
    for e in &cfg.experiments {
        out.push(simulate(engine, cfg, e, users, opts)?);
    }
    Ok(SimReport {
        test_users: users.len(),
        seeds: opts.seeds,
        power_seeds: opts.power_seeds,
        experiments: out,
    })
}
