//! Load shedding and connection limits: past `VRA_MAX_IN_FLIGHT`
//! calls — or a client's `max_in_flight` — a call gets RESOURCE_EXHAUSTED at once, before any
//! upstream work, and every place comes back when its call ends; `VRA_MAX_CONCURRENT_STREAMS`
//! bounds the calls one connection has open; `VRA_STREAM_MAX_MS` ends a stream that runs too
//! long and drops its upstream.

mod common;

use std::time::Duration;

use common::clients::{TestClient, write_clients_file};
use common::{Harness, request};
use tonic::Code;
use vra_gateway::demo::sim::Step;
use vra_gateway::pb::{self, CompilationPhase as P, SectionType as S};

/// An upstream answer that starts and then holds its body open (until the gateway drops it,
/// which the simulator counts as closed).
fn held() -> Step {
    Step::Raw {
        chunks: vec![b"{".to_vec(), b"}".to_vec()],
        chunk_delay: Duration::from_secs(3600),
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// EXPAND goes to the local secondary.
fn expand(report: &str) -> pb::GenerateRequest {
    request(report, P::Expand, S::Analysis)
}

#[tokio::test]
async fn calls_past_the_global_limit_are_shed_at_once_and_places_come_back() {
    let h = Harness::start(&[("VRA_MAX_IN_FLIGHT", "2")]).await;
    h.local.push(held());
    h.local.push(held());
    let mut calls = Vec::new();
    for i in 0..2 {
        let mut client = h.client().await;
        calls.push(tokio::spawn(async move {
            client.generate(expand(&format!("held-{i}"))).await
        }));
    }
    assert!(
        h.local.wait_requests(2, WAIT).await,
        "both calls reached the upstream"
    );

    let err = h.client.clone().generate(expand("shed")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("gateway overloaded"),
        "{}",
        err.message()
    );
    assert_eq!(h.local.requests(), 2, "the shed call did no upstream work");

    // The held calls end (their callers go away): their places come back.
    for call in calls {
        call.abort();
    }
    assert!(
        h.local.wait_closed(2, WAIT).await,
        "the held upstream requests were dropped"
    );
    for i in 0..2 {
        h.client
            .clone()
            .generate(expand(&format!("after-{i}")))
            .await
            .expect("served once places are free");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_client_past_its_own_max_in_flight_is_shed_while_others_are_served() {
    // `busy` may have one call in flight.
    let a = TestClient::new("busy", "vra_overload-test-token-a-61fe").max_in_flight(1);
    let b = TestClient::new("calm", "vra_overload-test-token-b-0c3a");
    let file = write_clients_file(&[a, b]);
    let h = Harness::start(&[("VRA_CLIENTS_FILE", file.to_str().unwrap())]).await;
    h.local.push(held());
    let mut client = h.client().await;
    let first = tokio::spawn(async move { client.generate(a.call(expand("a-1"))).await });
    assert!(h.local.wait_requests(1, WAIT).await);

    let err = h
        .client
        .clone()
        .generate(a.call(expand("a-2")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("this client"), "{}", err.message());
    h.client
        .clone()
        .generate(b.call(expand("b-1")))
        .await
        .expect("another client is served");
    assert_eq!(h.local.requests(), 2);

    first.abort();
    assert!(h.local.wait_closed(1, WAIT).await);
    h.client
        .clone()
        .generate(a.call(expand("a-3")))
        .await
        .expect("busy's place came back");
    h.shutdown().await;
}

#[tokio::test]
async fn one_connection_has_at_most_max_concurrent_streams_calls_open() {
    let h = Harness::start(&[("VRA_MAX_CONCURRENT_STREAMS", "1")]).await;
    h.local.push(held());
    // Both calls share one connection (one channel).
    let mut one = h.client().await;
    let mut two = one.clone();
    let first = tokio::spawn(async move { one.generate(expand("first")).await });
    assert!(h.local.wait_requests(1, WAIT).await);
    let second = tokio::spawn(async move { two.generate(expand("second")).await });
    // The server allows one stream per connection: the second call cannot start while the
    // first is open. (Proving an absence needs a bounded wait.)
    assert!(
        !h.local.wait_requests(2, Duration::from_millis(500)).await,
        "a second stream was opened on the connection"
    );
    first.abort();
    let second = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second call ran once the first ended")
        .unwrap();
    second.expect("the second call is served");
    assert_eq!(h.local.requests(), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn a_stream_longer_than_vra_stream_max_ms_ends_with_deadline_exceeded() {
    let h = Harness::start(&[("VRA_STREAM_MAX_MS", "300")]).await;
    h.local.push(Step::StreamThenHang {
        text: "one two three four".into(),
        deltas: 1,
    });
    let req = pb::GenerateStreamRequest::from(expand("long"));
    let mut stream = h
        .client
        .clone()
        .generate_stream(req)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("the first delta");
    assert!(!first.delta.is_empty());
    let end = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the stream ended within its maximum, not the test's timeout");
    let err = end.expect_err("a status, not more text");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        h.local.wait_closed(1, WAIT).await,
        "the upstream stream was dropped"
    );
    h.shutdown().await;
}
