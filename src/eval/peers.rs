//! The peers' figures measured by `benches/peers/run.sh` on the same split
//! files (`benches/peers/results/peers.json`): their TEST NDCG@10 for the
//! report, and each user's NDCG@10, so the full pipeline is compared with the
//! best of them user by user rather than with vecrec's own EASE.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::mean;
use super::report::PairedDiff;
use crate::error::{Error, Result};

/// What `benches/peers/run.sh` wrote.
#[derive(Debug, Deserialize)]
pub struct PeerFile {
    peers: Vec<Peer>,
    /// The name of the peer with the highest TEST NDCG@10.
    best: String,
}

#[derive(Debug, Deserialize)]
struct Peer {
    name: String,
    test: PeerTest,
    #[serde(rename = "per_user_ndcg@10")]
    per_user: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
struct PeerTest {
    #[serde(rename = "ndcg@10")]
    ndcg10: f64,
    #[serde(rename = "ndcg@10_ci95")]
    ci95: f64,
}

/// A peer's TEST NDCG@10, as the report lists it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    /// The peer.
    pub name: String,
    /// TEST NDCG@10.
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    /// Its 95% half-width.
    #[serde(rename = "ndcg@10_ci95")]
    pub ci95: f64,
}

impl PeerFile {
    /// Reads and checks a peers file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: Self = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not a peers file: {e}", path.display())))?;
        if !file.peers.iter().any(|p| p.name == file.best) {
            return Err(Error::invalid(format!(
                "{}: the best peer {:?} is not among the peers",
                path.display(),
                file.best
            )));
        }
        Ok(file)
    }

    /// Every peer's TEST NDCG@10.
    pub fn rows(&self) -> Vec<PeerRow> {
        self.peers
            .iter()
            .map(|p| PeerRow {
                name: p.name.clone(),
                ndcg10: p.test.ndcg10,
                ci95: p.test.ci95,
            })
            .collect()
    }

    /// The per-user difference `ours − best peer` of NDCG@10 over the same
    /// users (`users` the MovieLens user ids, `ndcg` their NDCG@10). The
    /// user sets must match: a mismatch means the peers ran another split.
    pub fn paired_with_best(&self, users: &[u32], ndcg: &[f64]) -> Result<PairedDiff> {
        let best = self
            .peers
            .iter()
            .find(|p| p.name == self.best)
            .expect("checked in load");
        if best.per_user.len() != users.len() {
            return Err(Error::invalid(format!(
                "the peers were scored on {} users, this run on {}: not the same split",
                best.per_user.len(),
                users.len()
            )));
        }
        let diffs = users
            .iter()
            .zip(ndcg)
            .map(|(u, ours)| {
                best.per_user
                    .get(&u.to_string())
                    .map(|theirs| ours - theirs)
                    .ok_or_else(|| {
                        Error::invalid(format!("user {u} is missing from the peers' figures"))
                    })
            })
            .collect::<Result<Vec<f64>>>()?;
        let (m, ci, n) = mean(diffs.into_iter());
        Ok(PairedDiff {
            baseline: format!("{} (benches/peers)", best.name),
            mean: m,
            ci95: ci,
            users: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("peers.json");
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn the_paired_difference_is_taken_user_by_user_against_the_best_peer() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            dir.path(),
            r#"{"best": "EASE", "peers": [
                {"name": "Popularity", "test": {"ndcg@10": 0.05, "ndcg@10_ci95": 0.01},
                 "per_user_ndcg@10": {"1": 0.0, "2": 0.0, "7": 0.0}},
                {"name": "EASE", "test": {"ndcg@10": 0.2, "ndcg@10_ci95": 0.02},
                 "per_user_ndcg@10": {"1": 0.5, "2": 0.0, "7": 0.1}}]}"#,
        );
        let f = PeerFile::load(&p).unwrap();
        assert_eq!(f.rows().len(), 2);
        let d = f.paired_with_best(&[1, 2, 7], &[0.5, 0.3, 0.4]).unwrap();
        assert_eq!(d.users, 3);
        assert!((d.mean - 0.2).abs() < 1e-12, "{d:?}");
        assert!(d.baseline.starts_with("EASE"));
        // Another user set is refused, not silently paired.
        assert!(f.paired_with_best(&[1, 2, 8], &[0.5, 0.3, 0.4]).is_err());
        assert!(f.paired_with_best(&[1, 2], &[0.5, 0.3]).is_err());
    }

    #[test]
    fn a_best_peer_that_is_not_listed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), r#"{"best": "ALS", "peers": []}"#);
        assert!(PeerFile::load(&p).is_err());
    }
}
