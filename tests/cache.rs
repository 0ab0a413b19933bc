//! The response cache (`VRA_CACHE=memory`), end to end over gRPC: a rebuilt report is answered
//! from the cache and spends nothing; answers are never shared across clients, never served
//! from a fallback for a primary call, never for a different model, phase or option; streams
//! replay hits; identical concurrent calls send one upstream request; the per-call modes and
//! `max_age_secs`; entries expire. Each test runs on both stores: `memory::…` and
//! `redis::…` (a real `redis-server` started by the test), and the Redis store also serves
//! replicas together and never makes a call fail while Redis is down.
//!
//! A libtest-mimic target (`harness = false`): without `redis-server` on PATH the `redis::`
//! trials are reported as *ignored*, unless `VRA_REQUIRE_REDIS=1` (set by `.ci/run`).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::clients::{TestClient, write_clients_file};
use common::redis_server::{self, RedisServer};
use common::trials::{Gate, Runtime, async_trial};
use common::{Harness, Replica, collect_stream, connect, request, tier, usage};
use libtest_mimic::Arguments;
use tonic::Code;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{
    self, CacheMode, CacheStatus, CompilationPhase as P, ProviderTier as T, SectionType as S,
};

type Test = fn(Store) -> Pin<Box<dyn Future<Output = ()>>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|store| Box::pin($name(store))) as Test)),*]
    };
}

fn main() {
    let args = Arguments::from_args();
    let redis = redis_server::gate();
    let both = tests![
        a_rebuilt_report_is_answered_from_the_cache_and_spends_nothing,
        two_clients_never_share_an_answer,
        a_fallback_answer_is_never_served_for_a_primary_call,
        a_different_model_phase_or_option_misses,
        a_streamed_hit_replays_the_text_and_usage,
        identical_concurrent_calls_send_one_upstream_request,
        followers_of_a_call_that_stored_nothing_go_upstream_side_by_side,
        the_per_call_modes_decide_lookup_and_store,
        an_entry_expires_after_its_ttl,
        a_purge_drops_one_clients_answers_or_all_and_needs_an_admin,
    ];
    let mut trials = Vec::new();
    for (name, test) in both {
        trials.push(async_trial(
            &args,
            &format!("memory::{name}"),
            &Gate::Open,
            Runtime::MultiThread(2),
            move || test(Store::Memory),
        ));
        trials.push(async_trial(
            &args,
            &format!("redis::{name}"),
            &redis,
            Runtime::MultiThread(2),
            move || async move { test(Store::redis().await).await },
        ));
    }
    trials.push(async_trial(
        &args,
        "without_a_cache_nothing_changes",
        &Gate::Open,
        Runtime::MultiThread(2),
        without_a_cache_nothing_changes,
    ));
    trials.push(async_trial(
        &args,
        "redis::replicas_share_the_cache",
        &redis,
        Runtime::MultiThread(2),
        replicas_share_the_cache,
    ));
    trials.push(async_trial(
        &args,
        "redis::calls_go_on_while_redis_is_down",
        &redis,
        Runtime::MultiThread(2),
        calls_go_on_while_redis_is_down,
    ));
    libtest_mimic::run(&args, trials).exit();
}

/// The store a test runs on (a Redis store keeps its server alive).
enum Store {
    Memory,
    Redis(Box<RedisServer>),
}

impl Store {
    async fn redis() -> Store {
        Store::Redis(Box::new(RedisServer::start().await))
    }

    /// A gateway with this store and `settings`.
    async fn harness(&self, settings: &[(&str, &str)]) -> Harness {
        let url = match self {
            Store::Memory => String::new(),
            Store::Redis(server) => server.url(),
        };
        let mut all = match self {
            Store::Memory => vec![("VRA_CACHE", "memory")],
            Store::Redis(_) => vec![("VRA_CACHE", "redis"), ("VRA_LEDGER_URL", url.as_str())],
        };
        all.extend_from_slice(settings);
        Harness::start(&all).await
    }
}

fn status(resp: &pb::GenerateResponse) -> CacheStatus {
    CacheStatus::try_from(resp.cache_status).expect("a cache status")
}

