//! The accept loop and the life of each connection: what keeps a slow or idle client from
//! holding the server.
//!
//! Each connection is in one of three phases, with its own clock:
//! - **awaiting a head**, from the accept or from the first byte after a response: the whole
//!   request head must arrive within `header_timeout` (a client that trickles one header line
//!   every few seconds, "slowloris", is closed when it runs out, however much it sent);
//! - **in service**, from a whole head until the handler answers: bounded by the handlers'
//!   own body and request timeouts ([`crate::ServeConfig`]), not here;
//! - **idle**, a kept-alive connection between requests: closed after `idle_timeout`.
//!
//! These are the read-header and idle timeouts of Go's `net/http` and nginx. hyper's own
//! `header_read_timeout` is not used: it starts when hyper waits for a head, which on a
//! kept-alive connection is at once, so it cannot tell a slow head from an idle connection.
//!
//! Open connections are capped below what the file-descriptor limit allows. At the cap a new
//! connection is still accepted, and the idlest connection with no request in service is
//! closed instead (one that never sent a whole head first, oldest first; then the one idle
//! longest; none in its first 250 ms, so that clients of a burst do not close each other), as
//! nginx reuses its idle keep-alive connections when it runs out. When no connection can be
//! closed, new ones wait in the listen backlog until one can.
//! So requests under way are never cut, and a new client (a health check, say) gets in
//! although thousands of idle sockets are open. When `accept` fails for want of descriptors
//! (EMFILE, ENFILE) the idlest connection is closed, the loop backs off (5 ms doubling to 1 s)
//! and goes on; nothing spins.

use crate::metrics::{CloseReason, Metrics};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Descriptors kept for everything but connections: the listener, standard streams, the
/// runtime's event queue, files the model or a blocking task opens, and the few connections
/// accepted past the cap while the idlest closes.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The listen backlog: connections the kernel completes before the server accepts them.
/// `tokio::net::TcpListener::bind` asks for 128; a burst past that (hundreds of clients at once,
/// or a slowloris wave) has its handshakes dropped and retried by the kernel 1, 3, 7 s later.
/// nginx asks for 511; the kernel caps it at `net.core.somaxconn` (4096 on current Linux).
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` (the first of its addresses that binds) with [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// The connection timeouts and cap (set from [`crate::ServeConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Open connections at most (before the file-descriptor limit is taken into account).
    pub max_connections: usize,
    /// How long a connection with a request under way gets to finish it once the server is
    /// shutting down.
    pub shutdown_grace: Duration,
}

/// The cap on open connections: `max_connections`, lowered to what this process's soft
/// file-descriptor limit leaves after [`RESERVED_DESCRIPTORS`].
pub fn connection_cap(max_connections: usize) -> usize {
    let by_descriptors = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _hard)| soft.saturating_sub(RESERVED_DESCRIPTORS).max(1))
        .unwrap_or(u64::MAX);
    max_connections
        .min(usize::try_from(by_descriptors).unwrap_or(usize::MAX))
        .max(1)
}

const AWAITING_HEAD: u64 = 0;
const IN_SERVICE: u64 = 1;
const IDLE: u64 = 2;

/// One connection's shared state: its phase, for its own task and for the eviction.
struct Conn {
    id: u64,
    /// `(since << 2) | phase`, `since` in milliseconds from the server's start: one word, so
    /// that the phase and its start are always read together.
    state: AtomicU64,
    /// Requests that reached the handlers.
    served: AtomicU64,
    in_service: AtomicU64,
    /// Why the server wants it closed (0: it does not), set by the eviction.
    close: AtomicU8,
    /// Wakes the connection's task: a close was asked for.
    wake: Notify,
}

impl Conn {
    /// No wake-up: the connection's task looks again at least every
    /// [`Shared::recheck`], and a phase that starts later ends later (see there).
    fn set_phase(&self, phase: u64, now_ms: u64) {
        self.state.store((now_ms << 2) | phase, Ordering::Release);
    }

    fn phase(&self) -> (u64, u64) {
        let s = self.state.load(Ordering::Acquire);
        (s & 3, s >> 2)
    }

    fn evict(&self) -> bool {
        let asked = self
            .close
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if asked {
            self.wake.notify_one();
        }
        asked
    }

