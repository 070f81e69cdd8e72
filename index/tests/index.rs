//! Index-level tests: recall against ground truth, filters, reload, damage.

use vecrec_index::generation::GenerationWriter;
use vecrec_index::{
    exact, HnswParams, Index, IndexError, ItemMeta, Metric, Plan, SearchParams, StoreBuilder,
};

#[cfg(feature = "backends")]
fn shared() -> std::path::PathBuf {
    std::env::var_os("VECREC_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
        })
}

fn build(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    metas: impl Fn(usize) -> ItemMeta,
) -> (tempfile::TempDir, Index) {
    let mut sb = StoreBuilder::new(dim, metric).unwrap();
    for (i, v) in vectors.chunks_exact(dim).enumerate() {
        sb.add(&format!("id{i}"), v, metas(i)).unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let w = GenerationWriter::begin(root.path()).unwrap();
    vecrec_index::write_index(
        w.dir(),
        &sb,
        &HnswParams::default(),
        serde_json::Value::Null,
        &|_| {},
    )
    .unwrap();
    w.commit().unwrap();
    let idx = Index::open_current(root.path()).unwrap();
    (root, idx)
}

fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n * dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// The acceptance test of the default settings: recall@10 ≥ 0.95 on bigann10k
/// against the shipped exact ground truth (fixed seed, ef = 64).
/// Reads TEXMEX files, so it runs with the `backends` feature (as `make test` does).
#[cfg(feature = "backends")]
#[test]
fn default_hnsw_recall_on_bigann10k() {
    use vecrec_index::texmex;
    let dir = shared().join("datasets/ann-bigann10k");
    let (base, dim) = texmex::read_vectors(&dir.join("bigann10k_base.bvecs")).unwrap();
    let (queries, qdim) = texmex::read_vectors(&dir.join("bigann10k_query.bvecs")).unwrap();
    let (gt, gdim) = texmex::read_ivecs(&dir.join("bigann10k_groundtruth.ivecs")).unwrap();
    assert_eq!((dim, qdim), (128, 128));
    let (_root, idx) = build(&base, dim, Metric::L2, |_| ItemMeta::default());
    let params = SearchParams::default();
    let mut hits = 0;
    let nq = queries.len() / dim;
    for (qi, q) in queries.chunks_exact(dim).enumerate() {
        let (res, plan) = idx.search(q, &params, None).unwrap();
        assert_eq!(plan, Plan::Hnsw);
        let truth = &gt[qi * gdim..qi * gdim + 10];
        hits += res
            .iter()
            .filter(|n| truth.contains(&(n.id as i32)))
            .count();
    }
    let recall = hits as f64 / (nq * 10) as f64;
    eprintln!("bigann10k recall@10 (M=16, ef_c=200, ef=64): {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall:.4} < 0.95");
}

/// HNSW agrees with the exact oracle on random cosine data within a stated
/// tolerance: average recall@10 ≥ 0.9 over 100 queries at ef = 128.
#[test]
fn hnsw_matches_exact_on_random_cosine() {
    let dim = 32;
    let data = random_vectors(3000, dim, 7);
    let (_root, idx) = build(&data, dim, Metric::Cosine, |_| ItemMeta::default());
    let queries = random_vectors(100, dim, 8);
    let params = SearchParams {
        k: 10,
        ef: 128,
        exact: false,
    };
    let mut hits = 0;
    for q in queries.chunks_exact(dim) {
        let (got, _) = idx.search(q, &params, None).unwrap();
        let (want, plan) = idx
            .search(
                q,
                &SearchParams {
                    exact: true,
                    ..params
                },
                None,
            )
            .unwrap();
        assert_eq!(plan, Plan::Exact);
        hits += got
            .iter()
            .filter(|g| want.iter().any(|w| w.id == g.id))
            .count();
        // Scores are ordered and consistent with the metric.
        assert!(got.windows(2).all(|w| w[0].distance <= w[1].distance));
    }
    let recall = hits as f64 / 1000.0;
    assert!(recall >= 0.9, "recall {recall}");
}

/// `search_in` answers as `search` with the filter its set stands for,
/// to every id and distance bit and with the same plan: on the graph, on
/// the f32 exact scan and on the bounded scan over the row codes; a set
/// with rows past the store's end answers as one without them.
#[test]
fn a_row_set_answers_as_its_filter_on_every_plan() {
    let dim = 16;
    let n = 12_000;
    let data = random_vectors(n, dim, 11);
    let (_root, idx) = build(&data, dim, Metric::Cosine, |_| ItemMeta::default());
    let bits = |v: &[vecrec_index::Neighbor]| -> Vec<(u32, u32)> {
        v.iter().map(|x| (x.id, x.distance.to_bits())).collect()
    };
    let params = |exact| SearchParams {
        k: 20,
        ef: 64,
        exact,
    };
    for codes in [false, true] {
        if codes {
            idx.store().build_row_codes();
        }
        for (filter, want_plan) in [(100, Plan::Exact), (2, Plan::Hnsw)] {
            let accept = |i: u32| i % filter == 7 % filter;
            let rows = vecrec_index::RowSet::from_fn(n, accept);
            for q in data.chunks_exact(dim).step_by(997).take(6) {
                let (want, plan) = idx.search(q, &params(false), Some(&accept)).unwrap();
                let (got, got_plan) = idx.search_in(q, &params(false), &rows).unwrap();
                assert_eq!((plan, got_plan), (want_plan, want_plan));
                assert_eq!(bits(&got), bits(&want), "1 in {filter}, codes {codes}");
            }
        }
        let past = vecrec_index::RowSet::full(n + 70);
        let q = &data[..dim];
        let (want, _) = idx.search(q, &params(true), None).unwrap();
        let (got, plan) = idx.search_in(q, &params(true), &past).unwrap();
        assert_eq!(plan, Plan::Exact);
        assert_eq!(bits(&got), bits(&want), "codes {codes}");
    }
}

#[test]
fn filters_are_honoured_by_both_plans() {
    // Large enough that a 50% filter is cheaper through the graph
    // (p² > 2·ef·M·n), small enough to build in a moment.
    let dim = 16;
    let data = random_vectors(12_000, dim, 9);
    let cat = |i: usize| {
        if i.is_multiple_of(100) {
            "rare"
        } else if i.is_multiple_of(2) {
            "even"
        } else {
            "odd"
        }
    };
    let (_root, idx) = build(&data, dim, Metric::Cosine, |i| ItemMeta {
        categories: vec![cat(i).to_owned()],
        ..Default::default()
    });
    let store = idx.store();
    let q = &data[..dim];
    for (wanted, want_plan) in [("rare", Plan::Exact), ("odd", Plan::Hnsw)] {
        let accept = |i: u32| store.attributes(i).categories().next() == Some(wanted);
        let (res, plan) = idx
            .search(
                q,
                &SearchParams {
                    k: 20,
                    ef: 64,
                    exact: false,
                },
                Some(&accept),
            )
            .unwrap();
        assert_eq!(plan, want_plan, "{wanted}");
        assert_eq!(res.len(), 20);
        assert!(
            res.iter().all(|n| accept(n.id)),
            "{wanted}: filter violated"
        );
        let oracle = exact::search(
            store.vectors(),
            dim,
            Metric::Cosine,
            &idx.prepare_query(q).unwrap(),
            20,
            Some(&accept),
        );
        let overlap = res
            .iter()
            .filter(|r| oracle.iter().any(|o| o.id == r.id))
            .count();
        assert!(
            overlap >= 18,
            "{wanted}: overlap {overlap}/20 with the exact filtered answer"
        );
    }
}

#[test]
fn reload_gives_identical_answers_and_ids() {
    let dim = 8;
    let data = random_vectors(500, dim, 3);
    let (root, idx) = build(&data, dim, Metric::L2, |i| ItemMeta {
        title: format!("t{i}"),
        ..Default::default()
    });
    let (a, _) = idx
        .search(&data[..dim], &SearchParams::default(), None)
        .unwrap();
    drop(idx);
    let idx = Index::open_current(root.path()).unwrap();
    let (b, _) = idx
        .search(&data[..dim], &SearchParams::default(), None)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].id, 0);
    assert_eq!(idx.store().external_id(7), "id7");
    assert_eq!(idx.store().internal_id("id7"), Some(7));
    assert_eq!(idx.store().item(7).title, "t7");
    assert!(matches!(
        idx.search(&[0.0; 3], &SearchParams::default(), None),
        Err(IndexError::DimensionMismatch {
            expected: 8,
            got: 3
        })
    ));
}

