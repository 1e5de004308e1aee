//! Batched, non-blocking UDP for one shard: a reuseport group steered by receiver index.
//!
//! The mesh gives every shard one UDP socket on the node's port. [`bind_group`] binds the
//! shards' sockets in shard order into one `SO_REUSEPORT` group and attaches a classic BPF
//! program that picks the receiving socket from the datagram itself: the kernel runs it on the
//! UDP payload and delivers to the group member at the index it returns, members being indexed
//! in bind order. Our wire format carries the session's little-endian u32 receiver index at
//! payload offset [`STEER_OFFSET`], and its low byte is the shard that owns the session, so
//! every datagram of a session lands on the owning shard's socket without any cross-shard hop.
//! Datagrams too short to carry that byte, or naming a socket past the group's end, fall back
//! to the kernel's flow hash.
//!
//! The shard polls readiness through its own io_uring and moves datagrams itself, up to
//! [`BATCH_DATAGRAMS_MAX`] per `recvmmsg`/`sendmmsg`. [`RecvBatch`] and [`SendBatch`] hold
//! the `mmsghdr`/`iovec`/`sockaddr_storage` arrays, allocated once; the payload bytes live in
//! the shard's [`PacketPool`]; source addresses are decoded in place. Receiving and sending a
//! batch allocate nothing, take no lock and make one syscall (a second only after `EINTR`).
//!
//! Errors are sorted by [`classify`] into what the caller does next: back off and retry
//! ([`SocketErrorClass::Transient`], paced by [`Backoff`]), drop one datagram and go on
//! ([`SocketErrorClass::Datagram`]), or stop using the socket ([`SocketErrorClass::Hard`]).

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use libc::{c_int, c_uint, c_ushort, socklen_t};

use crate::pool::{PacketBuf, PacketPool};

/// Most datagrams moved by one `recvmmsg`/`sendmmsg`.
pub const BATCH_DATAGRAMS_MAX: usize = 64;

// The kernel caps one mmsg call at UIO_MAXIOV (1024) messages.
const _: () = assert!(BATCH_DATAGRAMS_MAX > 0 && BATCH_DATAGRAMS_MAX <= 1024);

/// Payload offset of the byte the reuseport program steers by: the low byte of the
/// little-endian u32 receiver index, which is the index of the shard owning the session.
pub const STEER_OFFSET: u32 = 4;

/// Most sockets in a group: the steering byte addresses 256.
pub const STEER_SHARDS_MAX: usize = 256;

// EAGAIN and EWOULDBLOCK are one code on Linux; matching EAGAIN covers both.
const _: () = assert!(libc::EAGAIN == libc::EWOULDBLOCK);

