//! The engine's composition, on a small generation built from synthetic
//! vectors with the neural models off: no model file and no encoder needed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use vecrec_index::ItemMeta;

use super::*;
use crate::catalog::{CatalogItem, Interaction};
use crate::config::{AlsOptions, HybridConfig, TrainOptions};
use crate::pipeline::{build_generation, BuildOptions, BuildReport};

const CATEGORIES: [&str; 3] = ["a", "b", "c"];
const ITEMS: usize = 60;
const USERS: usize = 30;

/// Item `i` is in category `i % 3`; its vector points along that category's
/// axis with a small per-item twist, so content neighbours share a category.
fn catalogue() -> (Vec<CatalogItem>, Vec<Vec<f32>>) {
    let mut items = Vec::new();
    let mut vectors = Vec::new();
    for i in 0..ITEMS {
        let c = i % 3;
        items.push(CatalogItem {
            id: format!("item{i}"),
            meta: ItemMeta {
                title: format!("Item {i}"),
                categories: vec![CATEGORIES[c].to_owned()],
                ..Default::default()
            },
        });
        let mut v = vec![0.05f32; 8];
        v[c] = 1.0;
        v[3 + i % 5] += 0.3;
        vectors.push(v);
    }
    (items, vectors)
}

/// User `u` watches eight items of category `u % 3`, in order; item 0 is
/// watched by every user of category a, so it is the most popular.
fn interactions() -> Vec<Interaction> {
    let mut out = Vec::new();
    for u in 0..USERS {
        let c = u % 3;
        for step in 0..8 {
            let i = c + 3 * ((u + step * 2) % (ITEMS / 3));
            out.push(Interaction {
                user: format!("user{u}"),
                item: format!("item{i}"),
                timestamp: (u * 100 + step) as i64,
                event: None,
                weight: 1.0,
            });
        }
    }
    out
}

/// Builds the test catalogue into `root` with small, fast models (no
/// neural ones).
fn build_small(root: &std::path::Path, learn_fusion: Option<HybridConfig>) -> BuildReport {
    build_small_from(root, learn_fusion, &interactions())
}

/// [`build_small`] from the interactions given.
fn build_small_from(
    root: &std::path::Path,
    learn_fusion: Option<HybridConfig>,
    interactions: &[Interaction],
) -> BuildReport {
    let (items, vectors) = catalogue();
    let opts = BuildOptions {
        progress: false,
        train: Some(TrainOptions {
            neural: false,
            als: AlsOptions {
                factors: 8,
                iterations: 5,
                ..Default::default()
            },
            ..Default::default()
        }),
        learn_fusion,
        ..Default::default()
    };
    build_generation(
        root,
        &items,
        &vectors,
        interactions,
        &opts,
        Default::default(),
    )
    .unwrap()
}

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    build_small(dir.path(), None);
    let e = Engine::open(dir.path(), Config::default(), None).unwrap();
    (dir, e)
}

fn history_of(e: &Engine, user: &str) -> HashSet<String> {
    let u = e.users().lookup(user).unwrap();
    e.users()
        .history(u)
        .into_iter()
        .map(|(i, _)| e.index().store().external_id(i).to_owned())
        .collect()
}

fn category(e: &Engine, id: &str) -> String {
    e.item_meta(id).unwrap().categories[0].clone()
}

