//! The Redis ledger on a real Redis Cluster (three masters, started by the test): one exact
//! budget per report across three gateway replicas with keys on several masters, a client's
//! day quota exact beside its reports (one hash tag), report ids with braces, a URL that
//! does not match the deployment refused at startup (exit 2); with a replica per master, no
//! unit lost when a master is killed, and the Kubernetes manifests' cluster (its nodes' own
//! settings) confirming every grant on a replica.
//!
//! A libtest-mimic target (`harness = false`): without `redis-server` and `redis-cli` on PATH
//! the tests are reported as *ignored*, unless `VRA_REQUIRE_REDIS=1` (set by `.ci/run`).

mod common;

use std::time::Duration;

use common::clients::{TestClient, write_clients_file};
use common::redis_cluster::{self, RedisCluster};
use common::redis_server::RedisServer;
use common::trials::{Runtime, async_trial};
use common::{Replica, config, connect, request, usage};
use libtest_mimic::Arguments;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::pb::{
    self, CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};
use vra_gateway::server;

fn main() {
    let args = Arguments::from_args();
    let cluster = redis_cluster::gate();
    let trials = vec![
        async_trial(
            &args,
            "three_replicas_keep_every_report_exact_on_a_cluster",
            &cluster,
            Runtime::MultiThread(4),
            three_replicas_keep_every_report_exact_on_a_cluster,
        ),
        async_trial(
            &args,
            "a_clients_reports_and_day_quota_share_one_slot",
            &cluster,
            Runtime::MultiThread(4),
            a_clients_reports_and_day_quota_share_one_slot,
        ),
        async_trial(
            &args,
            "a_master_killed_mid_burst_loses_no_unit",
            &cluster,
            Runtime::MultiThread(4),
            a_master_killed_mid_burst_loses_no_unit,
        ),
        async_trial(
            &args,
            "the_kubernetes_ledger_confirms_every_grant_on_a_replica",
            &cluster,
            Runtime::MultiThread(4),
            the_kubernetes_ledger_confirms_every_grant_on_a_replica,
        ),
        async_trial(
            &args,
            "the_response_cache_spreads_over_the_masters_and_purges_on_each",
            &cluster,
            Runtime::MultiThread(4),
            the_response_cache_spreads_over_the_masters_and_purges_on_each,
        ),
        async_trial(
            &args,
            "a_url_that_does_not_match_the_deployment_exits_2",
            &cluster,
            Runtime::MultiThread(2),
            a_url_that_does_not_match_the_deployment_exits_2,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Reports cycled over by the exactness test; ids with braces included, so hash tags are
/// exercised with hostile ids too.
fn report_ids() -> Vec<String> {
    let mut ids: Vec<String> = (0..21).map(|i| format!("cluster-report-{i}")).collect();
    ids.extend(["}starts-with-a-brace", "{tagged}rest", "a{b}c{d}"].map(String::from));
    ids
}

async fn three_replicas_keep_every_report_exact_on_a_cluster() {
    const CAP: usize = 4;
    const CALLS_PER_REPORT: usize = 9;
    let cluster = RedisCluster::start(3, 0).await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = cluster.url();
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("MAX_CLOUD_CALLS", "4"),
        ("VRA_LEDGER_TIMEOUT_MS", "10000"),
    ];
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let reports = report_ids();
    let mut tasks = Vec::new();
    for i in 0..reports.len() * CALLS_PER_REPORT {
        let mut client = connect(replicas[i % 3].addr).await;
        let report = reports[i % reports.len()].clone();
        tasks.push(tokio::spawn(async move {
            client
                .generate(request(&report, P::Refine, S::Analysis))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let (primary, cost_limited) = common::tally(tasks, F::CostLimit).await;
    let n = reports.len();
    assert_eq!(
        (primary, cost_limited),
        (n * CAP, n * (CALLS_PER_REPORT - CAP))
    );
    assert_eq!(
        cloud.requests(),
        n * CAP,
        "the cloud saw exactly the cap of every report"
    );
    // Each replica's read waits for its own records; once each has answered one, all landed.
    for r in &replicas {
        usage(r.addr, &reports[0]).await;
    }
    for (i, report) in reports.iter().enumerate() {
        let u = usage(replicas[i % 3].addr, report).await;
        let b = u.budget.unwrap();
        assert_eq!(
            (b.cloud_calls_used, b.exhausted),
            (CAP as u32, true),
            "{report}"
        );
        assert_eq!(
            (u.primary_calls, u.secondary_calls),
            (CAP as u32, (CALLS_PER_REPORT - CAP) as u32),
            "{report}: every record landed once"
        );
    }
    let keys = cluster.keys_per_master().await;
    assert!(
        keys.iter().filter(|&&n| n > 0).count() >= 2,
        "reports spread over the masters: {keys:?}"
    );
    for r in replicas {
        r.shutdown().await;
    }
}

/// With clients, a client's reports, markers and day quota carry the client's hash tag: one
/// reservation checks the report and the quota atomically on one master, and the quota is
/// exact across replicas.
async fn a_clients_reports_and_day_quota_share_one_slot() {
    let a = TestClient::new("reports-python", "vra_token-a-for-the-cluster-test-31c9").per_day(10);
    let b = TestClient::new("reports-node", "vra_token-b-for-the-cluster-test-77d0");
    let file = write_clients_file(&[a, b]);
    let cluster = RedisCluster::start(3, 0).await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = cluster.url();
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("MAX_CLOUD_CALLS", "3"),
        ("VRA_LEDGER_TIMEOUT_MS", "10000"),
        ("VRA_CLIENTS_FILE", file.to_str().unwrap()),
    ];
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut client = connect(replicas[i % 3].addr).await;
        tasks.push(tokio::spawn(async move {
            client
                .generate(a.call(request(&format!("r{}", i / 2), P::Refine, S::Analysis)))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let (primary, quota) = common::tally(tasks, F::ClientQuota).await;
    assert_eq!((primary, quota), (10, 20));
    assert_eq!(
        cloud.requests(),
        10,
        "exactly the day quota, across replicas"
    );
    let u = connect(replicas[2].addr)
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
            used: 10,
            limit: 10
        })
    );
    // Every key of client A on one master; B's report r0 is not A's.
    let resp = connect(replicas[1].addr)
        .await
        .generate(b.call(request("r0", P::Refine, S::Analysis)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.budget.unwrap().cloud_calls_used, 1);
    let slot = |key: &str| {
        let url = cluster.node_url(0);
        let key = key.to_string();
        async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async::<u16>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        slot("vra:{reports-python}/quota").await,
        slot("vra:{reports-python}/report:r7").await
    );
    for r in replicas {
        r.shutdown().await;
    }
}

/// `redis://` naming a cluster node, or `redis+cluster://` naming a single node: the gateway
/// refuses to start, naming the setting (exit 2), instead of failing every call later.
async fn a_url_that_does_not_match_the_deployment_exits_2() {
    let cluster = RedisCluster::start(3, 0).await;
    let single = RedisServer::start().await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let single_as_cluster = format!("redis+cluster://127.0.0.1:{}", single.port);
    for (url, expected) in [
        (cluster.node_url(0), "redis+cluster://"),
        (single_as_cluster, "not a cluster node"),
    ] {
        let config = config(&cloud, &local, &[("VRA_LEDGER_URL", url.as_str())]);
        let listeners = server::bind(&config).await.expect("bind");
        let result = server::run(config, listeners, std::future::pending()).await;
        let Err(server::ServeError::Config(e)) = result else {
            panic!("{url}: expected a configuration error, got {result:?}");
        };
        assert_eq!(e.var, "VRA_LEDGER_URL");
        assert!(e.message.contains(expected), "{url}: {}", e.message);
        assert_eq!(server::ServeError::Config(e).exit_code(), 2);
    }
}

/// `VRA_LEDGER_MIN_REPLICAS=1` on three masters with a replica each: a master killed with
/// SIGKILL in the middle of a burst loses no unit — every grant a call used was on its replica,
/// which is promoted — so after the failover no report's cloud calls exceed its cap and the
/// ledger counts at least every cloud request the upstream saw; calls fail safe meanwhile, and
/// cloud calls are granted again once the killed node is back as the new master's replica.
async fn a_master_killed_mid_burst_loses_no_unit() {
    const CAP: usize = 5;
    const REPORTS: usize = 12;
    let mut cluster = RedisCluster::start(3, 1).await;
    cluster.wait_replicated(Duration::from_secs(30)).await;
    let cloud = Sim::start().await.unwrap();
    cloud.set_default(Step::Reply {
        text: "cloud".into(),
        delay: Duration::from_millis(40),
        chunk_delay: Duration::ZERO,
    });
    let local = Sim::start().await.unwrap();
    let url = cluster.url();
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("VRA_LEDGER_MIN_REPLICAS", "1"),
        ("MAX_CLOUD_CALLS", "5"),
        ("VRA_LEDGER_TIMEOUT_MS", "1000"),
    ];
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let reports: Vec<String> = (0..REPORTS).map(|i| format!("failover-{i}")).collect();
    // Each report's calls one after another, every report at once, on all three replicas.
    let burst = |calls: usize| {
        let mut workers = Vec::new();
        for (i, report) in reports.iter().enumerate() {
            let (report, addr) = (report.clone(), addrs[i % 3]);
            workers.push(tokio::spawn(async move {
                let mut client = connect(addr).await;
                for _ in 0..calls {
                    client
                        .generate(tagged(&report))
                        .await
                        .expect("every call is answered (fail-safe while the ledger fails over)");
                }
            }));
        }
        workers
    };

    let first = burst(2 * CAP);
    assert!(
        cloud
            .wait_requests(REPORTS * 2, Duration::from_secs(30))
            .await,
        "the burst reached the cloud"
    );
    // The master holding the most keys: reports of its slots are mid-budget.
    let mut victim = None;
    for i in cluster.masters().await {
        let keys = cluster.dbsize(i).await;
        if victim.is_none_or(|(_, most)| keys > most) {
            victim = Some((i, keys));
        }
    }
    let (victim, keys) = victim.expect("a master");
    assert!(keys > 0, "the killed master holds budgets");
    cluster.kill(victim).await;
    for worker in first {
        worker.await.unwrap();
    }
    // Its replica is promoted; only then does the killed node come back (without persistence
    // it would return empty, and a master that returns before the failover wipes its replica
    // too), as the new master's replica.
    cluster.wait_masters(3, Duration::from_secs(60)).await;
    cluster.wait_ok(Duration::from_secs(60)).await;
    cluster.restart(victim).await;
    cluster.wait_ok(Duration::from_secs(60)).await;
    cluster.wait_replicated(Duration::from_secs(60)).await;

    // Each report asks for its whole cap again: only units the ledger lost could be granted.
    for worker in burst(CAP) {
        worker.await.unwrap();
    }
    let seen = cloud.recorded();
    for (i, report) in reports.iter().enumerate() {
        let needle = format!("report {report}.");
        let upstream = seen
            .iter()
            .filter(|r| r.body.to_string().contains(&needle))
            .count();
        assert!(
            upstream <= CAP,
            "{report}: {upstream} cloud calls, cap {CAP}"
        );
        let counted = usage(addrs[i % 3], report)
            .await
            .budget
            .unwrap()
            .cloud_calls_used as usize;
        assert!(
            counted >= upstream,
            "{report}: the ledger counts {counted} units, the upstream saw {upstream}"
        );
    }

    // New reports on every master: granted again (each replica's cluster client may need a
    // call or two to learn the new slot map, and fails safe meanwhile).
    for i in 0..REPORTS {
        let report = format!("after-failover-{i}");
        let mut client = connect(addrs[i % 3]).await;
        let mut primary = false;
        for _ in 0..20 {
            let resp = client.generate(tagged(&report)).await.unwrap().into_inner();
            if common::tier(&resp) == T::Primary {
                primary = true;
                break;
            }
        }
        assert!(
            primary,
            "{report}: cloud calls granted again after the failover"
        );
    }
    for r in replicas {
        r.shutdown().await;
    }
}

/// A YAML document of `deploy/kubernetes/` by kind and name.
fn manifest(file: &str, kind: &str, name: &str) -> serde_yaml_ng::Value {
    use serde::Deserialize as _;
    let path = format!("{}/deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("read a manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml_ng::Value::deserialize(doc).ok())
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{path}: no {kind} {name}"))
}

/// The Redis Cluster of the Kubernetes manifests, run here: its nodes with the StatefulSet's
/// own arguments (the announced name `localhost` instead of the pod's DNS name, the password
/// of the Secret a stand-in), formed with the Job's replicas per master; three gateways with
/// the ConfigMap's `VRA_LEDGER_MIN_REPLICAS`. The nodes must accept those settings, announce
/// the name (the gateway then reaches every master by it), and every cloud call the gateways
/// grant must be confirmed by a replica, each report's cap exact.
async fn the_kubernetes_ledger_confirms_every_grant_on_a_replica() {
    const PASSWORD: &str = "stand-in-for-the-secret";
    let set = manifest("redis.yaml", "StatefulSet", "redis");
    let mut args: Vec<String> = set["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("the StatefulSet's args")
        .iter()
        .map(|a| a.as_str().expect("a string argument").to_string())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--cluster-announce-hostname")
        .expect("the nodes announce a name");
    args[at + 1] = "localhost".into();
    for arg in &mut args {
        *arg = arg.replace("$(REDIS_PASSWORD)", PASSWORD);
    }
    assert!(
        args.iter().all(|a| !a.contains("$(")),
        "every variable replaced: {args:?}"
    );
    let job = manifest("redis.yaml", "Job", "redis-cluster-create");
    let script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
        .as_str()
        .expect("the Job's script");
    let per_master: usize = script
        .split_whitespace()
        .skip_while(|w| *w != "--cluster-replicas")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("--cluster-replicas N");
    let nodes = set["spec"]["replicas"].as_u64().expect("replicas") as usize;
    let configmap = manifest("configmap.yaml", "ConfigMap", "vra-gateway");
    let min_replicas = configmap["data"]["VRA_LEDGER_MIN_REPLICAS"]
        .as_str()
        .expect("VRA_LEDGER_MIN_REPLICAS");

    let cluster = RedisCluster::start_with(
        nodes / (1 + per_master),
        per_master,
        args,
        Some(PASSWORD.into()),
    )
    .await;
    cluster.wait_replicated(Duration::from_secs(30)).await;
    let mut node = redis::Client::open(cluster.node_url(0))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut node)
        .await
        .unwrap();
    assert!(
        format!("{slots:?}").contains("localhost"),
        "the nodes announce their name, not their address: {slots:?}"
    );

    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = cluster.url();
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("VRA_LEDGER_MIN_REPLICAS", min_replicas),
        ("MAX_CLOUD_CALLS", "3"),
    ];
    let replicas = Replica::start_n(3, &cloud, &local, &settings).await;
    let reports: Vec<String> = (0..9).map(|i| format!("kubernetes-{i}")).collect();
    for (i, report) in reports.iter().enumerate() {
        let mut client = connect(replicas[i % 3].addr).await;
        let mut tiers = Vec::new();
        for _ in 0..5 {
            let resp = client.generate(tagged(report)).await.unwrap().into_inner();
            tiers.push(common::tier(&resp));
        }
        assert_eq!(
            tiers,
            [
                T::Primary,
                T::Primary,
                T::Primary,
                T::Secondary,
                T::Secondary
            ],
            "{report}: its cap of 3, every grant confirmed by a replica"
        );
    }
    assert!(
        cluster
            .keys_per_master()
            .await
            .iter()
            .filter(|&&k| k > 0)
            .count()
            > 1,
        "the reports' budgets spread over more than one master"
    );
    for r in replicas {
        r.shutdown().await;
    }
}

/// `VRA_CACHE=redis` on a cluster: answers spread over the masters (single-key commands, by
/// digest), one replica's answer is another's hit, and a purge — one client's, then all —
/// reaches every master.
async fn the_response_cache_spreads_over_the_masters_and_purges_on_each() {
    const PROMPTS: usize = 12;
    let ops = TestClient::new("ops", "vra_token-ops-for-the-cluster-cache-01").admin();
    let bob = TestClient::new("bob", "vra_token-bob-for-the-cluster-cache-02");
    let file = write_clients_file(&[ops, bob]);
    let cluster = RedisCluster::start(3, 0).await;
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let url = cluster.url();
    let settings = [
        ("VRA_LEDGER_URL", url.as_str()),
        ("VRA_CACHE", "redis"),
        ("VRA_LEDGER_TIMEOUT_MS", "2000"),
        ("VRA_CLIENTS_FILE", file.to_str().unwrap()),
    ];
    let replicas = Replica::start_n(2, &cloud, &local, &settings).await;
    // Prompt `i` on replica `on`.
    let ask = |who: TestClient, i: usize, on: usize, mode: pb::CacheMode| {
        let addr = replicas[on % 2].addr;
        async move {
            let mut req = pb::GenerateRequest {
                prompt: format!("Cached prompt {i}."),
                ..request("cache-report", P::Refine, S::Analysis)
            };
            req.options = Some(pb::GenerationOptions {
                cache: mode as i32,
                ..Default::default()
            });
            connect(addr).await.generate(who.call(req)).await
        }
    };
    for who in [ops, bob] {
        for i in 0..PROMPTS {
            ask(who, i, i, pb::CacheMode::Unspecified).await.unwrap();
        }
    }
    let sent = cloud.requests();
    assert_eq!(sent, 2 * PROMPTS);
    // The other replica's hits (an answer is written after its response: a hit may need a retry).
    let cached = |who: TestClient| async move {
        let mut hits = 0;
        for i in 0..PROMPTS {
            if ask(who, i, i + 1, pb::CacheMode::OnlyIfCached)
                .await
                .is_ok()
            {
                hits += 1;
            }
        }
        hits
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cached(ops).await + cached(bob).await < 2 * PROMPTS {
        assert!(
            std::time::Instant::now() < deadline,
            "answers never all stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cloud.requests(), sent, "hits send nothing upstream");
    let holding = cluster.keys_per_master().await;
    assert!(
        holding.iter().filter(|&&k| k > 0).count() > 1,
        "answers spread over the masters: {holding:?}"
    );

    let mut admin = connect(replicas[0].addr).await;
    let purged = admin
        .purge_cache(ops.call(pb::PurgeCacheRequest {
            client_id: Some("bob".into()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, PROMPTS as u64);
    assert_eq!((cached(ops).await, cached(bob).await), (PROMPTS, 0));
    let purged = admin
        .purge_cache(ops.call(pb::PurgeCacheRequest { client_id: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, PROMPTS as u64);
    assert_eq!(cached(ops).await, 0);
    for r in replicas {
        r.shutdown().await;
    }
}

/// A call whose prompt names its report, so the upstream's requests can be counted per report.
fn tagged(report: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: format!("Write report {report}."),
        ..request(report, P::Refine, S::Analysis)
    }
}