/// Binds `n` non-blocking UDP sockets to `addr`, one per shard, as one reuseport group steered
/// by [`STEER_OFFSET`] (see the module docs).
///
/// Socket `i` of the returned vector is group member `i`, because members are indexed in bind
/// order and the sockets are bound in order: socket `i` must go to shard `i`. The first socket
/// is bound without `SO_REUSEPORT` and gets it right after: so binding fails with
/// `EADDRINUSE` instead of silently joining a group another process (a stale instance of the
/// node) holds on a fixed port, and a port-0 bind cannot land on a port a same-user reuseport
/// group holds (the kernel's ephemeral search does not skip those). With port 0 the others are
/// bound to the port the first one got. The group lives and dies together: closing one socket
/// makes the kernel move the last member into its slot, which reorders the indices.
///
/// `buffer_bytes` sizes `SO_RCVBUF` and `SO_SNDBUF` (0 keeps the kernel defaults); when
/// `net.core.rmem_max`/`wmem_max` cap the request, the `*BUFFORCE` options are tried (they
/// need `CAP_NET_ADMIN`), and whatever the kernel granted is reported by
/// [`ShardSocket::rcvbuf`]/[`ShardSocket::sndbuf`]. Every error names the option or address
/// that failed. `n` must be in `1..=`[`STEER_SHARDS_MAX`]: past that, shards could not be
/// steered to (`InvalidInput`).
pub fn bind_group(addr: SocketAddr, n: usize, buffer_bytes: usize) -> io::Result<Vec<ShardSocket>> {
    if n == 0 || n > STEER_SHARDS_MAX {
        let msg = format!("bind_group on {addr}: {n} sockets, need 1..={STEER_SHARDS_MAX}");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    }
    let first = ShardSocket::open(addr, buffer_bytes, false)?;
    set_int(&first.fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
        .map_err(|e| context(e, format_args!("setsockopt(SO_REUSEPORT) on {addr}")))?;
    let group_addr = first.local_addr;
    let mut sockets = Vec::with_capacity(n);
    sockets.push(first);
    for _ in 1..n {
        sockets.push(ShardSocket::open(group_addr, buffer_bytes, true)?);
    }
    if n > 1 {
        attach_steering(&sockets[0])
            .map_err(|e| context(e, format_args!("SO_ATTACH_REUSEPORT_CBPF on {group_addr}")))?;
    }
    Ok(sockets)
}

/// One shard's UDP socket: non-blocking, close-on-exec, member of a reuseport group.
#[derive(Debug)]
pub struct ShardSocket {
    fd: OwnedFd,
    local_addr: SocketAddr,
    rcvbuf: usize,
    sndbuf: usize,
}

impl AsFd for ShardSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ShardSocket {
    /// The bound address, with the actual port when bound to port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The descriptor, for the shard's io_uring readiness poll. Owned by `self`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The receive buffer size as the kernel reports it (`getsockopt(SO_RCVBUF)`): Linux
    /// doubles the request to cover its bookkeeping, so a request granted in full reads back
    /// as twice its size, and less than that means `net.core.rmem_max` capped it.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// The send buffer size as the kernel reports it (doubled, like [`ShardSocket::rcvbuf`]).
    pub fn sndbuf(&self) -> usize {
        self.sndbuf
    }

    /// Receives up to [`BATCH_DATAGRAMS_MAX`] datagrams with one `recvmmsg(MSG_DONTWAIT)` and
    /// calls `f(datagram, source, truncated)` for each, in arrival order; returns how many.
    ///
    /// `datagram` is exactly the received bytes, in a pool buffer the caller may decrypt in
    /// place; `truncated` means the datagram was longer than a pool buffer (`MSG_TRUNC`) and
    /// `datagram` holds only its start: drop it as malformed. The buffers go back to the pool
    /// before this returns, so nothing is handed out and nothing leaks.
    ///
    /// Takes as many buffers as the pool has free, up to the batch size. With none free it
    /// returns `ENOBUFS` without calling the kernel ([`SocketErrorClass::Transient`]: free
    /// buffers, back off, retry), rather than `Ok(0)`, which would read as "socket drained"
    /// while datagrams wait. `Ok(0)` means nothing was queued (`EAGAIN`, or `EINTR` twice).
    pub fn recv_batch(
        &self,
        batch: &mut RecvBatch,
        pool: &mut PacketPool,
        mut f: impl FnMut(&mut [u8], SocketAddr, bool),
    ) -> io::Result<usize> {
        batch.release(pool);
        while batch.bufs.len() < BATCH_DATAGRAMS_MAX {
            let Some(buf) = pool.alloc() else { break };
            batch.bufs.push(buf);
        }
        if batch.bufs.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        let count = batch.bufs.len();
        let name_len = socklen_of::<libc::sockaddr_storage>();
        for (i, buf) in batch.bufs.iter().enumerate() {
            let base = pool.ptr_mut(buf);
            batch.arrays.iovs[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: pool.buffer_bytes(),
            };
            batch.arrays.msgs[i].msg_hdr.msg_namelen = name_len;
        }
        let msgs = batch.arrays.link(count);
        let fd = self.fd();
        let vlen = vlen(count);
        let received = mmsg_call(|| {
            // SAFETY: `msgs` holds `vlen` linked headers (MsgArrays::link): each names its own
            // sockaddr_storage (msg_namelen bytes) and one iovec of `buffer_bytes` writable
            // bytes in a distinct pool buffer; all live and unaliased for the call.
            unsafe { libc::recvmmsg(fd, msgs, vlen, libc::MSG_DONTWAIT, ptr::null_mut()) }
        });
        let received = match received {
            Ok(n) => n,
            Err(e) => {
                batch.release(pool);
                return Err(e);
            }
        };
        for i in 0..received {
            let msg = &batch.arrays.msgs[i];
            let truncated = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = (msg.msg_len as usize).min(pool.buffer_bytes());
            // Cannot fail on an AF_INET/AF_INET6 socket; skip rather than invent a source.
            let Some(from) = decode_sockaddr(&batch.arrays.names[i], msg.msg_hdr.msg_namelen)
            else {
                continue;
            };
            f(&mut pool.buf_mut(&batch.bufs[i])[..len], from, truncated);
        }
        batch.release(pool);
        Ok(received)
    }

    /// Sends the queued datagrams with one `sendmmsg(MSG_DONTWAIT)`; returns how many went.
    ///
    /// Sent datagrams' buffers go back to `pool`; the unsent stay queued, in order, at the
    /// front of the batch, so a partial send neither loses nor reorders anything: call again
    /// when the socket is writable. `Ok(0)` with datagrams queued means the socket buffer is
    /// full (`EAGAIN`, or `EINTR` twice).
    ///
    /// The kernel reports an error only for the first datagram of a call (later ones end the
    /// call early with the count so far, and the error comes back on the next call). On a
    /// [`SocketErrorClass::Datagram`] error (`EMSGSIZE`) that first datagram has been removed
    /// from the batch and its buffer freed: count it as dropped and call again. On other
    /// errors the queue is left intact; see [`SendBatch::drop_front`] for a destination that
    /// keeps failing.
    pub fn send_batch(&self, batch: &mut SendBatch, pool: &mut PacketPool) -> io::Result<usize> {
        let count = batch.queue.len();
        if count == 0 {
            return Ok(0);
        }
        for (i, q) in batch.queue.iter().enumerate() {
            // Memory safety of the iovec rests on this, not only on the check in `push`.
            assert!(
                q.len <= pool.buffer_bytes(),
                "send batch: datagram longer than its buffer"
            );
            let base = pool.ptr_mut(&q.buf);
            batch.arrays.iovs[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: q.len,
            };
            let name_len = encode_sockaddr(&q.to, &mut batch.arrays.names[i]);
            batch.arrays.msgs[i].msg_hdr.msg_namelen = name_len;
        }
        let msgs = batch.arrays.link(count);
        let fd = self.fd();
        let vlen = vlen(count);
        let sent = mmsg_call(|| {
            // SAFETY: `msgs` holds `vlen` linked headers (MsgArrays::link): each names an
            // encoded destination of msg_namelen bytes and one iovec of `len <= buffer_bytes`
            // readable bytes in a pool buffer; all live for the call.
            unsafe { libc::sendmmsg(fd, msgs, vlen, libc::MSG_DONTWAIT) }
        });
        match sent {
            Ok(n) => {
                batch.complete(n, pool);
                Ok(n)
            }
            Err(e) => {
                if classify(&e) == SocketErrorClass::Datagram {
                    batch.complete(1, pool);
                }
                Err(e)
            }
        }
    }

    /// Sends any number of datagrams in `sendmmsg` calls of at most [`BATCH_DATAGRAMS_MAX`];
    /// returns how many went out before the socket buffer filled (`EAGAIN`).
    ///
    /// For tests, benchmarks and cold paths: it allocates its arrays per call. Like
    /// `sendmmsg`, an error after some datagrams went out returns the count so far (the next
    /// call reports it); an error on the first datagram is returned.
    pub fn send_all(&self, datagrams: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        let mut arrays = MsgArrays::new();
        let mut sent = 0;
        while sent < datagrams.len() {
            let chunk = &datagrams[sent..datagrams.len().min(sent + BATCH_DATAGRAMS_MAX)];
            for (i, (bytes, to)) in chunk.iter().enumerate() {
                // sendmmsg only reads through iov_base; the cast to *mut is the C signature's.
                let base = bytes.as_ptr().cast_mut();
                arrays.iovs[i] = libc::iovec {
                    iov_base: base.cast(),
                    iov_len: bytes.len(),
                };
                let name_len = encode_sockaddr(to, &mut arrays.names[i]);
                arrays.msgs[i].msg_hdr.msg_namelen = name_len;
            }
            let msgs = arrays.link(chunk.len());
            let fd = self.fd();
            let vlen = vlen(chunk.len());
            let result = mmsg_call(|| {
                // SAFETY: as in `send_batch`, with iovecs into the caller's live slices.
                unsafe { libc::sendmmsg(fd, msgs, vlen, libc::MSG_DONTWAIT) }
            });
            match result {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Creates, sizes and binds one socket; `reuseport` sets `SO_REUSEPORT` before `bind`.
    fn open(addr: SocketAddr, buffer_bytes: usize, reuseport: bool) -> io::Result<ShardSocket> {
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        let kind = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe { libc::socket(domain, kind, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(context(e, format_args!("socket(SOCK_DGRAM) for {addr}")));
        }
        // SAFETY: `raw` is a descriptor we just created and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if reuseport {
            set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
                .map_err(|e| context(e, format_args!("setsockopt(SO_REUSEPORT) on {addr}")))?;
        }
        let rcv = BufferOption {
            name: "SO_RCVBUF",
            option: libc::SO_RCVBUF,
            force: libc::SO_RCVBUFFORCE,
        };
        let snd = BufferOption {
            name: "SO_SNDBUF",
            option: libc::SO_SNDBUF,
            force: libc::SO_SNDBUFFORCE,
        };
        let rcvbuf = rcv.size(&fd, buffer_bytes, addr)?;
        let sndbuf = snd.size(&fd, buffer_bytes, addr)?;
        let mut storage = zeroed_sockaddr();
        let len = encode_sockaddr(&addr, &mut storage);
        // SAFETY: `storage` holds an encoded sockaddr of `len` bytes, live for the call.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) };
        if r < 0 {
            return Err(context(
                io::Error::last_os_error(),
                format_args!("bind({addr})"),
            ));
        }
        let local_addr = sockname(&fd)
            .map_err(|e| context(e, format_args!("getsockname() after bind({addr})")))?;
        Ok(ShardSocket {
            fd,
            local_addr,
            rcvbuf,
            sndbuf,
        })
    }
}

/// The `mmsghdr`/`iovec`/`sockaddr_storage` arrays of one batch, allocated once.
///
/// `Vec` rather than a boxed slice: `Vec::as_mut_ptr` does not reborrow the whole array, so
/// the pointers `link` stores stay valid together.
struct MsgArrays {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
}

// SAFETY: the raw pointers inside the headers and iovecs are scratch values, rewritten before
// every syscall and never dereferenced by Rust code; moving the arrays to another thread
// shares nothing.
unsafe impl Send for MsgArrays {}

impl MsgArrays {
    fn new() -> MsgArrays {
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths and flags).
        let msg: libc::mmsghdr = unsafe { mem::zeroed() };
        let iov = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        MsgArrays {
            msgs: vec![msg; BATCH_DATAGRAMS_MAX],
            iovs: vec![iov; BATCH_DATAGRAMS_MAX],
            names: vec![zeroed_sockaddr(); BATCH_DATAGRAMS_MAX],
        }
    }

    /// Points header `i < count` at `iovs[i]` and `names[i]` (its `msg_namelen` is set by the
    /// caller) and clears its outputs; returns the pointer to pass to the syscall.
    fn link(&mut self, count: usize) -> *mut libc::mmsghdr {
        let names = self.names.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        for (i, msg) in self.msgs[..count].iter_mut().enumerate() {
            let hdr = &mut msg.msg_hdr;
            hdr.msg_name = names.wrapping_add(i).cast();
            hdr.msg_iov = iovs.wrapping_add(i);
            hdr.msg_iovlen = 1;
            hdr.msg_control = ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            msg.msg_len = 0;
        }
        self.msgs.as_mut_ptr()
    }
}

/// Preallocated arrays for one `recvmmsg` of up to [`BATCH_DATAGRAMS_MAX`] datagrams; reuse
/// one per shard with [`ShardSocket::recv_batch`], always with the same pool.
pub struct RecvBatch {
    arrays: MsgArrays,
    /// Buffers taken from the pool for the call in progress; empty between calls, except
    /// after a panicking callback (the next call returns them).
    bufs: Vec<PacketBuf>,
}

impl fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBatch")
            .field("datagrams_max", &BATCH_DATAGRAMS_MAX)
            .finish()
    }
}

impl Default for RecvBatch {
    fn default() -> RecvBatch {
        RecvBatch::new()
    }
}

impl RecvBatch {
    /// Allocates the arrays for [`BATCH_DATAGRAMS_MAX`] datagrams.
    pub fn new() -> RecvBatch {
        RecvBatch {
            arrays: MsgArrays::new(),
            bufs: Vec::with_capacity(BATCH_DATAGRAMS_MAX),
        }
    }

    fn release(&mut self, pool: &mut PacketPool) {
        self.bufs.drain(..).for_each(|b| pool.free(b));
    }
}

/// One queued datagram: its bytes are `buf[..len]`.
#[derive(Debug)]
struct Queued {
    buf: PacketBuf,
    len: usize,
    to: SocketAddr,
}

/// A queue of up to [`BATCH_DATAGRAMS_MAX`] datagrams for one `sendmmsg`, with its arrays
/// allocated once.
///
/// The batch owns the queued [`PacketBuf`]s, so a queued buffer cannot be freed or reused
/// before the kernel has read it; [`ShardSocket::send_batch`] frees each one once sent.
/// Destinations are kept as `SocketAddr` and encoded at send time.
pub struct SendBatch {
    arrays: MsgArrays,
    queue: Vec<Queued>,
}

impl fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendBatch")
            .field("queue", &self.queue)
            .finish()
    }
}

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch::new()
    }
}

