//! Micro-benchmark of the training-time pens: `cargo bench -p ood-data` (under a minute).
//!
//! `restyle_batch` on a batch of 128 synthetic digits, with the default pens (`--pen`) and with
//! the canvas redraw alone (what `--pen-pairs` draws for every digit), on the global thread
//! pool (set `RAYON_NUM_THREADS`) and on one thread. The choices are drawn in order on one
//! thread either way; only their application runs in parallel.

use criterion::{criterion_group, criterion_main, Criterion};
use ood_data::pen::{restyle_batch, PenConfig};
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const BATCH: usize = 128;
const SIDE: usize = 28;

/// Digit-like images: a ring or a bar of grey, anti-aliased ink, a different one per image.
fn digits() -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    (0..BATCH)
        .flat_map(|i| {
            let ring = i % 2 == 0;
            let radius = rng.random_range(5.0f32..9.0);
            let ink: Vec<f32> = (0..SIDE * SIDE)
                .map(|p| {
                    let (y, x) = ((p / SIDE) as f32 - 13.5, (p % SIDE) as f32 - 13.5);
                    let distance = if ring {
                        ((y * y + x * x).sqrt() - radius).abs()
                    } else {
                        x.abs().max(y.abs() - radius)
                    };
                    (2.0 - distance).clamp(0.0, 1.0)
                })
                .collect();
            ink
        })
        .collect()
}

fn pens(c: &mut Criterion) {
    let images = digits();
    let canvas_only = PenConfig {
        elastic: 0.0,
        canvas: 1.0,
        ..PenConfig::default()
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    let mut g = c.benchmark_group("restyle_batch_128");
    for (name, config) in [("pens", PenConfig::default()), ("canvas", canvas_only)] {
        let run = || {
            let mut v = images.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            restyle_batch(&mut v, SIDE, &config, &mut rng);
            black_box(v)
        };
        g.bench_function(format!("{name}_pool"), |b| b.iter(run));
        g.bench_function(format!("{name}_1_thread"), |b| {
            b.iter(|| one_thread.install(run))
        });
    }
    g.finish();
}

criterion_group!(benches, pens);
criterion_main!(benches);
