//! `cargo xtask loadtest [--clients N] [--seconds S] [--slow-clients M]`: a release `ood serve`
//! on a loopback port (a child process), N clients posting drawn digits for S seconds
//! (throughput, latency, errors); with M slow clients, a second run of the same load while M
//! slowloris connections are held, each of which the server must close within its header
//! timeout; then malformed requests that must each get a 4xx while the server stays healthy.
//! The server's resident memory is reported 10 s in and at the end (a soak: `--seconds 300`).
//!
//! Traffic goes to 127.0.0.1 only, through a plain HTTP client with no proxy; the request loop
//! is bounded by the time given, and the server is stopped at the end.

use crate::digits;
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// `cargo xtask loadtest`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Clients posting drawn digits at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// Seconds of load (of each run, with --slow-clients).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Slowloris connections (a request head that never ends, one header line every 5 s)
    /// held during a second run of the load; each must be closed by the server within its
    /// header timeout.
    #[arg(long, default_value_t = 0)]
    slow_clients: usize,
    /// Serve with this `ood` binary instead of building the release one (to compare builds).
    #[arg(long, value_name = "PATH")]
    ood: Option<PathBuf>,
    /// Arguments for `ood serve` (`-- --max-batch 32`, say).
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// The release `ood` binary, built first.
fn build_ood() -> Result<PathBuf> {
    let status = crate::cargo_ood("build")
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building ood failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let target = if target.is_relative() {
        crate::workspace_root().join(target)
    } else {
        target
    };
    Ok(target.join("release").join("ood"))
}

