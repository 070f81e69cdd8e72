//! The build pipeline and the engine over the planted-taste sample.

use std::collections::HashMap;

use vecrec::catalog::read_catalog;
use vecrec::engine::{RecommendOptions, UserRef};
use vecrec::filter::Filter;
use vecrec::Error;

use crate::common::{content_engine, engine, favourites, sample_index};

/// Recommendations recover the planted tastes: on average at least 70% of a
/// user's top 10 lie in their favourite categories (chance is about 12%), for
/// the content-only pipeline and for the hybrid one.
#[test]
fn recommendations_follow_planted_tastes() {
    let s = sample_index();
    let content = content_engine(&s.root);
    let hybrid = engine(&s.root);
    assert!(!content.is_hybrid() && hybrid.is_hybrid());
    for e in [content, hybrid] {
        planted_taste_share(&e);
    }
}

fn planted_taste_share(e: &vecrec::engine::Engine) {
    let s = sample_index();
    let items = read_catalog(&s.data.join("catalog.jsonl")).unwrap();
    let cats: HashMap<String, Vec<String>> = items
        .into_iter()
        .map(|i| (i.id, i.meta.categories))
        .collect();
    let opts = RecommendOptions {
        k: 10,
        ..Default::default()
    };
    let (mut hits, mut total) = (0, 0);
    for (user, fav) in favourites(&s.data) {
        let recs = e.recommend(UserRef::Id(&user), &opts).unwrap();
        assert_eq!(recs.len(), 10);
        assert!(
            recs.windows(2).all(|w| w[0].score >= w[1].score),
            "scores not ordered"
        );
        let seen: Vec<u32> = e
            .users()
            .history(e.users().lookup(&user).unwrap())
            .iter()
            .map(|h| h.0)
            .collect();
        assert!(
            recs.iter().all(|r| !seen.contains(&r.internal)),
            "seen item recommended to {user}"
        );
        hits += recs
            .iter()
            .filter(|r| cats[&r.id].iter().any(|c| fav.contains(c)))
            .count();
        total += recs.len();
    }
    let share = hits as f64 / total as f64;
    eprintln!(
        "share of top-10 in planted favourite categories (hybrid: {}): {share:.3}",
        e.is_hybrid()
    );
    assert!(
        share >= 0.7,
        "only {share:.3} of recommendations match planted tastes"
    );
}

