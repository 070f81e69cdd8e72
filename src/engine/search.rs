//! Nearest-neighbour answers: item lookups and the content search over the
//! generation merged with the items upserted since, behind SimilarItems,
//! SearchText, the content-only Recommend and Embed.

use std::collections::HashSet;

use vecrec_index::quant::OVERSAMPLE;
use vecrec_index::ItemMeta;

use super::{admissible, timed, Engine, Scored, LIVE_ITEM};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::ids::IdSet;

impl Engine {
    /// Internal id of an item of the generation, or `NotFound` (also for
    /// items deleted since).
    pub fn item(&self, id: &str) -> Result<u32> {
        let not_found = || Error::NotFound {
            kind: "item",
            id: id.to_owned(),
        };
        if self.view().is_some_and(|v| v.is_deleted(id)) {
            return Err(not_found());
        }
        self.index.store().internal_id(id).ok_or_else(not_found)
    }

    /// `NOT_FOUND` unless the item exists, live updates included: what
    /// [`Engine::item_meta`] checks, without parsing the item's record.
    pub fn check_item(&self, id: &str) -> Result<()> {
        if self.view().as_ref().is_some_and(|v| v.item(id).is_some()) {
            return Ok(());
        }
        self.item(id).map(|_| ())
    }

    /// Attributes of an item, live updates included.
    pub fn item_meta(&self, id: &str) -> Result<ItemMeta> {
        if let Some(x) = self.view().as_ref().and_then(|v| v.item(id)) {
            return Ok(x.meta.clone());
        }
        Ok(self.index.store().item(self.item(id)?))
    }

    /// The vector of an item, live updates included.
    pub fn item_vector(&self, id: &str) -> Result<Vec<f32>> {
        if let Some(x) = self.view().as_ref().and_then(|v| v.item(id)) {
            return Ok(x.vector.clone());
        }
        Ok(self.index.store().vector(self.item(id)?).to_vec())
    }

    /// The catalogue index's search: on its int8 codes when the generation
    /// has them (the graph walked on a quarter of the bytes, the best
    /// [`OVERSAMPLE`]`·k` rescored exactly with the f32 rows: about twice
    /// the queries/s of the f32 walk at the same recall, benches/ann), else
    /// on the f32 vectors.
    pub(super) fn ann(
        &self,
        query: &[f32],
        params: &vecrec_index::SearchParams,
        accept: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<(Vec<vecrec_index::Neighbor>, vecrec_index::Plan)> {
        Ok(if self.index.has_codes() {
            self.index
                .search_quantized(query, params, OVERSAMPLE, accept)?
        } else {
            self.index.search(query, params, accept)?
        })
    }

    /// Nearest items to `query`: the graph (or exact) search over the
    /// generation, minus `exclude` and anything deleted or replaced since,
    /// merged with the items upserted since (except `exclude_ids`).
    pub(super) fn search(
        &self,
        query: &[f32],
        k: usize,
        exclude: &IdSet,
        exclude_ids: &[String],
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>> {
        let store = self.index.store();
        let filter = filter.filter(|f| !f.is_empty());
        let view = self.view();
        let mut masked: IdSet;
        let exclude = match &view {
            Some(v) if !v.is_empty() => {
                masked = v.masked(store);
                masked.extend(exclude.iter().copied());
                &masked
            }
            _ => exclude,
        };
        let accept = |i: u32| admissible(store, exclude.contains(&i), filter, i);
        let need_filter = !exclude.is_empty() || filter.is_some();
        let params = self.search_params(k);
        let (found, _plan) = self.ann(
            query,
            &params,
            if need_filter { Some(&accept) } else { None },
        )?;
        let metric = store.metric();
        let mut out: Vec<Scored> = found
            .into_iter()
            .map(|n| Scored {
                internal: n.id,
                id: store.external_id(n.id).to_owned(),
                score: metric.score(n.distance),
            })
            .collect();
        // Items upserted since the build: scored exactly beside the graph.
        if let Some(v) = view.filter(|v| !v.is_empty()) {
            let skip: HashSet<&str> = exclude_ids.iter().map(String::as_str).collect();
            out.extend(
                v.items()
                    .filter(|(id, x)| {
                        !skip.contains(id.as_str()) && filter.is_none_or(|f| f.matches(&x.meta))
                    })
                    .map(|(id, x)| Scored {
                        internal: LIVE_ITEM,
                        id: id.clone(),
                        score: metric.score(metric.distance(query, &x.vector)),
                    }),
            );
            out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            out.truncate(k);
        }
        Ok(out)
    }

    /// Items nearest to a catalogue item (never the item itself).
    pub fn similar_items(
        &self,
        item: &str,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>> {
        let k = self.check_k(k)?;
        let v = self.item_vector(item)?;
        let own: IdSet = self.index.store().internal_id(item).into_iter().collect();
        timed("search", || {
            self.search(&v, k, &own, &[item.to_owned()], filter)
        })
    }

    /// Items nearest to a given vector, except the items named in
    /// `exclude` (unknown ids are ignored). What a router sends every shard
    /// to answer SimilarItems, SearchText and a history's Recommend.
    pub fn search_vector(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&Filter>,
        exclude: &[String],
    ) -> Result<Vec<Scored>> {
        let k = self.check_k(k)?;
        let dim = self.index.store().dim();
        if vector.len() != dim {
            return Err(Error::invalid(format!(
                "vector has {} values; this index's vectors have {dim}",
                vector.len()
            )));
        }
        if !vector.iter().all(|x| x.is_finite()) || vector.iter().all(|x| *x == 0.0) {
            return Err(Error::invalid(
                "vector must be finite and not all zero (it is compared by cosine)",
            ));
        }
        if exclude.len() > self.cfg.limits.max_history {
            return Err(Error::invalid(format!(
                "exclude has {} ids, over the limit of {}",
                exclude.len(),
                self.cfg.limits.max_history
            )));
        }
        let store = self.index.store();
        let own: IdSet = exclude
            .iter()
            .filter_map(|id| store.internal_id(id))
            .collect();
        timed("search", || self.search(vector, k, &own, exclude, filter))
    }

    /// Items nearest to a text query.
    pub fn search_text(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Scored>> {
        self.search_text_within(query, k, filter, Deadline::NONE)
    }

    /// [`Engine::search_text`] for a request due by `deadline`, checked
    /// before encoding and before searching.
    pub fn search_text_within(
        &self,
        query: &str,
        k: usize,
        filter: Option<&Filter>,
        deadline: Deadline,
    ) -> Result<Vec<Scored>> {
        let k = self.check_k(k)?;
        self.check_text("query", query)?;
        let v = self
            .encoder()?
            .encode_within(&[query], deadline)?
            .pop()
            .unwrap_or_default();
        deadline.check("search")?;
        timed("search", || {
            self.search(&v, k, &IdSet::default(), &[], filter)
        })
    }

    /// Embeddings of texts.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        self.embed_within(texts, Deadline::NONE)
    }

    /// [`Engine::embed`] for a request due by `deadline`, checked before encoding.
    pub fn embed_within(&self, texts: &[String], deadline: Deadline) -> Result<Vec<Vec<f32>>> {
        self.check_batch("texts", texts.len())?;
        for (i, t) in texts.iter().enumerate() {
            self.check_text(&format!("texts[{i}]"), t)?;
        }
        self.encoder()?.encode_within(texts, deadline)
    }
}
