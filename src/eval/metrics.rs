//! The ranking metrics of EVAL.md at K = 10 and 20: precision, recall, F1,
//! NDCG (Järvelin & Kekäläinen 2002), MAP, hit rate, and catalogue coverage,
//! per user and summarised with their standard errors.

use std::collections::HashSet;

use serde::Serialize;

/// Ranking metrics of one user (binary relevance, R = min(K, |truth|)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserMetrics {
    /// NDCG at 10 and 20.
    pub ndcg: [f64; 2],
    /// Recall at 10 and 20.
    pub recall: [f64; 2],
    /// Precision at 10 and 20.
    pub precision: [f64; 2],
    /// Hit at 10 and 20 (0 or 1).
    pub hit: [f64; 2],
    /// Average precision at 10 and 20.
    pub ap: [f64; 2],
}

/// The two cut-offs.
pub const KS: [usize; 2] = [10, 20];

/// Metrics of a ranked list (best first) against the held-out items.
pub fn user_metrics(ranked: &[u32], truth: &HashSet<u32>) -> UserMetrics {
    let mut m = UserMetrics::default();
    if truth.is_empty() {
        return m;
    }
    for (slot, &k) in KS.iter().enumerate() {
        let r = k.min(truth.len());
        let (mut hits, mut dcg, mut ap) = (0usize, 0f64, 0f64);
        for (pos, item) in ranked.iter().take(k).enumerate() {
            if truth.contains(item) {
                hits += 1;
                dcg += 1.0 / ((pos + 2) as f64).log2();
                ap += hits as f64 / (pos + 1) as f64;
            }
        }
        let idcg: f64 = (0..r).map(|p| 1.0 / ((p + 2) as f64).log2()).sum();
        m.ndcg[slot] = dcg / idcg;
        m.recall[slot] = hits as f64 / r as f64;
        m.precision[slot] = hits as f64 / k as f64;
        m.hit[slot] = (hits > 0) as u8 as f64;
        m.ap[slot] = ap / r as f64;
    }
    m
}

/// Averages over users, as written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    #[serde(rename = "ndcg@10")]
    pub(super) ndcg10: f64,
    #[serde(rename = "ndcg@10_ci95")]
    pub(super) ndcg10_ci95: f64,
    #[serde(rename = "ndcg@20")]
    pub(super) ndcg20: f64,
    #[serde(rename = "recall@10")]
    pub(super) recall10: f64,
    #[serde(rename = "recall@20")]
    pub(super) recall20: f64,
    #[serde(rename = "precision@10")]
    pub(super) precision10: f64,
    #[serde(rename = "precision@20")]
    pub(super) precision20: f64,
    #[serde(rename = "f1@10")]
    pub(super) f1_10: f64,
    #[serde(rename = "f1@20")]
    pub(super) f1_20: f64,
    #[serde(rename = "hit_rate@10")]
    pub(super) hit10: f64,
    #[serde(rename = "hit_rate@20")]
    pub(super) hit20: f64,
    #[serde(rename = "map@10")]
    pub(super) map10: f64,
    #[serde(rename = "map@20")]
    pub(super) map20: f64,
    #[serde(rename = "coverage@10")]
    pub(super) coverage10: f64,
    pub(super) users: usize,
}

impl Summary {
    /// NDCG@10.
    pub fn ndcg10(&self) -> f64 {
        self.ndcg10
    }
}

pub(super) fn mean(v: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let xs: Vec<f64> = v.collect();
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, 1.96 * var.sqrt() / n.sqrt(), xs.len())
}

/// Summarises per-user metrics; `top10` are the users' top-10 lists for coverage.
pub fn summarise(per_user: &[UserMetrics], top10: &[Vec<u32>], catalogue: usize) -> Summary {
    let f = |g: &dyn Fn(&UserMetrics) -> f64| mean(per_user.iter().map(g));
    let (ndcg10, ci, users) = f(&|m| m.ndcg[0]);
    let f1 = |p: f64, r: f64| {
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    };
    let covered: HashSet<u32> = top10
        .iter()
        .flat_map(|t| t.iter().take(10).copied())
        .collect();
    let p10 = f(&|m| m.precision[0]).0;
    let p20 = f(&|m| m.precision[1]).0;
    let r10 = f(&|m| m.recall[0]).0;
    let r20 = f(&|m| m.recall[1]).0;
    Summary {
        ndcg10,
        ndcg10_ci95: ci,
        ndcg20: f(&|m| m.ndcg[1]).0,
        recall10: r10,
        recall20: r20,
        precision10: p10,
        precision20: p20,
        f1_10: f1(p10, r10),
        f1_20: f1(p20, r20),
        hit10: f(&|m| m.hit[0]).0,
        hit20: f(&|m| m.hit[1]).0,
        map10: f(&|m| m.ap[0]).0,
        map20: f(&|m| m.ap[1]).0,
        coverage10: covered.len() as f64 / catalogue.max(1) as f64,
        users,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_against_hand_computed_values() {
        let truth: HashSet<u32> = [1, 2, 3].into();
        // Hits at ranks 1 and 3 among 10.
        let ranked = [1, 9, 2, 8, 7, 6, 5, 4, 10, 11];
        let m = user_metrics(&ranked, &truth);
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((m.ndcg[0] - (1.0 + 0.5) / idcg).abs() < 1e-12);
        assert!((m.recall[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision[0] - 0.2).abs() < 1e-12);
        assert_eq!(m.hit[0], 1.0);
        assert!((m.ap[0] - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let perfect = user_metrics(&[3, 2, 1], &truth);
        assert!((perfect.ndcg[0] - 1.0).abs() < 1e-12 && (perfect.ap[1] - 1.0).abs() < 1e-12);
        assert_eq!(user_metrics(&[7, 8], &truth).ndcg, [0.0, 0.0]);
    }

    #[test]
    fn coverage_counts_distinct_top10_items() {
        let per = vec![UserMetrics::default(); 2];
        let s = summarise(&per, &[vec![1, 2], vec![2, 3]], 10);
        assert!((s.coverage10 - 0.3).abs() < 1e-12);
        assert_eq!(s.users, 2);
    }
}
