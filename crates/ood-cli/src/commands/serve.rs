use anyhow::{Context, Result};
use ood_model::DeviceChoice;
use ood_serve::model::{Model, ModelSource};
use ood_serve::{BatchPolicy, ServeConfig};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// The checkpoint (calibrated with `ood calibrate`); default: the model shipped in the
    /// binary (assets/models/default).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The calibration to apply (default: calibration.json beside the checkpoint, or the
    /// shipped model's).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Most images in one batch through the model.
    #[arg(long, default_value_t = BatchPolicy::default().max_batch)]
    pub max_batch: usize,
    /// Microseconds the batcher waits for more images once it has one.
    #[arg(long, default_value_t = BatchPolicy::default().wait.as_micros() as u64)]
    pub batch_wait_us: u64,
    /// Most batches through the model at once (default: one per core).
    #[arg(long, default_value_t = BatchPolicy::default().lanes)]
    pub lanes: usize,
    /// Compute threads of each batch.
    #[arg(long, default_value_t = BatchPolicy::default().threads_per_batch)]
    pub threads_per_batch: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Seconds a request's head may take to arrive (from the accept, or from its first byte
    /// on a kept-alive connection); then the connection is closed.
    #[arg(long, default_value_t = ServeConfig::default().header_timeout.as_secs_f64())]
    pub header_timeout: f64,
    /// Seconds a kept-alive connection may sit idle between requests.
    #[arg(long, default_value_t = ServeConfig::default().idle_timeout.as_secs_f64())]
    pub idle_timeout: f64,
    /// Seconds a request's body may take to arrive; then 408.
    #[arg(long, default_value_t = ServeConfig::default().body_timeout.as_secs_f64())]
    pub body_timeout: f64,
    /// Seconds a whole request may take, from its head to its answer; then 408.
    #[arg(long, default_value_t = ServeConfig::default().request_timeout.as_secs_f64())]
    pub request_timeout: f64,
    /// Open connections at most (lowered to what the file-descriptor limit allows); at the
    /// cap the idlest connection makes room for a new one.
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    pub max_connections: usize,
}

/// A number of seconds from a flag: positive, and at most a day.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    anyhow::ensure!(
        value > 0.0 && value <= 86_400.0,
        "--{flag} {value}: give a number of seconds above 0 and at most 86400 (a day)"
    );
    Ok(Duration::from_secs_f64(value))
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let started = Instant::now();
    let device = args.device.open()?;
    let source = ModelSource::from_args(args.checkpoint.as_deref(), args.calibration.as_deref());
    let model = Model::load(&source, &device)?;
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections 0: give at least 1"
    );
    // Each connection is a file descriptor, and the soft limit is often 1,024 where the hard
    // one is far higher: raise it as far as allowed (as Go's runtime does), once, here.
    #[cfg(unix)]
    if let Ok(limit) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::info!(limit, "file-descriptor limit");
    }
    let config = ServeConfig {
        header_timeout: seconds("header-timeout", args.header_timeout)?,
        idle_timeout: seconds("idle-timeout", args.idle_timeout)?,
        body_timeout: seconds("body-timeout", args.body_timeout)?,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        max_connections: args.max_connections,
        batching: BatchPolicy {
            max_batch: args.max_batch,
            wait: Duration::from_micros(args.batch_wait_us),
            lanes: args.lanes,
            threads_per_batch: args.threads_per_batch,
        },
        ..Default::default()
    };
    // The async side only moves bytes (inference runs on blocking threads), so two workers do;
    // the compute threads are candle's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = ood_serve::connections::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr = listener.local_addr()?;
        ood_serve::warm_up(&model)?;
        println!(
            "listening on http://{addr} (model {}, {}; at most {} connections; ready in {} ms)",
            model.checkpoint_path().display(),
            model.rule(),
            ood_serve::connections::connection_cap(config.max_connections),
            started.elapsed().as_millis()
        );
        ood_serve::serve(listener, model, config, shutdown_signal()).await?;
        // Not println!: whoever started the server may have closed our stdout by now (the
        // load test does), and a failed farewell must not turn a clean stop into a panic.
        let _ = writeln!(std::io::stdout(), "stopped");
        anyhow::Ok(())
    })
}

/// Ctrl-C, or SIGTERM (what `kill` and service managers send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing the requests under way");
}