impl SendBatch {
    /// Allocates the arrays and queue for [`BATCH_DATAGRAMS_MAX`] datagrams.
    pub fn new() -> SendBatch {
        SendBatch {
            arrays: MsgArrays::new(),
            queue: Vec::with_capacity(BATCH_DATAGRAMS_MAX),
        }
    }

    /// Queues `pool`'s buffer `buf`, whose first `len` bytes are the datagram, for `to`.
    /// Hands `buf` back when the batch is full. Panics if `len` exceeds the buffer or `buf`
    /// is not `pool`'s.
    pub fn push(
        &mut self,
        pool: &PacketPool,
        buf: PacketBuf,
        len: usize,
        to: SocketAddr,
    ) -> Result<(), PacketBuf> {
        assert!(
            len <= pool.buf(&buf).len(),
            "send batch: {len} bytes exceed the buffer"
        );
        if self.is_full() {
            return Err(buf);
        }
        self.queue.push(Queued { buf, len, to });
        Ok(())
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether [`BATCH_DATAGRAMS_MAX`] datagrams are queued.
    pub fn is_full(&self) -> bool {
        self.queue.len() == BATCH_DATAGRAMS_MAX
    }

    /// Drops the first queued datagram, freeing its buffer; false if none was queued. For a
    /// head datagram whose destination keeps failing (e.g. `EPERM` from a firewall), which
    /// would otherwise hold back the rest.
    pub fn drop_front(&mut self, pool: &mut PacketPool) -> bool {
        let any = !self.queue.is_empty();
        self.complete(usize::from(any), pool);
        any
    }

    /// Drops every queued datagram, freeing the buffers (on a hard error or shutdown);
    /// returns how many were dropped.
    pub fn clear(&mut self, pool: &mut PacketPool) -> usize {
        let n = self.queue.len();
        self.complete(n, pool);
        n
    }

    /// Frees the first `n` datagrams' buffers and shifts the rest, in order, to the front.
    fn complete(&mut self, n: usize, pool: &mut PacketPool) {
        assert!(
            n <= self.queue.len(),
            "send batch: kernel reported more sent than queued"
        );
        self.queue.drain(..n).for_each(|q| pool.free(q.buf));
    }
}

/// What the caller does after a socket error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketErrorClass {
    /// Nothing is wrong with the socket or the datagrams: back off ([`Backoff`]) and retry.
    /// Covers a full socket buffer, a signal, memory pressure, an empty packet pool
    /// (`ENOBUFS`), ICMP errors from earlier sends, a down or unreachable network, and
    /// `EPERM` from a netfilter rule.
    Transient,
    /// One datagram is at fault (`EMSGSIZE`): drop it, count it, keep going.
    Datagram,
    /// The socket is unusable or we misused it (`EBADF`, `ENOTSOCK`, `EINVAL`, `EFAULT`,
    /// `EACCES`, anything unknown): stop and report.
    Hard,
}

