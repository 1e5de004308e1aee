//! The local front door: a Unix socket other processes on the machine publish to and read
//! from (the framing is in [`crate::frame`]).
//!
//! One thread accepts; each connection gets its own thread and, on its first PUBLISH, its own
//! producer (its own lanes, so one connection's events keep their order and never wait for
//! another's). Backpressure is by not reading: while the bus's lanes are full the connection's
//! thread waits in `send`, stops reading, the socket's buffer fills and the client's writes
//! block. Acknowledgements are per connection and cumulative: events are numbered from 1 in
//! the order received, and `ACK through=N` says every event up to N is durable. A connection
//! that asked for acknowledgements gets one before netd reads further, covering every frame
//! read so far (group commit). A bad frame closes its connection with an ERROR that says what
//! was wrong; nothing of that frame is ingested, and nothing else is touched.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net_engine::config::Backpressure;
use net_engine::{Bus, Cursor, Producer, SendError};

use crate::frame::{self, ErrorCode, FrameError, Limits, Request};
use crate::ratelimit::LogLimiter;

/// The socket's settings, as the daemon resolved them.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The socket's path.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Most connections at once.
    pub connections_max: usize,
    /// Frame limits.
    pub limits: Limits,
    /// Longest wait for an acknowledgement.
    pub ack_timeout: Duration,
    /// Longest time a begun frame may take to arrive whole.
    pub frame_timeout: Duration,
}

/// The socket's counters (read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused because `connections_max` were open.
    pub connections_refused: AtomicU64,
    /// Frames read.
    pub frames: AtomicU64,
    /// Events ingested.
    pub events_in: AtomicU64,
    /// Payload bytes ingested.
    pub bytes_in: AtomicU64,
    /// Events the backpressure mode dropped.
    pub events_dropped: AtomicU64,
    /// ACK frames sent.
    pub acks: AtomicU64,
    /// READ frames answered, and the events returned.
    pub reads: AtomicU64,
    /// Events returned by READ.
    pub events_out: AtomicU64,
    /// Connections closed for a malformed frame.
    pub closed_malformed: AtomicU64,
    /// Connections closed for a frame or payload over the limit.
    pub closed_too_large: AtomicU64,
    /// Connections closed for a bad cursor.
    pub closed_bad_cursor: AtomicU64,
    /// Connections closed because an acknowledgement timed out.
    pub closed_timeout: AtomicU64,
    /// Connections closed because a begun frame did not arrive whole in time.
    pub closed_slow_frame: AtomicU64,
    /// Connections closed because the bus could not take events (failed shard, shutdown).
    pub closed_unavailable: AtomicU64,
    /// Connections that ended in the middle of a frame (what came before it was ingested).
    pub truncated_at_close: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A running socket server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    bus: Arc<Bus>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    stop: AtomicBool,
    /// Every open connection (a clone, to shut its reading down at stop) and its thread.
    conns: Mutex<HashMap<u64, Conn>>,
    log: LogLimiter,
}

