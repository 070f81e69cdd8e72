//! An experiment's report from its exposure log ([`crate::exposure`]):
//! per arm, users, requests, exposed items, clicks, CTR, users with a
//! click and the mean reciprocal rank of clicks; each treatment's lift over
//! the control with a fixed-horizon p-value and an always-valid sequential
//! one; a sample-ratio-mismatch check; and, in interleaving, per-user wins.
//!
//! Statistics are at the user level, the unit of assignment: a user's
//! exposures are not independent, so CTR (clicks / exposed items, a ratio
//! of two per-user sums) gets its variance by the delta method over users
//! (Deng et al., "Applying the delta method in metric analytics", 2018).
//! Lift is relative (`ctr_t / ctr_c − 1`); its interval and the z-test
//! treat the arms as independent samples of users. The sequential p-value
//! is mSPRT with a normal mixture (Johari, Pekelis & Walsh 2017): the
//! likelihood ratio of the difference in CTR is evaluated at 20 time
//! checkpoints and the p-value is the running minimum of its inverse, so
//! looking at the report every day does not inflate false positives. The
//! mixture's spread τ is 10% of the control's CTR. Forced requests are left
//! out. Clicks are `Feedback` entries of kind `click`, one per item per
//! request at most. With per-user covariates, each treatment also gets a
//! CUPED-adjusted lift ([`Cuped`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::exposure::Entry;

mod stats;
use stats::{cuped, lift, msprt, ratio, sign_test, srm, Z95};

/// One arm's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ArmReport {
    /// Arm name.
    pub name: String,
    /// Its share in the latest definition.
    pub share: f64,
    /// Distinct users served this arm.
    pub users: usize,
    /// Lists served.
    pub requests: usize,
    /// Items shown, over all lists.
    pub exposures: usize,
    /// Clicks on shown items.
    pub clicks: usize,
    /// clicks / exposures.
    pub ctr: f64,
    /// 95% interval of `ctr` (delta method over users).
    pub ctr_ci: [f64; 2],
    /// Users with at least one click.
    pub users_with_click: usize,
    /// Their share of the arm's users.
    pub click_user_rate: f64,
    /// 95% interval of `click_user_rate` (normal approximation over users).
    pub click_user_rate_ci: [f64; 2],
    /// Mean of 1 / position over clicks.
    pub mrr: f64,
    /// 95% interval of `mrr` (delta method over users: a ratio of each
    /// user's sum of 1 / position to their clicks).
    pub mrr_ci: [f64; 2],
    /// Relative lift of CTR over the control (treatment arms only).
    pub lift: Option<f64>,
    /// 95% interval of `lift`.
    pub lift_ci: Option<[f64; 2]>,
    /// Two-sided fixed-horizon p-value of the difference in CTR.
    pub p_value: Option<f64>,
    /// Always-valid (mSPRT) p-value of the same difference.
    pub sequential_p_value: Option<f64>,
    /// The experiment's sample-ratio-mismatch p-value (the same on every
    /// treatment arm, for the report's readers).
    pub srm_p_value: Option<f64>,
    /// The same comparison with CUPED, when covariates were given.
    pub cuped: Option<Cuped>,
}

/// A treatment's lift with CUPED (Deng, Xu, Kohavi & Walker 2013): each
/// user's linearised CTR is adjusted by θ·(x − x̄), x the user's
/// pre-experiment covariate and θ the pooled within-arm regression slope,
/// which removes the part of the variance the covariate predicts and keeps
/// the estimate unbiased (assignment is independent of x).
#[derive(Clone, Debug, Serialize)]
pub struct Cuped {
    /// Adjusted relative lift.
    pub lift: f64,
    /// Its 95% interval.
    pub lift_ci: [f64; 2],
    /// Two-sided p-value of the adjusted difference.
    pub p_value: f64,
    /// 1 − adjusted / unadjusted variance of the difference in CTR.
    pub variance_reduction: f64,
}

/// Each user's pre-experiment covariate for CUPED (users missing count 0).
pub type Covariates = HashMap<String, f64>;

/// The lift of the first treatment over time.
#[derive(Clone, Debug, Serialize)]
pub struct Checkpoint {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Users seen by then.
    pub users: usize,
    /// Relative lift of CTR then.
    pub lift: f64,
    /// Its 95% interval.
    pub lift_ci: [f64; 2],
}