/// Sorts an error from this module's socket calls into a [`SocketErrorClass`].
pub fn classify(e: &io::Error) -> SocketErrorClass {
    use SocketErrorClass::{Datagram, Hard, Transient};
    match e.raw_os_error() {
        Some(
            libc::EAGAIN
            | libc::EINTR
            | libc::ENOBUFS
            | libc::ENOMEM
            | libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::EHOSTDOWN
            | libc::EPERM,
        ) => Transient,
        Some(libc::EMSGSIZE) => Datagram,
        Some(_) => Hard,
        None => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Transient,
            _ => Hard,
        },
    }
}

/// Exponential backoff for transient errors: the first error waits `min_ns`, each further
/// one twice the last, capped at `max_ns`; a success resets it.
///
/// Times are caller-supplied nanoseconds (the shard's clock), so tests need no real clock,
/// and [`Backoff::retry_at_ns`] is a deadline the shard can park until.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ns: u64,
    max_ns: u64,
    /// The last delay; 0 when the last attempt succeeded.
    delay_ns: u64,
    retry_at_ns: u64,
}

impl Backoff {
    /// Panics unless `0 < min_ns <= max_ns`.
    pub fn new(min_ns: u64, max_ns: u64) -> Backoff {
        assert!(
            0 < min_ns && min_ns <= max_ns,
            "backoff: need 0 < min_ns <= max_ns"
        );
        Backoff {
            min_ns,
            max_ns,
            delay_ns: 0,
            retry_at_ns: 0,
        }
    }