/// An open connection: a clone of its stream (to shut its reading down at stop) and its
/// thread.
type Conn = (UnixStream, Option<JoinHandle<()>>);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process listens on the path.
    #[error(
        "socket {0}: another process listens on it (another netd?); stop it or choose socket.path"
    )]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("socket {0}: the path exists and is not a socket; remove it or choose socket.path")]
    NotASocket(PathBuf),
    /// An I/O error, with what was being done.
    #[error("socket {path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl Server {
    /// Binds the socket and starts accepting.
    pub fn start(bus: Arc<Bus>, config: ServerConfig) -> Result<Server, StartError> {
        let listener = bind(&config.path, config.mode)?;
        let shared = Arc::new(Shared {
            bus,
            config,
            stats: Arc::new(ServerStats::default()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            log: LogLimiter::new(),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("netd-accept".into())
            .spawn(move || accept_loop(&s, &listener))
            .map_err(|source| StartError::Io {
                path: shared.config.path.clone(),
                what: "spawn the accept thread",
                source,
            })?;
        Ok(Server {
            shared,
            accept: Some(accept),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// Stops accepting, stops reading from every connection (each finishes the frame it is
    /// handling and sends the acknowledgement it owes), waits for their threads up to
    /// `deadline`, and removes the socket file. Returns the connections still running at
    /// the deadline (0: all ended).
    pub fn stop(mut self, deadline: Duration) -> usize {
        let start = Instant::now();
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let mut conns: Vec<Conn> = {
            let mut map = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, c)| c).collect()
        };
        // First no more reading: each connection finishes its frame and sends what it owes.
        for (stream, _) in &conns {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        wait_for(&mut conns, start + deadline / 2);
        // Then, for a connection still busy (a client that stopped reading its replies holds
        // its thread in a write), no more writing either: the write fails and the thread ends.
        for (stream, _) in &conns {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        wait_for(&mut conns, start + deadline);
        let _ = std::fs::remove_file(&self.shared.config.path);
        conns.len()
    }
}

/// Joins the connection threads that end before `until`; keeps the others in `conns`.
fn wait_for(conns: &mut Vec<Conn>, until: Instant) {
    loop {
        conns.retain_mut(|(_, t)| match t.take() {
            Some(h) if h.is_finished() => {
                let _ = h.join();
                false
            }
            Some(h) => {
                *t = Some(h);
                true
            }
            None => false,
        });
        if conns.is_empty() || Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Binds `path`, replacing a stale socket file, refusing a live one or a non-socket.
fn bind(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    let io = |what: &'static str| {
        move |source| StartError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(StartError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
            tracing::info!(path = %path.display(), "removed a stale socket file (nobody listened)");
        }
        Ok(_) => return Err(StartError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect the path")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("set its mode"))?;
    Ok(listener)
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        if !readable(listener.as_raw_fd(), 200) {
            reap(shared);
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                shared
                    .log
                    .warn("accept", || format!("accept on the socket failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        reap(shared);
        let open = shared.stats.connections_open.load(Ordering::Acquire);
        if open >= shared.config.connections_max as u64 {
            bump(&shared.stats.connections_refused, 1);
            shared.log.warn("busy", || {
                format!(
                    "refused a connection: {open} open (socket.connections_max {})",
                    shared.config.connections_max
                )
            });
            let mut out = Vec::new();
            frame::encode_error(
                &mut out,
                ErrorCode::Busy,
                "too many connections (socket.connections_max)",
            );
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(&out);
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        bump(&shared.stats.connections_open, 1);
        bump(&shared.stats.connections_total, 1);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("netd-conn-{id}"))
            .spawn(move || {
                Connection::new(&s, stream).run();
                s.stats.connections_open.fetch_sub(1, Ordering::AcqRel);
            });
        match spawned {
            Ok(t) => {
                let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.insert(id, (clone, Some(t)));
            }
            Err(e) => {
                shared.stats.connections_open.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(error = %e, "cannot start a connection thread");
            }
        }
    }
}

/// Forgets connections whose thread ended.
fn reap(shared: &Shared) {
    let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
    conns.retain(|_, (_, t)| t.as_ref().is_some_and(|t| !t.is_finished()));
}

/// Waits up to `ms` for `fd` to be readable.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0
}

/// Why a connection closes early.
enum Close {
    /// Say this and close.
    Error(FrameError),
    /// The peer went away or the socket failed: nothing to say.
    Gone,
}

impl From<FrameError> for Close {
    fn from(e: FrameError) -> Close {
        Close::Error(e)
    }
}

struct Connection<'a> {
    shared: &'a Shared,
    stream: UnixStream,
    producer: Option<Producer>,
    /// Events received on this connection (they are numbered 1..=received).
    received: u64,
    /// Of those, dropped by the backpressure mode.
    dropped: u64,
    /// A frame asked for an acknowledgement not yet sent.
    ack_owed: bool,
    out: Vec<u8>,
}

impl<'a> Connection<'a> {
    fn new(shared: &'a Shared, stream: UnixStream) -> Connection<'a> {
        Connection {
            shared,
            stream,
            producer: None,
            received: 0,
            dropped: 0,
            ack_owed: false,
            out: Vec::new(),
        }
    }

    fn run(mut self) {
        // A client that stops taking its replies for this long loses its connection, not a
        // thread for ever.
        let _ = self
            .stream
            .set_write_timeout(Some(self.shared.config.frame_timeout));
        let result = self.serve();
        if let Err(Close::Error(e)) = result {
            let counter = match e.code {
                ErrorCode::BadFrame => &self.shared.stats.closed_malformed,
                ErrorCode::TooLarge => &self.shared.stats.closed_too_large,
                ErrorCode::BadCursor => &self.shared.stats.closed_bad_cursor,
                ErrorCode::Timeout => &self.shared.stats.closed_timeout,
                ErrorCode::SlowFrame => &self.shared.stats.closed_slow_frame,
                _ => &self.shared.stats.closed_unavailable,
            };
            bump(counter, 1);
            self.shared.log.warn(e.cause(), || {
                format!("closed a socket connection: {}", e.what)
            });
            self.out.clear();
            frame::encode_error(&mut self.out, e.code, &e.what);
            let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = self.stream.write_all(&self.out);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn serve(&mut self) -> Result<(), Close> {
        let limits = self.shared.config.limits;
        let mut buf = vec![0u8; 64 << 10];
        let (mut start, mut filled) = (0usize, 0usize);
        // Whether the socket's read timeout is set (only while a frame is partly read).
        let mut timed = false;
        loop {
            // Handle every complete frame read so far.
            while let Some(end) = frame::frame_end(&buf[start..filled], &limits)? {
                let body = start + frame::LEN_BYTES..start + end;
                bump(&self.shared.stats.frames, 1);
                self.handle(&buf[body], &limits)?;
                start += end;
            }
            // Owed acknowledgements go out before netd waits for more.
            if self.ack_owed {
                self.acknowledge()?;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            // Make room for the rest of the frame in progress.
            if start > 0 {
                buf.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            }
            if filled == buf.len() {
                let want = frame::frame_end(&buf[..filled], &limits)
                    .ok()
                    .flatten()
                    .unwrap_or(buf.len() * 2);
                let cap = limits.frame_bytes_max + frame::LEN_BYTES;
                buf.resize(want.max(buf.len() * 2).min(cap), 0);
            }
            if timed != (filled > 0) {
                timed = filled > 0;
                let timeout = timed.then_some(self.shared.config.frame_timeout);
                self.stream
                    .set_read_timeout(timeout)
                    .map_err(|_| Close::Gone)?;
            }
            let n = match self.stream.read(&mut buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Close::Error(FrameError {
                        code: ErrorCode::SlowFrame,
                        what: format!(
                            "a frame begun {filled} bytes ago did not arrive whole within socket.frame_timeout_ms ({} ms)",
                            self.shared.config.frame_timeout.as_millis()
                        ),
                    }));
                }
                Err(_) => return Err(Close::Gone),
            };
            if n == 0 {
                if filled > 0 {
                    bump(&self.shared.stats.truncated_at_close, 1);
                    self.shared.log.warn("truncated", || {
                        format!(
                            "a socket connection ended inside a frame ({filled} bytes of it); the frames before it were taken"
                        )
                    });
                }
                return Ok(());
            }
            filled += n;
        }
    }

    fn handle(&mut self, body: &[u8], limits: &Limits) -> Result<(), Close> {
        match frame::decode_request(body, limits)? {
            Request::Publish { ack, events } => {
                self.publish(events)?;
                self.ack_owed |= ack;
                Ok(())
            }
            Request::Sync => {
                self.ack_owed = true;
                Ok(())
            }
            Request::Read {
                max_events,
                wait_ms,
                cursor,
            } => self.read(max_events, wait_ms, cursor),
        }
    }

    fn publish(&mut self, events: frame::Events<'_>) -> Result<(), Close> {
        let bus = &self.shared.bus;
        if self.producer.is_none() {
            self.producer = Some(bus.producer().map_err(unavailable)?);
        }
        let producer = self.producer.as_mut().expect("set above");
        let n = events.len() as u64;
        let bytes = events.payload_bytes();
        let mut dropped = 0u64;
        if bus.config().lane.backpressure == Backpressure::Fail {
            // `fail` refuses at a full lane: the socket waits instead (and stops reading), so
            // a client is never told "full" for an event it cannot resend in order.
            for (key, payload) in events.iter() {
                loop {
                    match producer.send(key, payload) {
                        Ok(net_engine::Sent::Queued) => break,
                        Ok(_) => {
                            dropped += 1;
                            break;
                        }
                        Err(SendError::Full(_)) => std::thread::sleep(Duration::from_micros(50)),
                        Err(e) => return Err(send_error(e)),
                    }
                }
            }
        } else {
            let sent = producer.send_batch(events.iter());
            if let Some((_, e)) = sent.refused.into_iter().next() {
                return Err(send_error(e));
            }
            dropped = sent.dropped as u64;
        }
        self.received += n;
        self.dropped += dropped;
        let st = &self.shared.stats;
        bump(&st.events_in, n);
        bump(&st.bytes_in, bytes);
        bump(&st.events_dropped, dropped);
        Ok(())
    }

    fn acknowledge(&mut self) -> Result<(), Close> {
        self.ack_owed = false;
        if let Some(p) = &self.producer {
            match p.wait_durable(self.shared.config.ack_timeout) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Close::Error(FrameError {
                        code: ErrorCode::Timeout,
                        what: format!(
                            "events up to {} were not durable within socket.ack_timeout_ms ({} ms); they may still become durable",
                            self.received,
                            self.shared.config.ack_timeout.as_millis()
                        ),
                    }));
                }
                Err(e) => return Err(send_error(e)),
            }
        }
        self.out.clear();
        frame::encode_ack(&mut self.out, self.received, self.dropped);
        self.stream.write_all(&self.out).map_err(|_| Close::Gone)?;
        bump(&self.shared.stats.acks, 1);
        Ok(())
    }

    fn read(&mut self, max_events: u32, wait_ms: u32, cursor: &str) -> Result<(), Close> {
        let cursor = if cursor.is_empty() {
            Cursor::start()
        } else {
            Cursor::decode(cursor).map_err(read_error)?
        };
        let bus = &self.shared.bus;
        let until = Instant::now() + Duration::from_millis(u64::from(wait_ms));
        // Waits in slices, so a stop is noticed within one.
        let resp = loop {
            let left = until.saturating_duration_since(Instant::now());
            let slice = left.min(Duration::from_millis(100));
            let resp = bus
                .poll_wait(&cursor, max_events as usize, slice)
                .map_err(read_error)?;
            if !resp.events.is_empty()
                || !resp.failed_shards.is_empty()
                || left.is_zero()
                || self.shared.stop.load(Ordering::Acquire)
            {
                break resp;
            }
        };
        if let Some((shard, e)) = resp.failed_shards.first() {
            self.shared.log.warn("read_failed", || {
                format!("a socket READ found shard {shard} unreadable: {e}")
            });
        }
        self.out.clear();
        frame::encode_events(
            &mut self.out,
            &resp.next.encode(),
            resp.events.iter().map(|e| frame::ReadEvent {
                shard: e.id.shard.0,
                seq: e.id.seq.0,
                ts_ns: e.ts_ns,
                payload: &e.payload,
            }),
        );
        let count = resp.events.len() as u64;
        self.stream.write_all(&self.out).map_err(|_| Close::Gone)?;
        bump(&self.shared.stats.reads, 1);
        bump(&self.shared.stats.events_out, count);
        Ok(())
    }
}

fn send_error(e: SendError) -> Close {
    let code = match e {
        SendError::Closed | SendError::Stopped(_) => ErrorCode::ShuttingDown,
        SendError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::Unavailable,
    };
    Close::Error(FrameError {
        code,
        what: format!("the bus refused events: {e}; events after the last ACK may be lost"),
    })
}

/// A READ's error: a cursor this bus cannot use (unreadable, or naming a shard it does not
/// have) is the client's; anything else is the bus's.
fn read_error(e: net_engine::Error) -> Close {
    match e {
        net_engine::Error::Cursor(what) => Close::Error(FrameError {
            code: ErrorCode::BadCursor,
            what: format!("READ cursor: {what}"),
        }),
        other => unavailable(other),
    }
}

fn unavailable(e: net_engine::Error) -> Close {
    Close::Error(FrameError {
        code: ErrorCode::Unavailable,
        what: format!("the bus: {e}"),
    })
}