/// A call of `report` with `prompt`, in `phase` / `section`.
fn call(report: &str, phase: P, section: S, prompt: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: prompt.into(),
        ..request(report, phase, section)
    }
}

fn with_options(
    mut req: pb::GenerateRequest,
    options: pb::GenerationOptions,
) -> pb::GenerateRequest {
    req.options = Some(options);
    req
}

fn mode(mode: CacheMode) -> pb::GenerationOptions {
    pb::GenerationOptions {
        cache: mode as i32,
        ..Default::default()
    }
}

async fn a_rebuilt_report_is_answered_from_the_cache_and_spends_nothing(store: Store) {
    let h = store.harness(&[]).await;
    let mut c = h.client.clone();
    // One report's calls: a cloud DRAFT, a local EXPAND, a cloud REFINE.
    let calls = [
        (P::Draft, S::Introduction, "Outline the introduction."),
        (P::Expand, S::Introduction, "Expand the introduction."),
        (P::Refine, S::Introduction, "Polish the introduction."),
    ];
    let mut first = Vec::new();
    for (phase, section, prompt) in calls {
        let resp = c
            .generate(call("build-1", phase, section, prompt))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status(&resp), CacheStatus::Miss);
        assert!(!resp.usage.as_ref().unwrap().cached);
        first.push(resp);
    }
    let sent = (h.cloud.requests(), h.local.requests());
    assert_eq!(sent, (2, 1));

    for ((phase, section, prompt), before) in calls.into_iter().zip(&first) {
        let resp = c
            .generate(call("build-2", phase, section, prompt))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status(&resp), CacheStatus::Hit, "{phase:?}");
        assert_eq!(resp.text, before.text);
        assert_eq!(resp.finish_reason, before.finish_reason);
        assert_eq!(tier(&resp), tier(before), "the same tier's answer");
        let (u, b) = (resp.usage.unwrap(), before.usage.unwrap());
        assert!(u.cached, "usage of a hit says so");
        assert_eq!(
            (u.input_tokens, u.output_tokens),
            (b.input_tokens, b.output_tokens)
        );
        assert_eq!(resp.cost_usd, Some(0.0), "a hit costs nothing");
        assert_eq!(resp.attempts, 0);
        assert_eq!(resp.budget.unwrap().cloud_calls_used, 0, "no unit taken");
    }
    assert_eq!(
        (h.cloud.requests(), h.local.requests()),
        sent,
        "nothing sent upstream"
    );

    let rebuilt = usage(h.addr, "build-2").await;
    assert_eq!(rebuilt.cached_calls, 3);
    assert_eq!((rebuilt.primary_calls, rebuilt.secondary_calls), (0, 0));
    let budget = rebuilt.budget.unwrap();
    assert_eq!(budget.cloud_calls_used, 0);
    assert_eq!(budget.cloud_cost_used_usd, 0.0);
    let cloud = rebuilt.cloud_usage.unwrap();
    assert_eq!(
        (cloud.input_tokens, cloud.output_tokens),
        (0, 0),
        "token sums never count a hit"
    );
    let original = usage(h.addr, "build-1").await;
    let paid = original.cost.unwrap().total_usd;
    assert!(paid > 0.0);
    assert!(
        (rebuilt.cache_saved_usd - paid).abs() < 1e-9,
        "saved {} = what the first build paid {paid}",
        rebuilt.cache_saved_usd
    );
    let draft = rebuilt
        .phases
        .iter()
        .find(|p| p.phase == P::Draft as i32)
        .expect("the DRAFT cell");
    assert_eq!((draft.calls, draft.cached_calls), (0, 1));
    assert!(draft.cache_saved_usd > 0.0);
    if let Store::Redis(server) = &store {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("vra:cache:*")
            .query_async(&mut server.client().await)
            .await
            .unwrap();
        assert_eq!(keys.len(), 3, "one entry per answer, in Redis: {keys:?}");
    }
    h.shutdown().await;
}

