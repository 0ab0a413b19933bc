//! The Redis ledger against a real `redis-server`: one exact budget across three replicas,
//! fail-safe while Redis is down, recovery when it is back, TTLs and key hygiene.
//!
//! A libtest-mimic target (`harness = false`): without a `redis-server` on PATH the tests that
//! need one are reported as *ignored* with the reason, unless `VRA_REQUIRE_REDIS=1` (set by
//! `.ci/run`) makes them run and fail.

mod common;

use std::time::Duration;

use common::clients::{TestClient, write_clients_file};
use common::redis_server::{self, RedisServer};
use common::trials::{Gate, Runtime, async_trial};
use common::{Replica, config, connect, reason, request, tier, usage};
use futures_util::StreamExt;
use libtest_mimic::Arguments;
use redis::AsyncCommands;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vra_gateway::demo::sim::Sim;
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

fn main() {
    let args = Arguments::from_args();
    let redis = redis_server::gate();
    let trials = vec![
        async_trial(
            &args,
            "three_replicas_share_one_exact_budget",
            &redis,
            Runtime::MultiThread(4),
            three_replicas_share_one_exact_budget,
        ),
        async_trial(
            &args,
            "clients_have_scoped_keys_and_one_exact_day_quota_across_replicas",
            &redis,
            Runtime::MultiThread(4),
            clients_have_scoped_keys_and_one_exact_day_quota_across_replicas,
        ),
        async_trial(
            &args,
            "three_replicas_never_exceed_one_dollar_cap",
            &redis,
            Runtime::MultiThread(4),
            three_replicas_never_exceed_one_dollar_cap,
        ),
        async_trial(
            &args,
            "a_cloud_call_is_answered_before_its_record_lands",
            &redis,
            Runtime::MultiThread(2),
            a_cloud_call_is_answered_before_its_record_lands,
        ),
        async_trial(
            &args,
            "a_record_whose_answer_is_lost_is_sent_again_and_counted_once",
            &redis,
            Runtime::MultiThread(2),
            a_record_whose_answer_is_lost_is_sent_again_and_counted_once,
        ),
        async_trial(
            &args,
            "a_record_redis_refuses_is_not_sent_again",
            &redis,
            Runtime::CurrentThread,
            a_record_redis_refuses_is_not_sent_again,
        ),
        async_trial(
            &args,
            "redis_down_fails_safe_and_recovers",
            &redis,
            Runtime::CurrentThread,
            redis_down_fails_safe_and_recovers,
        ),
        // Needs no redis-server: the ledger URL points at a closed port.
        async_trial(
            &args,
            "starting_without_redis_serves_fail_safe",
            &Gate::Open,
            Runtime::CurrentThread,
            starting_without_redis_serves_fail_safe,
        ),
        async_trial(
            &args,
            "an_expired_hold_is_settled_as_abandoned_and_corrected_by_a_late_record",
            &redis,
            Runtime::CurrentThread,
            an_expired_hold_is_settled_as_abandoned_and_corrected_by_a_late_record,
        ),
        async_trial(
            &args,
            "a_killed_replicas_holds_expire_and_the_cap_stays_exact",
            &redis,
            Runtime::MultiThread(2),
            a_killed_replicas_holds_expire_and_the_cap_stays_exact,
        ),
        async_trial(
            &args,
            "local_answers_never_wait_for_a_frozen_or_stopped_ledger",
            &redis,
            Runtime::MultiThread(2),
            local_answers_never_wait_for_a_frozen_or_stopped_ledger,
        ),
        async_trial(
            &args,
            "a_grant_counts_only_once_a_replica_holds_it",
            &redis,
            Runtime::CurrentThread,
            a_grant_counts_only_once_a_replica_holds_it,
        ),
        async_trial(
            &args,
            "keys_are_namespaced_expire_and_treat_report_ids_as_data",
            &redis,
            Runtime::CurrentThread,
            keys_are_namespaced_expire_and_treat_report_ids_as_data,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

async fn three_replicas_share_one_exact_budget() {
    let redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = redis.url();
    // A generous ledger timeout: this test is about exactness, and on a busy machine 150
    // concurrent reservations may take longer than the 200 ms default (then calls would fail
    // safe with LEDGER_UNAVAILABLE, which the timeout tests cover).
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("MAX_CLOUD_CALLS", "15"),
        ("VRA_LEDGER_TIMEOUT_MS", "10000"),
    ];
    // Separate servers, separate Redis connections, one Redis.
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(connect(r.addr).await);
    }
    let mut tasks = Vec::new();
    for i in 0..150 {
        let mut client = clients[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            client
                .generate(request("shared-report", P::Refine, S::Analysis))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let (primary, cost_limited) = common::tally(tasks, F::CostLimit).await;
    assert_eq!(
        cloud.requests(),
        15,
        "the cloud upstream received exactly MAX_CLOUD_CALLS requests"
    );
    assert_eq!((primary, cost_limited), (15, 135));
    // A replica's read waits for its own records (sent after their responses): once each
    // replica has answered one, every record has landed.
    for r in &replicas {
        usage(r.addr, "shared-report").await;
    }
    for r in &replicas {
        let u = usage(r.addr, "shared-report").await;
        let b = u.budget.unwrap();
        assert_eq!(
            (b.cloud_calls_used, b.cloud_calls_limit, b.exhausted),
            (15, 15, true)
        );
        assert_eq!(
            (u.primary_calls, u.secondary_calls, u.fallbacks),
            (15, 135, 135),
            "replicas agree"
        );
    }
    for r in replicas {
        r.shutdown().await;
    }
}

/// The dollar cap across three replicas on one Redis — each cloud attempt's worst
/// case is held in the same Lua script as its call unit, and settled after the call — so 50
/// concurrent calls never settle more than the cap, and every replica reports the same exact
/// figures.
async fn three_replicas_never_exceed_one_dollar_cap() {
    let redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = redis.url();
    let mut settings = common::cost::capped_settings();
    settings.push(("VRA_LEDGER_URL", url.as_str()));
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    common::cost::fifty_concurrent_calls_never_exceed_the_cap(&addrs, &cloud, "capped-report")
        .await;
    for r in replicas {
        r.shutdown().await;
    }
}

/// With authentication on, every key lives under `{prefix}{client}/`, and a client's
/// day quota is one exact count shared by every replica — reserved in the same script as the
/// report's unit.
async fn clients_have_scoped_keys_and_one_exact_day_quota_across_replicas() {
    let a = TestClient::new("reports-python", "vra_token-a-for-the-redis-test-31c9").per_day(20);
    let b = TestClient::new("reports-node", "vra_token-b-for-the-redis-test-77d0");
    let file = write_clients_file(&[a, b]);
    let redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = redis.url();
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("VRA_LEDGER_PREFIX", "t:"),
        ("MAX_CLOUD_CALLS", "3"),
        ("VRA_LEDGER_TIMEOUT_MS", "10000"),
        ("VRA_CLIENTS_FILE", file.to_str().unwrap()),
    ];
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = connect(replicas[i % 3].addr).await;
        tasks.push(tokio::spawn(async move {
            client
                .generate(a.call(request(&format!("r{}", i / 2), P::Refine, S::Analysis)))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let (primary, quota) = common::tally(tasks, F::ClientQuota).await;
    assert_eq!((primary, quota), (20, 30));
    assert_eq!(
        cloud.requests(),
        20,
        "exactly the day quota, across three replicas"
    );
    // B's report `r0` is not A's.
    let resp = connect(replicas[1].addr)
        .await
        .generate(b.call(request("r0", P::Refine, S::Analysis)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(&resp), resp.budget.unwrap().cloud_calls_used),
        (T::Primary, 1)
    );
    for r in &replicas {
        let u = connect(r.addr)
            .await
            .get_report_usage(a.call(pb::GetReportUsageRequest {
                report_id: "r0".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            u.client_quota,
            Some(pb::ClientQuota {
                used: 20,
                limit: 20
            })
        );
        assert_eq!(u.primary_calls + u.secondary_calls, 2, "A's r0 only");
    }

    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.contains(&"t:reports-python/quota".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"t:reports-python/report:r0".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"t:reports-node/report:r0".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .all(|k| k.starts_with("t:reports-python/") || k.starts_with("t:reports-node/")),
        "every key is scoped by client: {keys:?}"
    );
    let day_used: u32 = conn.hget("t:reports-python/quota", "used").await.unwrap();
    assert_eq!(day_used, 20);
    for r in replicas {
        r.shutdown().await;
    }
}

async fn redis_down_fails_safe_and_recovers() {
    let mut redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = redis.url();
    let gw = Replica::start(config(
        &cloud,
        &local,
        &[
            ("VRA_LEDGER_URL", url.as_str()),
            ("VRA_LEDGER_TIMEOUT_MS", "200"),
        ],
    ))
    .await;
    let mut client = connect(gw.addr).await;
    let r = client
        .generate(request("ha", P::Refine, S::Analysis))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(&r), T::Primary);
    assert_eq!(cloud.requests(), 1);

    redis.stop().await;
    for i in 0..5 {
        let r = client
            .generate(request(&format!("ha-{i}"), P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (tier(&r), reason(&r)),
            (T::Secondary, F::LedgerUnavailable),
            "call {i} while Redis is down"
        );
    }
    assert_eq!(
        cloud.requests(),
        1,
        "zero cloud requests while the ledger is down"
    );
    let err = client
        .get_report_usage(pb::GetReportUsageRequest {
            report_id: "ha".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        vra_gateway::server::check_health(&gw.addr.to_string())
            .await
            .unwrap(),
        "SERVING: the secondary still answers"
    );

    redis.restart().await;
    // The connection manager reconnects on the next ledger operation (a call, or the health
    // watcher's ping every second); budgeted cloud calls resume. Each new try waits for the
    // gateway's next command to the restarted Redis, seen through MONITOR — not for a timer.
    let mut gateway_commands = redis.monitor().await;
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = client
                .generate(request("ha-back", P::Refine, S::Analysis))
                .await
                .unwrap()
                .into_inner();
            if tier(&r) == T::Primary {
                return r;
            }
            assert_eq!(reason(&r), F::LedgerUnavailable);
            gateway_commands
                .next()
                .await
                .expect("the MONITOR connection stays open");
        }
    })
    .await
    .expect("cloud calls resume after Redis is back");
    assert_eq!(
        resumed.budget.unwrap().cloud_calls_used,
        1,
        "the restarted Redis starts empty"
    );
    gw.shutdown().await;
}

async fn starting_without_redis_serves_fail_safe() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("redis://{dead}/0");
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let gw = Replica::start(config(
        &cloud,
        &local,
        &[
            ("VRA_LEDGER_URL", url.as_str()),
            ("VRA_CIRCUIT_FAILURES", "1"),
            ("VRA_RETRY_MAX_ATTEMPTS", "1"),
        ],
    ))
    .await;
    let mut client = connect(gw.addr).await;
    let r = client
        .generate(request("nr", P::Abstract, S::Other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(&r), reason(&r)), (T::Secondary, F::LedgerUnavailable));
    assert_eq!(cloud.requests(), 0);
    let addr = gw.addr.to_string();
    assert!(
        vra_gateway::server::check_health(&addr).await.unwrap(),
        "SERVING while the secondary answers"
    );

    // With the secondary unusable too (its circuit opens after one failed call), nothing can
    // be served safely: the health service says NOT_SERVING. Its Watch stream sends the
    // current status, then every change.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the health service");
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health Watch")
        .into_inner();
    local.set_default(vra_gateway::demo::sim::Step::fail(500));
    let err = client
        .generate(request("nr", P::Expand, S::Other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let update = health
                .message()
                .await
                .expect("health Watch stream")
                .expect("health Watch stream stays open");
            if update.status == ServingStatus::NotServing as i32 {
                return;
            }
        }
    })
    .await
    .expect("NOT_SERVING once the ledger and the secondary are both unusable");
    // An open Watch is an in-flight call: end it, or shutdown waits out its grace period.
    drop(health);
    gw.shutdown().await;
}

async fn keys_are_namespaced_expire_and_treat_report_ids_as_data() {
    let redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = redis.url();
    let gw = Replica::start(config(
        &cloud,
        &local,
        &[
            ("VRA_LEDGER_URL", url.as_str()),
            ("VRA_LEDGER_PREFIX", "test:"),
            ("VRA_REPORT_TTL_SECS", "1"),
        ],
    ))
    .await;
    let mut client = connect(gw.addr).await;
    // Glob characters, quotes, a backslash and spaces: data, never a pattern or a command.
    // Control characters and `|` are refused before the ledger (src/domain.rs).
    let odd = "report *?[x]{y} \"quoted\" \\ KEYS * -- EVAL";
    let err = client
        .generate(request("report \n KEYS *", P::Refine, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    client
        .generate(request(odd, P::Refine, S::Analysis))
        .await
        .unwrap();
    client
        .generate(request("plain", P::Expand, S::Analysis))
        .await
        .unwrap();
    // Records follow their answers: a read on this replica waits until they have landed.
    usage(gw.addr, odd).await;
    usage(gw.addr, "plain").await;

    let mut conn = redis.client().await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut keys: Vec<String> = keys
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    keys.sort();
    // Each recorded call leaves a short-lived marker (a record sent twice counts once).
    let (markers, keys): (Vec<String>, Vec<String>) = keys
        .into_iter()
        .partition(|k| k.starts_with("test:record:"));
    assert_eq!(
        keys,
        vec![
            "test:report:plain".to_string(),
            format!("test:report:{odd}")
        ]
    );
    assert_eq!(
        markers.len(),
        2,
        "one marker per recorded call: {markers:?}"
    );
    for marker in &markers {
        let id = &marker["test:record:".len()..];
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{marker}"
        );
        let ttl: i64 = conn.ttl(marker).await.unwrap();
        assert!(
            ttl > 0 && ttl <= vra_gateway::budget::redis::RECORD_MARKER_SECS as i64,
            "a marker expires on its own: {ttl} s"
        );
    }
    let used: u32 = conn
        .hget(format!("test:report:{odd}"), "used")
        .await
        .unwrap();
    assert_eq!(used, 1);
    let ttl: i64 = conn.pttl(format!("test:report:{odd}")).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 1000,
        "the TTL is refreshed to VRA_REPORT_TTL_SECS: {ttl} ms"
    );
    // Expiry is Redis's own clock: wait for its `expired` keyspace event for the key,
    // subscribed before looking, so an expiry between the look and the wait is not missed.
    let key = format!("test:report:{odd}");
    let mut expired = redis.expired_keys().await;
    let n: u32 = conn.exists(&key).await.unwrap();
    if n == 1 {
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(k) = expired.next().await {
                if k == key.as_bytes() {
                    return;
                }
            }
            panic!("the keyspace event subscription ended");
        })
        .await
        .expect("the report's key expired");
    }
    let n: u32 = conn.exists(&key).await.unwrap();
    assert_eq!(n, 0, "the report's key is gone");
    let u = usage(gw.addr, odd).await;
    assert_eq!(
        u.budget.unwrap().cloud_calls_used,
        0,
        "an expired report starts over"
    );
    gw.shutdown().await;
}

/// A TCP proxy in front of Redis that holds the gateway's record of a cloud call (the only
/// command with the argument `cloud`) until released, so a test can see what happens before
/// the record lands.
struct RecordGate {
    addr: std::net::SocketAddr,
    /// Set when a record reached the proxy (and is being held).
    held: tokio::sync::watch::Receiver<bool>,
    release: tokio::sync::watch::Sender<bool>,
}

impl RecordGate {
    async fn start(redis_port: u16) -> RecordGate {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (held_tx, held) = tokio::sync::watch::channel(false);
        let (release, release_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .unwrap();
                let (mut client_r, mut client_w) = client.into_split();
                let (mut up_r, mut up_w) = upstream.into_split();
                let held_tx = held_tx.clone();
                let mut release_rx = release_rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match client_r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if buf[..n].windows(9).any(|w| w == b"\r\ncloud\r\n") {
                            let _ = held_tx.send(true);
                            let _ = release_rx.wait_for(|r| *r).await;
                        }
                        if up_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut up_r, &mut client_w).await;
                });
            }
        });
        RecordGate {
            addr,
            held,
            release,
        }
    }
}

