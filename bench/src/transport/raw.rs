//! The raw references: plaintext `sendmmsg` → `recvmmsg` at full speed (the most a UDP design
//! can move through this kernel's loopback), and a blocking UDP ping-pong (the least one-way
//! latency it can have). Also the socket set-up every design of the scenario shares.

use super::{IDLE, SEQ_BYTES, Seen, Tally, Window, io_failure, pin, two_cores};
use crate::report::Percentiles;
use crate::{Failure, alloc, workload};
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// A sender that cannot send anything for this long gives up.
const SEND_STALL_MAX: Duration = Duration::from_secs(5);

/// A ping whose pong has not come back in this long is a failed run.
const PONG_TIMEOUT: Duration = Duration::from_secs(2);

/// What the raw limit measured.
#[derive(Debug, Clone)]
pub struct RawResult {
    pub sent: u64,
    pub tally: super::Tally,
    pub payload: usize,
    /// First send to last receive.
    pub elapsed: Duration,
    /// First send to the sender's last `sendmmsg`.
    pub send_elapsed: Duration,
    /// Allocations of the whole process while sender and receiver ran.
    pub allocations: alloc::Snapshot,
    pub buffers: Buffers,
    /// Whether sender and receiver ran pinned to different cores.
    pub pinned: bool,
}

impl super::Delivery for RawResult {
    fn parts(&self) -> super::DeliveryParts {
        super::DeliveryParts {
            sent: self.sent,
            received: self.tally.received,
            payload: self.payload,
            elapsed: self.elapsed,
            allocations: self.allocations,
        }
    }
}

/// What the ping-pong measured.
#[derive(Debug, Clone)]
pub struct PingResult {
    /// One-way latency (half of each measured round trip).
    pub percentiles: Percentiles,
    pub warmup: u64,
    /// Whether the threads ran pinned as asked (false on one-CPU machines).
    pub pinned: bool,
}

/// How a socket's buffers were raised, and what the kernel reports for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    pub asked: usize,
    pub how: BufferOption,
    /// `SO_SNDBUF` / `SO_RCVBUF` read back (the kernel doubles what it grants, for its own
    /// bookkeeping).
    pub sndbuf: u64,
    pub rcvbuf: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferOption {
    /// Kernel defaults (`--socket-buffer 0`).
    Default,
    /// `SO_SNDBUFFORCE` / `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN): the size asked for.
    Forced,
    /// `SO_SNDBUF` / `SO_RCVBUF`: capped by `net.core.wmem_max` / `rmem_max`.
    Plain,
}

impl fmt::Display for Buffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.how {
            BufferOption::Default => "kernel default buffers",
            BufferOption::Forced => "SO_SNDBUFFORCE/SO_RCVBUFFORCE",
            BufferOption::Plain => "SO_SNDBUF/SO_RCVBUF (capped by wmem_max/rmem_max)",
        };
        write!(
            f,
            "{how}, asked {} B, read back SO_SNDBUF {} B, SO_RCVBUF {} B",
            self.asked, self.sndbuf, self.rcvbuf
        )
    }
}

/// Two UDP sockets on 127.0.0.1, each `connect`ed to the other when `connected`, with both
/// buffers of both raised to `buffer` bytes (0: kernel defaults). Returns the sender, the
/// receiver and what the receiver's buffers became.
pub fn socket_pair(
    buffer: usize,
    nonblocking: bool,
    connected: bool,
) -> Result<(UdpSocket, UdpSocket, Buffers), Failure> {
    let bind = || UdpSocket::bind("127.0.0.1:0").map_err(Failure::io("binding a UDP socket"));
    let (a, b) = (bind()?, bind()?);
    let mut how = BufferOption::Default;
    for socket in [&a, &b] {
        if connected {
            let peer = if std::ptr::eq(socket, &a) { &b } else { &a };
            let addr = peer
                .local_addr()
                .map_err(Failure::io("reading an address"))?;
            socket
                .connect(addr)
                .map_err(Failure::io("connecting a UDP socket"))?;
        }
        socket
            .set_nonblocking(nonblocking)
            .map_err(Failure::io("setting O_NONBLOCK"))?;
        if buffer > 0 {
            let fd = socket.as_raw_fd();
            how = raise(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, buffer)?;
            raise(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, buffer)?;
        }
    }
    let fd = b.as_raw_fd();
    let buffers = Buffers {
        asked: buffer,
        how,
        sndbuf: get_option(fd, libc::SO_SNDBUF)?,
        rcvbuf: get_option(fd, libc::SO_RCVBUF)?,
    };
    Ok((a, b, buffers))
}

