//! Experiments at serving time: which arm a user is in, and team-draft
//! interleaving of two arms' lists. The settings themselves are
//! `config::ExperimentConfig`; the gRPC layer applies an arm's overrides
//! to a per-request variant of the engine (`Engine::with_config`).
//!
//! **Assignment** is weighted rendezvous hashing: for each arm a number
//! `u` in (0, 1] is drawn from SHA-256 of (salt, user, arm name), and the
//! user goes to the arm with the least `-ln(u) / share`. The chance of an
//! arm is its share; the same user gets the same arm on every request,
//! restart and replica (no state, no random seed); and when one arm's share
//! grows and another's shrinks, only users moving from the shrunk arm to
//! the grown one change (in expectation, exactly the difference in share).
//!
//! **Interleaving** is team draft (Radlinski, Kurup & Joachims 2008): in
//! each round the team with fewer picks so far (a coin flip, seeded by the
//! request, when they are even) adds its best item not yet shown; every
//! item remembers its team, so a click credits the team that placed it.

use std::collections::HashSet;
use std::hash::Hash;

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::config::ExperimentConfig;

/// A number in (0, 1] from `(salt, user, arm)`: SHA-256 of the three,
/// length-prefixed so that no two triples collide by concatenation.
pub fn unit(salt: &str, user: &str, arm: &str) -> f64 {
    let mut h = Sha256::new();
    for part in [salt, user, arm] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

/// The arm (its index in `e.arms`) of `user` in experiment `e`.
pub fn assign(e: &ExperimentConfig, user: &str) -> usize {
    e.arms
        .iter()
        .enumerate()
        .map(|(i, a)| (i, -unit(&e.salt, user, &a.name).ln() / a.share))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |x| x.0)
}

/// Which list an interleaved item came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Team {
    /// The first arm's list.
    Control,
    /// The second arm's list.
    Treatment,
}

/// Team-draft interleaving of two ranked lists into at most `k` items,
/// each with its team; `seed` decides the coin flips (use one per request,
/// so the same request interleaves the same way).
pub fn team_draft<T: Clone + Eq + Hash>(
    control: &[T],
    treatment: &[T],
    k: usize,
    seed: u64,
) -> Vec<(T, Team)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(k);
    let mut shown: HashSet<T> = HashSet::new();
    let (mut picks_c, mut picks_t) = (0usize, 0usize);
    let (mut ic, mut it) = (0usize, 0usize);
    while out.len() < k {
        while ic < control.len() && shown.contains(&control[ic]) {
            ic += 1;
        }
        while it < treatment.len() && shown.contains(&treatment[it]) {
            it += 1;
        }
        let (c_left, t_left) = (ic < control.len(), it < treatment.len());
        let control_picks = match (c_left, t_left) {
            (false, false) => break,
            (true, false) => true,
            (false, true) => false,
            _ if picks_c != picks_t => picks_c < picks_t,
            _ => rng.gen::<bool>(),
        };
        let (item, team) = if control_picks {
            picks_c += 1;
            (control[ic].clone(), Team::Control)
        } else {
            picks_t += 1;
            (treatment[it].clone(), Team::Treatment)
        };
        shown.insert(item.clone());
        out.push((item, team));
    }
    out
}

/// A new request id: 128 random bits as 32 hex digits.
pub fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A seed for a request's coin flips, from its id.
pub fn seed_of(request_id: &str) -> u64 {
    let d = Sha256::digest(request_id.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ArmConfig;

    fn exp(shares: &[f64]) -> ExperimentConfig {
        ExperimentConfig {
            name: "e".into(),
            salt: "salt".into(),
            mode: Default::default(),
            enabled: true,
            arms: shares
                .iter()
                .enumerate()
                .map(|(i, &share)| ArmConfig {
                    name: format!("arm{i}"),
                    share,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn assignment_follows_the_shares_and_is_stable() {
        let e = exp(&[0.2, 0.3, 0.5]);
        let n = 30_000;
        let mut counts = [0usize; 3];
        for u in 0..n {
            let user = format!("user-{u}");
            let a = assign(&e, &user);
            assert_eq!(a, assign(&e, &user), "the same user, the same arm");
            counts[a] += 1;
        }
        for (c, share) in counts.iter().zip([0.2, 0.3, 0.5]) {
            let got = *c as f64 / n as f64;
            // Five standard errors.
            let se = (share * (1.0 - share) / n as f64).sqrt();
            assert!((got - share).abs() < 5.0 * se, "{got} against {share}");
        }
        // Another salt is another assignment.
        let mut other = e.clone();
        other.salt = "pepper".into();
        let moved = (0..1000)
            .filter(|u| assign(&e, &format!("user-{u}")) != assign(&other, &format!("user-{u}")))
            .count();
        assert!(moved > 400, "{moved}");
    }

    #[test]
    fn changing_two_shares_moves_only_users_between_them() {
        let before = exp(&[0.5, 0.5]);
        let after = exp(&[0.6, 0.4]);
        let n = 20_000;
        let mut moved = 0;
        for u in 0..n {
            let user = format!("user-{u}");
            let (a, b) = (assign(&before, &user), assign(&after, &user));
            if a != b {
                assert_eq!((a, b), (1, 0), "users only leave the shrunk arm");
                moved += 1;
            }
        }
        let frac = moved as f64 / n as f64;
        assert!(
            (frac - 0.1).abs() < 0.015,
            "{frac} of users moved, 0.1 needed"
        );
    }

    #[test]
    fn team_draft_keeps_teams_even_and_each_list_in_order() {
        let a: Vec<u32> = (0..30).collect();
        let b: Vec<u32> = (0..30).rev().chain(100..110).collect();
        for seed in 0..50 {
            let out = team_draft(&a, &b, 20, seed);
            assert_eq!(out.len(), 20);
            let items: HashSet<u32> = out.iter().map(|x| x.0).collect();
            assert_eq!(items.len(), 20, "no item twice");
            let (mut c, mut t) = (0i32, 0i32);
            for (_, team) in &out {
                match team {
                    Team::Control => c += 1,
                    Team::Treatment => t += 1,
                }
                assert!((c - t).abs() <= 1, "teams differ by more than one pick");
            }
            // Each team's items appear in its own list's order.
            for (list, team) in [(&a, Team::Control), (&b, Team::Treatment)] {
                let pos: Vec<usize> = out
                    .iter()
                    .filter(|x| x.1 == team)
                    .map(|x| list.iter().position(|y| *y == x.0).unwrap())
                    .collect();
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
            }
            assert_eq!(out, team_draft(&a, &b, 20, seed), "the seed decides");
        }
        // Identical lists: the interleaving is the list itself.
        let same = team_draft(&a, &a, 10, 7);
        assert_eq!(
            same.iter().map(|x| x.0).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // Short lists: whatever both hold.
        assert_eq!(team_draft(&a[..2], &b[..1], 10, 1).len(), 3);
    }
}