/// The reservation is the only Redis round trip before a cloud call's response; the
/// record follows it, and a read on the same replica includes the call.
async fn a_cloud_call_is_answered_before_its_record_lands() {
    let redis = RedisServer::start().await;
    let gate = RecordGate::start(redis.port).await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = format!("redis://{}/0", gate.addr);
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("MAX_CLOUD_CALLS", "5"),
        ("VRA_LEDGER_TIMEOUT_MS", "10000"),
    ];
    let replica = Replica::start(config(&cloud, &local, &settings)).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        connect(replica.addr)
            .await
            .generate(request("deferred", P::Refine, S::Analysis)),
    )
    .await
    .expect("answered although no record can reach Redis")
    .expect("generate")
    .into_inner();
    assert_eq!(tier(&resp), T::Primary);
    let budget = resp.budget.expect("budget");
    assert_eq!((budget.cloud_calls_used, budget.exhausted), (1, false));
    assert!(resp.cost_usd.is_some_and(|c| c > 0.0), "gpt-4o is priced");
    assert_eq!(
        budget.cloud_cost_used_usd,
        resp.cost_usd.unwrap(),
        "the response counts its own cost, though its record has not landed"
    );
    // The record was sent after the response, and is held at the proxy.
    let mut held = gate.held.clone();
    tokio::time::timeout(Duration::from_secs(20), held.wait_for(|h| *h))
        .await
        .expect("the record follows the response")
        .unwrap();
    let mut conn = redis.client().await;
    let primary: Option<u32> = conn.hget("vra:report:deferred", "primary").await.unwrap();
    assert_eq!(primary, None, "not recorded yet");
    // Read your own calls: the read waits for the record.
    let read = tokio::spawn(usage(replica.addr, "deferred"));
    gate.release.send(true).unwrap();
    let u = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read ends once the record lands")
        .unwrap();
    assert_eq!((u.primary_calls, u.secondary_calls), (1, 0));
    let (sent, recorded) = (resp.usage.unwrap(), u.cloud_usage.unwrap());
    assert_eq!(
        (recorded.input_tokens, recorded.output_tokens),
        (sent.input_tokens, sent.output_tokens)
    );
    assert_eq!(u.cost.unwrap().cloud_usd, resp.cost_usd.unwrap());
}

