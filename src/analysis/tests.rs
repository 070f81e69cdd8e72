//! Unit tests of the experiment analysis: intervals, tests and CUPED on
//! data with known answers.

use super::*;
use crate::exposure::Shown;

fn def(mode: &str) -> Entry {
    Entry::Definition {
        time_ms: 0,
        experiment: "e".into(),
        mode: mode.into(),
        arms: vec![("control".into(), 0.5), ("b".into(), 0.5)],
    }
}

/// `n` users in `arm`, each with one list of 10 items, of which the
/// first `clicks(u)` are clicked.
fn arm_entries(arm: &str, n: usize, clicks: impl Fn(usize) -> usize) -> Vec<Entry> {
    let mut v = Vec::new();
    for u in 0..n {
        let rid = format!("{arm}-{u}");
        v.push(Entry::Exposure {
            request_id: rid.clone(),
            time_ms: u as u64,
            user: format!("{arm}-user-{u}"),
            experiment: "e".into(),
            arm: arm.into(),
            forced: false,
            items: (1..=10)
                .map(|p| Shown {
                    item: format!("i{p}"),
                    position: p,
                    team: String::new(),
                })
                .collect(),
        });
        for p in 1..=clicks(u) {
            v.push(Entry::Feedback {
                request_id: rid.clone(),
                time_ms: u as u64,
                user: format!("{arm}-user-{u}"),
                item: format!("i{p}"),
                kind: "click".into(),
            });
        }
    }
    v
}

#[test]
fn counts_ctr_and_a_clear_lift() {
    let mut log = vec![def("ab")];
    log.extend(arm_entries("control", 400, |u| u % 3 / 2)); // 1 click every third user
    log.extend(arm_entries("b", 400, |u| usize::from(u % 3 > 0))); // 2 of 3 users
    let r = report(&log, "e").unwrap();
    let (c, b) = (&r.arms[0], &r.arms[1]);
    assert_eq!((c.users, c.requests, c.exposures), (400, 400, 4000));
    assert_eq!(c.clicks, 133);
    assert!((c.ctr - 133.0 / 4000.0).abs() < 1e-12);
    assert!(c.ctr_ci[0] < c.ctr && c.ctr < c.ctr_ci[1]);
    assert_eq!(b.clicks, 266);
    assert_eq!(c.users_with_click, 133);
    assert!((c.click_user_rate - 133.0 / 400.0).abs() < 1e-12);
    let half = 1.959_964 * (133.0 / 400.0 * (267.0 / 400.0) / 400.0f64).sqrt();
    assert!((c.click_user_rate_ci[1] - c.click_user_rate - half).abs() < 1e-6);
    assert!((c.mrr - 1.0).abs() < 1e-12, "every click at position 1");
    assert!(
        (c.mrr_ci[1] - c.mrr_ci[0]).abs() < 1e-9,
        "no spread when every click is at 1"
    );
    let lift = b.lift.unwrap();
    assert!((lift - (266.0 / 133.0 - 1.0)).abs() < 1e-9);
    assert!(b.lift_ci.unwrap()[0] > 0.0);
    assert!(b.p_value.unwrap() < 1e-6);
    assert!(b.sequential_p_value.unwrap() < 0.01);
    assert!(b.sequential_p_value.unwrap() >= b.p_value.unwrap());
    assert!(!r.srm_flag);
    assert_eq!(r.over_time.len(), 20);
}

#[test]
fn equal_arms_show_no_lift_and_a_broken_split_is_flagged() {
    let mut log = vec![def("ab")];
    log.extend(arm_entries("control", 300, |u| u % 4 / 3));
    log.extend(arm_entries("b", 300, |u| u % 4 / 3));
    let r = report(&log, "e").unwrap();
    let b = &r.arms[1];
    assert!(b.lift.unwrap().abs() < 1e-9);
    assert!(b.p_value.unwrap() > 0.99);
    assert!(b.sequential_p_value.unwrap() > 0.5);
    // 700 against 300 users at 50/50.
    let mut log = vec![def("ab")];
    log.extend(arm_entries("control", 700, |_| 0));
    log.extend(arm_entries("b", 300, |_| 0));
    let r = report(&log, "e").unwrap();
    assert!(r.srm_p_value < 1e-6 && r.srm_flag);
}

#[test]
fn interleaving_counts_each_users_preference() {
    let mut log = vec![def("interleave")];
    for u in 0..40 {
        let rid = format!("r{u}");
        log.push(Entry::Exposure {
            request_id: rid.clone(),
            time_ms: u,
            user: format!("user-{u}"),
            experiment: "e".into(),
            arm: "b".into(),
            forced: false,
            items: (1..=4)
                .map(|p| Shown {
                    item: format!("i{p}"),
                    position: p,
                    team: if p % 2 == 1 { "control" } else { "b" }.into(),
                })
                .collect(),
        });
        // 30 users click b's item, 10 the control's.
        let item = if u < 30 { "i2" } else { "i1" };
        log.push(Entry::Feedback {
            request_id: rid,
            time_ms: u,
            user: format!("user-{u}"),
            item: item.into(),
            kind: "click".into(),
        });
    }
    let r = report(&log, "e").unwrap();
    let i = r.interleaving.unwrap();
    assert_eq!((i.wins, i.losses, i.ties), (30, 10, 0));
    assert!((i.preference - 0.25).abs() < 1e-12);
    // Exact two-sided binomial: 2 · P(X ≤ 10 | n = 40) ≈ 0.00222.
    assert!((i.p_value - 0.002221).abs() < 2e-5, "{}", i.p_value);
    assert_eq!(r.arms[1].clicks, 30);
    assert_eq!(
        r.arms[0].exposures, 80,
        "two control items in each of 40 lists"
    );
}

#[test]
fn cuped_removes_the_variance_a_covariate_predicts() {
    // Each user's clicks are their covariate (0..=3) plus a small
    // treatment effect on every fourth user: the covariate explains
    // most of the variance, so CUPED narrows the interval and keeps
    // the lift.
    let mut log = vec![def("ab")];
    log.extend(arm_entries("control", 400, |u| u % 4));
    log.extend(arm_entries("b", 400, |u| u % 4 + usize::from(u % 8 == 0)));
    let mut x = Covariates::new();
    for arm in ["control", "b"] {
        for u in 0..400 {
            x.insert(format!("{arm}-user-{u}"), (u % 4) as f64);
        }
    }
    let plain = report(&log, "e").unwrap();
    let r = report_with(&log, "e", Some(&x)).unwrap();
    let b = &r.arms[1];
    let c = b.cuped.as_ref().unwrap();
    assert!(
        (c.lift - b.lift.unwrap()).abs() < 1e-9,
        "balanced covariate"
    );
    assert!(c.variance_reduction > 0.9, "{}", c.variance_reduction);
    let width = |ci: [f64; 2]| ci[1] - ci[0];
    assert!(width(c.lift_ci) < 0.5 * width(b.lift_ci.unwrap()));
    assert!(c.p_value < b.p_value.unwrap());
    assert!(plain.arms[1].cuped.is_none() && r.arms[0].cuped.is_none());
}

#[test]
fn the_sign_test_and_srm_match_known_values() {
    assert!((sign_test(5, 5) - 1.0).abs() < 1e-12);
    // 2 · P(X ≤ 1 | n = 10) = 2 · 11 / 1024.
    assert!((sign_test(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
    // χ² of 550/450 at 50/50 is 10 with 1 df: p ≈ 0.001565.
    assert!((srm(&[550, 450], &[0.5, 0.5]) - 0.001565).abs() < 1e-5);
}