    /// Records a failure at `now_ns`; returns the time to retry at.
    pub fn on_error(&mut self, now_ns: u64) -> u64 {
        self.delay_ns = if self.delay_ns == 0 {
            self.min_ns
        } else {
            self.delay_ns.saturating_mul(2).min(self.max_ns)
        };
        self.retry_at_ns = now_ns.saturating_add(self.delay_ns);
        self.retry_at_ns
    }

    /// Records a success: the next error waits `min_ns` again, and retrying is allowed now.
    pub fn on_success(&mut self) {
        self.delay_ns = 0;
        self.retry_at_ns = 0;
    }

    /// Whether a retry is due at `now_ns`.
    pub fn ready(&self, now_ns: u64) -> bool {
        now_ns >= self.retry_at_ns
    }

    /// When the next retry is due (0 after a success).
    pub fn retry_at_ns(&self) -> u64 {
        self.retry_at_ns
    }

    /// The current delay (0 after a success).
    pub fn delay_ns(&self) -> u64 {
        self.delay_ns
    }
}

/// Runs one mmsg syscall (`call` returns its raw result): `EINTR` is retried once, then
/// `EAGAIN` or a second `EINTR` reads as 0 datagrams moved.
fn mmsg_call(mut call: impl FnMut() -> c_int) -> io::Result<usize> {
    let mut retried = false;
    loop {
        let r = call();
        if let Ok(n) = usize::try_from(r) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) if !retried => retried = true,
            Some(libc::EINTR | libc::EAGAIN) => return Ok(0),
            _ => return Err(e),
        }
    }
}

