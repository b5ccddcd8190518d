//! Micro-batching: concurrent requests are gathered and go through the model together.
//!
//! One task gathers the batches. It takes the first waiting image, then more for up to `wait`
//! or until `max_batch` images, and hands the batch to a free *lane*: a compute pool of
//! `threads_per_batch` threads, entered from a blocking thread (inference is CPU work that
//! would otherwise stall the async workers). Each request is answered through its oneshot
//! channel.
//!
//! By default there is one single-threaded lane per core, so batches run side by side rather
//! than one batch across all cores. The model alone runs about as fast either way (the `lanes`
//! example: 0.93-1.10x), but a single batch across all cores leaves them idle between its
//! steps and whenever one thread has the work, and its clients, all waiting for it, send
//! nothing to prepare meanwhile: under `cargo xtask loadtest`, 14-17% of the CPU sat idle, and
//! 8% with lanes, for 1,663-1,792 predictions/s against 1,440-1,629. While every lane is busy
//! the next requests queue up, so under load batches fill by themselves without waiting.

use crate::model::{Model, Prediction};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a request gets back: the prediction, or why the model failed.
pub type Answer = Result<Prediction, String>;

struct Job {
    pixels: Vec<f32>,
    reply: oneshot::Sender<Answer>,
}

/// Counters, for `/healthz`, `/metrics` and the tests.
#[derive(Debug)]
pub struct Stats {
    pub predictions: AtomicU64,
    pub batches: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Images per batch (buckets 1, 2, 4, ... 128), for `/metrics`.
    pub batch_sizes: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            predictions: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
            batch_sizes: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
        }
    }
}

/// The handle requests use to reach the batching task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
}

/// How images are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most images in one batch.
    pub max_batch: usize,
    /// How long a batch waits for more images once it has one (unless it is full).
    pub wait: Duration,
    /// Lanes: most batches through the model at once.
    pub lanes: usize,
    /// Compute threads of each lane.
    pub threads_per_batch: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            // On a single-threaded lane a batch of 8 already costs about as much per image as
            // larger ones, and larger batches make the slowest requests slower: under `cargo
            // xtask loadtest`, p99 44-50 ms with 8 against 51-65 ms with 64.
            max_batch: 8,
            // A free lane starts on what is queued at once: under load, the queue fills while
            // the lanes are busy, and waiting for more (2 ms before) measured slower.
            wait: Duration::ZERO,
            // One single-threaded lane per core (see the module's documentation for why).
            lanes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads_per_batch: 1,
        }
    }
}

/// Why an image was not answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: too many images waiting.
    Busy,
    /// The batching task has stopped (the server is shutting down).
    Stopped,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime. It ends when every handle is
    /// dropped. `queue` bounds the images waiting (beyond it, [`Refused::Busy`]).
    /// Fails when a lane's threads cannot be started.
    pub fn start(
        model: Arc<Model>,
        policy: BatchPolicy,
        queue: usize,
    ) -> Result<Batcher, rayon::ThreadPoolBuildError> {
        let lanes = (0..policy.lanes.max(1))
            .map(|lane| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(policy.threads_per_batch.max(1))
                    .thread_name(move |i| format!("ood-lane{lane}-{i}"))
                    .build()
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(
            model,
            rx,
            policy.max_batch,
            policy.wait,
            lanes,
            stats.clone(),
        ));
        Ok(Batcher { tx, stats })
    }

    /// Classifies one prepared image (28 * 28 values in [0, 1]).
    pub async fn predict(&self, pixels: Vec<f32>) -> Result<Answer, Refused> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Job { pixels, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Refused::Busy,
                mpsc::error::TrySendError::Closed(_) => Refused::Stopped,
            })?;
        answer.await.map_err(|_| Refused::Stopped)
    }

    /// Images waiting in the queue for a free lane.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

async fn run(
    model: Arc<Model>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    wait: Duration,
    lanes: Vec<Lane>,
    stats: Arc<Stats>,
) {
    let max_batch = max_batch.max(1);
    // The free lanes; a batch takes one and gives it back when done.
    let (free_tx, mut free_rx) = mpsc::unbounded_channel();
    for lane in lanes {
        let _ = free_tx.send(lane);
    }
    loop {
        // A free lane first: while every lane is busy, requests gather in the queue.
        let Some(lane) = free_rx.recv().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        // What is already queued (requests that arrived during the last batch) joins at once.
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Then wait a little for more, unless the batch is full.
        if jobs.len() < max_batch {
            let deadline = tokio::time::Instant::now() + wait;
            while jobs.len() < max_batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // A client that gave up no longer needs its image computed.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            let _ = free_tx.send(lane);
            continue;
        }
        let (model, stats, free_tx) = (model.clone(), stats.clone(), free_tx.clone());
        tokio::spawn(async move {
            answer(&model, &lane, jobs, &stats).await;
            let _ = free_tx.send(lane);
        });
    }
}

/// A compute pool that runs one batch at a time.
type Lane = Arc<rayon::ThreadPool>;

/// Runs one batch on `lane` (entered from a blocking thread) and answers each of its requests.
async fn answer(model: &Arc<Model>, lane: &Lane, jobs: Vec<Job>, stats: &Stats) {
    let n = jobs.len();
    let mut pixels = Vec::with_capacity(n * model.image_len());
    for j in &jobs {
        pixels.extend_from_slice(&j.pixels);
    }
    let m = model.clone();
    let started = std::time::Instant::now();
    let lane = lane.clone();
    let result = tokio::task::spawn_blocking(move || lane.install(|| m.predict(&pixels))).await;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.predictions.fetch_add(n as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(n as u64, Ordering::Relaxed);
    stats.batch_sizes.observe(n as f64);
    tracing::debug!(
        batch = n,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "batch done"
    );
    match result {
        Ok(Ok(predictions)) => {
            for (job, p) in jobs.into_iter().zip(predictions) {
                // The client may have gone; nothing to do then.
                let _ = job.reply.send(Ok(p));
            }
        }
        Ok(Err(e)) => {
            tracing::error!("batch of {n} failed: {e}");
            for job in jobs {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
        Err(e) => {
            tracing::error!("batch of {n} panicked: {e}");
            for job in jobs {
                let _ = job.reply.send(Err("the model failed on this batch".into()));
            }
        }
    }
}
