//! In-process gRPC tests on 127.0.0.1:0 through the generated client.

use std::time::Duration;

use tokio::sync::oneshot;
use tonic::Code;
use vecrec::grpc::pb::recommender_client::RecommenderClient;
use vecrec::grpc::pb::{self, AttributeFilter};

use crate::common::{engine, sample_index};

async fn start() -> (
    RecommenderClient<tonic::transport::Channel>,
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let s = sample_index();
    let e = engine(&s.root);
    let slot = std::sync::Arc::new(vecrec::serving::EngineSlot::new(&s.root, e));
    let (listener, addr) = vecrec::grpc::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        vecrec::grpc::serve(slot, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let url = format!("http://{addr}");
    let mut tries = 0;
    let client = loop {
        match RecommenderClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect: {e}"),
        }
    };
    (client, url, tx, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_and_bad_input_gets_the_right_code() {
    let (mut c, url, stop, handle) = start().await;
    let e = engine(&sample_index().root);
    let user = e.users().id(0).to_owned();
    let item = e.index().store().external_id(5).to_owned();

    let r = c
        .recommend(pb::RecommendRequest {
            user_id: user.clone(),
            k: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 7);
    assert!(r.items.iter().all(|i| !i.title.is_empty()));

    let r = c
        .recommend(pb::RecommendRequest {
            history: vec![item.clone()],
            k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.items.iter().all(|i| i.item_id != item));

    let cat = e
        .index()
        .store()
        .attributes(5)
        .categories()
        .next()
        .unwrap()
        .to_owned();
    let r = c
        .similar_items(pb::SimilarItemsRequest {
            item_id: item.clone(),
            k: 5,
            filter: Some(AttributeFilter {
                categories_any: vec![cat.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 5);
    assert!(r.items.iter().all(|i| i.item_id != item));
    for i in &r.items {
        let got = c
            .get_item(pb::GetItemRequest {
                id: i.item_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.categories.contains(&cat));
    }

    let r = c
        .search_text(pb::SearchTextRequest {
            query: "jazz saxophone".into(),
            k: 4,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.items.len(), 4);

    let r = c
        .embed(pb::EmbedRequest {
            texts: vec!["a".into(), "b c".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.embeddings.len(), 2);
    assert_eq!(r.dim, 384);
    assert!(r.embeddings.iter().all(|v| v.values.len() == 384));

    let g = c
        .get_item(pb::GetItemRequest {
            id: item.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.id, item);
    assert!(!g.title.is_empty() && !g.text.is_empty());
    assert!(g.numeric.contains_key("year"));

    // Bad input.
    let err = c
        .get_item(pb::GetItemRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // This server was started without a write-ahead log.
    let err = c
        .delete_items(pb::DeleteItemsRequest {
            ids: vec![item.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = c
        .recommend(pb::RecommendRequest {
            user_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .recommend(pb::RecommendRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .recommend(pb::RecommendRequest {
            user_id: user.clone(),
            k: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{}", err.message());
    let err = c
        .search_text(pb::SearchTextRequest {
            query: "   ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .embed(pb::EmbedRequest {
            texts: vec!["x".repeat(10_000)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .embed(pb::EmbedRequest { texts: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .similar_items(pb::SimilarItemsRequest {
            item_id: item.clone(),
            k: 3,
            filter: Some(AttributeFilter {
                ranges: vec![pb::NumericRange {
                    field: "year".into(),
                    min: Some(2000.0),
                    max: Some(1990.0),
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Health.
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "vecrec.v1.Recommender".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Graceful shutdown: the server task ends once asked.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("server did not stop")
        .unwrap();
}

/// A rebuild published while a client keeps calling is swapped in with zero
/// failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_is_swapped_in_under_load() {
    let _alone = crate::common::heavy().await;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use vecrec::catalog::{read_catalog, read_interactions};
    use vecrec::config::Config;
    use vecrec::engine::Engine;
    use vecrec::pipeline::{build_generation, BuildOptions};

    let s = sample_index();
    let root = tempfile::tempdir().unwrap();
    let gen = vecrec_index::generation::current_generation(&s.root).unwrap();
    crate::cli::copy_dir(&gen, &root.path().join(gen.file_name().unwrap()));
    std::fs::copy(s.root.join("CURRENT"), root.path().join("CURRENT")).unwrap();

    let mut cfg = Config::default();
    cfg.server.reload_interval_ms = 50;
    let e = Arc::new(Engine::open(root.path(), cfg, None).unwrap());
    let first_dir = e.index().dir().to_owned();
    let user = e.users().id(0).to_owned();
    let items = read_catalog(&s.data.join("catalog.jsonl")).unwrap();
    let vectors: Vec<Vec<f32>> = items
        .iter()
        .map(|it| e.index().store().vector(e.item(&it.id).unwrap()).to_vec())
        .collect();
    let inter = read_interactions(&s.data.join("interactions.csv")).unwrap();
    let slot = Arc::new(vecrec::serving::EngineSlot::new(root.path(), e));
    let (listener, addr) = vecrec::grpc::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let served = slot.clone();
    let server = tokio::spawn(async move {
        vecrec::grpc::serve(served, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let mut client = loop {
        match RecommenderClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let first_failure = Arc::new(parking_lot::Mutex::new(None::<String>));
    let load = {
        let (stop, ok, failed, user) = (stop.clone(), ok.clone(), failed.clone(), user.clone());
        let first_failure = first_failure.clone();
        tokio::spawn(async move {
            // Bounded: at most 20,000 calls or until told to stop.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = pb::RecommendRequest {
                    user_id: user.clone(),
                    k: 5,
                    ..Default::default()
                };
                let why = match client.recommend(req).await {
                    Ok(r) if r.get_ref().items.len() == 5 => None,
                    Ok(r) => Some(format!("{} items", r.get_ref().items.len())),
                    Err(status) => Some(format!("{status:?}")),
                };
                match why {
                    None => ok.fetch_add(1, Ordering::Relaxed),
                    Some(why) => {
                        first_failure.lock().get_or_insert(why);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let root_path = root.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let opts = BuildOptions {
            progress: false,
            ..Default::default()
        };
        // A separate `vecrec-build` process in production: its own threads,
        // not the server's rayon pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            build_generation(
                &root_path,
                &items,
                &vectors,
                &inter,
                &opts,
                Default::default(),
            )
            .unwrap()
        });
    })
    .await
    .unwrap();
    let t = std::time::Instant::now();
    while slot.get().index().dir() == first_dir {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the new generation was not swapped in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("requests during the swap: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "first failure: {:?}", first_failure.lock());
    assert!(ok > 10, "too few requests ({ok}) to say anything");
    assert!(slot.get().index().dir().ends_with("gen-000002"));
    tx.send(()).unwrap();
    server.await.unwrap();
}
