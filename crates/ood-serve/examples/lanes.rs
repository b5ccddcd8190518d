//! How the server should spend its cores on the model: one pool of all threads taking the
//! batches in turn, or one single-threaded lane per core, batches side by side. Both are timed
//! alternately, in the same process, as `rounds` rounds of `batches` batches:
//!
//! ```text
//! cargo run --release -p ood-serve --example lanes -- [BATCH] [ROUNDS]
//! ```
//!
//! The image is a drawn stroke and the model the shipped one, as in `ood serve`.

use ood_serve::model::{Model, ModelSource};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ood_model::tune_allocator();
    let cores = ood_model::configure_threads(None);
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let model = Arc::new(Model::load(
        &ModelSource::Shipped { calibration: None },
        &candle_core::Device::Cpu,
    )?);
    let side = model.image_side();
    // A vertical bar: a "1".
    let one: Vec<f32> = (0..side * side)
        .map(|i| {
            f32::from(u8::from(
                (11..16).contains(&(i % side)) && (5..24).contains(&(i / side)),
            ))
        })
        .collect();
    let pixels = Arc::new(one.repeat(batch));
    let shared = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
    let lanes = (0..cores)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batches = 20 * cores;
    model.predict(&pixels)?;
    println!("{cores} cores, batches of {batch}: images/s");
    for round in 1..=rounds {
        let t = Instant::now();
        for _ in 0..batches {
            shared.install(|| model.predict(&pixels))?;
        }
        let one_pool = (batches * batch) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let workers: Vec<_> = lanes
            .iter()
            .map(|lane| {
                let (lane, model, pixels) = (lane.clone(), model.clone(), pixels.clone());
                std::thread::spawn(move || {
                    for _ in 0..batches / cores {
                        lane.install(|| model.predict(&pixels)).map(drop)?;
                    }
                    Ok::<_, ood_serve::ServeError>(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a lane panicked")?;
        }
        let side_by_side = (batches / cores * cores * batch) as f64 / t.elapsed().as_secs_f64();
        println!(
            "round {round}: one {cores}-thread pool {one_pool:.0}, {cores} lanes {side_by_side:.0} ({:.2}x)",
            side_by_side / one_pool
        );
    }
    Ok(())
}