fn vlen(count: usize) -> c_uint {
    c_uint::try_from(count).expect("batch size fits c_uint")
}

/// The reuseport steering program (classic BPF, run on the UDP payload):
///
/// ```text
/// ld  len                  ; A = payload length
/// jge #5, steer, hash      ; too short to hold the steering byte?
/// steer: ldb [4]           ; A = payload[STEER_OFFSET]
///        ret a             ; member index; >= group size falls back to the hash
/// hash:  ret #0xffffffff   ; out of range on purpose: the kernel's hash picks
/// ```
///
/// The length check matters: a classic BPF load past the end aborts the program with 0,
/// which would pile every short datagram onto socket 0.
fn steering_program() -> [libc::sock_filter; 5] {
    fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        let code = u16::try_from(code).expect("BPF opcodes fit u16");
        libc::sock_filter { code, jt, jf, k }
    }
    use libc::{BPF_A, BPF_ABS, BPF_B, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_LEN, BPF_RET, BPF_W};
    [
        insn(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        insn(BPF_JMP | BPF_JGE | BPF_K, 0, 2, STEER_OFFSET + 1),
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, STEER_OFFSET),
        insn(BPF_RET | BPF_A, 0, 0, 0),
        insn(BPF_RET | BPF_K, 0, 0, u32::MAX),
    ]
}

/// Attaches [`steering_program`] to `socket`'s reuseport group (any member will do).
fn attach_steering(socket: &ShardSocket) -> io::Result<()> {
    let mut program = steering_program();
    let fprog = libc::sock_fprog {
        len: c_ushort::try_from(program.len()).expect("program length fits u16"),
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both live for the call; the kernel copies the
    // program and does not keep the pointer.
    let r = unsafe {
        libc::setsockopt(
            socket.fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            socklen_of::<libc::sock_fprog>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `SO_RCVBUF` or `SO_SNDBUF`, with the `*FORCE` variant that ignores the sysctl cap.
struct BufferOption {
    name: &'static str,
    option: c_int,
    force: c_int,
}

impl BufferOption {
    /// Requests `bytes` (0: keep the default); if the kernel capped it, tries the `FORCE`
    /// variant (`EPERM` without `CAP_NET_ADMIN` is not an error). Returns what the kernel
    /// reports, which is twice what it granted.
    fn size(&self, fd: &OwnedFd, bytes: usize, addr: SocketAddr) -> io::Result<usize> {
        let name = self.name;
        let get = |e| context(e, format_args!("getsockopt({name}) on {addr}"));
        if bytes > 0 {
            let want = c_int::try_from(bytes).map_err(|_| {
                let msg = format!("setsockopt({name}) on {addr}: {bytes} bytes exceed c_int");
                io::Error::new(io::ErrorKind::InvalidInput, msg)
            })?;
            set_int(fd, libc::SOL_SOCKET, self.option, want)
                .map_err(|e| context(e, format_args!("setsockopt({name}) on {addr}")))?;
            let got = get_int(fd, libc::SOL_SOCKET, self.option).map_err(get)?;
            // The kernel grants min(want, cap) and reports it doubled, up to INT_MAX.
            if i64::from(got) < 2 * i64::from(want.min(c_int::MAX / 2)) {
                match set_int(fd, libc::SOL_SOCKET, self.force, want) {
                    Err(e) if e.raw_os_error() != Some(libc::EPERM) => {
                        return Err(context(
                            e,
                            format_args!("setsockopt({name}FORCE) on {addr}"),
                        ));
                    }
                    _ => {}
                }
            }
        }
        let got = get_int(fd, libc::SOL_SOCKET, self.option).map_err(get)?;
        Ok(usize::try_from(got).unwrap_or(0))
    }
}

fn set_int(fd: &OwnedFd, level: c_int, option: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: the kernel reads one c_int from `value`, live for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            socklen_of::<c_int>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_int(fd: &OwnedFd, level: c_int, option: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = socklen_of::<c_int>();
    // SAFETY: the kernel writes at most `len` bytes to `value` and the length to `len`,
    // both live for the call.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn sockname(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut storage = zeroed_sockaddr();
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: the kernel writes at most `len` bytes into `storage` and the length to `len`.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut storage).cast(), &raw mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    decode_sockaddr(&storage, len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IPv4/IPv6 address"))
}

fn zeroed_sockaddr() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage (family AF_UNSPEC, zero padding).
    unsafe { mem::zeroed() }
}

fn socklen_of<T>() -> socklen_t {
    socklen_t::try_from(mem::size_of::<T>()).expect("sockaddr sizes fit socklen_t")
}

fn family(af: c_int) -> libc::sa_family_t {
    libc::sa_family_t::try_from(af).expect("address families fit sa_family_t")
}

/// Writes `addr` as a `sockaddr_in`/`sockaddr_in6` into `out`; returns its length.
fn encode_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> socklen_t {
    let out: *mut libc::sockaddr_storage = out;
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: family(libc::AF_INET),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and at least as aligned as sockaddr_in,
            // and `out` is valid for writes.
            unsafe { out.cast::<libc::sockaddr_in>().write(sin) };
            socklen_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: family(libc::AF_INET6),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { out.cast::<libc::sockaddr_in6>().write(sin6) };
            socklen_of::<libc::sockaddr_in6>()
        }
    }
}

/// Reads the `sockaddr_in`/`sockaddr_in6` the kernel wrote (`len` bytes) into `storage`;
/// `None` for another family or a short length.
fn decode_sockaddr(storage: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    let family = c_int::from(storage.ss_family);
    let storage: *const libc::sockaddr_storage = storage;
    match family {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is larger than and at least as aligned as sockaddr_in,
            // all its bytes are initialised, and family and length say it holds one.
            let sin = unsafe { storage.cast::<libc::sockaddr_in>().read() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { storage.cast::<libc::sockaddr_in6>().read() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            let (flowinfo, scope_id) = (sin6.sin6_flowinfo, sin6.sin6_scope_id);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip, port, flowinfo, scope_id,
            )))
        }
        _ => None,
    }
}

