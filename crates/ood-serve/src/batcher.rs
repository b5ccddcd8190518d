//! Micro-batching: concurrent requests are gathered and go through the model together.
//!
//! One task owns the model. It takes the first waiting image, then gathers more for up to
//! `wait` or until `max_batch` images, runs the batch on a blocking thread (inference is CPU
//! work that would otherwise stall the async workers) and answers each request through its
//! oneshot channel. Only one batch runs at a time: the compute threads are all used by one
//! batch already, and while it runs the next requests queue up, so under load batches fill by
//! themselves without waiting.

use crate::model::{Model, Prediction};
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

/// Counters, for `/healthz` and the tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub predictions: AtomicU64,
    pub batches: AtomicU64,
    pub largest_batch: AtomicU64,
}

/// The handle requests use to reach the batching task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
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
    pub fn start(model: Arc<Model>, max_batch: usize, wait: Duration, queue: usize) -> Batcher {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(Stats::default());
        tokio::spawn(run(model, rx, max_batch.max(1), wait, stats.clone()));
        Batcher { tx, stats }
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
}

async fn run(
    model: Arc<Model>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    wait: Duration,
    stats: Arc<Stats>,
) {
    while let Some(first) = rx.recv().await {
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
            continue;
        }
        let n = jobs.len();
        let mut pixels = Vec::with_capacity(n * model.image_len());
        for j in &jobs {
            pixels.extend_from_slice(&j.pixels);
        }
        let m = model.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || m.predict(&pixels)).await;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.predictions.fetch_add(n as u64, Ordering::Relaxed);
        stats.largest_batch.fetch_max(n as u64, Ordering::Relaxed);
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
}
