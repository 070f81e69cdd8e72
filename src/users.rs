//! User vectors: the recency-weighted mean of the user's history item vectors.
//!
//! With histories oldest first, the item `a` steps before the newest weighs
//! `decay^a · w`, where `w` is the interaction's own weight; only the newest
//! `max_items` count. Profiles are precomputed at build time (stored with the
//! generation) and computed the same way on the fly for a history given in a
//! request.
//!
//! Files in a generation: `users.bin` (user ids), `user_history.bin` (item
//! internal ids, oldest first), `user_weights.bin` (the interactions' weights as
//! f32 bit patterns, parallel to the history) and `user_vectors.bin` (one
//! unit-length row per user).

use std::path::Path;

use vecrec_index::format::{CheckedFile, FileWriter, Kind, ListTable, StringTable};
use vecrec_index::{IndexError, Metric, VectorStore};

use crate::config::UserConfig;
use crate::error::Result;

use crate::layout::{
    USER_HISTORY_FILE as HISTORY, USER_IDS_FILE as IDS, USER_VECTORS_FILE as VECTORS,
    USER_WEIGHTS_FILE as WEIGHTS,
};
/// Largest f32 bit pattern of a finite, non-negative weight, plus one.
const WEIGHT_BOUND: u32 = 0x7F80_0000;

/// The weighted-mean profile of `history` (internal ids with weights, oldest
/// first), or `None` when no weight is positive. Not normalised.
pub fn profile(store: &VectorStore, history: &[(u32, f32)], cfg: &UserConfig) -> Option<Vec<f32>> {
    profile_of(&|i| store.vector(i), store.dim(), history, cfg)
}

/// [`profile`] over vectors found by `vector` (of `dim` dimensions): the
/// same sums in the same order, so the same bits, wherever the rows live (a
/// router fetches them from the shards that own them).
pub fn profile_of<'a>(
    vector: &dyn Fn(u32) -> &'a [f32],
    dim: usize,
    history: &[(u32, f32)],
    cfg: &UserConfig,
) -> Option<Vec<f32>> {
    let mut v = vec![0f32; dim];
    let mut total = 0f32;
    let mut w = 1f32;
    for &(item, weight) in history.iter().rev().take(cfg.max_items) {
        let ww = w * weight;
        if ww > 0.0 {
            for (a, b) in v.iter_mut().zip(vector(item)) {
                *a += ww * b;
            }
            total += ww;
        }
        w *= cfg.decay;
    }
    if total <= 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= total);
    Some(v)
}

/// Histories to store with a generation: user id → (item internal id, weight), oldest first.
pub fn write_profiles(
    dir: &Path,
    store: &VectorStore,
    users: &[(String, Vec<(u32, f32)>)],
    cfg: &UserConfig,
) -> Result<usize> {
    write_users(dir, store.dim(), users, &|u| {
        profile(store, &users[u].1, cfg)
    })
}

/// Writes the user files with the profile `profile(u)` of user `u` (`None`:
/// no profile), each made as it is written, so no more than one is held at
/// a time; a shard stores every user's profile made over the whole
/// catalogue beside histories of its own items. Returns how many users
/// have a profile.
pub fn write_users(
    dir: &Path,
    dim: usize,
    users: &[(String, Vec<(u32, f32)>)],
    profile: &dyn Fn(usize) -> Option<Vec<f32>>,
) -> Result<usize> {
    let ids: Vec<&str> = users.iter().map(|u| u.0.as_str()).collect();
    StringTable::write(&dir.join(IDS), &ids)?;
    let hist: Vec<Vec<u32>> = users
        .iter()
        .map(|u| u.1.iter().map(|x| x.0).collect())
        .collect();
    ListTable::write(&dir.join(HISTORY), &hist)?;
    let weights: Vec<Vec<u32>> = users
        .iter()
        .map(|u| u.1.iter().map(|x| x.1.to_bits()).collect())
        .collect();
    ListTable::write(&dir.join(WEIGHTS), &weights)?;
    let mut w = FileWriter::create(
        &dir.join(VECTORS),
        Kind::VECTORS,
        [dim as u64, users.len() as u64, Metric::Cosine.code(), 0, 0],
    )?;
    let mut with_profile = 0;
    for u in 0..users.len() {
        let mut v = profile(u).unwrap_or_else(|| vec![0.0; dim]);
        if vecrec_index::distance::normalize(&mut v) {
            with_profile += 1;
        }
        w.write_pod(&v)?;
    }
    w.finish()?;
    Ok(with_profile)
}

/// Profiles of one generation.
#[derive(Debug)]
pub struct UserProfiles {
    ids: StringTable,
    index: vecrec_index::IdTable,
    history: ListTable,
    weights: ListTable,
    vectors: CheckedFile,
    dim: usize,
}