/// One UDP socket on 127.0.0.1 (the kernel picks the port), set up as `socket_pair` sets up
/// each of its two: `O_NONBLOCK` when `nonblocking`, both buffers raised to `buffer` bytes
/// (0: kernel defaults). For references whose two ends live in different processes.
pub fn bound_socket(buffer: usize, nonblocking: bool) -> Result<(UdpSocket, Buffers), Failure> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(Failure::io("binding a UDP socket"))?;
    socket
        .set_nonblocking(nonblocking)
        .map_err(Failure::io("setting O_NONBLOCK"))?;
    let fd = socket.as_raw_fd();
    let mut how = BufferOption::Default;
    if buffer > 0 {
        how = raise(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, buffer)?;
        raise(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, buffer)?;
    }
    let buffers = Buffers {
        asked: buffer,
        how,
        sndbuf: get_option(fd, libc::SO_SNDBUF)?,
        rcvbuf: get_option(fd, libc::SO_RCVBUF)?,
    };
    Ok((socket, buffers))
}

/// Sets a buffer size with `force` (root), or else with `plain`.
fn raise(
    fd: RawFd,
    force: libc::c_int,
    plain: libc::c_int,
    bytes: usize,
) -> Result<BufferOption, Failure> {
    let value = libc::c_int::try_from(bytes).map_err(|_| {
        Failure::Verification(format!("--socket-buffer {bytes} does not fit a C int"))
    })?;
    if set_option(fd, force, value).is_ok() {
        return Ok(BufferOption::Forced);
    }
    set_option(fd, plain, value).map_err(Failure::io("setting a socket buffer size"))?;
    Ok(BufferOption::Plain)
}

fn set_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("an int's size fits");
    // SAFETY: `fd` is an open socket; the option value is a c_int read for `len` bytes.
    let rc =
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const value).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_option(fd: RawFd, option: libc::c_int) -> Result<u64, Failure> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("an int's size fits");
    // SAFETY: `fd` is an open socket; the kernel writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Failure::io("reading a socket buffer size")(
            io::Error::last_os_error(),
        ));
    }
    Ok(u64::try_from(value).unwrap_or(0))
}

/// Waits up to `timeout` for `events` on `fd`; false on timeout or interruption.
pub fn wait_for(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, read and written by the kernel for the call's duration.
    let rc = unsafe { libc::poll(&mut pollfd, 1, ms) };
    match rc {
        0 => Ok(false),
        1.. => Ok(true),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
    }
}

/// `batch` datagram buffers of `size` bytes each and the `mmsghdr`s describing them, for
/// `sendmmsg` and `recvmmsg`. Built before a measured window; nothing here allocates after.
struct Datagrams {
    bytes: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    size: usize,
}

impl Datagrams {
    fn new(batch: usize, size: usize) -> Datagrams {
        let iovec = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: an all-zero mmsghdr is a valid value (null pointers, zero lengths).
        let header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Datagrams {
            bytes: vec![0xA5; batch * size],
            iovecs: vec![iovec; batch],
            headers: vec![header; batch],
            size,
        }
    }

    fn payload(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.size..][..self.size]
    }

    fn payload_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bytes[i * self.size..][..self.size]
    }

    /// Points the first `count` headers at their buffers, afresh (the pointers are taken
    /// after every other use of the buffers), and returns the first header.
    fn headers(&mut self, count: usize) -> *mut libc::mmsghdr {
        let base = self.bytes.as_mut_ptr();
        for (i, iovec) in self.iovecs.iter_mut().enumerate().take(count) {
            iovec.iov_base = base.wrapping_add(i * self.size).cast();
            iovec.iov_len = self.size;
        }
        let iovecs = self.iovecs.as_mut_ptr();
        for (i, header) in self.headers.iter_mut().enumerate().take(count) {
            header.msg_hdr.msg_iov = iovecs.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        self.headers.as_mut_ptr()
    }
}

/// The sequence number at the head of a datagram.
pub(super) fn seq_of(datagram: &[u8]) -> u64 {
    let mut head = [0u8; SEQ_BYTES];
    head.copy_from_slice(&datagram[..SEQ_BYTES]);
    u64::from_le_bytes(head)
}

/// What the raw sender did.
#[derive(Debug)]
pub struct Sent {
    pub first: Instant,
    pub last: Instant,
}

/// What the raw receiver saw.
#[derive(Debug)]
pub struct Received {
    pub tally: Tally,
    pub last: Option<Instant>,
}