async fn two_clients_never_share_an_answer(store: Store) {
    let (alice, bob) = (
        TestClient::new("alice", "vra_alice_token_0123456789abcdef"),
        TestClient::new("bob", "vra_bob_token_0123456789abcdef000"),
    );
    let file = write_clients_file(&[alice, bob]);
    let h = store
        .harness(&[("VRA_CLIENTS_FILE", file.to_str().unwrap())])
        .await;
    let mut c = h.client.clone();
    let same = || call("shared-id", P::Draft, S::Analysis, "The same prompt.");
    let a = c.generate(alice.call(same())).await.unwrap().into_inner();
    let b = c.generate(bob.call(same())).await.unwrap().into_inner();
    assert_eq!(
        (status(&a), status(&b)),
        (CacheStatus::Miss, CacheStatus::Miss)
    );
    assert_eq!(h.cloud.requests(), 2, "each client's call went upstream");
    let again = c.generate(alice.call(same())).await.unwrap().into_inner();
    assert_eq!(
        status(&again),
        CacheStatus::Hit,
        "within one client it hits"
    );
    h.shutdown().await;
}

async fn a_fallback_answer_is_never_served_for_a_primary_call(store: Store) {
    let h = store.harness(&[("VRA_RETRY_MAX_ATTEMPTS", "1")]).await;
    let mut c = h.client.clone();
    h.cloud.push(Step::fail(500));
    h.local.push(Step::reply("local fallback answer"));
    let prompt = "Refine this.";
    let fell_back = c
        .generate(call("fb-1", P::Refine, S::Analysis, prompt))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(&fell_back), T::Secondary);
    assert_eq!(fell_back.text, "local fallback answer");

    h.cloud.push(Step::reply("cloud answer"));
    let primary = c
        .generate(call("fb-2", P::Refine, S::Analysis, prompt))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&primary), CacheStatus::Miss);
    assert_eq!(tier(&primary), T::Primary);
    assert_eq!(primary.text, "cloud answer");

    // Once the primary answered, its answer is the one served.
    let again = c
        .generate(call("fb-3", P::Refine, S::Analysis, prompt))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&again), CacheStatus::Hit);
    assert_eq!(tier(&again), T::Primary);
    assert_eq!(again.text, "cloud answer");
    h.shutdown().await;
}

async fn a_different_model_phase_or_option_misses(store: Store) {
    let h = store.harness(&[]).await;
    let mut c = h.client.clone();
    let base = || call("opt-1", P::Draft, S::Analysis, "Draft the analysis.");
    let first = c.generate(base()).await.unwrap().into_inner();
    assert_eq!(status(&first), CacheStatus::Miss);
    let variants = [
        with_options(
            base(),
            pb::GenerationOptions {
                temperature: Some(0.3),
                ..Default::default()
            },
        ),
        with_options(
            base(),
            pb::GenerationOptions {
                max_tokens: Some(100),
                ..Default::default()
            },
        ),
        with_options(
            base(),
            pb::GenerationOptions {
                seed: Some(7),
                ..Default::default()
            },
        ),
        // The same prompt in another phase served by the same (primary) model.
        call("opt-1", P::Refine, S::Analysis, "Draft the analysis."),
        // Another section type whose DRAFT goes to the secondary: another model.
        call("opt-1", P::Draft, S::Implementation, "Draft the analysis."),
    ];
    for (i, variant) in variants.into_iter().enumerate() {
        let resp = c.generate(variant).await.unwrap().into_inner();
        assert_eq!(status(&resp), CacheStatus::Miss, "variant {i}");
    }
    assert_eq!(h.cloud.requests() + h.local.requests(), 6);
    let same = c.generate(base()).await.unwrap().into_inner();
    assert_eq!(
        status(&same),
        CacheStatus::Hit,
        "the report and section ids are not keyed"
    );
    h.shutdown().await;
}