impl UserProfiles {
    /// Opens the user files of a generation whose store has `items` items of `dim` dimensions.
    pub fn open(dir: &Path, items: usize, dim: usize) -> Result<Self> {
        let ids = StringTable::open(&dir.join(IDS), true)?;
        let history = ListTable::open(&dir.join(HISTORY), true, items as u32)?;
        let weights = ListTable::open(&dir.join(WEIGHTS), true, WEIGHT_BOUND)?;
        let vectors = CheckedFile::open(&dir.join(VECTORS), Kind::VECTORS, true)?;
        let [vdim, count, ..] = vectors.fields();
        let n = ids.len();
        let consistent = history.len() == n
            && weights.len() == n
            && (0..n).all(|i| history.get(i).len() == weights.get(i).len())
            && vdim as usize == dim
            && count as usize == n
            && vectors.payload().len() == n * dim * 4;
        if !consistent {
            return Err(IndexError::Corrupt {
                path: dir.to_owned(),
                reason: format!(
                    "user files disagree ({n} users, {} histories, vectors {count} × {vdim})",
                    history.len()
                ),
            }
            .into());
        }
        let (index, repeat) = vecrec_index::IdTable::build(n, |u| ids.get(u as usize));
        if let Some((_, u)) = repeat {
            return Err(IndexError::Corrupt {
                path: dir.join(IDS),
                reason: format!("user {:?} is stored twice", ids.get(u as usize)),
            }
            .into());
        }
        Ok(Self {
            ids,
            index,
            history,
            weights,
            vectors,
            dim,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Internal number of a user id.
    pub fn lookup(&self, user: &str) -> Option<u32> {
        self.index.get(user, |u| self.ids.get(u as usize))
    }

    /// The user's id.
    pub fn id(&self, u: u32) -> &str {
        self.ids.get(u as usize)
    }

    /// Every user's history items (no weights), oldest first, by user number.
    pub fn item_histories(&self) -> Vec<Vec<u32>> {
        (0..self.len() as u32)
            .map(|u| self.history(u).iter().map(|h| h.0).collect())
            .collect()
    }

    /// Each of `n` items' popularity, `retrieve::popularity` of
    /// [`UserProfiles::item_histories`], counted from the mapped histories
    /// without copying them.
    pub fn popularity(&self, n: usize) -> Vec<f32> {
        let mut c = vec![0f32; n];
        for u in 0..self.len() {
            for &i in self.history.get(u) {
                if let Some(x) = c.get_mut(i as usize) {
                    *x += 1.0;
                }
            }
        }
        c
    }

    /// History with weights, oldest first.
    pub fn history(&self, u: u32) -> Vec<(u32, f32)> {
        self.history
            .get(u as usize)
            .iter()
            .zip(self.weights.get(u as usize))
            .map(|(&i, &w)| (i, f32::from_bits(w)))
            .collect()
    }

    /// The precomputed unit vector, or `None` if the user had no usable history.
    pub fn vector(&self, u: u32) -> Option<&[f32]> {
        let all: &[f32] = self.vectors.payload_as().ok()?;
        let v = &all[u as usize * self.dim..(u as usize + 1) * self.dim];
        v.iter().any(|x| *x != 0.0).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_id_and_popularity_counts_the_mapped_histories() {
        let dir = tempfile::tempdir().unwrap();
        let users: Vec<(String, Vec<(u32, f32)>)> = vec![
            ("u1".into(), vec![(0, 1.0), (2, 1.0), (2, 0.5)]),
            ("u2".into(), vec![(2, 1.0), (3, 1.0)]),
            ("u3".into(), vec![]),
        ];
        write_users(dir.path(), 2, &users, &|_| None).unwrap();
        let p = UserProfiles::open(dir.path(), 4, 2).unwrap();
        for (u, (id, h)) in users.iter().enumerate() {
            assert_eq!(p.lookup(id), Some(u as u32));
            assert_eq!(&p.history(u as u32), h);
        }
        assert_eq!(p.lookup("u4"), None);
        assert_eq!(p.lookup(""), None);
        assert_eq!(p.popularity(4), [1.0, 0.0, 3.0, 1.0]);
        assert_eq!(
            p.popularity(4),
            crate::retrieve::popularity(&p.item_histories(), 4)
        );
        let twice = [users[0].clone(), users[1].clone(), users[0].clone()];
        drop(p);
        write_users(dir.path(), 2, &twice, &|_| None).unwrap();
        let err = UserProfiles::open(dir.path(), 4, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("user \"u1\" is stored twice"), "{err}");
    }
}