/// Interleaving results: per user, whether the treatment's team got more
/// clicks over the user's lists than the control's (a win), fewer (a loss)
/// or as many (a tie; users without clicks are not counted).
#[derive(Clone, Debug, Serialize)]
pub struct Interleaving {
    /// Users preferring the treatment.
    pub wins: usize,
    /// Users preferring the control.
    pub losses: usize,
    /// Users with clicks and no preference.
    pub ties: usize,
    /// (wins + ties / 2) / (wins + losses + ties) − 1/2: positive favours the treatment.
    pub preference: f64,
    /// 95% interval of `preference`.
    pub preference_ci: [f64; 2],
    /// Two-sided sign-test p-value over users with a preference.
    pub p_value: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The experiment.
    pub experiment: String,
    /// `ab` or `interleave`.
    pub mode: String,
    /// Control first.
    pub arms: Vec<ArmReport>,
    /// Chi-square p-value of users per arm against the shares.
    pub srm_p_value: f64,
    /// Whether that p-value is below 0.001: the split is broken and the
    /// other figures should not be trusted.
    pub srm_flag: bool,
    /// In interleaving, the per-user preference.
    pub interleaving: Option<Interleaving>,
    /// The first treatment's lift at 20 checkpoints in time.
    pub over_time: Vec<Checkpoint>,
    /// Requests that forced an arm (left out of everything above).
    pub forced_requests: usize,
}

/// Per-user sums of one arm.
#[derive(Clone, Copy, Debug, Default)]
struct UserSums {
    requests: usize,
    shown: usize,
    clicks: usize,
    rr: f64,
}

/// The report of experiment `name` from the log's entries.
pub fn report(entries: &[Entry], name: &str) -> Option<Report> {
    report_with(entries, name, None)
}

