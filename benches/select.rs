//! Cost of one pick per algorithm, at 2, 10, 100 and 1000 backends, alone and with a second
//! thread picking from the same selector at the same time (contention on shared atomics).
//!
//! Run: `cargo bench --bench select`. Results: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use steelyard::config::Algorithm;
use steelyard::upstream::select::{self, PickContext, SelectOptions};
use steelyard::upstream::Backend;

const SIZES: [usize; 4] = [2, 10, 100, 1000];

fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let addr = ([127, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8000).into();
            let b = Arc::new(Backend::new(addr, 1 + (i % 3) as u32));
            b.observe_latency(
                Duration::from_micros(500 + (i as u64 % 7) * 100),
                Duration::from_secs(10),
            );
            b
        })
        .collect()
}

/// A different key hash for every pick, as real traffic would have.
fn key(i: u64) -> Option<u64> {
    Some(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for &(name, algorithm) in Algorithm::ALL {
        for n in SIZES {
            let backends = backends(n);
            let selector = select::build(algorithm, &backends, &SelectOptions::default());
            let mut i = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    i += 1;
                    let ctx = PickContext {
                        hash: key(i),
                        exclude: &[],
                    };
                    black_box(selector.pick(black_box(&backends), &ctx))
                })
            });
        }
    }
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_contended");
    for &(name, algorithm) in Algorithm::ALL {
        for n in SIZES {
            let backends = Arc::new(backends(n));
            let selector: Arc<dyn select::Select> =
                Arc::from(select::build(algorithm, &backends, &SelectOptions::default()));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    // A second thread picks from the same selector for the whole measurement.
                    let stop = Arc::new(AtomicBool::new(false));
                    let rival = {
                        let (stop, selector, backends) =
                            (Arc::clone(&stop), Arc::clone(&selector), Arc::clone(&backends));
                        std::thread::spawn(move || {
                            let mut i = 1u64 << 40;
                            while !stop.load(Ordering::Relaxed) {
                                i += 1;
                                let ctx = PickContext {
                                    hash: key(i),
                                    exclude: &[],
                                };
                                black_box(selector.pick(&backends, &ctx));
                            }
                        })
                    };
                    let start = Instant::now();
                    for i in 0..iters {
                        let ctx = PickContext {
                            hash: key(i),
                            exclude: &[],
                        };
                        black_box(selector.pick(black_box(&backends), &ctx));
                    }
                    let elapsed = start.elapsed();
                    stop.store(true, Ordering::Relaxed);
                    let _ = rival.join();
                    elapsed
                })
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, two_threads
}
criterion_main!(benches);