/// A TCP proxy in front of Redis that passes every command through at once but, once armed,
/// from the gateway's next record of a cloud call on (a command with the argument `cloud`),
/// holds back Redis's replies until released: the record is applied, yet the gateway hears
/// nothing and times out — the ambiguous failure, where the record may or may not have landed.
struct ReplyGate {
    addr: std::net::SocketAddr,
    /// Records of a cloud call that reached the proxy (and Redis) since it was armed.
    records: tokio::sync::watch::Receiver<u32>,
    arm: tokio::sync::watch::Sender<bool>,
    release: tokio::sync::watch::Sender<bool>,
}

impl ReplyGate {
    async fn start(redis_port: u16) -> ReplyGate {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (records_tx, records) = tokio::sync::watch::channel(0u32);
        let (arm, armed) = tokio::sync::watch::channel(false);
        let (release, release_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .unwrap();
                let (mut client_r, mut client_w) = client.into_split();
                let (mut up_r, mut up_w) = upstream.into_split();
                let records_tx = records_tx.clone();
                let replies_held = records_tx.subscribe();
                let armed = armed.clone();
                let mut release_rx = release_rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match client_r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Counted before it is forwarded, so its reply is held.
                        let records = buf[..n]
                            .windows(9)
                            .filter(|w| *w == b"\r\ncloud\r\n")
                            .count() as u32;
                        if records > 0 && *armed.borrow() {
                            records_tx.send_modify(|seen| *seen += records);
                        }
                        if up_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match up_r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if *replies_held.borrow() > 0 {
                            let _ = release_rx.wait_for(|r| *r).await;
                        }
                        if client_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ReplyGate {
            addr,
            records,
            arm,
            release,
        }
    }
}

/// A record whose reply never came (a timeout: it may or may not have been applied)
/// is sent again, and Redis counts the call once — the copy finds the record's marker. Without
/// the retry the proxy never sees a second record; without the marker the call is counted
/// (and its hold released) twice.
async fn a_record_whose_answer_is_lost_is_sent_again_and_counted_once() {
    let redis = RedisServer::start().await;
    let gate = ReplyGate::start(redis.port).await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = format!("redis://{}/0", gate.addr);
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("MAX_CLOUD_CALLS", "5"),
        ("MAX_CLOUD_COST_USD", "1"),
        ("VRA_LEDGER_TIMEOUT_MS", "300"),
    ];
    let replica = Replica::start(config(&cloud, &local, &settings)).await;
    // A first call loads the scripts (a record answered NOSCRIPT is not applied, which would
    // make the copy harmless anyway); the read waits until its record is done.
    let mut client = connect(replica.addr).await;
    client
        .generate(request("warm-up", P::Refine, S::Analysis))
        .await
        .expect("generate");
    assert_eq!(usage(replica.addr, "warm-up").await.primary_calls, 1);
    gate.arm.send(true).unwrap();
    let resp = client
        .generate(request("twice", P::Refine, S::Analysis))
        .await
        .expect("generate")
        .into_inner();
    assert_eq!(tier(&resp), T::Primary);
    // The first record landed but its reply is held: the gateway times out and sends it again.
    let mut records = gate.records.clone();
    tokio::time::timeout(Duration::from_secs(20), records.wait_for(|n| *n >= 2))
        .await
        .expect("the record is sent again after its reply timed out")
        .unwrap();
    gate.release.send(true).unwrap();
    let u = tokio::time::timeout(Duration::from_secs(20), usage(replica.addr, "twice"))
        .await
        .expect("the read ends once a copy of the record is confirmed");
    assert_eq!((u.primary_calls, u.secondary_calls), (1, 0), "counted once");
    let (sent, recorded) = (resp.usage.unwrap(), u.cloud_usage.unwrap());
    assert_eq!(
        (recorded.input_tokens, recorded.output_tokens),
        (sent.input_tokens, sent.output_tokens)
    );
    assert_eq!(u.cost.unwrap().cloud_usd, resp.cost_usd.unwrap());
    let mut conn = redis.client().await;
    let held: i64 = conn.hget("vra:report:twice", "held").await.unwrap();
    assert_eq!(held, 0, "the call's hold is released exactly once");
}