/// [`report`], with CUPED over `covariates` when given.
pub fn report_with(
    entries: &[Entry],
    name: &str,
    covariates: Option<&Covariates>,
) -> Option<Report> {
    // The latest definition gives the arms, their order and shares.
    let (mode, arms) = entries.iter().rev().find_map(|e| match e {
        Entry::Definition {
            experiment,
            mode,
            arms,
            ..
        } if experiment == name => Some((mode.clone(), arms.clone())),
        _ => None,
    })?;
    let arm_of: HashMap<&str, usize> = arms
        .iter()
        .enumerate()
        .map(|(i, a)| (a.0.as_str(), i))
        .collect();
    // Clicks per request: item → first click.
    let mut clicked: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in entries {
        if let Entry::Feedback {
            request_id,
            item,
            kind,
            ..
        } = e
        {
            if kind == "click" {
                clicked.entry(request_id).or_default().insert(item);
            }
        }
    }
    let interleave = mode == "interleave";
    let mut sums: Vec<BTreeMap<&str, UserSums>> = vec![BTreeMap::new(); arms.len()];
    let mut first_seen: Vec<(u64, usize, &str)> = Vec::new();
    let mut seen_users: HashSet<(usize, &str)> = HashSet::new();
    let mut forced = 0;
    // Interleaving: per user, treatment clicks minus control clicks.
    let mut duel: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in entries {
        let Entry::Exposure {
            request_id,
            time_ms,
            user,
            experiment,
            arm,
            forced: f,
            items,
        } = e
        else {
            continue;
        };
        if experiment != name {
            continue;
        }
        if *f {
            forced += 1;
            continue;
        }
        let clicks = clicked.get(request_id.as_str());
        let is_click = |item: &str| clicks.is_some_and(|c| c.contains(item));
        if interleave {
            let d = duel.entry(user).or_default();
            for s in items.iter().filter(|s| is_click(&s.item)) {
                match arm_of.get(s.team.as_str()) {
                    Some(0) => d.0 += 1,
                    Some(_) => d.1 += 1,
                    None => {}
                }
            }
        }
        // In interleaving every list counts for both teams' items: CTR per
        // team is over the items that team placed.
        let groups: Vec<(usize, Vec<&crate::exposure::Shown>)> = if interleave {
            (0..arms.len())
                .map(|a| {
                    (
                        a,
                        items
                            .iter()
                            .filter(|s| arm_of.get(s.team.as_str()) == Some(&a))
                            .collect(),
                    )
                })
                .collect()
        } else {
            match arm_of.get(arm.as_str()) {
                Some(&a) => vec![(a, items.iter().collect())],
                None => continue,
            }
        };
        for (a, shown) in groups {
            let u = sums[a].entry(user).or_default();
            u.requests += 1;
            u.shown += shown.len();
            for s in shown.iter().filter(|s| is_click(&s.item)) {
                u.clicks += 1;
                u.rr += 1.0 / s.position.max(1) as f64;
            }
            if seen_users.insert((a, user)) {
                first_seen.push((*time_ms, a, user));
            }
        }
    }
    let ratio_of = |a: usize, upto: Option<&HashSet<(usize, &str)>>| {
        let v: Vec<(f64, f64)> = sums[a]
            .iter()
            .filter(|(u, _)| upto.is_none_or(|s| s.contains(&(a, **u))))
            .map(|(_, s)| (s.clicks as f64, s.shown as f64))
            .collect();
        ratio(&v)
    };
    let users: Vec<usize> = sums.iter().map(|s| s.len()).collect();
    let shares: Vec<f64> = arms.iter().map(|a| a.1).collect();
    let srm_p = if interleave {
        1.0
    } else {
        srm(&users, &shares)
    };
    // Checkpoints: the users seen by 20 evenly spaced points in time.
    first_seen.sort();
    let mut over_time = Vec::new();
    let mut seq_p: Vec<f64> = vec![1.0; arms.len()];
    if !first_seen.is_empty() && !interleave {
        for step in 1..=20 {
            let upto = (first_seen.len() * step).div_ceil(20);
            let set: HashSet<(usize, &str)> =
                first_seen[..upto].iter().map(|x| (x.1, x.2)).collect();
            let c = ratio_of(0, Some(&set));
            for (a, p) in seq_p.iter_mut().enumerate().skip(1) {
                let t = ratio_of(a, Some(&set));
                let lr = msprt(t.value - c.value, t.var + c.var, 0.1 * c.value);
                if lr > 0.0 {
                    *p = p.min(1.0 / lr);
                }
                if a == 1 {
                    let (l, ci, _) = lift(t, c);
                    if l.is_finite() {
                        over_time.push(Checkpoint {
                            time_ms: first_seen[upto - 1].0,
                            users: upto,
                            lift: l,
                            lift_ci: ci,
                        });
                    }
                }
            }
        }
    }
    let control = ratio_of(0, None);
    let arm_reports = arms
        .iter()
        .enumerate()
        .map(|(a, (arm, share))| {
            let r = ratio_of(a, None);
            let s = &sums[a];
            let clicks: usize = s.values().map(|u| u.clicks).sum();
            let half = Z95 * r.var.sqrt();
            let treatment = (a > 0 && !interleave).then(|| lift(r, control));
            let with_x = |a: usize| -> Vec<(f64, f64, f64)> {
                let cov = covariates.expect("checked below");
                sums[a]
                    .iter()
                    .map(|(u, s)| {
                        let x = cov.get(*u).copied().unwrap_or(0.0);
                        (s.clicks as f64, s.shown as f64, x)
                    })
                    .collect()
            };
            let cuped = (a > 0 && !interleave && covariates.is_some())
                .then(|| cuped(&with_x(a), &with_x(0)))
                .flatten();
            let n_users = s.len().max(1) as f64;
            let with_click = s.values().filter(|u| u.clicks > 0).count();
            let rate = with_click as f64 / n_users;
            let rate_half = Z95 * (rate * (1.0 - rate) / n_users).sqrt();
            let rr = ratio(
                &s.values()
                    .map(|u| (u.rr, u.clicks as f64))
                    .collect::<Vec<_>>(),
            );
            let rr_half = Z95 * rr.var.sqrt();
            ArmReport {
                click_user_rate: rate,
                click_user_rate_ci: [rate - rate_half, rate + rate_half],
                mrr_ci: [rr.value - rr_half, rr.value + rr_half],
                name: arm.clone(),
                share: *share,
                users: s.len(),
                requests: s.values().map(|u| u.requests).sum(),
                exposures: s.values().map(|u| u.shown).sum(),
                clicks,
                ctr: r.value,
                ctr_ci: [r.value - half, r.value + half],
                users_with_click: with_click,
                mrr: if clicks > 0 {
                    s.values().map(|u| u.rr).sum::<f64>() / clicks as f64
                } else {
                    0.0
                },
                lift: treatment.map(|t| t.0),
                lift_ci: treatment.map(|t| t.1),
                p_value: treatment.map(|t| t.2),
                sequential_p_value: treatment.map(|_| seq_p[a]),
                srm_p_value: treatment.map(|_| srm_p),
                cuped,
            }
        })
        .collect();
    let interleaving = interleave.then(|| {
        let (mut wins, mut losses, mut ties) = (0, 0, 0);
        let mut prefs = Vec::new();
        for (c, t) in duel.values() {
            if c + t == 0 {
                continue;
            }
            let pref = match t.cmp(c) {
                std::cmp::Ordering::Greater => {
                    wins += 1;
                    1.0
                }
                std::cmp::Ordering::Less => {
                    losses += 1;
                    0.0
                }
                std::cmp::Ordering::Equal => {
                    ties += 1;
                    0.5
                }
            };
            prefs.push(pref);
        }
        let n = prefs.len() as f64;
        let mean = if n > 0.0 {
            prefs.iter().sum::<f64>() / n
        } else {
            0.5
        };
        let var = if n > 1.0 {
            prefs.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1.0) / n
        } else {
            f64::INFINITY
        };
        let half = Z95 * var.sqrt();
        Interleaving {
            wins,
            losses,
            ties,
            preference: mean - 0.5,
            preference_ci: [mean - 0.5 - half, mean - 0.5 + half],
            p_value: sign_test(wins, losses),
        }
    });
    Some(Report {
        experiment: name.to_owned(),
        mode,
        arms: arm_reports,
        srm_p_value: srm_p,
        srm_flag: srm_p < 0.001,
        interleaving,
        over_time,
        forced_requests: forced,
    })
}

#[cfg(test)]
mod tests;