/// ALS gives an item without interactions a zero factor row, so it scores
/// every such item 0: its list must not name them (in the search's order,
/// which fusion would count as evidence), as EASE's and popularity's lists
/// leave out what they score 0. Content still ranks them.
#[test]
fn a_source_lists_no_item_it_scores_zero() {
    let dir = tempfile::tempdir().unwrap();
    let new: HashSet<String> = (ITEMS - 6..ITEMS).map(|i| format!("item{i}")).collect();
    let kept: Vec<Interaction> = interactions()
        .into_iter()
        .filter(|x| !new.contains(&x.item))
        .collect();
    build_small_from(dir.path(), None, &kept);
    let e = Engine::open(dir.path(), Config::default(), None).unwrap();
    // The zero rows were found, and the rows' int8 copies made, as the
    // generation opened, not by a call.
    let trained = e.trained.as_ref().unwrap();
    assert!(trained.als.store().zero_rows_built());
    assert!(trained.als.store().row_codes().is_some());
    let store = e.index().store();
    let new_rows: HashSet<u32> = new.iter().map(|i| store.internal_id(i).unwrap()).collect();
    let u = e.users().lookup("user4").unwrap();
    let history = e.users().history(u);
    let seen: HashSet<u32> = history.iter().map(|h| h.0).collect();
    let which = [Source::Als, Source::Ease, Source::Content];
    let list = |accept: &dyn Fn(u32) -> bool| {
        let lists = e
            .source_lists(&history, Some(u), &which, &e.admit(accept))
            .unwrap();
        lists
            .into_iter()
            .map(|l| (l.name, l.items.len()))
            .collect::<Vec<_>>()
    };
    // Among every unseen item, ALS has a list.
    let all = list(&|i| !seen.contains(&i));
    assert!(all.iter().all(|&(_, n)| n > 0), "{all:?}");
    // Among the items without interactions, only content has one.
    let fresh = list(&|i| new_rows.contains(&i));
    assert_eq!(
        fresh,
        vec![("als", 0), ("ease", 0), ("content", new_rows.len())],
    );
    // With lists of 2, among the new items and the known items ALS scores
    // below 0, its list is 2 known items: the zero rows are left out in the
    // search, so they do not take the places (and a shard without them
    // lists what one node lists).
    let x = e
        .user_input(Source::Als, &history, Some(u))
        .unwrap()
        .unwrap();
    let als = &e.trained.as_ref().unwrap().als;
    let below: HashSet<u32> = (0..ITEMS as u32)
        .filter(|i| !seen.contains(i) && !new_rows.contains(i))
        .filter(|&i| {
            als.store()
                .vector(i)
                .iter()
                .zip(&x)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                < 0.0
        })
        .collect();
    assert!(below.len() >= 2, "{below:?}");
    let mut cfg = Config::default();
    cfg.hybrid.candidates = 2;
    let two = Engine::open(dir.path(), cfg, None).unwrap();
    let lists = two
        .source_lists(
            &history,
            Some(u),
            &[Source::Als],
            &two.admit(|i| new_rows.contains(&i) || below.contains(&i)),
        )
        .unwrap();
    assert_eq!(lists[0].items.len(), 2, "{:?}", lists[0].items);
    assert!(lists[0]
        .items
        .iter()
        .all(|e| below.contains(&e.0) && e.1 < 0.0));
}