/// The raw limit: `packets` plaintext datagrams of `payload` bytes, `batch` per `sendmmsg`,
/// received `batch` per `recvmmsg` on non-blocking sockets with `socket_buffer`-byte buffers;
/// the receiver stops after every packet or `IDLE` without one. Allocations are counted from
/// both threads' release to both threads' end.
pub fn raw_limit(
    packets: u64,
    payload: usize,
    batch: usize,
    socket_buffer: usize,
) -> Result<RawResult, Failure> {
    let (tx, rx, buffers) = socket_pair(socket_buffer, true, true)?;
    let cores = two_cores();
    let window = Window::new(2);
    let (sent, received, allocations) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            pin(cores.map(|c| c[0]));
            let mut pass = window.worker();
            send_raw(&tx, packets, batch, payload, || pass.start())
        });
        let receiver = s.spawn(|| {
            pin(cores.map(|c| c[1]));
            let mut pass = window.worker();
            receive_raw(&rx, packets, batch, payload, || pass.start())
        });
        let allocations = window.measure();
        let sent = sender.join().expect("the raw sender does not panic");
        let received = receiver.join().expect("the raw receiver does not panic");
        (sent, received, allocations)
    });
    let (sent, received) = (sent?, received?);
    received.tally.verify("raw")?;
    let end = received.last.unwrap_or(sent.first);
    Ok(RawResult {
        sent: packets,
        tally: received.tally,
        payload,
        elapsed: end.saturating_duration_since(sent.first),
        send_elapsed: sent.last.saturating_duration_since(sent.first),
        allocations,
        buffers,
        pinned: cores.is_some(),
    })
}

/// Sends `packets` numbered datagrams; `start` is called once set up, and returns when the
/// window opens. Returning ends the sender's part of the window (the caller's pass drops).
pub fn send_raw(
    socket: &UdpSocket,
    packets: u64,
    batch: usize,
    payload: usize,
    start: impl FnOnce(),
) -> Result<Sent, Failure> {
    let fd = socket.as_raw_fd();
    let mut datagrams = Datagrams::new(batch, payload);
    start();
    let first = Instant::now();
    let mut seq = 0u64;
    while seq < packets {
        let count = usize::try_from((packets - seq).min(batch as u64)).expect("at most batch");
        for i in 0..count {
            let number = seq + i as u64;
            datagrams.payload_mut(i)[..SEQ_BYTES].copy_from_slice(&number.to_le_bytes());
        }
        let headers = datagrams.headers(count);
        let mut done = 0;
        let mut stalled_since = None;
        while done < count {
            let left = u32::try_from(count - done).expect("batch fits u32");
            // SAFETY: `headers` points at `count` prepared headers whose iovecs point into
            // `datagrams`, untouched until the call returns; `done < count`.
            let rc = unsafe { libc::sendmmsg(fd, headers.wrapping_add(done), left, 0) };
            if let Ok(n @ 1..) = usize::try_from(rc) {
                done += n;
                stalled_since = None;
                continue;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                ErrorKind::WouldBlock => {
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > SEND_STALL_MAX {
                        return Err(Failure::io("raw sender stalled")(error));
                    }
                    wait_for(fd, libc::POLLOUT, IDLE).map_err(io_failure("poll (POLLOUT)"))?;
                }
                ErrorKind::Interrupted => {}
                _ => return Err(Failure::io("sendmmsg")(error)),
            }
        }
        seq += count as u64;
    }
    Ok(Sent {
        first,
        last: Instant::now(),
    })
}

/// Receives until `packets` distinct datagrams or `IDLE` without one.
pub fn receive_raw(
    socket: &UdpSocket,
    packets: u64,
    batch: usize,
    payload: usize,
    start: impl FnOnce(),
) -> Result<Received, Failure> {
    let fd = socket.as_raw_fd();
    let mut datagrams = Datagrams::new(batch, payload);
    let mut seen = Seen::new(packets);
    let mut tally = Tally::default();
    let vlen = u32::try_from(batch).expect("batch fits u32");
    start();
    let mut last = None;
    let mut last_progress = Instant::now();
    while tally.received < packets {
        let headers = datagrams.headers(batch);
        // SAFETY: `headers` points at `batch` prepared headers whose iovecs point into
        // `datagrams`, untouched until the call returns; no timeout.
        let rc = unsafe { libc::recvmmsg(fd, headers, vlen, 0, std::ptr::null_mut()) };
        if let Ok(n @ 1..) = usize::try_from(rc) {
            let now = Instant::now();
            (last, last_progress) = (Some(now), now);
            for i in 0..n {
                let header = &datagrams.headers[i];
                let whole = usize::try_from(header.msg_len).ok() == Some(payload)
                    && header.msg_hdr.msg_flags & libc::MSG_TRUNC == 0;
                if whole {
                    tally.count(&mut seen, seq_of(datagrams.payload(i)));
                } else {
                    tally.malformed += 1;
                }
            }
            continue;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            ErrorKind::WouldBlock => {
                let idle = last_progress.elapsed();
                if idle >= IDLE {
                    break;
                }
                wait_for(fd, libc::POLLIN, IDLE - idle).map_err(io_failure("poll (POLLIN)"))?;
            }
            ErrorKind::Interrupted => {}
            _ => return Err(Failure::io("recvmmsg")(error)),
        }
    }
    Ok(Received { tally, last })
}