fn context(e: io::Error, what: fmt::Arguments<'_>) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classify_table() {
        use SocketErrorClass::{Datagram, Hard, Transient};
        let table = [
            (libc::EAGAIN, Transient),
            (libc::EWOULDBLOCK, Transient),
            (libc::EINTR, Transient),
            (libc::ENOBUFS, Transient),
            (libc::ENOMEM, Transient),
            (libc::ECONNREFUSED, Transient),
            (libc::EHOSTUNREACH, Transient),
            (libc::ENETUNREACH, Transient),
            (libc::ENETDOWN, Transient),
            (libc::EHOSTDOWN, Transient),
            (libc::EPERM, Transient),
            (libc::EMSGSIZE, Datagram),
            (libc::EBADF, Hard),
            (libc::ENOTSOCK, Hard),
            (libc::EINVAL, Hard),
            (libc::EFAULT, Hard),
            (libc::EACCES, Hard),
            (libc::EAFNOSUPPORT, Hard),
            (9999, Hard),
        ];
        for (code, class) in table {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(code)),
                class,
                "errno {code}"
            );
        }
        assert_eq!(classify(&io::ErrorKind::WouldBlock.into()), Transient);
        assert_eq!(classify(&io::ErrorKind::Interrupted.into()), Transient);
        assert_eq!(classify(&io::Error::other("wrapped")), Hard);
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(100, 1_000);
        assert!(b.ready(0));
        assert_eq!(b.on_error(10), 110);
        assert!(!b.ready(109));
        assert!(b.ready(110));
        assert_eq!(b.on_error(110), 310);
        assert_eq!(b.on_error(310), 710);
        assert_eq!(b.on_error(710), 1_510);
        assert_eq!(b.delay_ns(), 800);
        assert_eq!(b.on_error(1_510), 2_510, "capped at max_ns");
        assert_eq!(b.on_error(2_510), 3_510, "stays capped");
        b.on_success();
        assert!(b.ready(0));
        assert_eq!(b.on_error(5_000), 5_100, "a success restarts at min_ns");
    }

    #[test]
    fn backoff_saturates() {
        let mut b = Backoff::new(u64::MAX / 2, u64::MAX);
        for _ in 0..4 {
            assert_eq!(b.on_error(u64::MAX - 1), u64::MAX);
        }
        assert_eq!(b.delay_ns(), u64::MAX);
        assert!(!b.ready(u64::MAX - 1));
        assert!(b.ready(u64::MAX));
    }

    #[test]
    #[should_panic(expected = "min_ns <= max_ns")]
    fn backoff_rejects_inverted_bounds() {
        let _ = Backoff::new(10, 5);
    }

    fn set_errno(code: c_int) {
        // SAFETY: __errno_location returns this thread's errno, valid for writes.
        unsafe { *libc::__errno_location() = code };
    }

    #[test]
    fn mmsg_call_retries_eintr_once_and_reads_eagain_as_zero() {
        let mut calls = 0;
        let r = mmsg_call(|| {
            calls += 1;
            if calls == 1 {
                set_errno(libc::EINTR);
                -1
            } else {
                7
            }
        });
        assert_eq!(r.expect("retried"), 7);
        calls = 0;
        let r = mmsg_call(|| {
            calls += 1;
            set_errno(libc::EINTR);
            -1
        });
        assert_eq!(r.expect("EINTR twice"), 0);
        assert_eq!(calls, 2, "EINTR is retried exactly once");
        let r = mmsg_call(|| {
            set_errno(libc::EAGAIN);
            -1
        });
        assert_eq!(r.expect("EAGAIN"), 0);
        let r = mmsg_call(|| {
            set_errno(libc::EMSGSIZE);
            -1
        });
        assert_eq!(
            r.expect_err("EMSGSIZE").raw_os_error(),
            Some(libc::EMSGSIZE)
        );
    }

    #[test]
    fn steering_program_jumps_land_where_documented() {
        let p = steering_program();
        let jump = &p[1];
        let taken = 2 + usize::from(jump.jt);
        let not_taken = 2 + usize::from(jump.jf);
        assert_eq!(jump.k, STEER_OFFSET + 1);
        assert_eq!(
            u32::from(p[taken].code),
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS
        );
        assert_eq!(p[taken].k, STEER_OFFSET);
        assert_eq!(u32::from(p[not_taken].code), libc::BPF_RET | libc::BPF_K);
        assert!(usize::try_from(p[not_taken].k).expect("fits") >= STEER_SHARDS_MAX);
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn send_batch_queue_is_bounded_and_shifts_in_order() {
        let mut pool = PacketPool::new(BATCH_DATAGRAMS_MAX + 1, 16);
        let mut batch = SendBatch::new();
        for port in 0..BATCH_DATAGRAMS_MAX {
            let buf = pool.alloc().expect("free buffer");
            let port = u16::try_from(port).expect("small");
            batch.push(&pool, buf, 1, addr(port)).expect("room");
        }
        assert!(batch.is_full());
        let extra = pool.alloc().expect("free buffer");
        let extra = batch.push(&pool, extra, 1, addr(999)).expect_err("full");
        pool.free(extra);

        batch.complete(10, &mut pool);
        assert_eq!(batch.len(), BATCH_DATAGRAMS_MAX - 10);
        assert_eq!(pool.available(), 11);
        let ports: Vec<u16> = batch.queue.iter().map(|q| q.to.port()).collect();
        let want: Vec<u16> = (10..BATCH_DATAGRAMS_MAX)
            .map(|p| u16::try_from(p).unwrap())
            .collect();
        assert_eq!(
            ports, want,
            "unsent datagrams keep their order at the front"
        );

        assert!(batch.drop_front(&mut pool));
        assert_eq!(batch.queue[0].to.port(), 11);
        assert_eq!(batch.clear(&mut pool), BATCH_DATAGRAMS_MAX - 11);
        assert!(batch.is_empty());
        assert!(!batch.drop_front(&mut pool));
        assert_eq!(pool.available(), pool.capacity(), "every buffer went back");
    }

    #[test]
    #[should_panic(expected = "exceed the buffer")]
    fn send_batch_rejects_length_past_the_buffer() {
        let mut pool = PacketPool::new(1, 16);
        let buf = pool.alloc().expect("free buffer");
        let _ = SendBatch::new().push(&pool, buf, 17, addr(1));
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(ip, port, flow, scope)| {
                    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn sockaddr_codec_round_trips(a in any_addr()) {
            let mut storage = zeroed_sockaddr();
            let len = encode_sockaddr(&a, &mut storage);
            prop_assert_eq!(decode_sockaddr(&storage, len), Some(a));
            prop_assert_eq!(decode_sockaddr(&storage, len - 1), None);
        }
    }

    #[test]
    fn sockaddr_decode_rejects_other_families() {
        let mut storage = zeroed_sockaddr();
        storage.ss_family = family(libc::AF_UNIX);
        assert_eq!(
            decode_sockaddr(&storage, socklen_of::<libc::sockaddr_storage>()),
            None
        );
    }
}