/// Every truncation point and a bit flip in every region of every file gives
/// a clear error on open, never a panic.
#[test]
fn damaged_files_are_refused() {
    let dim = 8;
    let data = random_vectors(300, dim, 4);
    let (root, idx) = build(&data, dim, Metric::Cosine, |_| ItemMeta::default());
    let gen = idx.dir().to_owned();
    drop(idx);
    for name in [
        "vectors.bin",
        "ids.bin",
        "items.bin",
        "hnsw.bin",
        "manifest.bin",
    ] {
        let p = gen.join(name);
        let good = std::fs::read(&p).unwrap();
        let step = (good.len() / 97).max(1);
        for cut in (0..good.len()).step_by(step) {
            std::fs::write(&p, &good[..cut]).unwrap();
            let err = Index::open_current(root.path()).unwrap_err();
            assert!(err.is_data_loss(), "{name} cut at {cut}: {err}");
        }
        for pos in (0..good.len()).step_by(step) {
            let mut bad = good.clone();
            bad[pos] ^= 0x10;
            std::fs::write(&p, &bad).unwrap();
            let err = Index::open_current(root.path()).unwrap_err();
            assert!(err.is_data_loss(), "{name} flip at {pos}: {err}");
        }
        std::fs::write(&p, &good).unwrap();
    }
    Index::open_current(root.path()).expect("restored files open again");
}

