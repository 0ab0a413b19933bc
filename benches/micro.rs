//! Micro-benchmarks of the gateway's per-call building blocks: route resolution,
//! in-memory budget reservation (uncontended and contended), and stream decoding per MiB.
//!
//! Run: `cargo bench --bench micro` (bench/run.sh bounds the time with
//! `-- --warm-up-time 1 --measurement-time 3`). Ids are `group/function`; bench/run.sh's
//! report reads them from criterion's estimates.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vra_gateway::budget::memory::MemoryLedger;
use vra_gateway::domain::{Phase, SectionType};
use vra_gateway::providers::ollama::NdjsonDecoder;
use vra_gateway::providers::openai::SseDecoder;
use vra_gateway::providers::stream::{Decoder, LineBuffer, feed};
use vra_gateway::routing::{self, Policy};

/// Tasks contending for one report in the contended reservation benchmark.
const TASKS: u64 = 64;
/// Size of the decoded stream in the parsing benchmarks.
const STREAM_BYTES: usize = 1 << 20;
/// Network chunk size fed to the decoders (a typical socket read).
const CHUNK: usize = 16 * 1024;

fn route(c: &mut Criterion) {
    let policy = Policy {
        hybrid: true,
        primary_cloud: true,
        secondary_cloud: false,
    };
    let mut g = c.benchmark_group("route");
    // DRAFT x METHODOLOGY is the deepest arm of the matrix.
    g.bench_function("resolve", |b| {
        b.iter(|| {
            routing::route(
                black_box(policy),
                black_box(Phase::Draft),
                black_box(SectionType::Methodology),
            )
        })
    });
    g.finish();
}

fn ledger(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    let ttl = Duration::from_secs(86_400);

    let one = MemoryLedger::new(ttl);
    g.bench_function("reserve_uncontended", |b| {
        b.iter(|| one.reserve_now(black_box("0f3c2a9e-0000-4000-8000-00000000002a"), u32::MAX))
    });

    let many = MemoryLedger::new(ttl);
    let ids: Vec<String> = (0..100_000u32)
        .map(|i| format!("{i:08x}-0000-4000-8000-{i:012x}"))
        .collect();
    for id in &ids {
        many.reserve_now(id, u32::MAX).expect("the ledger has room");
    }
    let mut next = 0usize;
    g.bench_function("reserve_uncontended_100k_reports", |b| {
        b.iter(|| {
            next = (next + 1) % ids.len();
            many.reserve_now(black_box(&ids[next]), u32::MAX)
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let hot = Arc::new(MemoryLedger::new(ttl));
    g.bench_function("reserve_64_tasks_one_report", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(TASKS);
            let elapsed = rt.block_on(async {
                let started = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let l = hot.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                let _ = black_box(l.reserve_now("hot-report", u32::MAX));
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("reservation task");
                }
                started.elapsed()
            });
            // Scale the time of `per_task * TASKS` reservations to `iters` of them.
            elapsed.mul_f64(iters as f64 / (per_task * TASKS) as f64)
        })
    });
    g.finish();
}

/// About `STREAM_BYTES` of frames, cut into network-sized chunks.
fn stream_input(frame: &str, end: &str) -> (Vec<Vec<u8>>, usize) {
    let mut all = frame.repeat(STREAM_BYTES / frame.len() + 1).into_bytes();
    all.extend_from_slice(end.as_bytes());
    let len = all.len();
    (all.chunks(CHUNK).map(<[u8]>::to_vec).collect(), len)
}

fn decode_all(chunks: &[Vec<u8>], decoder: &mut impl Decoder) -> usize {
    let mut lines = LineBuffer::default();
    let mut out = VecDeque::new();
    let mut events = 0;
    for chunk in chunks {
        feed(&mut lines, decoder, chunk, &mut out).expect("valid stream");
        events += out.len();
        out.clear();
    }
    events
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    let (sse, len) = stream_input(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"finish_reason\":null}]}\n\n",
        "data: [DONE]\n\n",
    );
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("sse_1mib", |b| {
        b.iter(|| decode_all(&sse, &mut SseDecoder::default()))
    });
    let (ndjson, len) = stream_input(
        "{\"model\":\"llama3:8b\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\" token\"},\"done\":false}\n",
        "{\"model\":\"llama3:8b\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"eval_count\":1}\n",
    );
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("ndjson_1mib", |b| {
        b.iter(|| decode_all(&ndjson, &mut NdjsonDecoder))
    });
    g.finish();
}

criterion_group!(benches, route, ledger, stream);
criterion_main!(benches);