/// The server, stopped (SIGINT, then killed) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(ood: &PathBuf, log: &PathBuf, serve_args: &[String]) -> Result<Server> {
        let log_file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let started = Instant::now();
        let mut child = Command::new(ood)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(serve_args)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", ood.display()))?;
        // The first line says where it listens (port 0: the system picked one).
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the server's first line")?;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .with_context(|| format!("the server said {line:?}, not where it listens"))?
            .to_string();
        println!(
            "server up at {addr} in {} ms: {}",
            started.elapsed().as_millis(),
            line.trim()
        );
        Ok(Server { child, addr })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.alive() {
            // Ask for a graceful stop, as Ctrl-C would; kill it if it does not stop.
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.alive() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

async fn post(
    client: &HttpClient,
    addr: &str,
    path: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<(u16, Bytes)> {
    let mut req = hyper::Request::post(format!("http://{addr}{path}"));
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    let response = client.request(req.body(Full::new(body))?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn get(client: &HttpClient, addr: &str, path: &str) -> Result<(u16, Bytes)> {
    let req = hyper::Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new()))?;
    let response = client.request(req).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

async fn wait_healthy(client: &HttpClient, addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, _)) = get(client, addr, "/healthz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no healthy /healthz from {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The malformed requests: (what, content type, body).
fn garbage(digit_png: &[u8]) -> Vec<(&'static str, Option<&'static str>, Bytes)> {
    let wide = digits::png(vec![255; 10_000], 10_000, 1);
    let pixels = |n: usize| format!("{{\"pixels\": [{}]}}", vec!["0.5"; n].join(","));
    vec![
        (
            "wrong content type (text/plain)",
            Some("text/plain"),
            Bytes::from("a seven"),
        ),
        ("no content type", None, Bytes::from_static(b"\x89PNG")),
        (
            "truncated PNG",
            Some("image/png"),
            Bytes::copy_from_slice(&digit_png[..digit_png.len() / 2]),
        ),
        (
            "10 MB body",
            Some("image/png"),
            Bytes::from(vec![0u8; 10 << 20]),
        ),
        ("10000x1 image", Some("image/png"), Bytes::from(wide)),
        (
            "blank image (no ink)",
            Some("image/png"),
            Bytes::from(digits::png(vec![255; 64 * 64], 64, 64)),
        ),
        ("empty body", Some("image/png"), Bytes::new()),
        (
            "invalid JSON",
            Some("application/json"),
            Bytes::from("{\"pixels\": [0.5, "),
        ),
        (
            "783 pixels",
            Some("application/json"),
            Bytes::from(pixels(783)),
        ),
        (
            "pixel out of range",
            Some("application/json"),
            Bytes::from(pixels(784).replacen("0.5", "255", 1)),
        ),
    ]
}

pub fn run(args: &Args) -> Result<()> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds.is_finite(),
        "--seconds {}: give a positive number",
        args.seconds
    );
    // Every slow client is a socket of this process.
    if args.slow_clients > 0 {
        let limit = rlimit::increase_nofile_limit(u64::MAX)?;
        anyhow::ensure!(
            limit as usize > args.slow_clients + args.clients as usize + 64,
            "--slow-clients {}: this process may open only {limit} files",
            args.slow_clients
        );
    }
    let ood = match &args.ood {
        Some(path) => path.clone(),
        None => build_ood()?,
    };
    let log_dir = crate::workspace_root().join("target").join("loadtest");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join("serve.log");
    let mut server = Server::start(&ood, &log, &args.serve_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = server.addr.clone();
    let pid = server.child.id();
    let outcome = runtime.block_on(drive(&addr, pid, args));
    let alive = server.alive();
    drop(server);
    let report = outcome?;
    println!("\n{}", report.table);
    println!("(server log: {})", log.display());
    if !alive {
        bail!("the server died during the test");
    }
    if report.bad_garbage > 0 {
        bail!(
            "{} malformed requests did not get a 4xx",
            report.bad_garbage
        );
    }
    if let Some(why) = report.slow_failure {
        bail!("{why}");
    }
    Ok(())
}

struct Report {
    table: String,
    bad_garbage: usize,
    /// Why the slow clients' run failed, if it did.
    slow_failure: Option<String>,
}

/// One run of the load: every successful prediction's latency, and the failures.
struct Load {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: f64,
}

/// `clients` clients post the drawn digits in turn for `duration`; `at_10s` runs once, 10 s
/// in (or at the end of a shorter run).
async fn load(
    client: &HttpClient,
    addr: &str,
    images: &Arc<Vec<(u8, Bytes)>>,
    clients: u64,
    duration: Duration,
    at_10s: impl FnOnce(),
) -> Result<Load> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients as usize {
        let client = client.clone();
        let images = images.clone();
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = c;
            while start.elapsed() < duration {
                let png = images[i % images.len()].1.clone();
                i += 1;
                let t = Instant::now();
                match post(&client, &addr, "/v1/predict", Some("image/png"), png).await {
                    Ok((200, _)) => latencies.push(t.elapsed()),
                    Ok(_) | Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(duration.min(Duration::from_secs(10))).await;
    at_10s();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Ok(Load {
        latencies,
        errors,
        elapsed: start.elapsed().as_secs_f64(),
    })
}

/// The server's resident memory in MB (`VmRSS` of /proc/PID/status; None elsewhere).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// What the slow clients saw: how long each connection lived before the server closed it.
#[derive(Default)]
struct Slow {
    /// Lifetimes of the connections the server closed.
    closed: Vec<Duration>,
    /// Connections still open when the wait for them ended.
    still_open: usize,
    /// Connections that could not be opened.
    refused: usize,
}

/// One slowloris client: a request head that never ends, one header line every `every`;
/// when the server closes it, again, until `stop`. Each connection's lifetime is recorded.
async fn slowloris(
    addr: std::net::SocketAddr,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    give_up: Duration,
    opened: Arc<tokio::sync::Semaphore>,
) -> Slow {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Slow::default();
    let mut first = true;
    while first || !*stop.borrow() {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            out.refused += 1;
            if *stop.borrow() {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if std::mem::take(&mut first) {
            opened.add_permits(1);
        }
        let connected = Instant::now();
        let _ = s
            .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: loadtest\r\n")
            .await;
        let mut line = 0u64;
        let mut buf = [0u8; 512];
        let closed = loop {
            tokio::select! {
                read = s.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(every) => {
                    line += 1;
                    if s.write_all(format!("X-Slow-{line}: 1\r\n").as_bytes()).await.is_err() {
                        break true;
                    }
                }
            }
            if connected.elapsed() > give_up {
                break false;
            }
        };
        if closed {
            out.closed.push(connected.elapsed());
        } else {
            out.still_open += 1;
            return out;
        }
    }
    out
}

fn row(label: &str, slow: usize, l: &Load, clients: u64) -> String {
    format!(
        "| {label} | {clients} | {slow} | {:.1} | {} | {:.0} | {} | {} | {} | {} |\n",
        l.elapsed,
        l.latencies.len(),
        l.latencies.len() as f64 / l.elapsed,
        ms(percentile(&l.latencies, 0.5)),
        ms(percentile(&l.latencies, 0.99)),
        ms(l.latencies.last().copied().unwrap_or_default()),
        l.errors,
    )
}

async fn drive(addr: &str, pid: u32, args: &Args) -> Result<Report> {
    // Plain HTTP to the loopback address given; no proxy is consulted.
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients as usize)
        .build_http();
    wait_healthy(&client, addr).await?;
    let images: Arc<Vec<(u8, Bytes)>> = Arc::new(
        digits::digit_pngs()
            .into_iter()
            .map(|(d, png)| (d, Bytes::from(png)))
            .collect(),
    );

    // What the model says about each drawn digit, once (not timed).
    let mut said = Vec::new();
    for (digit, png) in images.iter().take(9) {
        let (status, body) =
            post(&client, addr, "/v1/predict", Some("image/png"), png.clone()).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        said.push(format!(
            "{digit}->{}",
            if status == 200 {
                v["class"].to_string()
            } else {
                format!("HTTP {status}")
            }
        ));
    }
    println!("drawn digits (64 px) answered: {}", said.join(" "));

    let duration = Duration::from_secs_f64(args.seconds);
    let rss_start = std::cell::Cell::new(None);
    let plain = load(&client, addr, &images, args.clients, duration, || {
        rss_start.set(rss_mb(pid))
    })
    .await?;
    let (_, health) = get(&client, addr, "/healthz").await?;
    let health: serde_json::Value = serde_json::from_slice(&health)?;
    let (predictions, batches) = (
        health["predictions"].as_f64().unwrap_or(0.0),
        health["batches"].as_f64().unwrap_or(0.0),
    );

    let mut table = String::from(
        "| run | clients | slow connections | seconds | predictions | predictions/s | p50 | p99 | max | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    table += &row("load", 0, &plain, args.clients);
    let rss_after_load = rss_mb(pid);
    let mut slow_failure = None;
    let mut slow_lines = String::new();
    if args.slow_clients > 0 {
        let header_timeout = health["limits"]["header_timeout_s"]
            .as_f64()
            .context("/healthz gives no limits.header_timeout_s")?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let opened = Arc::new(tokio::sync::Semaphore::new(0));
        let socket: std::net::SocketAddr = addr.parse()?;
        // A connection still open this long after it was opened was not closed in time.
        let give_up = Duration::from_secs_f64(header_timeout + 5.0);
        let slow: Vec<_> = (0..args.slow_clients)
            .map(|_| {
                tokio::spawn(slowloris(
                    socket,
                    Duration::from_secs(5),
                    stop_rx.clone(),
                    give_up,
                    opened.clone(),
                ))
            })
            .collect();
        // Every slow client connected before the load starts (or 10 s passed).
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            opened.acquire_many(args.slow_clients as u32),
        )
        .await;
        let with_slow = load(&client, addr, &images, args.clients, duration, || {}).await?;
        table += &row(
            "load + slowloris",
            args.slow_clients,
            &with_slow,
            args.clients,
        );
        let _ = stop_tx.send(true);
        let mut all = Slow::default();
        for t in slow {
            let s = t.await?;
            all.closed.extend(s.closed);
            all.still_open += s.still_open;
            all.refused += s.refused;
        }
        all.closed.sort();
        let slack = Duration::from_secs(1);
        let late = all
            .closed
            .iter()
            .filter(|d| **d > Duration::from_secs_f64(header_timeout) + slack)
            .count();
        slow_lines = format!(
            "\nslowloris: {} connections opened by {} clients (one header line every 5 s), {} \
             closed by the server after {} (median) / {} (longest) with a header timeout of \
             {header_timeout} s; {late} closed later than the timeout + 1 s, {} still open \
             after {} s, {} connects refused\n",
            all.closed.len() + all.still_open,
            args.slow_clients,
            all.closed.len(),
            ms(percentile(&all.closed, 0.5)),
            ms(all.closed.last().copied().unwrap_or_default()),
            all.still_open,
            give_up.as_secs(),
            all.refused,
        );
        if late > 0 || all.still_open > 0 {
            slow_failure = Some(format!(
                "{late} slow connections outlived the header timeout and {} were never closed",
                all.still_open
            ));
        }
        if with_slow.errors > 0 {
            slow_failure.get_or_insert(format!(
                "{} predictions failed while the slow clients were held",
                with_slow.errors
            ));
        }
    }
    table += &format!(
        "\nmean batch {:.1}, largest batch {} (first run)\n",
        if batches > 0.0 {
            predictions / batches
        } else {
            0.0
        },
        health["largest_batch"],
    );
    table += &slow_lines;
    if let (Some(a), Some(b)) = (rss_start.get(), rss_after_load) {
        table += &format!(
            "server RSS: {a:.1} MB {} s into the load, {b:.1} MB at its end ({:+.1}%)",
            args.seconds.min(10.0),
            (b / a - 1.0) * 100.0
        );
        if args.slow_clients > 0 {
            if let Some(c) = rss_mb(pid) {
                table += &format!(", {c:.1} MB after the slowloris run");
            }
        }
        table += "\n";
    }

    table += "\n| malformed request | status | 4xx |\n|---|---:|---|\n";
    let mut bad = 0;
    for (what, content_type, body) in garbage(&images[0].1) {
        let (status, shown) = match post(&client, addr, "/v1/predict", content_type, body).await {
            Ok((s, body)) => {
                let e: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                (
                    s,
                    format!(
                        "{s} {}",
                        e["error"]
                            .as_str()
                            .map(|m| format!("({m})"))
                            .unwrap_or_default()
                    ),
                )
            }
            Err(e) => (0, format!("no answer: {e}")),
        };
        let ok = (400..500).contains(&status);
        bad += usize::from(!ok);
        table += &format!(
            "| {what} | {shown} | {} |\n",
            if ok { "yes" } else { "**NO**" }
        );
    }
    let (health_status, _) = get(&client, addr, "/healthz")
        .await
        .unwrap_or((0, Bytes::new()));
    table += &format!(
        "| /healthz afterwards | {health_status} | {} |\n",
        if health_status == 200 {
            "healthy"
        } else {
            "**NOT HEALTHY**"
        }
    );
    if health_status != 200 {
        bad += 1;
    }
    Ok(Report {
        table,
        bad_garbage: bad,
        slow_failure,
    })
}