#[test]
fn explicit_history_and_options() {
    let s = sample_index();
    let e = content_engine(&s.root);
    let first = e.index().store().external_id(0).to_owned();
    let hist = vec![first.clone()];
    let recs = e
        .recommend(
            UserRef::History(&hist),
            &RecommendOptions {
                k: 5,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(recs.len(), 5);
    assert!(recs.iter().all(|r| r.id != first));
    let with_seen = e
        .recommend(
            UserRef::History(&hist),
            &RecommendOptions {
                k: 5,
                include_seen: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        with_seen[0].id, first,
        "the only history item is its own nearest neighbour"
    );

    let (cat, filter) = first_category(&e);
    let user = e.users().id(0).to_owned();
    let recs = e
        .recommend(
            UserRef::Id(&user),
            &RecommendOptions {
                k: 10,
                filter: Some(filter),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(recs.len(), 10);
    for r in &recs {
        assert!(e.item_meta(&r.id).unwrap().categories.contains(&cat));
    }

    let bad = vec!["no-such-item".to_owned()];
    assert!(matches!(
        e.recommend(UserRef::History(&bad), &RecommendOptions::default()),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        e.recommend(UserRef::Id("nobody"), &RecommendOptions::default()),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        e.recommend(
            UserRef::Id(&user),
            &RecommendOptions {
                k: 5000,
                ..Default::default()
            }
        ),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        e.search_text(&"x".repeat(9000), 5, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        e.embed(&vec!["a".to_owned(); 300]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn text_search_finds_the_right_category() {
    let s = sample_index();
    let e = engine(&s.root);
    let recs = e
        .search_text("a starship crew exploring a distant nebula", 10, None)
        .unwrap();
    let space = recs
        .iter()
        .filter(|r| {
            e.item_meta(&r.id)
                .unwrap()
                .categories
                .iter()
                .any(|c| c.to_lowercase().contains("space"))
        })
        .count();
    assert!(space >= 8, "only {space}/10 space items for a space query");
}

/// The engine computes the same profile on the fly as the build precomputed.
#[test]
fn precomputed_and_on_the_fly_profiles_agree() {
    let s = sample_index();
    let e = engine(&s.root);
    let u = 3;
    let user = e.users().id(u).to_owned();
    let hist: Vec<String> = e
        .users()
        .history(u)
        .iter()
        .map(|h| e.index().store().external_id(h.0).to_owned())
        .collect();
    // The sample's interactions carry weights, so compare with those ignored only
    // when they are all equal; otherwise compare the weighted path directly.
    let weights: Vec<f32> = e.users().history(u).iter().map(|h| h.1).collect();
    let pre = e.users().vector(u).unwrap().to_vec();
    let cfg = e.config().users.clone();
    let fly = vecrec::users::profile(e.index().store(), &e.users().history(u), &cfg).unwrap();
    let n: f32 = fly.iter().map(|x| x * x).sum::<f32>().sqrt();
    let d = pre
        .iter()
        .zip(&fly)
        .map(|(a, b)| (a - b / n).abs())
        .fold(0f32, f32::max);
    assert!(
        d < 1e-5,
        "precomputed and on-the-fly profiles differ by {d}"
    );
    if weights.iter().all(|w| *w == weights[0]) {
        let a = e
            .recommend(UserRef::Id(&user), &RecommendOptions::default())
            .unwrap();
        let b = e
            .recommend(UserRef::History(&hist), &RecommendOptions::default())
            .unwrap();
        assert_eq!(
            a.iter().map(|x| &x.id).collect::<Vec<_>>(),
            b.iter().map(|x| &x.id).collect::<Vec<_>>()
        );
    }
}

/// Every fusion method answers k unseen items; the sources run over the same
/// history; a filter holds on the hybrid path too.
#[test]
fn hybrid_pipeline_fuses_every_source() {
    use vecrec::engine::Source;
    use vecrec::fusion::FusionMethod;
    let s = sample_index();
    let e = engine(&s.root);
    let user = e.users().id(1).to_owned();
    let u = e.users().lookup(&user).unwrap();
    let seen: Vec<u32> = e.users().history(u).iter().map(|h| h.0).collect();
    let lists = e
        .source_lists(
            &e.users().history(u),
            None,
            &Source::ALL,
            &e.admit(|i| !seen.contains(&i)),
        )
        .unwrap();
    assert_eq!(lists.len(), Source::ALL.len());
    for l in &lists {
        assert!(!l.items.is_empty(), "{} gave no candidates", l.name);
        assert!(
            l.items.iter().all(|c| !seen.contains(&c.0)),
            "{} returned a seen item",
            l.name
        );
        assert!(
            l.items.windows(2).all(|w| w[0].1 >= w[1].1),
            "{} not sorted",
            l.name
        );
    }
    for m in FusionMethod::ALL.into_iter().chain([FusionMethod::Learned]) {
        let recs = e
            .recommend(
                UserRef::Id(&user),
                &RecommendOptions {
                    k: 10,
                    fusion: Some(m),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(recs.len(), 10, "{}", m.name());
        assert!(
            recs.iter().all(|r| !seen.contains(&r.internal)),
            "{}",
            m.name()
        );
        assert!(
            recs.windows(2).all(|w| w[0].score >= w[1].score),
            "{}",
            m.name()
        );
    }
    let (cat, filter) = first_category(&e);
    let recs = e
        .recommend(
            UserRef::Id(&user),
            &RecommendOptions {
                k: 10,
                filter: Some(filter),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!recs.is_empty());
    assert!(recs
        .iter()
        .all(|r| e.item_meta(&r.id).unwrap().categories.contains(&cat)));
}

/// The first item's first category, and a filter that keeps that category.
fn first_category(e: &vecrec::engine::Engine) -> (String, Filter) {
    let store = e.index().store();
    let cat = store.attributes(0).categories().next().unwrap().to_owned();
    let filter = Filter {
        categories_any: vec![cat.clone()],
        ..Default::default()
    };
    (cat, filter)
}
