//! The candle-ood HTTP server behind `ood serve`, and the default model shipped with the code.
//!
//! It answers `POST /v1/predict` with a class or "unknown" for one image (a PNG, JPEG or PGM
//! file of any size, prepared as MNIST was, or 784 ready pixels as JSON), with the
//! probabilities, the score(s) the decision rests on against their thresholds and the
//! decoder's reconstruction; `GET /healthz` says it is up; `GET /` is a page to draw digits
//! on; `GET /metrics` is for monitoring ([`metrics`]). Concurrent requests are micro-batched
//! through the model ([`batcher`]); everything that loads or calls a model is in [`model`],
//! which `ood predict` uses too. [`shipped`] embeds the default model of
//! `assets/models/default/`, so nothing needs training to be tried. [`connections`] accepts
//! and times connections, so that slow or idle clients cannot hold the server.
//!
//! It is not the command line (`ood-cli` parses arguments and calls [`serve`]), it trains and
//! calibrates nothing, and it holds no scoring maths (that is `ood-eval`).
//!
//! ```no_run
//! # async fn run() -> Result<(), ood_serve::ServeError> {
//! use ood_serve::model::{Model, ModelSource};
//! let model = Model::load(&ModelSource::Shipped { calibration: None }, &candle_core::Device::Cpu)?;
//! let listener = ood_serve::connections::bind("127.0.0.1:8080").await
//!     .map_err(ood_serve::ServeError::Server)?;
//! ood_serve::serve(listener, model, ood_serve::ServeConfig::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! }).await
//! # }
//! ```

pub mod batcher;
pub mod connections;
pub mod metrics;
pub mod model;
pub mod shipped;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
pub use batcher::BatchPolicy;
use batcher::{Batcher, Refused};
use http_body_util::BodyExt;
use image::ImageEncoder as _;
use model::{Model, Prediction};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Eval(#[from] ood_eval::EvalError),
    #[error(transparent)]
    Model(#[from] ood_model::ModelError),
    #[error("{0}")]
    BadInput(String),
    #[error("server: {0}")]
    Server(std::io::Error),
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

/// The server's limits and batching. The defaults are those of `ood serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How requests are batched through the model.
    pub batching: BatchPolicy,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests handled at once; beyond it, 503 (load is shed rather than queued without end).
    pub max_in_flight: usize,
    /// Largest image side in pixels; larger images get 400 before they are decoded.
    pub max_image_side: u32,
    /// A request taking longer, from its head to its answer, gets 408.
    pub request_timeout: Duration,
    /// A request's body must arrive within this (from its head); else 408.
    pub body_timeout: Duration,
    /// A request's head must arrive within this, from the accept or from its first byte on a
    /// kept-alive connection; else the connection is closed ([`connections`]).
    pub header_timeout: Duration,
    /// A kept-alive connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most, lowered to what the file-descriptor limit allows
    /// ([`connections::connection_cap`]). At the cap the idlest connection makes room.
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            batching: BatchPolicy::default(),
            // A phone photo fits; a 10 MB upload does not.
            max_body_bytes: 8 << 20,
            max_in_flight: 256,
            max_image_side: 4096,
            request_timeout: Duration::from_secs(30),
            // An 8 MiB photo over a slow mobile link (about 5 Mbit/s) takes 13 s.
            body_timeout: Duration::from_secs(20),
            // A browser sends its head in one packet; 10 s is generous on any real link and
            // bounds what a slowloris client holds.
            header_timeout: Duration::from_secs(10),
            // The page's user draws the next digit within a minute, and reuses the connection.
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

#[derive(Clone)]
struct App {
    model: Arc<Model>,
    batcher: Batcher,
    in_flight: Arc<Semaphore>,
    config: Arc<ServeConfig>,
    metrics: Arc<metrics::Metrics>,
}

/// The routes, with the batching task started on the current tokio runtime.
pub fn router(model: Arc<Model>, config: ServeConfig) -> Result<Router> {
    Ok(app(model, config)?.0)
}

/// The routes and their metrics (which [`serve`] also feeds with its connections).
fn app(model: Arc<Model>, config: ServeConfig) -> Result<(Router, Arc<metrics::Metrics>)> {
    let batcher = Batcher::start(
        model.clone(),
        config.batching,
        // Each request in flight holds at most one image in the queue.
        config.max_in_flight,
    )
    .map_err(|e| ServeError::Server(std::io::Error::other(format!("compute threads: {e}"))))?;
    let metrics = Arc::new(metrics::Metrics::new(batcher.stats.batch_sizes.clone()));
    metrics.set_model(
        model.checkpoint_path().display().to_string(),
        model.checkpoint_sha256().to_string(),
        model.preset().to_string(),
        model.rule(),
    );
    let app = App {
        model,
        batcher,
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config: Arc::new(config.clone()),
        metrics: metrics.clone(),
    };
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO))
        .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO));
    let router = Router::new()
        .route("/", get(page_html))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/predict", post(predict))
        .fallback(not_found)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            config.request_timeout,
            request_timeout,
        ))
        // A handler that panics answers 500 as JSON, and its connection lives on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server failed on this request",
                )
            },
        ))
        // Outside the timeout, so that a 408 is counted and timed too.
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            metrics::track,
        ))
        .layer(trace);
    Ok((router, metrics))
}