/// A record Redis answers with an error (here the report's `primary` counter is not a number,
/// so the script's `HINCRBY` fails) is refused, not lost: it is not sent again — a copy would
/// find the marker the first one set and pass for confirmed — and the failure is the answer.
async fn a_record_redis_refuses_is_not_sent_again() {
    use vra_gateway::budget::deferred::record_with_retry;
    use vra_gateway::budget::{CallRecord, LedgerError, ReportKey};
    use vra_gateway::domain::{Nanos, Phase, Tier, TokenUsage};

    let redis = RedisServer::start().await;
    let ledger = redis.ledger();
    let call = |id| CallRecord {
        id,
        tier: Tier::Primary,
        fell_back: false,
        cloud: true,
        phase: Phase::Refine,
        usage: TokenUsage::reported(3, 4),
        cost: Some(Nanos(10)),
        all_cloud: Some(Nanos(10)),
        release: vra_gateway::budget::HeldCost::NONE,
        cached: false,
    };
    // A first record loads the script, so the count below is of the refused record alone.
    record_with_retry(&ledger, ReportKey::anonymous("fine"), call(1))
        .await
        .expect("a plain record lands");
    let mut conn = redis.client().await;
    let _: () = conn
        .hset("vra:report:poisoned", "primary", "not a number")
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let result = record_with_retry(&ledger, ReportKey::anonymous("poisoned"), call(2)).await;
    assert!(
        matches!(result, Err(LedgerError::Rejected(_))),
        "{result:?}"
    );
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let evalsha = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or_else(|| panic!("no EVALSHA in {stats}"));
    assert!(evalsha.contains(":calls=1,"), "sent once: {evalsha}");
}