async fn a_streamed_hit_replays_the_text_and_usage(store: Store) {
    let h = store.harness(&[]).await;
    let mut c = h.client.clone();
    h.cloud.push(Step::reply("one two three four five six"));
    let req = || call("st-1", P::Refine, S::Conclusion, "Stream the conclusion.");
    let stream_req = || pb::GenerateStreamRequest {
        report_id: "st-2".into(),
        section_id: "1".into(),
        section_type: S::Conclusion as i32,
        phase: P::Refine as i32,
        prompt: "Stream the conclusion.".into(),
        system_prompt: "You are terse.".into(),
        ..Default::default()
    };
    // A streamed miss is stored once it finished...
    let (deltas, done, error) =
        collect_stream(c.generate_stream(stream_req()).await.unwrap().into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    let done = done.expect("a final message");
    assert_eq!(status(&done), CacheStatus::Miss);
    let text = deltas.concat();
    assert_eq!(text, "one two three four five six");
    // ...so a unary call is a hit with the same text and usage...
    let unary = c.generate(req()).await.unwrap().into_inner();
    assert_eq!(status(&unary), CacheStatus::Hit);
    assert_eq!(unary.text, text);
    let (u, d) = (unary.usage.unwrap(), done.usage.unwrap());
    assert_eq!(
        (u.input_tokens, u.output_tokens),
        (d.input_tokens, d.output_tokens)
    );
    // ...and so is a stream: the text as deltas, the same final message.
    let (deltas, again, error) =
        collect_stream(c.generate_stream(stream_req()).await.unwrap().into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    let again = again.expect("a final message");
    assert_eq!(deltas.concat(), text);
    assert_eq!(status(&again), CacheStatus::Hit);
    let usage = again.usage.unwrap();
    assert!(usage.cached);
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (d.input_tokens, d.output_tokens)
    );
    assert_eq!(h.cloud.requests(), 1, "only the first stream went upstream");
    h.shutdown().await;
}

async fn identical_concurrent_calls_send_one_upstream_request(store: Store) {
    let h = store.harness(&[]).await;
    h.cloud.set_default(Step::Reply {
        text: "shared".into(),
        delay: Duration::from_millis(300),
        chunk_delay: Duration::ZERO,
    });
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut c = h.client().await;
        calls.push(tokio::spawn(async move {
            c.generate(call(&format!("burst-{i}"), P::Refine, S::Analysis, "Same."))
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut statuses = Vec::new();
    for task in calls {
        let resp = task.await.unwrap().expect("answered");
        assert_eq!(resp.text, "shared");
        statuses.push(status(&resp));
    }
    assert_eq!(
        h.cloud.requests(),
        1,
        "one upstream request for twenty calls"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
        1
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Hit).count(),
        19
    );
    h.shutdown().await;
}

async fn the_per_call_modes_decide_lookup_and_store(store: Store) {
    let h = store.harness(&[]).await;
    let mut c = h.client.clone();
    let req = |prompt: &str, m: CacheMode| {
        with_options(call("modes", P::Refine, S::Analysis, prompt), mode(m))
    };

    // ONLY_IF_CACHED on a miss: NOT_FOUND, nothing sent.
    let err = c
        .generate(req("absent", CacheMode::OnlyIfCached))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.metadata().get("vra-error").unwrap(), "not_cached");
    assert_eq!(h.cloud.requests(), 0, "nothing sent upstream");

    // NO_STORE: neither looked up nor stored.
    let r = c
        .generate(req("a", CacheMode::NoStore))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&r), CacheStatus::Bypass);
    assert_eq!(
        c.generate(req("a", CacheMode::OnlyIfCached))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "NO_STORE stored nothing"
    );

    // NO_CACHE: not looked up (goes upstream although cached), but stored.
    let stored = c
        .generate(req("b", CacheMode::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&stored), CacheStatus::Miss);
    let before = h.cloud.requests();
    h.cloud.push(Step::reply("fresher"));
    let fresh = c
        .generate(req("b", CacheMode::NoCache))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&fresh), CacheStatus::Bypass);
    assert_eq!(h.cloud.requests(), before + 1);
    let hit = c
        .generate(req("b", CacheMode::OnlyIfCached))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&hit), CacheStatus::Hit);
    assert_eq!(hit.text, "fresher", "NO_CACHE stored its answer");

    // max_age_secs 0: never a cached answer.
    let zero = with_options(
        call("modes", P::Refine, S::Analysis, "b"),
        pb::GenerationOptions {
            max_age_secs: Some(0),
            ..Default::default()
        },
    );
    let r = c.generate(zero).await.unwrap().into_inner();
    assert_eq!(status(&r), CacheStatus::Bypass);

    // An unknown mode is refused, naming the field.
    let err = c
        .generate(with_options(
            call("modes", P::Refine, S::Analysis, "b"),
            pb::GenerationOptions {
                cache: 99,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.metadata().get("vra-error-field").unwrap(),
        "options.cache"
    );
    h.shutdown().await;
}

async fn without_a_cache_nothing_changes() {
    let h = Harness::start(&[]).await;
    let mut c = h.client.clone();
    for _ in 0..2 {
        let resp = c
            .generate(call("off", P::Refine, S::Analysis, "Same."))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status(&resp), CacheStatus::Unspecified);
        assert!(!resp.usage.unwrap().cached);
    }
    assert_eq!(h.cloud.requests(), 2);
    let err = c
        .generate(with_options(
            call("off", P::Refine, S::Analysis, "Same."),
            mode(CacheMode::OnlyIfCached),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "no cache holds no answer");
    h.shutdown().await;
}

/// Entries live `VRA_CACHE_TTL_SECS` (moka's clock cannot be paused: the test polls, bounded).
async fn an_entry_expires_after_its_ttl(store: Store) {
    let h = store.harness(&[("VRA_CACHE_TTL_SECS", "1")]).await;
    let mut c = h.client.clone();
    let req = |m| with_options(call("ttl", P::Refine, S::Analysis, "Expiring."), mode(m));
    c.generate(req(CacheMode::Unspecified)).await.unwrap();
    let stored = Instant::now();
    let hit = c
        .generate(req(CacheMode::OnlyIfCached))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&hit), CacheStatus::Hit);
    loop {
        match c.generate(req(CacheMode::OnlyIfCached)).await {
            Ok(_) => {
                assert!(
                    stored.elapsed() < Duration::from_secs(10),
                    "the entry outlived its TTL"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound);
                assert!(
                    stored.elapsed() >= Duration::from_millis(900),
                    "expired before its TTL"
                );
                break;
            }
        }
    }
    h.shutdown().await;
}

