//! Times the training restyling (`--pen-styles`) on 4,096 MNIST training digits, all effects
//! and each alone, on one thread: what the pens add to an epoch of training.
//!
//! `OOD_DATA_DIR=DIR cargo run --release -p ood-data --example restyle_timing`
use ood_data::batch::to_unit_f32;
use ood_data::pen::{restyle_batch, PenConfig, PenEffect};
use ood_data::source::{resolve_data_root, DatasetDir, Split};
use rand::SeedableRng;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = resolve_data_root(None);
    let train = DatasetDir::in_root(&root, "mnist")?.load(Split::Train)?;
    let side = train.images.rows;
    let n = 4096;
    let pixels: Vec<f32> = to_unit_f32(&train)[..n * side * side].to_vec();
    let all = PenConfig::default();
    for (name, config) in [
        ("all", all),
        ("elastic", all.only(&[PenEffect::Elastic])),
        ("canvas", all.only(&[PenEffect::Canvas])),
        ("binarize", all.only(&[PenEffect::Binarize])),
        ("width", all.only(&[PenEffect::Width])),
    ] {
        let mut p = pixels.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let t = Instant::now();
        restyle_batch(&mut p, side, &config, &mut rng);
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "{name}: {us:.0} us per image, {:.1} s per 49k-image epoch",
            us * 49077.0 / 1e6
        );
    }
    Ok(())
}