/// A request that takes longer than `limit` gets 408 with the JSON error shape (its handler
/// is dropped).
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took over {} s: try again", limit.as_secs_f64()),
        ),
    }
}

/// Serves `model` on `listener` until `shutdown` completes, then finishes the requests under
/// way (graceful shutdown) and returns. Call [`warm_up`] first so the first request does not
/// pay for the kernels' first use.
pub async fn serve(
    listener: tokio::net::TcpListener,
    model: Model,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let limits = connections::Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
        shutdown_grace: config.request_timeout + Duration::from_secs(1),
    };
    let (router, metrics) = app(Arc::new(model), config)?;
    connections::serve(listener, router, limits, metrics, shutdown).await;
    Ok(())
}

/// Runs the model once on a blank image (a few milliseconds), so that allocations and the
/// kernels' first use are not paid by the first request.
pub fn warm_up(model: &Model) -> Result<()> {
    model.predict(&vec![0.0; model.image_len()]).map(|_| ())
}

// ----------------------------------------------------------------------------------------------
// The page

async fn page_html() -> impl IntoResponse {
    static_file("text/html; charset=utf-8", include_str!("page/index.html"))
}

async fn page_js() -> impl IntoResponse {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    )
}

async fn page_css() -> impl IntoResponse {
    static_file("text/css; charset=utf-8", include_str!("page/style.css"))
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

// ----------------------------------------------------------------------------------------------
// Health

#[derive(Serialize)]
struct Health {
    status: &'static str,
    model: ModelInfo,
    predictions: u64,
    batches: u64,
    largest_batch: u64,
    limits: Limits,
}

/// The limits in force, so that a client (the load test) can check them.
#[derive(Serialize)]
struct Limits {
    header_timeout_s: f64,
    idle_timeout_s: f64,
    body_timeout_s: f64,
    request_timeout_s: f64,
    max_connections: usize,
    max_body_bytes: usize,
}

#[derive(Serialize)]
struct ModelInfo {
    checkpoint: String,
    sha256: String,
    preset: String,
    classes: Vec<u8>,
    rule: String,
}

async fn healthz(State(app): State<App>) -> Json<Health> {
    let s = &app.batcher.stats;
    Json(Health {
        status: "ok",
        model: ModelInfo {
            checkpoint: app.model.checkpoint_path().display().to_string(),
            sha256: app.model.checkpoint_sha256().to_string(),
            preset: app.model.preset().to_string(),
            classes: app.model.known_classes().to_vec(),
            rule: app.model.rule(),
        },
        predictions: s.predictions.load(Ordering::Relaxed),
        batches: s.batches.load(Ordering::Relaxed),
        largest_batch: s.largest_batch.load(Ordering::Relaxed),
        limits: Limits {
            header_timeout_s: app.config.header_timeout.as_secs_f64(),
            idle_timeout_s: app.config.idle_timeout.as_secs_f64(),
            body_timeout_s: app.config.body_timeout.as_secs_f64(),
            request_timeout_s: app.config.request_timeout.as_secs_f64(),
            max_connections: connections::connection_cap(app.config.max_connections),
            max_body_bytes: app.config.max_body_bytes,
        },
    })
}

async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        app.metrics.render(app.batcher.queue_depth()),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such page: try GET /, POST /v1/predict, GET /healthz or GET /metrics",
    )
}