/// Two replicas on one Redis store: an answer one stored is the other's hit.
async fn replicas_share_the_cache() {
    let redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = redis.url();
    let settings = [("VRA_CACHE", "redis"), ("VRA_LEDGER_URL", url.as_str())];
    let replicas = Replica::start_n(2, &cloud, &local, &settings).await;
    let req = || {
        call(
            "shared-1",
            P::Refine,
            S::Analysis,
            "Shared between replicas.",
        )
    };
    let first = connect(replicas[0].addr)
        .await
        .generate(req())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&first), CacheStatus::Miss);
    // The store is written after the answer: poll the other replica, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let hit = loop {
        let other = connect(replicas[1].addr)
            .await
            .generate(with_options(req(), mode(CacheMode::OnlyIfCached)))
            .await;
        match other {
            Ok(resp) => break resp.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound);
                assert!(Instant::now() < deadline, "never stored");
                tokio::task::yield_now().await;
            }
        }
    };
    assert_eq!(status(&hit), CacheStatus::Hit);
    assert_eq!(hit.text, first.text);
    assert_eq!(cloud.requests(), 1);
    for r in replicas {
        r.shutdown().await;
    }
}

/// Redis stopped: the cache is skipped (BYPASS) and the calls are answered; back, it serves.
async fn calls_go_on_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::start(&[
        ("VRA_CACHE", "redis"),
        ("VRA_LEDGER_URL", url.as_str()),
        ("VRA_LEDGER_TIMEOUT_MS", "300"),
    ])
    .await;
    let mut c = h.client.clone();
    redis.stop().await;
    for i in 0..3 {
        let resp = c
            .generate(call(
                &format!("down-{i}"),
                P::Expand,
                S::Analysis,
                "Local work.",
            ))
            .await
            .expect("the cache never makes a call fail")
            .into_inner();
        assert_eq!(status(&resp), CacheStatus::Bypass);
    }
    assert_eq!(h.local.requests(), 3);
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = c
            .generate(call("up", P::Expand, S::Analysis, "Local work."))
            .await
            .unwrap()
            .into_inner();
        if status(&resp) == CacheStatus::Hit {
            break;
        }
        assert!(Instant::now() < deadline, "the cache never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown().await;
}