/// Where the ping-pong's two threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Pinger and ponger pinned to different cores (the scenario's reference), when there
    /// are two.
    TwoCores,
    /// Both pinned to the first core: no cross-core wake-up, for comparison.
    OneCore,
}

/// Raw UDP ping-pong: `warmup` then `pings` round trips of one `payload`-byte datagram each way
/// between two threads on blocking sockets, placed as `placement` says; one-way latency is
/// half of each measured round trip, recorded in nanoseconds.
pub fn raw_ping_pong(
    pings: u64,
    warmup: u64,
    payload: usize,
    socket_buffer: usize,
    placement: Placement,
) -> Result<PingResult, Failure> {
    let (pinger, ponger, _) = socket_pair(socket_buffer, false, true)?;
    for socket in [&pinger, &ponger] {
        socket
            .set_read_timeout(Some(PONG_TIMEOUT))
            .map_err(Failure::io("setting SO_RCVTIMEO"))?;
    }
    let cores = two_cores().map(|[a, b]| match placement {
        Placement::TwoCores => [a, b],
        Placement::OneCore => [a, a],
    });
    let (histogram, echoed) = std::thread::scope(|s| {
        let echo = s.spawn(|| {
            pin(cores.map(|c| c[1]));
            echo(&ponger, warmup + pings, payload)
        });
        let ping = s.spawn(|| {
            pin(cores.map(|c| c[0]));
            ping(&pinger, warmup, pings, payload)
        });
        let histogram = ping.join().expect("the pinger does not panic");
        (histogram, echo.join().expect("the ponger does not panic"))
    });
    let histogram = histogram?;
    echoed?;
    let series = match placement {
        Placement::TwoCores => "raw UDP, two cores",
        Placement::OneCore => "raw UDP, one core",
    };
    crate::archive::latency("one-way latency, ping-pong", series, &histogram);
    Ok(PingResult {
        percentiles: Percentiles::from_ns(&histogram),
        warmup,
        pinned: cores.is_some(),
    })
}

/// The pinger: sends a numbered datagram, waits for it to come back, records half the round
/// trip (after `warmup` round trips).
fn ping(
    socket: &UdpSocket,
    warmup: u64,
    pings: u64,
    payload: usize,
) -> Result<hdrhistogram::Histogram<u64>, Failure> {
    let mut histogram = workload::latency_histogram();
    let mut out = vec![0xA5u8; payload];
    let mut back = vec![0u8; payload + 1];
    for seq in 0..warmup + pings {
        out[..SEQ_BYTES].copy_from_slice(&seq.to_le_bytes());
        let sent_at = Instant::now();
        socket.send(&out).map_err(io_failure("ping send"))?;
        let len = loop {
            let len = socket
                .recv(&mut back)
                .map_err(|e| Failure::io(format!("waiting for pong {seq}"))(e))?;
            // A late pong of an earlier round cannot come: every round waits for its own.
            if len >= SEQ_BYTES && seq_of(&back) == seq {
                break len;
            }
        };
        let round_trip = sent_at.elapsed();
        if len != payload {
            return Err(Failure::Verification(format!(
                "pong {seq} is {len} bytes, not {payload}"
            )));
        }
        if seq >= warmup {
            let ns = u64::try_from(round_trip.as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record((ns / 2).max(1));
        }
    }
    Ok(histogram)
}

/// The ponger: sends every datagram back as it came, `rounds` times.
fn echo(socket: &UdpSocket, rounds: u64, payload: usize) -> Result<(), Failure> {
    let mut buffer = vec![0u8; payload + 1];
    for round in 0..rounds {
        let len = socket
            .recv(&mut buffer)
            .map_err(|e| Failure::io(format!("waiting for ping {round}"))(e))?;
        socket
            .send(&buffer[..len])
            .map_err(io_failure("pong send"))?;
    }
    Ok(())
}