// ----------------------------------------------------------------------------------------------
// Predictions

/// Every error is `{"error": "..."}` with its status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    (
        status,
        Json(E {
            error: message.into(),
        }),
    )
        .into_response()
}

/// The JSON input: one image of 28 * 28 values in [0, 1], row-major, white ink on black,
/// already prepared as MNIST was (an MNIST IDX image divided by 255). It is fed as it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PixelsBody {
    pixels: Vec<f64>,
}

/// The answer for one image.
#[derive(Serialize)]
struct Answer {
    /// The digit, or null when the image is unknown.
    class: Option<u8>,
    /// "digit" or "unknown".
    decision: &'static str,
    /// The classifier's best guess, whether or not it was accepted.
    best_guess: u8,
    /// Each known class with its softmax probability.
    probabilities: Vec<ClassProbability>,
    max_softmax: f64,
    reconstruction_error: f64,
    /// The rule in force, in words.
    rule: String,
    /// What the decision rests on: the rule's score with its threshold, then its parts
    /// (each with its p-value) for the acceptance rule; both tests for the report's rule.
    scores: Vec<ood_eval::calibration::Part>,
    /// The 28x28 image the model saw, as a base64 PNG.
    input_png: String,
    /// The decoder's reconstruction of the noised image, as a base64 PNG.
    reconstruction_png: String,
}

#[derive(Serialize)]
struct ClassProbability {
    class: u8,
    probability: f64,
}

enum Input {
    Image,
    Pixels,
}

const IMAGE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/x-portable-graymap",
    "image/x-portable-anymap",
    "image/x-portable-bitmap",
    "image/x-portable-pixmap",
    "application/octet-stream",
];

fn input_kind(headers: &HeaderMap) -> Result<Input, Box<Response>> {
    let unsupported = |what: String| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{what}: send an image (Content-Type image/png, image/jpeg or \
                 image/x-portable-graymap) or 784 pixels (application/json)"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(Box::new(unsupported("no Content-Type".into())));
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" {
        Ok(Input::Pixels)
    } else if IMAGE_TYPES.contains(&mime.as_str()) {
        Ok(Input::Image)
    } else {
        Err(Box::new(unsupported(format!(
            "Content-Type {mime:?} is not supported"
        ))))
    }
}

/// A body over the limit is still read (and thrown away) up to this many bytes before the 413
/// goes out, as nginx's lingering close does: a server that closes a connection with unread
/// data makes the kernel send a reset, which can destroy the 413 before the client reads it.
/// Larger bodies are cut off at once.
const DRAIN_LIMIT: u64 = 64 << 20;
/// How long draining an oversized body may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, Box<Response>> {
    let too_large = || {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes"),
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::new();
    let mut total = 0u64;
    let over = declared.is_some_and(|n| n > limit as u64);
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = if total > limit as u64 || over {
            // Draining: bounded in bytes and time.
            if total > DRAIN_LIMIT {
                return Err(too_large());
            }
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Err(too_large()),
            }
        } else {
            body.frame().await
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )))
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    if total <= limit as u64 && !over {
                        bytes.extend_from_slice(&data);
                    }
                }
            }
        }
    }
    if over || total > limit as u64 {
        return Err(too_large());
    }
    Ok(bytes)
}

fn parse_pixels(bytes: &[u8], expected: usize) -> Result<Vec<f32>, String> {
    let body: PixelsBody = serde_json::from_slice(bytes).map_err(|e| {
        format!("not the JSON expected ({e}): send {{\"pixels\": [{expected} numbers in 0..1]}}")
    })?;
    if body.pixels.len() != expected {
        return Err(format!(
            "{} pixels: send {expected} (28x28, row-major)",
            body.pixels.len()
        ));
    }
    if let Some((i, v)) = body
        .pixels
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        return Err(format!(
            "pixel {i} is {v}: pixels are in 0..1 (0 black background, 1 white ink)"
        ));
    }
    Ok(body.pixels.iter().map(|&v| v as f32).collect())
}