/// `PurgeCache` (and `vra-gateway cache purge`, which calls it): an admin client drops one
/// client's answers or all; any other client is refused; without a cache it is an error.
async fn a_purge_drops_one_clients_answers_or_all_and_needs_an_admin(store: Store) {
    let (admin, bob) = (
        TestClient::new("ops", "vra_ops_token_0123456789abcdef0000").admin(),
        TestClient::new("bob", "vra_bob_token_0123456789abcdef000"),
    );
    let file = write_clients_file(&[admin, bob]);
    let h = store
        .harness(&[("VRA_CLIENTS_FILE", file.to_str().unwrap())])
        .await;
    let mut c = h.client.clone();
    let req = |m| {
        with_options(
            call("purge", P::Refine, S::Analysis, "Kept until purged."),
            mode(m),
        )
    };
    for who in [admin, bob] {
        c.generate(who.call(req(CacheMode::Unspecified)))
            .await
            .unwrap();
    }
    let probe = c.clone();
    let cached = |who: TestClient| {
        let mut c = probe.clone();
        async move {
            c.generate(who.call(req(CacheMode::OnlyIfCached)))
                .await
                .is_ok()
        }
    };
    assert!(cached(admin).await && cached(bob).await);

    let refused = c
        .purge_cache(bob.call(pb::PurgeCacheRequest { client_id: None }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(cached(bob).await, "a refused purge drops nothing");

    // The CLI, as an operator runs it: bob's answers only.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_vra-gateway"))
        .args(["cache", "purge", "--client", "bob", "--target"])
        .arg(h.addr.to_string())
        .env("VRA_TOKEN", admin.token)
        .output()
        .await
        .expect("run vra-gateway cache purge");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("purged 1 cached answers of client bob"),
        "{stdout}"
    );
    assert!(!cached(bob).await && cached(admin).await);

    let all = c
        .purge_cache(admin.call(pb::PurgeCacheRequest { client_id: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.purged, 1);
    assert!(!cached(admin).await);
    let invalid = c
        .purge_cache(admin.call(pb::PurgeCacheRequest {
            client_id: Some("no/such id".into()),
        }))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    h.shutdown().await;

    let off = Harness::start(&[]).await;
    let err = off
        .client
        .clone()
        .purge_cache(pb::PurgeCacheRequest { client_id: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    off.shutdown().await;
}

/// A call waits for one identical call at most: when that one stores nothing (here its answer
/// is larger than VRA_CACHE_MAX_ENTRY_BYTES), the calls that waited go upstream together, not
/// one behind another.
async fn followers_of_a_call_that_stored_nothing_go_upstream_side_by_side(store: Store) {
    let h = store.harness(&[("VRA_CACHE_MAX_ENTRY_BYTES", "1")]).await;
    h.cloud.set_default(Step::Reply {
        text: "too large to keep".into(),
        delay: Duration::from_millis(300),
        chunk_delay: Duration::ZERO,
    });
    let mut calls = Vec::new();
    for i in 0..5 {
        let mut c = h.client().await;
        calls.push(tokio::spawn(async move {
            c.generate(call(
                &format!("unkept-{i}"),
                P::Refine,
                S::Analysis,
                "Same.",
            ))
            .await
            .map(tonic::Response::into_inner)
        }));
    }
    for task in calls {
        let resp = task.await.unwrap().expect("answered");
        assert_eq!(status(&resp), CacheStatus::Miss);
    }
    assert_eq!(
        h.cloud.requests(),
        5,
        "nothing was stored: every call went upstream"
    );
    assert!(
        h.cloud.peak_in_flight() >= 2,
        "the calls that waited went upstream side by side (peak {})",
        h.cloud.peak_in_flight()
    );
    h.shutdown().await;
}