    /// No request in service, not already closing, and in its phase for [`EVICT_GRACE`] at
    /// least: a client that has just connected (or just had its answer) gets the time to send
    /// its head, so that a burst of new clients at the cap does not close each other.
    fn evictable(&self, now_ms: u64) -> bool {
        self.in_service.load(Ordering::Acquire) == 0
            && self.close.load(Ordering::Acquire) == 0
            && now_ms.saturating_sub(self.phase().1) >= EVICT_GRACE.as_millis() as u64
    }
}

/// What every connection task and the accept loop share.
struct Shared {
    epoch: Instant,
    limits: Limits,
    cap: usize,
    metrics: Arc<Metrics>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// `conns.len()`, readable without the lock (by a request ending, see [`InService`]).
    open: AtomicUsize,
    /// Connections asked to close that have not closed yet.
    closing: AtomicUsize,
    next_id: AtomicU64,
    /// A connection closed, or one at the cap became idle: the accept loop may be waiting.
    slot_freed: Notify,
    cap_log: RateLimited,
    accept_log: RateLimited,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until fewer than `open` connections are open (or `limit` passes): a stale wake-up
    /// of `slot_freed` must not pass for a closed connection.
    async fn until_fewer_than(&self, open: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.open() >= open && Instant::now() < deadline {
            tokio::select! {
                _ = self.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    fn register(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            state: AtomicU64::new(self.now_ms() << 2 | AWAITING_HEAD),
            served: AtomicU64::new(0),
            in_service: AtomicU64::new(0),
            close: AtomicU8::new(0),
            wake: Notify::new(),
        });
        let mut conns = self.conns.lock().expect("connection table");
        conns.insert(conn.id, conn.clone());
        self.open.store(conns.len(), Ordering::Release);
        self.metrics.connections_open.set(conns.len() as i64);
        conn
    }

    fn unregister(&self, conn: &Conn, reason: CloseReason) {
        {
            let mut conns = self.conns.lock().expect("connection table");
            conns.remove(&conn.id);
            self.open.store(conns.len(), Ordering::Release);
            self.metrics.connections_open.set(conns.len() as i64);
        }
        if conn.close.load(Ordering::Acquire) != 0 {
            self.closing.fetch_sub(1, Ordering::AcqRel);
        }
        self.metrics.closed(reason);
        self.slot_freed.notify_one();
    }

    /// Asks the idlest connection with no request in service (but `except`) to close: one
    /// that never sent a whole head first, the oldest; then the one idle longest. False when
    /// every connection is busy.
    fn evict_idlest(&self, except: Option<u64>) -> bool {
        let now_ms = self.now_ms();
        let conns = self.conns.lock().expect("connection table");
        conns
            .values()
            .filter(|c| Some(c.id) != except && c.evictable(now_ms))
            .min_by_key(|c| (c.served.load(Ordering::Relaxed) > 0, c.phase().1))
            .is_some_and(|c| {
                let asked = c.evict();
                if asked {
                    self.closing.fetch_add(1, Ordering::AcqRel);
                }
                asked
            })
    }

    fn any_evictable(&self) -> bool {
        let conns = self.conns.lock().expect("connection table");
        let now_ms = self.now_ms();
        conns.values().any(|c| c.evictable(now_ms))
    }

    /// The longest the connection's task sleeps between looks at its phase: the shorter
    /// timeout. A phase entered at `t` after the task last looked (at `a`) ends at
    /// `t + timeout >= a + recheck`, so it is never seen late, and the request path (every
    /// phase change) needs no wake-up.
    fn recheck(&self) -> Duration {
        self.limits.header_timeout.min(self.limits.idle_timeout)
    }

    /// When the connection's present phase runs out (far off while in service).
    fn deadline(&self, conn: &Conn) -> (Instant, Option<CloseReason>) {
        let (phase, since) = conn.phase();
        let since = self.at(since);
        let far = Instant::now() + Duration::from_secs(3600);
        let after = |timeout| since.checked_add(timeout).unwrap_or(far).min(far);
        match phase {
            AWAITING_HEAD => (
                after(self.limits.header_timeout),
                Some(CloseReason::HeaderTimeout),
            ),
            IDLE => (
                after(self.limits.idle_timeout),
                Some(CloseReason::IdleTimeout),
            ),
            _ => (far, None),
        }
    }
}

/// A log line at most every few seconds, with the count of the ones held back: under attack
/// the same warning would otherwise be written thousands of times a second.
struct RateLimited {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl RateLimited {
    const EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self {
            last: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    fn ready(&self) -> Option<u64> {
        let mut last = self.last.lock().expect("log clock");
        let now = Instant::now();
        if last.is_some_and(|t| now - t < Self::EVERY) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, closes
/// idle connections, gives requests under way `shutdown_grace` to finish, and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cap = connection_cap(limits.max_connections);
    metrics.connections_limit.set(cap as i64);
    tracing::info!(
        cap,
        header_timeout_s = limits.header_timeout.as_secs_f64(),
        idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        "accepting connections"
    );
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        limits,
        cap,
        metrics,
        conns: Mutex::new(HashMap::new()),
        open: AtomicUsize::new(0),
        closing: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
        slot_freed: Notify::new(),
        cap_log: RateLimited::new(),
        accept_log: RateLimited::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let open = shared.open();
        if open > shared.cap {
            // Past the cap by the connection just accepted: the idlest closes first, so that a
            // burst cannot run past the descriptors. If none was closing (every connection was
            // busy when the new one came), ask again: one may be idle by now.
            if shared.closing.load(Ordering::Acquire) == 0 {
                shared.evict_idlest(None);
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = shared.until_fewer_than(open, CAP_RECHECK) => {}
            }
            continue;
        }
        if open >= shared.cap && !shared.any_evictable() {
            // Every connection is answering a request: new ones wait in the backlog.
            if let Some(held_back) = shared.cap_log.ready() {
                tracing::warn!(
                    open = shared.open(),
                    cap = shared.cap,
                    held_back,
                    "connection cap reached with a request on every connection: new connections wait"
                );
            }
            // A connection closing or a request ending wakes this; the timer is a safety net.
            tokio::select! {
                _ = &mut shutdown => break,
                _ = shared.slot_freed.notified() => {}
                _ = tokio::time::sleep(CAP_RECHECK) => {}
            }
            continue;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("a connection's task failed: {e}");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    backoff = BACKOFF_MIN;
                    let _ = stream.set_nodelay(true);
                    let conn = shared.register();
                    if shared.open() > shared.cap && shared.evict_idlest(Some(conn.id)) {
                        if let Some(held_back) = shared.cap_log.ready() {
                            tracing::warn!(
                                open = shared.open(),
                                cap = shared.cap,
                                held_back,
                                "connection cap reached: closing the idlest connection for each new one"
                            );
                        }
                    }
                    let (shared, router, stop_rx) = (shared.clone(), router.clone(), stop_rx.clone());
                    tasks.spawn(async move {
                        // Unregistered on every exit, a panic's included.
                        let mut open = Registered { shared: &shared, conn: &conn, reason: CloseReason::Client };
                        open.reason = connection(stream, router, conn.clone(), &shared, stop_rx).await;
                    });
                }
                Err(e) if is_per_connection(&e) => {
                    // The client gave up between its SYN and our accept: nothing to do.
                }
                Err(e) => {
                    let out_of_descriptors = is_out_of_descriptors(&e);
                    shared.metrics.accept_error(out_of_descriptors);
                    // Out of descriptors, the idlest connection gives its up; accepting again
                    // waits for it to close. With none to close, the loop backs off.
                    let evicted = out_of_descriptors && shared.evict_idlest(None);
                    if let Some(held_back) = shared.accept_log.ready() {
                        tracing::warn!(
                            error = %e,
                            open = shared.open(),
                            evicted,
                            backoff_ms = backoff.as_millis() as u64,
                            held_back,
                            "accept failed; backing off"
                        );
                    }
                    if evicted {
                        let open = shared.open();
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = shared.until_fewer_than(open, BACKOFF_MAX) => {}
                        }
                    } else {
                        tokio::select! {
                            _ = &mut shutdown => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }
    // No new connections from here; every open one is told to finish.
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

/// How long a connection is safe from eviction after it connects or is answered.
const EVICT_GRACE: Duration = Duration::from_millis(250);
/// How often the accept loop looks again for a connection to close while at the cap.
const CAP_RECHECK: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// EMFILE (the process's limit) or ENFILE (the system's): the same numbers on Linux and the
/// BSDs, macOS included.
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// Serves one connection until it ends or the server closes it; says why it closed.
async fn connection(
    stream: TcpStream,
    router: Router,
    conn: Arc<Conn>,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> CloseReason {
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
        shared: shared.clone(),
    });
    let service = {
        let (conn, shared) = (conn.clone(), shared.clone());
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_service = InService::begin(conn.clone(), shared.clone());
            let mut router = router.clone();
            async move {
                let response = tower_service::Service::call(&mut router, request).await;
                drop(in_service);
                response
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        // Heads are timed here (see the module's documentation).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    // Once the server asked it to close gracefully: why, and when to drop it regardless.
    let mut closing: Option<(CloseReason, Instant)> = None;
    loop {
        let deadline = match closing {
            Some((_, hard)) => hard,
            None => shared
                .deadline(&conn)
                .0
                .min(Instant::now() + shared.recheck()),
        };
        let wanted = tokio::select! {
            _ = connection.as_mut() => {
                return closing.map_or(CloseReason::Client, |(reason, _)| reason);
            }
            _ = tokio::time::sleep_until(deadline) => match closing {
                // Dropping the connection closes the socket.
                Some((reason, _)) => return reason,
                // The phase may have moved on since the deadline was read.
                None => match shared.deadline(&conn) {
                    (deadline, reason) if Instant::now() >= deadline => reason,
                    _ => None,
                },
            },
            _ = conn.wake.notified() => {
                (conn.close.load(Ordering::Acquire) != 0).then_some(CloseReason::Evicted)
            }
            _ = stop.changed(), if closing.is_none() => Some(CloseReason::Shutdown),
        };
        let Some(reason) = wanted else { continue };
        if closing.is_some() {
            continue;
        }
        let (phase, _) = conn.phase();
        if phase == AWAITING_HEAD {
            // Nothing is being answered: close now.
            return reason;
        }
        // Idle (hyper closes it at once) or answering (it closes after the response).
        connection.as_mut().graceful_shutdown();
        let grace = if phase == IN_SERVICE {
            shared.limits.shutdown_grace
        } else {
            // A response still being written to a client that reads slowly.
            Duration::from_secs(1)
        };
        closing = Some((reason, Instant::now() + grace));
    }
}

/// Takes a connection off the table when its task ends, however it ends.
struct Registered<'a> {
    shared: &'a Shared,
    conn: &'a Conn,
    reason: CloseReason,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.conn, self.reason);
    }
}

/// Marks a connection in service while a request is in the handlers.
struct InService {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl InService {
    fn begin(conn: Arc<Conn>, shared: Arc<Shared>) -> Self {
        conn.served.fetch_add(1, Ordering::Relaxed);
        conn.in_service.fetch_add(1, Ordering::AcqRel);
        conn.set_phase(IN_SERVICE, shared.now_ms());
        InService { conn, shared }
    }
}

impl Drop for InService {
    fn drop(&mut self) {
        if self.conn.in_service.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.set_phase(IDLE, self.shared.now_ms());
            // At the cap, an idle connection is room for a waiting one.
            if self.shared.open() >= self.shared.cap {
                self.shared.slot_freed.notify_one();
            }
        }
    }
}

/// The socket, watched: the first byte on an idle connection starts its head's clock.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let (phase, _) = self.conn.phase();
            if phase == IDLE {
                self.conn.set_phase(AWAITING_HEAD, self.shared.now_ms());
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest() {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let cap = connection_cap(usize::MAX);
        assert_eq!(cap as u64, soft.saturating_sub(RESERVED_DESCRIPTORS).max(1));
        assert_eq!(connection_cap(10), 10.min(cap));
    }

    #[test]
    fn only_descriptor_errors_count_as_running_out() {
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            24
        )));
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            23
        )));
        assert!(!is_out_of_descriptors(&std::io::Error::from_raw_os_error(
            104
        )));
        assert!(is_per_connection(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
    }
}