/// Largest encoded image decoded on the async worker itself (see [`predict`]).
const INLINE_DECODE_BYTES: usize = 32 << 10;

fn prepare_image(bytes: &[u8], max_side: u32) -> Result<Vec<f32>, String> {
    let image =
        ood_data::prepare::decode_image(bytes, Some(max_side)).map_err(|e| e.to_string())?;
    ood_data::prepare::prepare_mnist_style(&image).map_err(|e| e.to_string())
}

async fn predict(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let Ok(_permit) = app.in_flight.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many requests under way, try again",
        );
    };
    let kind = match input_kind(&headers) {
        Ok(k) => k,
        Err(response) => return *response,
    };
    let body_timeout = app.config.body_timeout;
    let bytes = match tokio::time::timeout(
        body_timeout,
        read_body(&headers, body, app.config.max_body_bytes),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(response)) => return *response,
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    body_timeout.as_secs_f64()
                ),
            )
        }
    };
    let received = std::time::Instant::now();
    let per = app.model.image_len();
    let prepared = match kind {
        Input::Pixels => parse_pixels(&bytes, per),
        // A small image (a drawing from the page: a few KB) takes a fraction of a millisecond
        // to decode and prepare: on the async worker, as other request work. A thread of its
        // own per request would only add runnable threads that the OS shares the cores among,
        // which is what makes the slowest requests slow under load.
        Input::Image if bytes.len() <= INLINE_DECODE_BYTES => {
            prepare_image(&bytes, app.config.max_image_side)
        }
        Input::Image => {
            // Decoding a large photo takes milliseconds of CPU: off the async workers.
            let max_side = app.config.max_image_side;
            match tokio::task::spawn_blocking(move || prepare_image(&bytes, max_side)).await {
                Ok(r) => r,
                Err(_) => Err("the image could not be decoded".to_string()),
            }
        }
    };
    let pixels = match prepared {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let prepared_at = std::time::Instant::now();
    match app.batcher.predict(pixels.clone()).await {
        Ok(Ok(p)) => {
            let predicted_at = std::time::Instant::now();
            let response = Json(answer(&app.model, &pixels, p)).into_response();
            // Where a slow request's time went: preparing, waiting for and in the model, or
            // building the answer.
            tracing::debug!(
                prepare_us = (prepared_at - received).as_micros() as u64,
                model_us = (predicted_at - prepared_at).as_micros() as u64,
                answer_us = predicted_at.elapsed().as_micros() as u64,
                "answered"
            );
            response
        }
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(Refused::Busy) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many images waiting, try again",
        ),
        Err(Refused::Stopped) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    }
}

fn answer(model: &Model, pixels: &[f32], p: Prediction) -> Answer {
    let side = model.image_side();
    Answer {
        class: p.class,
        decision: if p.detail.unknown { "unknown" } else { "digit" },
        best_guess: p.best_guess,
        probabilities: model
            .known_classes()
            .iter()
            .zip(&p.probabilities)
            .map(|(&class, &probability)| ClassProbability { class, probability })
            .collect(),
        max_softmax: p.max_softmax,
        reconstruction_error: p.reconstruction_error,
        rule: model.rule(),
        scores: p.detail.parts,
        input_png: png_base64(pixels, side),
        reconstruction_png: png_base64(&p.reconstruction, side),
    }
}

/// A square grey image of values in [0, 1] as a base64 PNG.
fn png_base64(values: &[f32], side: usize) -> String {
    let bytes: Vec<u8> = values
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    assert_eq!(
        bytes.len(),
        side * side,
        "the model's images are side x side"
    );
    let mut png = Vec::new();
    // Fast compression without row filters: a 28x28 image is a few hundred bytes either way,
    // and every answer carries two of them.
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(
        &bytes,
        side as u32,
        side as u32,
        image::ExtendedColorType::L8,
    )
    .expect("a PNG encodes into memory");
    base64::engine::general_purpose::STANDARD.encode(png)
}
