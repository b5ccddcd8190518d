//! Training memory must not grow with the number of steps.
//!
//! A counting global allocator measures the peak of live heap bytes during `train`, on candle's
//! stock kernels (the path a GPU runs), for one epoch of few and of many steps. A step that keeps
//! anything of the previous step alive (a gradient's autograd graph held by the optimizer's
//! moments, say) makes the peak grow with the step count; a correct loop's peak depends only on
//! the batch size. Synthetic images, so it needs no MNIST.

use candle_core::Device;
use ood_data::idx::Images;
use ood_data::source::LabeledImages;
use ood_data::{ClassSpec, Splits};
use ood_model::ops::{set_kernels, Kernels};
use ood_train::{train, TrainConfig};
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `n` random 28x28 images labelled with the known digits in turn.
fn synthetic(n: usize, seed: u64) -> LabeledImages {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    LabeledImages {
        images: Images::new(28, 28, (0..n * 784).map(|_| rng.random()).collect()),
        labels: (0..n).map(|i| 1 + (i % 9) as u8).collect(),
    }
}

/// The peak of live heap bytes above the level before `train`, for one epoch of `steps` steps.
fn training_peak(steps: usize) -> usize {
    let mut config = TrainConfig::new("tiny", &ClassSpec::default()).unwrap();
    config.epochs = 1;
    config.batch_size = 16;
    config.eval_batch_size = 16;
    config.warmup_steps = 1;
    let splits = Splits {
        train: synthetic(steps * config.batch_size, 1),
        validation: synthetic(16, 2),
        test_known: synthetic(16, 3),
        test_unknown: synthetic(16, 4),
        pool_size: steps * config.batch_size + 16,
    };
    let dir = tempfile::tempdir().unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    train(
        &config,
        &splits,
        &Device::Cpu,
        dir.path(),
        false,
        &AtomicBool::new(false),
    )
    .unwrap();
    PEAK.load(Ordering::Relaxed) - before
}

#[test]
fn stock_kernel_training_memory_does_not_grow_with_steps() {
    // The stock path is the one that leaked: its gradients carry autograd graphs.
    set_kernels(Kernels::Candle);
    // Pay one-off allocations (thread pools, caches) before measuring.
    training_peak(2);
    let few = training_peak(4);
    let many = training_peak(24);
    let growth = many as f64 / few as f64;
    eprintln!("peak live heap: 4 steps {few} B, 24 steps {many} B ({growth:.2}x)");
    // The training set itself grows by 20 x 16 images (250 KB as bytes and f32): allow that
    // and some slack, far below what 20 more retained steps would add.
    assert!(
        many < few + few / 4,
        "peak live heap grew with the step count: {few} B after 4 steps, {many} B after 24"
    );
}