/// A lazy open checks headers and sizes at once and everything else in the
/// background: a bit flip in any payload is found by that check, and the
/// index then refuses to search (data loss) instead of answering.
#[test]
fn lazy_open_finds_damage_in_the_background() {
    let dim = 8;
    let data = random_vectors(300, dim, 5);
    let (_root, idx) = build(&data, dim, Metric::Cosine, |_| ItemMeta::default());
    let gen = idx.dir().to_owned();
    drop(idx);
    let params = SearchParams::default();
    let lazy = Index::open_lazy(&gen).unwrap();
    lazy.wait_verified().expect("pristine files verify");
    assert_eq!(
        lazy.search(&data[..dim], &params, None).unwrap().0.len(),
        10
    );
    drop(lazy);
    for name in ["vectors.bin", "ids.bin", "items.bin", "hnsw.bin"] {
        let p = gen.join(name);
        let good = std::fs::read(&p).unwrap();
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        std::fs::write(&p, &bad).unwrap();
        let lazy = Index::open_lazy(&gen).expect("headers are intact");
        let err = lazy.wait_verified().unwrap_err();
        assert!(err.is_data_loss(), "{name}: {err}");
        let err = lazy.search(&data[..dim], &params, None).unwrap_err();
        assert!(err.is_data_loss(), "{name}: {err}");
        std::fs::write(&p, &good).unwrap();
    }
}

#[test]
fn bad_input_is_refused_at_build() {
    let mut sb = StoreBuilder::new(4, Metric::Cosine).unwrap();
    sb.add("a", &[1.0, 0.0, 0.0, 0.0], ItemMeta::default())
        .unwrap();
    assert!(matches!(
        sb.add("a", &[1.0, 0.0, 0.0, 0.0], ItemMeta::default()),
        Err(IndexError::DuplicateId(_))
    ));
    assert!(matches!(
        sb.add("b", &[1.0; 3], ItemMeta::default()),
        Err(IndexError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        sb.add("c", &[0.0; 4], ItemMeta::default()),
        Err(IndexError::InvalidVector { .. })
    ));
    assert!(matches!(
        sb.add("d", &[f32::NAN, 0.0, 0.0, 0.0], ItemMeta::default()),
        Err(IndexError::InvalidVector { .. })
    ));
    assert_eq!(sb.len(), 1);
    assert!(StoreBuilder::new(0, Metric::L2).is_err());
}
