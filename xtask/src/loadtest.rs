//! `cargo xtask loadtest [--clients N] [--seconds S]`: a release `ood serve` on a loopback port
//! (a child process), N clients posting drawn digits for S seconds (throughput, latency,
//! errors), then malformed requests that must each get a 4xx while the server stays healthy.
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

struct Args {
    clients: usize,
    seconds: f64,
    /// What follows `--`: passed on to `ood serve` (`--max-batch 32`, say).
    serve_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut out = Args {
        clients: 32,
        seconds: 10.0,
        serve_args: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "--clients" => out.clients = value("--clients")?.parse()?,
            "--seconds" => out.seconds = value("--seconds")?.parse()?,
            "--" => {
                out.serve_args = it.by_ref().cloned().collect();
            }
            other => bail!(
                "unknown loadtest argument {other:?}: --clients N --seconds S [-- ood serve arguments]"
            ),
        }
    }
    anyhow::ensure!(
        out.clients > 0 && out.seconds > 0.0,
        "give --clients > 0 and --seconds > 0"
    );
    Ok(out)
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

pub fn run(args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let ood = build_ood()?;
    let log_dir = crate::workspace_root().join("target").join("loadtest");
    std::fs::create_dir_all(&log_dir)?;
    let log = log_dir.join("serve.log");
    let mut server = Server::start(&ood, &log, &args.serve_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = server.addr.clone();
    let outcome = runtime.block_on(drive(&addr, &args));
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
    Ok(())
}

struct Report {
    table: String,
    bad_garbage: usize,
}

async fn drive(addr: &str, args: &Args) -> Result<Report> {
    // Plain HTTP to the loopback address given; no proxy is consulted.
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients)
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
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
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
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let (_, health) = get(&client, addr, "/healthz").await?;
    let health: serde_json::Value = serde_json::from_slice(&health)?;
    let (predictions, batches) = (
        health["predictions"].as_f64().unwrap_or(0.0),
        health["batches"].as_f64().unwrap_or(0.0),
    );

    let mut table = format!(
        "| clients | seconds | predictions | predictions/s | p50 | p99 | max | errors | mean batch | largest batch |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {:.1} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {} |\n",
        args.clients,
        elapsed,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        errors,
        if batches > 0.0 { predictions / batches } else { 0.0 },
        health["largest_batch"],
    );

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
    })
}