/// On Redis, by the server's clock: a hold past its expiry is settled by the report's next
/// reservation or read as an abandoned charge of its full amount (the holds set forgets it); a
/// late record corrects the charge to the call's real cost; a late release to nothing.
async fn an_expired_hold_is_settled_as_abandoned_and_corrected_by_a_late_record() {
    use vra_gateway::budget::{
        CallRecord, HeldCost, HoldSpec, Ledger, Limits, ReportKey, Reservation,
    };
    use vra_gateway::domain::{Nanos, Phase, Tier, TokenUsage};

    let redis = RedisServer::start().await;
    let ledger = redis.ledger();
    let key = ReportKey::anonymous("orphan");
    let limits = Limits {
        report: 10,
        client_day: None,
        cost_cap: Some(Nanos(1_000)),
    };
    // A zero life: expired from the reservation's own millisecond on, so the next script to
    // look (not the reservation itself) settles it — no waiting on the clock.
    let dead = HoldSpec {
        id: 1,
        amount: Nanos(600),
        ttl: Duration::ZERO,
    };
    let live = HoldSpec {
        id: 2,
        amount: Nanos(300),
        ttl: Duration::from_secs(3600),
    };
    assert!(matches!(
        ledger.reserve(key, limits, dead).await.unwrap(),
        Reservation::Granted { held, .. } if held == Nanos(600)
    ));
    // The same reservation again (as the cluster client sends a command again after a dropped
    // connection) takes nothing more — checked before its hold is settled.
    let again = HoldSpec {
        ttl: Duration::from_secs(3600),
        ..dead
    };
    let twin = ReportKey::anonymous("twin");
    ledger.reserve(twin, limits, again).await.unwrap();
    assert_eq!(
        ledger.reserve(twin, limits, again).await.unwrap(),
        Reservation::Granted {
            used: 1,
            cost: Nanos::ZERO,
            held: Nanos(600),
            day_used: None,
        }
    );
    // 600 is settled as spent first: 600 + 300 fits under 1000, and the grant shows it.
    assert_eq!(
        ledger.reserve(key, limits, live).await.unwrap(),
        Reservation::Granted {
            used: 2,
            cost: Nanos(600),
            held: Nanos(300),
            day_used: None,
        }
    );
    let u = ledger.usage(key).await.unwrap();
    assert_eq!(
        (u.held, u.cloud_cost, u.abandoned),
        (Nanos(300), Nanos(600), Nanos(600))
    );
    let record = CallRecord {
        id: 77,
        tier: Tier::Primary,
        fell_back: false,
        cloud: true,
        phase: Phase::Refine,
        usage: TokenUsage::reported(3, 4),
        cost: Some(Nanos(150)),
        all_cloud: Some(Nanos(150)),
        release: HeldCost {
            id: 1,
            amount: Nanos(600),
        },
        cached: false,
    };
    ledger.record(key, record).await.unwrap();
    let u = ledger.usage(key).await.unwrap();
    assert_eq!(
        (u.held, u.cloud_cost, u.abandoned),
        (Nanos(300), Nanos(150), Nanos::ZERO),
        "the late record's real cost replaced the abandoned charge"
    );
    ledger
        .release(
            key,
            HeldCost {
                id: 2,
                amount: Nanos(300),
            },
            Nanos::ZERO,
        )
        .await
        .unwrap();
    let u = ledger.usage(key).await.unwrap();
    assert_eq!((u.held, u.cloud_cost), (Nanos::ZERO, Nanos(150)));
    // A copy of a release changes nothing (the hold is ended already).
    ledger
        .release(
            key,
            HeldCost {
                id: 2,
                amount: Nanos(300),
            },
            Nanos(300),
        )
        .await
        .unwrap();
    let u = ledger.usage(key).await.unwrap();
    assert_eq!(
        (u.held, u.cloud_cost, u.abandoned),
        (Nanos::ZERO, Nanos(150), Nanos::ZERO)
    );
    let mut conn = redis.client().await;
    let live_holds: u64 = conn.zcard("vra:holds:orphan").await.unwrap();
    assert_eq!(live_holds, 0);
}