#[test]
fn hybrid_answers_leave_out_the_history_keep_k_and_the_filter() {
    let (_dir, e) = engine();
    assert!(e.is_hybrid());
    let seen = history_of(&e, "user4");
    let opts = RecommendOptions {
        k: 5,
        ..Default::default()
    };
    let got = e.recommend(UserRef::Id("user4"), &opts).unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|s| !seen.contains(&s.id)), "{got:?}");
    assert!(got.windows(2).all(|w| w[0].score >= w[1].score), "{got:?}");

    let filtered = RecommendOptions {
        k: 5,
        filter: Some(Filter {
            categories_any: vec!["c".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let got = e.recommend(UserRef::Id("user4"), &filtered).unwrap();
    assert!(!got.is_empty());
    assert!(got.iter().all(|s| category(&e, &s.id) == "c"), "{got:?}");

    let with_seen = RecommendOptions {
        k: ITEMS,
        include_seen: true,
        ..Default::default()
    };
    let all: HashSet<String> = e
        .recommend(UserRef::Id("user4"), &with_seen)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(seen.iter().any(|i| all.contains(i)));
}

#[test]
fn the_fusion_sees_one_list_per_weighted_source_and_no_reranker_without_one() {
    let (_dir, mut e) = engine();
    let store = e.index().store();
    let u = e.users().lookup("user1").unwrap();
    let history = e.users().history(u);
    let lists = e
        .candidate_lists(
            &history,
            Some(u),
            &e.admit(|_| true),
            FusionMethod::Geometric,
        )
        .unwrap();
    let names: Vec<&str> = lists.iter().map(|l| l.name).collect();
    // Popularity has weight 0 by default; no reranker was trained.
    assert_eq!(
        names,
        [
            "ease",
            "transitions",
            "content",
            "als",
            "two_tower",
            "sequence"
        ],
        "{names:?}"
    );
    assert!(e.reranker().is_none());
    // No neural model in this generation: their lists are empty, the rest rank.
    for l in &lists {
        let neural = l.name == "two_tower" || l.name == "sequence";
        assert_eq!(l.items.is_empty(), neural, "{}", l.name);
        assert!(l.items.len() <= e.config().hybrid.candidates);
    }
    // The content list ranks the user's own category first.
    let content = lists.iter().find(|l| l.name == "content").unwrap();
    assert_eq!(category(&e, store.external_id(content.items[0].0)), "b");

    let hybrid = HybridConfig {
        popularity_weight: 1.0,
        ..e.config().hybrid.clone()
    };
    e.configure(|c| c.hybrid = hybrid);
    let lists = e
        .candidate_lists(
            &history,
            Some(u),
            &e.admit(|_| true),
            FusionMethod::Geometric,
        )
        .unwrap();
    let pop = lists.iter().find(|l| l.name == "popularity").unwrap();
    let mut count = vec![0usize; ITEMS];
    for x in interactions() {
        count[x.item[4..].parse::<usize>().unwrap()] += 1;
    }
    let top = e.index().store().external_id(pop.items[0].0);
    let most = count.iter().max().unwrap();
    assert_eq!(count[top[4..].parse::<usize>().unwrap()], *most);
}

#[test]
fn a_passed_deadline_stops_the_request_before_any_source_runs() {
    let (_dir, e) = engine();
    let opts = RecommendOptions {
        k: 5,
        deadline: Deadline::at(Instant::now() - Duration::from_millis(1)),
        ..Default::default()
    };
    match e.recommend(UserRef::Id("user2"), &opts) {
        Err(Error::DeadlineExceeded { stage }) => assert_eq!(stage, "recommend"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_an_encoder_text_calls_fail_and_item_calls_answer() {
    let (_dir, e) = engine();
    match e.search_text("anything", 5, None) {
        Err(Error::Config(m)) => assert!(m.contains("without an encoder"), "{m}"),
        other => panic!("{other:?}"),
    }
    let similar = e.similar_items("item7", 4, None).unwrap();
    assert_eq!(similar.len(), 4);
    assert!(similar.iter().all(|s| s.id != "item7"));
    assert!(
        similar.iter().all(|s| category(&e, &s.id) == "b"),
        "{similar:?}"
    );
}

#[test]
fn the_content_pipeline_serves_when_hybrid_is_off() {
    let (_dir, mut e) = engine();
    e.configure(|c| c.hybrid.enabled = false);
    assert!(!e.is_hybrid());
    let history = ["item0".to_owned(), "item3".to_owned()];
    let got = e
        .recommend(
            UserRef::History(&history),
            &RecommendOptions {
                k: 3,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|s| !history.contains(&s.id)));
    assert!(got.iter().all(|s| category(&e, &s.id) == "a"), "{got:?}");
}

#[test]
fn unknown_users_and_items_are_not_found_and_k_is_bounded() {
    let (_dir, e) = engine();
    let opts = RecommendOptions {
        k: 5,
        ..Default::default()
    };
    assert!(matches!(
        e.recommend(UserRef::Id("nobody"), &opts),
        Err(Error::NotFound { kind: "user", .. })
    ));
    let history = ["item1".to_owned(), "no-such-item".to_owned()];
    assert!(matches!(
        e.recommend(UserRef::History(&history), &opts),
        Err(Error::NotFound { kind: "item", .. })
    ));
    let too_many = RecommendOptions {
        k: e.config().limits.max_k + 1,
        ..Default::default()
    };
    assert!(matches!(
        e.recommend(UserRef::Id("user1"), &too_many),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn every_source_finds_its_weight_by_its_name() {
    let w = crate::config::SourceWeights {
        ease: 1.0,
        transitions: 2.0,
        content: 3.0,
        popularity: 4.0,
        als: 5.0,
        two_tower: 6.0,
        sequence: 7.0,
    };
    for s in Source::ALL {
        assert_eq!(w.by_name(s.name()), Some(s.weight_in(&w)), "{}", s.name());
    }
    let names: Vec<&str> = w.named().iter().map(|n| n.0).collect();
    let sources: Vec<&str> = Source::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(names, sources);
}

/// The learned fusion is fitted on the models the build trained: the
/// sources are trained once per build (the fit used to train a second copy
/// of every model on a holdout), and the fitted model serves.
#[test]
fn a_build_with_learned_fusion_trains_every_model_once() {
    let dir = tempfile::tempdir().unwrap();
    crate::pipeline::TRAININGS.with(|t| t.set(0));
    let report = build_small(dir.path(), Some(HybridConfig::default()));
    assert_eq!(crate::pipeline::TRAININGS.with(|t| t.get()), 1);
    let names: Vec<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        names,
        [
            "hnsw",
            "profiles",
            "ease",
            "transitions",
            "als",
            "fusion-fit",
            "commit"
        ]
    );
    let fit = &report.stages[5].work;
    assert!(fit.starts_with("30 of 30 users"), "{fit}");
    // Nothing of a second build is left beside the generation.
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| e == "CURRENT" || e.starts_with("gen-")),
        "{entries:?}"
    );
    let cfg = Config {
        hybrid: HybridConfig {
            fusion: FusionMethod::Learned,
            ..HybridConfig::default()
        },
        ..Config::default()
    };
    let e = Engine::open(dir.path(), cfg, None).unwrap();
    assert!(e.has_learned_fusion());
    let got = e
        .recommend(
            UserRef::Id("user4"),
            &RecommendOptions {
                k: 5,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got.len(), 5);
    // Users of category b (u % 3 == 1) get category-b items first.
    assert_eq!(category(&e, &got[0].id), "b");
}

/// A listwise reranker needs held-out heads with a positive; when no user
/// has two interactions there are none, and the build trains the reranker
/// on sequences instead of writing a model with no features.
#[test]
fn without_held_out_heads_the_reranker_is_trained_on_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let (items, vectors) = catalogue();
    let once: Vec<Interaction> = (0..USERS)
        .map(|u| Interaction {
            user: format!("user{u}"),
            item: format!("item{}", u % ITEMS),
            timestamp: 0,
            event: None,
            weight: 1.0,
        })
        .collect();
    let opts = BuildOptions {
        progress: false,
        train: Some(TrainOptions {
            als: AlsOptions {
                factors: 8,
                iterations: 2,
                ..Default::default()
            },
            two_tower: crate::config::TwoTowerOptions {
                epochs: 1,
                ..Default::default()
            },
            reranker: crate::config::DinOptions {
                epochs: 1,
                ..Default::default()
            },
            ..Default::default()
        }),
        learn_fusion: None,
        ..Default::default()
    };
    assert!(opts.train.as_ref().unwrap().reranker.listwise);
    let report = build_generation(
        dir.path(),
        &items,
        &vectors,
        &once,
        &opts,
        Default::default(),
    )
    .unwrap();
    let holdout = report
        .stages
        .iter()
        .find(|s| s.stage == "rerank-holdout")
        .unwrap();
    assert!(
        holdout.work.contains("no user with two interactions"),
        "{}",
        holdout.work
    );
    let meta: crate::rerank::DinMeta =
        vecrec_index::format::read_json(&report.generation.join(crate::layout::DIN_META_FILE))
            .unwrap();
    assert_eq!(meta.trained_on, "sequences");
    assert_eq!(meta.features, ["log_popularity"]);
    assert!(report.generation.join(crate::layout::DIN_FILE).is_file());
}

/// The cross-attention reranker reorders the items it knows among their
/// places; an item without interactions keeps its place, and every place
/// gets the score of its rank, so the list stays sorted.
#[test]
fn the_reranker_reorders_known_items_and_leaves_new_ones_in_place() {
    // The fused order 10, 11, 12, 13, 14; 11 and 13 are new.
    let candidates = [10, 11, 12, 13, 14];
    let scores = vec![0.1, 0.9, 0.5, 0.7, 0.3];
    let known = |i: u32| i != 11 && i != 13;
    let got = rerank_known(&candidates, scores, known);
    // Known by score: 12 (0.5), 14 (0.3), 10 (0.1), into places 0, 2, 4.
    let order: Vec<u32> = got.iter().map(|e| e.0).collect();
    assert_eq!(order, [12, 11, 14, 13, 10]);
    let s: Vec<f32> = got.iter().map(|e| e.1).collect();
    assert_eq!(s, [0.9, 0.7, 0.5, 0.3, 0.1]);
    // All new: the fused order; all known: the reranker's.
    let none = rerank_known(&candidates, vec![0.1, 0.9, 0.5, 0.7, 0.3], |_| false);
    assert_eq!(none.iter().map(|e| e.0).collect::<Vec<_>>(), candidates);
    let all = rerank_known(&candidates, vec![0.1, 0.9, 0.5, 0.7, 0.3], |_| true);
    assert_eq!(
        all.iter().map(|e| e.0).collect::<Vec<_>>(),
        [11, 13, 12, 14, 10]
    );
}

/// Flips one byte in the middle of `path`'s payload, so its checksum fails.
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_build_stores_the_als_gram_an_open_would_compute() {
    let dir = tempfile::tempdir().unwrap();
    let report = build_small(dir.path(), None);
    let file = report.generation.join(crate::layout::ALS_GRAM_FILE);
    assert!(file.is_file(), "the build writes {}", file.display());
    let stored = Engine::open(dir.path(), Config::default(), None).unwrap();
    let t = stored.trained.as_ref().unwrap();
    let computed = crate::retrieve::als::gram(t.als.store().vectors(), t.als.store().dim());
    assert_eq!(t.als_gram.len(), 8 * 8);
    assert!(t.als_gram.iter().any(|&g| g != 0.0));
    let bits = |g: &[f64]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&t.als_gram), bits(&computed));
    // A generation written before the file existed computes it, and folds
    // a new history in to the same factors.
    let history: Vec<(u32, f32)> = [3u32, 6, 9].iter().map(|&i| (i, 1.0)).collect();
    let folded = stored.user_input(Source::Als, &history, None).unwrap();
    assert!(folded.is_some());
    std::fs::remove_file(&file).unwrap();
    let older = Engine::open(dir.path(), Config::default(), None).unwrap();
    assert_eq!(
        bits(&older.trained.as_ref().unwrap().als_gram),
        bits(&computed)
    );
    assert_eq!(
        older.user_input(Source::Als, &history, None).unwrap(),
        folded
    );
    // A file of the wrong shape is refused, naming it.
    vecrec_index::format::write_file(
        &file,
        vecrec_index::format::Kind::MATRIX_F64,
        [8, 4, 0, 0, 0],
        &[0u8; 8 * 4 * 8],
    )
    .unwrap();
    let err = Engine::open(dir.path(), Config::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(crate::layout::ALS_GRAM_FILE) && err.contains("Gram"),
        "{err}"
    );
}

#[test]
fn the_learned_item_tables_keep_no_id_or_attribute_tables() {
    let (_dir, e) = engine();
    // The catalogue's store is looked up by id and filtered: both built.
    assert_eq!(e.index().store().tables_built(), (true, true));
    let t = e.trained.as_ref().unwrap();
    assert_eq!(t.als.store().tables_built(), (false, false));
    // A lookup still works, building the table it needs then.
    assert_eq!(t.als.store().internal_id("item7"), Some(7));
    assert_eq!(t.als.store().tables_built(), (true, false));
}

#[test]
fn a_front_opens_lazily_scores_no_items_and_answers_as_a_whole_open() {
    let (dir, whole) = engine();
    let front = Engine::open_as(dir.path(), Config::default(), None, Opening::Front).unwrap();
    assert_eq!(front.opening(), Opening::Front);
    // Ids are ready for the first call; the attributes, which only the
    // shards filter by, are never built; EASE and transitions not opened.
    assert_eq!(front.index().store().tables_built(), (true, false));
    let t = front.trained.as_ref().unwrap();
    assert!(t.item_rows.is_none());
    assert_eq!(t.als.store().tables_built(), (false, false));
    match front.recommend(
        UserRef::Id("user2"),
        &RecommendOptions {
            k: 5,
            ..Default::default()
        },
    ) {
        Err(Error::FailedPrecondition(m)) => assert!(m.contains("front"), "{m}"),
        other => panic!("{other:?}"),
    }
    front.wait_verified().unwrap();
    assert!(front.verification_done() && whole.verification_done());
    let history = ["item1".to_owned(), "item4".to_owned(), "item10".to_owned()];
    for who in [UserRef::Id("user2"), UserRef::History(&history)] {
        let opts = RecommendOptions {
            k: 10,
            ..Default::default()
        };
        let none = HashSet::new();
        let qf = front.front_query(who, &[], &none, &opts).unwrap();
        let qw = whole.front_query(who, &[], &none, &opts).unwrap();
        assert_eq!(qf.history, qw.history);
        assert_eq!(qf.shard.inputs, qw.shard.inputs);
        assert_eq!(qf.shard.exclude, qw.shard.exclude);
        assert_eq!(qf.shard.front_ids, qw.shard.front_ids);
        assert!(!qf.shard.inputs.is_empty());
        // Every source's list from the whole generation, as the shards
        // would send them: the front fuses them as one node does.
        let user = match who {
            UserRef::Id(id) => whole.users().lookup(id),
            UserRef::History(_) => None,
        };
        let lists = whole
            .source_lists(&qw.history, user, &qw.sources, &whole.admit(|_| true))
            .unwrap()
            .into_iter()
            .map(|l| l.items)
            .collect::<Vec<_>>();
        let af = front
            .front_answer(&qf, lists.clone(), Deadline::default())
            .unwrap();
        let aw = whole.front_answer(&qw, lists, Deadline::default()).unwrap();
        assert_eq!(af.len(), 10);
        assert_eq!(af, aw);
    }
}

#[test]
fn damage_found_after_a_front_opened_fails_its_calls_and_a_reload_keeps_the_served_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = build_small(dir.path(), None).generation;
    let served =
        Arc::new(Engine::open_as(dir.path(), Config::default(), None, Opening::Front).unwrap());
    let slot = crate::serving::EngineSlot::new(dir.path(), served.clone());
    // A new generation whose ALS table is damaged: a whole open refuses it,
    // a front's lazy open takes it, and its background check finds it.
    let second = build_small(dir.path(), None).generation;
    assert_ne!(first, second);
    damage(&second.join(crate::layout::ALS_DIR).join("vectors.bin"));
    let err = Engine::open(dir.path(), Config::default(), None).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    let lazy = Engine::open_as(dir.path(), Config::default(), None, Opening::Front).unwrap();
    assert!(lazy.wait_verified().is_err());
    let opts = RecommendOptions {
        k: 5,
        ..Default::default()
    };
    let err = lazy
        .front_query(UserRef::Id("user2"), &[], &HashSet::new(), &opts)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Index(e) if e.is_data_loss()),
        "{err:?}"
    );
    // The served front's reload waits for the check and keeps serving
    // the generation it has.
    assert!(slot.reload_if_changed().is_err());
    assert_eq!(slot.get().index().dir(), first.as_path());
    assert_eq!(slot.get().opening(), Opening::Front);
    assert!(served
        .front_query(UserRef::Id("user2"), &[], &HashSet::new(), &opts)
        .is_ok());
}
