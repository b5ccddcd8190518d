//! `ood serve` under a low file-descriptor limit (set with the shell's `ulimit`, as a service
//! manager would), against more idle connections than the limit allows: `/healthz` still
//! answers, long before the idle connections would time out, whether the server meets its
//! connection cap or runs out of descriptors.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a connection that sends nothing may hold its place (`--header-timeout`): long, so
/// that `/healthz` answering well within it shows that the server made room, not that the idle
/// connections timed out.
const IDLE_HOLD_S: u64 = 60;

/// The longest `/healthz` may take. Not a speed test: an idle machine answers in milliseconds,
/// one whose cores are busy with other work took 3.7 s; a server that did not make room would
/// wait [`IDLE_HOLD_S`].
const ANSWERS_WITHIN: Duration = Duration::from_secs(15);

/// `ood serve` started by bash after `setup` (shell commands), on a port the system picks.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(setup: &str) -> Server {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{setup}\nexec \"$0\" serve --addr 127.0.0.1:0 --lanes 1 --header-timeout {IDLE_HOLD_S}"
            ))
            .arg(env!("CARGO_BIN_EXE_ood"))
            .env("OOD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bash");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("the server said {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// Stops the server and returns what it logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        let _ = self.child.wait();
        log
    }
}

/// One GET on a new connection: the status line and body, and how long it took.
fn get(addr: &str, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(2 * ANSWERS_WITHIN)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    (answer, started.elapsed())
}

/// `name{labels} value` from `/metrics` (labels written as the server writes them).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Holds `n` connections that send nothing.
fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    // This process needs the descriptors too.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[test]
fn past_the_connection_cap_the_idlest_connections_make_room_and_healthz_answers() {
    // 256 descriptors: a cap of 192 connections.
    let server = Server::start("ulimit -n 256");
    let idle = idle_connections(&server.addr, 300);
    let (health, took) = get(&server.addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(took < ANSWERS_WITHIN, "/healthz took {took:?}");
    let (metrics, _) = get(&server.addr, "/metrics");
    assert_eq!(metric(&metrics, "ood_connections_limit"), 192.0);
    // 302 connections for 192 places (one of them closed by the client): at least 108 idle
    // ones were closed to make room, and the server never ran out of descriptors.
    let evicted = metric(&metrics, "ood_connections_closed_total{reason=\"evicted\"}");
    assert!(evicted >= 108.0, "{evicted} evicted\n{metrics}");
    assert!(
        metric(&metrics, "ood_connections_open") <= 193.0,
        "{metrics}"
    );
    assert!(!metrics.contains("ood_accept_errors_total"), "{metrics}");
    drop(idle);
    let log = server.stop();
    assert!(log.contains("connection cap reached"), "{log}");
}

#[test]
fn out_of_descriptors_the_server_backs_off_closes_the_idlest_and_answers() {
    // 256 descriptors, of which the shell leaves 200 open for the server to inherit: the cap
    // (192) is out of reach, and accept fails with EMFILE first.
    let server = Server::start(
        "ulimit -n 256\nfor fd in $(seq 20 219); do eval \"exec $fd</dev/null\"; done",
    );
    let idle = idle_connections(&server.addr, 100);
    let (health, took) = get(&server.addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(took < ANSWERS_WITHIN, "/healthz took {took:?}");
    let (metrics, _) = get(&server.addr, "/metrics");
    let failed = metric(&metrics, "ood_accept_errors_total{kind=\"descriptors\"}");
    assert!(failed >= 1.0, "{metrics}");
    assert!(
        metric(&metrics, "ood_connections_closed_total{reason=\"evicted\"}") >= 1.0,
        "{metrics}"
    );
    drop(idle);
    let log = server.stop();
    assert!(log.contains("accept failed"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
