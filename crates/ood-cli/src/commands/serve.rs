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
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let started = Instant::now();
    let device = args.device.open()?;
    let source = ModelSource::from_args(args.checkpoint.as_deref(), args.calibration.as_deref());
    let model = Model::load(&source, &device)?;
    let config = ServeConfig {
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
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr = listener.local_addr()?;
        ood_serve::warm_up(&model)?;
        println!(
            "listening on http://{addr} (model {}, {}; ready in {} ms)",
            model.checkpoint_path().display(),
            model.rule(),
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