/// A replica killed (SIGKILL) with cost holds in flight never releases them. Within its
/// calls' deadline plus `VRA_HOLD_GRACE_MS`, another replica reads the report with nothing
/// reserved and the holds charged as abandoned, and the cap stays exact for the calls after.
async fn a_killed_replicas_holds_expire_and_the_cap_stays_exact() {
    use common::process::{Running, gateway_env};

    let redis = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    cloud.set_default(vra_gateway::demo::sim::Step::Hang);
    let url = redis.url();
    let mut settings = common::cost::capped_settings();
    settings.push(("VRA_LEDGER_URL", url.as_str()));
    settings.push(("VRA_HOLD_GRACE_MS", "300"));
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(&cloud_url, &local_url, &settings);
    let doomed = Running::start(&env).await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let mut client = connect(doomed.addr.parse().unwrap()).await;
        calls.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(common::cost::capped_call("orphaned"));
            req.set_timeout(Duration::from_millis(1500));
            client.generate(req).await
        }));
    }
    // Both attempts hold their worst case and wait on the upstream; then the replica dies.
    assert!(cloud.wait_in_flight(2, Duration::from_secs(10)).await);
    let pid = doomed.child.id().expect("running");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let reserved_at = tokio::time::Instant::now();
    for call in calls {
        assert!(
            call.await.unwrap().is_err(),
            "the killed replica answers nothing"
        );
    }

    let survivor = Replica::start(config(&cloud, &local, &settings)).await;
    let held = |u: &pb::GetReportUsageResponse| u.budget.as_ref().unwrap().cloud_cost_reserved_usd;
    let u = usage(survivor.addr, "orphaned").await;
    assert!(
        held(&u) > 0.0,
        "the dead replica's holds are still reserved"
    );
    // They expire by the Redis server's clock: 1.5 s (the calls' deadline) + 0.3 s of grace
    // after their reservation. Poll the survivor's reads (they settle what expired).
    let u = loop {
        let u = usage(survivor.addr, "orphaned").await;
        if held(&u) == 0.0 {
            break u;
        }
        assert!(
            reserved_at.elapsed() < Duration::from_secs(10),
            "holds still reserved long after their deadline and grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reserved_at.elapsed() >= Duration::from_millis(1500) - Duration::from_millis(200));
    let abandoned = u.cost.expect("a cost report").abandoned_usd;
    assert!(abandoned > 0.0, "the two holds were charged as abandoned");
    assert_eq!(abandoned, u.budget.unwrap().cloud_cost_used_usd);
    // The cap stays exact: with the upstream answering again, the survivor spends only what
    // is left under it, and every cloud request was reserved.
    cloud.set_default(vra_gateway::demo::sim::Step::reply("back"));
    let sent_before = cloud.requests();
    let mut client = connect(survivor.addr).await;
    let mut answered_nanos = 0;
    let mut primary = 0;
    for _ in 0..20 {
        let resp = client
            .generate(common::cost::capped_call("orphaned"))
            .await
            .unwrap()
            .into_inner();
        if tier(&resp) == T::Primary {
            primary += 1;
            answered_nanos += common::cost::gpt4o_nanos(resp.usage.as_ref().unwrap());
        }
    }
    assert!(primary >= 1, "room was left under the cap");
    assert_eq!(cloud.requests() - sent_before, primary);
    let b = usage(survivor.addr, "orphaned").await.budget.unwrap();
    let settled = abandoned + answered_nanos as f64 / 1e9;
    assert!((b.cloud_cost_used_usd - settled).abs() < 1e-12, "{b:?}");
    assert!(b.cloud_cost_used_usd <= common::cost::CAP_USD);
    assert_eq!(b.cloud_cost_reserved_usd, 0.0);
    survivor.shutdown().await;
}

/// `VRA_LEDGER_MIN_REPLICAS=1` on a master and its replica: with the replica in sync, every
/// grant is on the replica by the time it is answered; a grant that no replica confirms — the
/// replica frozen, or gone — is refused as unconfirmed with its unit still taken (its hold is
/// the caller's to release, as the gateway does, uncharged).
async fn a_grant_counts_only_once_a_replica_holds_it() {
    use vra_gateway::budget::{HoldSpec, Ledger, LedgerError, Limits, ReportKey, Reservation};
    use vra_gateway::domain::Nanos;

    let master = RedisServer::start().await;
    let mut replica = RedisServer::start_replica_of(&master).await;
    master.wait_replica().await;
    // Ledger timeout 2 s: WAIT gives up after a third of it.
    let ledger = master.ledger().confirmed_by(1).expect("the ledger");
    let key = ReportKey::anonymous("confirmed");
    let limits = Limits {
        report: 10,
        client_day: None,
        cost_cap: Some(Nanos(1_000_000)),
    };
    let hold = |id: u32| HoldSpec {
        id: id.into(),
        amount: Nanos(1_000),
        ttl: Duration::from_secs(3600),
    };
    let granted = |r: &Result<Reservation, LedgerError>, n: u32, h: u64| matches!(r, Ok(Reservation::Granted { used, held, .. }) if *used == n && *held == Nanos(h));
    let unconfirmed = |r: &Result<Reservation, LedgerError>| {
        matches!(
            r,
            Err(LedgerError::Unconfirmed {
                acked: 0,
                wanted: 1
            })
        )
    };

    let mut on_replica = replica.client().await;
    for used in 1..=4 {
        let r = ledger.reserve(key, limits, hold(used)).await;
        assert!(granted(&r, used, u64::from(used) * 1_000), "{r:?}");
        let copied: u32 = on_replica
            .hget("vra:report:confirmed", "used")
            .await
            .unwrap();
        assert_eq!(
            copied, used,
            "the grant is on the replica when it is answered"
        );
    }

    replica.signal("STOP").unwrap();
    let frozen = ledger.reserve(key, limits, hold(5)).await;
    replica.signal("CONT").unwrap();
    assert!(
        unconfirmed(&frozen),
        "a frozen replica confirms nothing: {frozen:?}"
    );
    ledger
        .release(key, hold(5).held(), Nanos::ZERO)
        .await
        .unwrap();
    let r = ledger.reserve(key, limits, hold(6)).await;
    assert!(
        granted(&r, 6, 5_000),
        "unit 5 stayed taken, its hold did not: {r:?}"
    );

    replica.stop().await;
    let alone = ledger.reserve(key, limits, hold(7)).await;
    assert!(unconfirmed(&alone), "no replica attached: {alone:?}");
    let u = ledger.usage(key).await.unwrap();
    assert_eq!(
        (u.cloud_calls_used, u.held, u.abandoned),
        (7, Nanos(6_000), Nanos::ZERO),
        "every unit taken; the last grant's hold waits for its caller's release"
    );
}

/// A local answer's record follows it, retried like a cloud call's: with Redis frozen (SIGSTOP,
/// and a ledger timeout of a minute, so a call that waited for its record would take that
/// long) local answers still arrive, showing the budget last seen here; their records land when
/// Redis thaws. With Redis stopped, the same, and the records land once it is back.
async fn local_answers_never_wait_for_a_frozen_or_stopped_ledger() {
    for (frozen, timeout_ms) in [(true, "60000"), (false, "200")] {
        let mut redis = RedisServer::start_aof().await;
        let cloud = Sim::start().await.unwrap();
        let local = Sim::start().await.unwrap();
        let url = redis.url();
        let gw = Replica::start(config(
            &cloud,
            &local,
            &[
                ("VRA_LEDGER_URL", url.as_str()),
                ("VRA_LEDGER_TIMEOUT_MS", timeout_ms),
            ],
        ))
        .await;
        let mut client = connect(gw.addr).await;
        let report = if frozen { "frozen" } else { "stopped" };
        let r = client
            .generate(request(report, P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tier(&r), T::Primary);
        // Read once: the cloud call's record has landed.
        assert_eq!(usage(gw.addr, report).await.primary_calls, 1);

        if frozen {
            redis.signal("STOP").unwrap();
        } else {
            redis.stop().await;
        }
        for i in 0..3 {
            let answer = tokio::time::timeout(
                Duration::from_secs(30),
                client.generate(request(report, P::Expand, S::Analysis)),
            )
            .await
            .unwrap_or_else(|_| panic!("local answer {i} waited for the ledger (frozen: {frozen})"))
            .unwrap()
            .into_inner();
            assert_eq!(tier(&answer), T::Secondary);
            assert_eq!(
                answer.budget.unwrap().cloud_calls_used,
                1,
                "the budget last seen here"
            );
        }
        if frozen {
            redis.signal("CONT").unwrap();
        } else {
            redis.restart().await;
        }
        // The read waits for this replica's records of the report still on their way.
        let u = usage(gw.addr, report).await;
        assert_eq!(
            (u.primary_calls, u.secondary_calls),
            (1, 3),
            "every record landed once Redis was back (frozen: {frozen})"
        );
        gw.shutdown().await;
    }
}
