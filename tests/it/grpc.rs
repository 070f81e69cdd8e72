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
    let (listener, addr) = vecrec::grpc::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        vecrec::grpc::serve(e, listener, async {
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

    let cat = e.index().store().meta(5).categories[0].clone();
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
        .get_item(pb::GetItemRequest { id: item.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.id, item);
    assert!(!g.title.is_empty() && !g.text.is_empty());
    assert!(g.numeric.contains_key("year"));

    // Bad input.
    let err = c
        .get_item(pb::GetItemRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
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
