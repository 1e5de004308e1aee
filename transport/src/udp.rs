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
//! batch allocate nothing, take no lock and make one syscall (a second only after `EINTR`, or
//! once in a socket's life when the kernel refuses GSO).
//!
//! Sends use UDP GSO (`UDP_SEGMENT`, Linux >= 4.18) where the kernel has it: a run of
//! consecutive equal-size datagrams to one destination goes to the kernel as one message,
//! which crosses the stack as one packet and is split late; see [`SendBatch`]. Receiving
//! takes one datagram per buffer, as without GSO (no `UDP_GRO`).
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
use std::sync::atomic::{AtomicBool, Ordering};

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
    } else {
        // GRO only for a group of one: a NIC coalesces same-size datagrams of one 4-tuple,
        // and every shard of a node shares the port, so segments meant for different shards
        // could be merged and steered by the first one's byte. With one socket there is no
        // other shard to miss. (Best effort: without UDP_GRO every receive is one datagram.)
        let on = sockets[0].set_gro(true).is_ok();
        debug_assert!(on || !sockets[0].gro());
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
    /// The kernel knows `UDP_SEGMENT` (probed at creation).
    gso_supported: bool,
    /// Sends group datagrams into GSO messages: supported and not turned off.
    gso: AtomicBool,
    /// `UDP_GRO` is on: a receive may return many datagrams of one sender coalesced into one
    /// buffer (a GSO send over loopback arrives whole, without being split in the kernel).
    gro: AtomicBool,
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
        f: impl FnMut(&mut [u8], SocketAddr, bool),
    ) -> io::Result<usize> {
        if self.gro() {
            return self.recv_coalesced(batch, pool.buffer_bytes(), f);
        }
        self.recv_single(batch, pool, f)
    }

    /// Whether receives may coalesce datagrams (`UDP_GRO` is on).
    pub fn gro(&self) -> bool {
        self.gro.load(Ordering::Relaxed)
    }

    /// Turns `UDP_GRO` on or off (tests of the one-datagram-per-buffer path use it).
    pub fn set_gro(&self, on: bool) -> io::Result<()> {
        set_int(&self.fd, libc::SOL_UDP, libc::UDP_GRO, c_int::from(on))?;
        self.gro.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// `recv_batch` with `UDP_GRO`: up to [`GRO_SLOTS`] receives into the batch's own 64 KiB
    /// slots; each is one datagram, or many of one sender with the segment size in a
    /// `UDP_GRO` control message, handed to `f` one datagram at a time. A datagram longer
    /// than `datagram_max` (the pool's buffer, what the non-coalesced path can hold) is
    /// handed over cut to that length and flagged truncated, as there. Returns datagrams.
    fn recv_coalesced(
        &self,
        batch: &mut RecvBatch,
        datagram_max: usize,
        mut f: impl FnMut(&mut [u8], SocketAddr, bool),
    ) -> io::Result<usize> {
        let gro = batch.gro.get_or_insert_with(GroSlots::new);
        let name_len = socklen_of::<libc::sockaddr_storage>();
        let slots = gro.bytes.as_mut_ptr();
        let controls = gro.control.as_mut_ptr();
        for i in 0..GRO_SLOTS {
            batch.arrays.iovs[i] = libc::iovec {
                iov_base: slots.wrapping_add(i * GRO_SLOT_BYTES).cast(),
                iov_len: GRO_SLOT_BYTES,
            };
            batch.arrays.msgs[i].msg_hdr.msg_namelen = name_len;
        }
        let msgs = batch.arrays.link(GRO_SLOTS);
        for i in 0..GRO_SLOTS {
            let hdr = &mut batch.arrays.msgs[i].msg_hdr;
            hdr.msg_control = controls.wrapping_add(i).cast();
            hdr.msg_controllen = GRO_CONTROL_BYTES as _;
        }
        let fd = self.fd();
        let received = mmsg_call(|| {
            // SAFETY: `msgs` holds GRO_SLOTS linked headers: each names its own
            // sockaddr_storage, one iovec of GRO_SLOT_BYTES writable bytes in a distinct
            // slot of `gro.bytes`, and GRO_CONTROL_BYTES of its own control buffer; all live
            // and unaliased for the call.
            unsafe {
                libc::recvmmsg(
                    fd,
                    msgs,
                    vlen(GRO_SLOTS),
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            }
        })?;
        batch.drained = received < GRO_SLOTS;
        let mut datagrams = 0;
        for i in 0..received {
            let msg = &batch.arrays.msgs[i];
            let truncated = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = (msg.msg_len as usize).min(GRO_SLOT_BYTES);
            let segment = gro_segment(&msg.msg_hdr)
                .filter(|&s| s > 0)
                .unwrap_or(len.max(1));
            let Some(from) = decode_sockaddr(&batch.arrays.names[i], msg.msg_hdr.msg_namelen)
            else {
                continue;
            };
            let slot = &mut gro.bytes[i * GRO_SLOT_BYTES..i * GRO_SLOT_BYTES + len];
            if len == 0 {
                f(slot, from, truncated);
                datagrams += 1;
                continue;
            }
            for piece in slot.chunks_mut(segment) {
                let long = piece.len() > datagram_max;
                let n = piece.len().min(datagram_max);
                f(&mut piece[..n], from, truncated || long);
                datagrams += 1;
            }
        }
        Ok(datagrams)
    }

    fn recv_single(
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
        batch.drained = received < count;
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

    /// Whether sends group equal-size datagrams into UDP GSO messages (see [`SendBatch`]):
    /// the kernel supports `UDP_SEGMENT` and no GSO send has failed on this socket yet.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Turns GSO grouping off (`false`) or back on (`true`, only where the kernel supports
    /// it); returns whether it is on now. For comparisons and tests: sends pick it by default.
    pub fn set_gso(&self, on: bool) -> bool {
        let on = on && self.gso_supported;
        self.gso.store(on, Ordering::Relaxed);
        on
    }

    /// Sends the queued datagrams with one `sendmmsg(MSG_DONTWAIT)`; returns how many went.
    ///
    /// With GSO ([`ShardSocket::gso`]), each run of consecutive datagrams that can share one
    /// `UDP_SEGMENT` message goes out as one message (see [`SendBatch`]); a message is sent
    /// whole or not at all, so the count is still of datagrams.
    ///
    /// Sent datagrams' buffers go back to `pool`; the unsent stay queued, in order, at the
    /// front of the batch, so a partial send neither loses nor reorders anything: call again
    /// when the socket is writable. `Ok(0)` with datagrams queued means the socket buffer is
    /// full (`EAGAIN`, or `EINTR` twice).
    ///
    /// The kernel reports an error only for the first message of a call (later ones end the
    /// call early with the count so far, and the error comes back on the next call). If that
    /// first message is a GSO run refused with `EMSGSIZE`, `EINVAL` or `EIO` (segment past the
    /// path MTU, no checksum offload, IPsec), GSO is turned off for this socket and the same
    /// datagrams are sent again one per message, in the same call. On a
    /// [`SocketErrorClass::Datagram`] error (`EMSGSIZE`) for a single first datagram, that
    /// datagram has been removed from the batch and its buffer freed: count it as dropped and
    /// call again. On other errors the queue is left intact; see [`SendBatch::drop_front`]
    /// for a destination that keeps failing.
    pub fn send_batch(&self, batch: &mut SendBatch, pool: &mut PacketPool) -> io::Result<usize> {
        if batch.queue.is_empty() {
            return Ok(0);
        }
        let mut gso = self.gso();
        loop {
            let (msgs, count) = batch.prepare(pool, gso);
            let fd = self.fd();
            let vlen = vlen(count);
            let sent = mmsg_call(|| {
                // SAFETY: `msgs` holds `vlen` linked headers (SendBatch::prepare): each names
                // an encoded destination of msg_namelen bytes, `msg_iovlen` consecutive iovecs
                // of `len <= buffer_bytes` readable bytes in distinct pool buffers, and either
                // no control data or one UDP_SEGMENT cmsg of msg_controllen bytes; all live
                // for the call.
                unsafe { libc::sendmmsg(fd, msgs, vlen, libc::MSG_DONTWAIT) }
            });
            match sent {
                Ok(k) => return Ok(batch.complete_messages(k, pool)),
                Err(e) => {
                    let refused = matches!(
                        e.raw_os_error(),
                        Some(libc::EMSGSIZE | libc::EINVAL | libc::EIO)
                    );
                    if gso && refused && batch.runs[0].count > 1 {
                        // The kernel will not take this GSO message: send one per message
                        // from now on, which also pins an EMSGSIZE on the datagram at fault.
                        gso = false;
                        self.gso.store(false, Ordering::Relaxed);
                        continue;
                    }
                    if classify(&e) == SocketErrorClass::Datagram {
                        batch.complete(1, pool);
                    }
                    return Err(e);
                }
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
        // Linux >= 4.18 knows UDP_SEGMENT; reading it back (the socket's default segment
        // size, 0) is the probe. We never set it: only messages with the cmsg are segmented.
        let gso_supported = get_int(&fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok();
        // Linux >= 5.0: coalesced receives, split by `recv_batch` (no kernel segmentation per
        // datagram). Without it every receive is one datagram.
        let gro = false;
        Ok(ShardSocket {
            fd,
            local_addr,
            rcvbuf,
            sndbuf,
            gso_supported,
            gso: AtomicBool::new(gso_supported),
            gro: AtomicBool::new(gro),
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
    /// The 64 KiB slots coalesced receives land in (allocated on the first such receive).
    gro: Option<GroSlots>,
    /// The last receive took fewer than it could: the socket is drained.
    drained: bool,
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
            gro: None,
            drained: false,
            bufs: Vec::with_capacity(BATCH_DATAGRAMS_MAX),
        }
    }

    fn release(&mut self, pool: &mut PacketPool) {
        self.bufs.drain(..).for_each(|b| pool.free(b));
    }

    /// Whether the last `recv_batch` found the socket drained (it took fewer messages than
    /// it had room for). A coalesced receive can return more datagrams than
    /// [`BATCH_DATAGRAMS_MAX`], so the count alone does not tell.
    pub fn drained(&self) -> bool {
        self.drained
    }
}

/// Coalesced receives per `recvmmsg` (each up to 64 datagrams of one sender).
pub const GRO_SLOTS: usize = 8;
/// Bytes of one coalesced receive: the largest UDP payload, rounded up.
const GRO_SLOT_BYTES: usize = 1 << 16;
/// Control bytes per receive: room for one `UDP_GRO` message (an int) and then some.
const GRO_CONTROL_BYTES: usize = 64;

/// The receive slots of `UDP_GRO` (512 KiB, allocated once per shard).
struct GroSlots {
    bytes: Vec<u8>,
    control: Vec<[u64; GRO_CONTROL_BYTES / 8]>,
}

impl GroSlots {
    fn new() -> GroSlots {
        GroSlots {
            bytes: vec![0; GRO_SLOTS * GRO_SLOT_BYTES],
            control: vec![[0; GRO_CONTROL_BYTES / 8]; GRO_SLOTS],
        }
    }
}

/// The segment size of a coalesced receive (`SOL_UDP`/`UDP_GRO` control message), if any.
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: `hdr` is a header the kernel filled: msg_control points at our control
    // buffer and msg_controllen says how much of it holds control messages; the CMSG
    // macros stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>());
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// One queued datagram: its bytes are `buf[..len]`.
#[derive(Debug)]
struct Queued {
    buf: PacketBuf,
    len: usize,
    to: SocketAddr,
}

/// Most datagrams in one GSO message. The kernel's `UDP_MAX_SEGMENTS` is 64 up to Linux 6.x
/// and 128 since; 64 is accepted everywhere.
pub const GSO_SEGMENTS_MAX: usize = 64;

/// Most bytes in one GSO message: the largest IPv4 UDP payload (65535 - 20 - 8), which the
/// whole segmented message must fit as one datagram would.
pub const GSO_BYTES_MAX: usize = 65_507;

/// One message of a send: `count` consecutive queued datagrams from `first`, all to `to`.
/// With `count > 1` it is a GSO message: every datagram but the last is `segment` bytes, the
/// last at most that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: usize,
    count: usize,
    segment: usize,
    bytes: usize,
    to: SocketAddr,
    /// The steering byte every datagram of the run carries; `None` (too short to carry one)
    /// never joins a run.
    steer: Option<u8>,
    /// A shorter last segment closes the run.
    open: bool,
}

/// Splits datagrams `(len, to, steering byte)`, in queue order, into the messages of one
/// `sendmmsg` (into `runs`, cleared first): without `gso` one per datagram; with it, each
/// run of consecutive datagrams to one destination whose lengths are equal (the last may be
/// shorter) shares a message, up to [`GSO_SEGMENTS_MAX`] datagrams and [`GSO_BYTES_MAX`]
/// bytes.
///
/// A run also needs one steering byte ([`STEER_OFFSET`]) throughout: on loopback (and any
/// device that takes GSO packets) the message reaches the receiving host whole, the
/// reuseport program picks the socket once for it from its first datagram, and only then is
/// it split. Datagrams too short to carry the byte (or empty ones, which segmentation would
/// lose) go alone.
fn plan_runs(
    datagrams: impl IntoIterator<Item = (usize, SocketAddr, Option<u8>)>,
    gso: bool,
    runs: &mut Vec<Run>,
) {
    runs.clear();
    for (i, (len, to, steer)) in datagrams.into_iter().enumerate() {
        if let Some(run) = runs.last_mut()
            && run.open
            && run.to == to
            && run.steer == steer
            && len <= run.segment
            && run.count < GSO_SEGMENTS_MAX
            && run.bytes + len <= GSO_BYTES_MAX
        {
            run.count += 1;
            run.bytes += len;
            run.open = len == run.segment;
            continue;
        }
        runs.push(Run {
            first: i,
            count: 1,
            segment: len,
            bytes: len,
            to,
            steer,
            open: gso && steer.is_some(),
        });
    }
}

/// A `SOL_UDP`/`UDP_SEGMENT` control message: a `cmsghdr` and the u16 segment size, laid
/// out as `CMSG_SPACE(2)` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    segment: u16,
}

// SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic on their argument.
const SEGMENT_CMSG_LEN: c_uint = unsafe { libc::CMSG_LEN(2) };
// SAFETY: as above.
const SEGMENT_CMSG_SPACE: c_uint = unsafe { libc::CMSG_SPACE(2) };
// The struct is the C layout: data right after the aligned header, padded to the space.
const _: () = assert!(mem::offset_of!(SegmentCmsg, segment) + 2 == SEGMENT_CMSG_LEN as usize);
const _: () = assert!(mem::size_of::<SegmentCmsg>() == SEGMENT_CMSG_SPACE as usize);

/// A queue of up to [`BATCH_DATAGRAMS_MAX`] datagrams for one `sendmmsg`, with its arrays
/// allocated once.
///
/// The batch owns the queued [`PacketBuf`]s, so a queued buffer cannot be freed or reused
/// before the kernel has read it; [`ShardSocket::send_batch`] frees each one once sent.
/// Destinations are kept as `SocketAddr` and encoded at send time.
///
/// With UDP GSO (Linux >= 4.18, [`ShardSocket::gso`]) a send groups each run of consecutive
/// datagrams to one destination with equal lengths (the last may be shorter) and one
/// steering byte into one message: its iovecs list the run's buffers and a `UDP_SEGMENT`
/// control message gives the length, so the stack handles the run as one packet and splits
/// it late (at the device, or on loopback at the receiving socket). Runs hold at most
/// [`GSO_SEGMENTS_MAX`] datagrams and [`GSO_BYTES_MAX`] bytes. A sealed stream to one peer
/// is exactly such a run, so a full batch goes out as one or two messages instead of 64.
pub struct SendBatch {
    arrays: MsgArrays,
    queue: Vec<Queued>,
    /// The messages of the send in progress (`plan_runs`), in queue order.
    runs: Vec<Run>,
    /// One UDP_SEGMENT control message per possible message.
    cmsgs: Vec<SegmentCmsg>,
    /// Messages the kernel took over the batch's life.
    messages_sent: u64,
}

impl fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendBatch")
            .field("queue", &self.queue)
            .field("messages_sent", &self.messages_sent)
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
        // SAFETY: all-zero is a valid cmsghdr (plain integers).
        let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
        hdr.cmsg_len = SEGMENT_CMSG_LEN as usize;
        hdr.cmsg_level = libc::SOL_UDP;
        hdr.cmsg_type = libc::UDP_SEGMENT;
        let cmsg = SegmentCmsg { hdr, segment: 0 };
        SendBatch {
            arrays: MsgArrays::new(),
            queue: Vec::with_capacity(BATCH_DATAGRAMS_MAX),
            runs: Vec::with_capacity(BATCH_DATAGRAMS_MAX),
            cmsgs: vec![cmsg; BATCH_DATAGRAMS_MAX],
            messages_sent: 0,
        }
    }

    /// Messages (`mmsghdr`s) the kernel took from this batch's sends so far: one per
    /// datagram without GSO, one per run with it.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
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

    /// Plans the queue's messages ([`plan_runs`]) and fills the arrays for them; returns the
    /// headers' pointer for `sendmmsg` and how many there are.
    ///
    /// Message `j` uses `names[j]`, `cmsgs[j]` and the iovecs of its datagrams, which are
    /// consecutive: `iovs[i]` belongs to queued datagram `i`.
    fn prepare(&mut self, pool: &mut PacketPool, gso: bool) -> (*mut libc::mmsghdr, usize) {
        let buffer_bytes = pool.buffer_bytes();
        let pool_ref: &PacketPool = pool;
        plan_runs(
            self.queue.iter().map(|q| {
                // Memory safety of the iovecs rests on this, not only on the check in `push`.
                assert!(
                    q.len <= buffer_bytes,
                    "send batch: datagram longer than its buffer"
                );
                let offset = usize::try_from(STEER_OFFSET).expect("small");
                let steer = (q.len > offset).then(|| pool_ref.buf(&q.buf)[offset]);
                (q.len, q.to, steer)
            }),
            gso,
            &mut self.runs,
        );
        for (i, q) in self.queue.iter().enumerate() {
            let base = pool.ptr_mut(&q.buf);
            self.arrays.iovs[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: q.len,
            };
        }
        for (j, run) in self.runs.iter().enumerate() {
            self.arrays.msgs[j].msg_hdr.msg_namelen =
                encode_sockaddr(&run.to, &mut self.arrays.names[j]);
            if run.count > 1 {
                // Two or more segments fit GSO_BYTES_MAX, so one fits u16.
                self.cmsgs[j].segment = u16::try_from(run.segment).expect("GSO segment fits u16");
            }
        }
        // The pointers are taken after the last write through a reference into these arrays.
        let names = self.arrays.names.as_mut_ptr();
        let iovs = self.arrays.iovs.as_mut_ptr();
        let cmsgs = self.cmsgs.as_mut_ptr();
        for (j, (msg, run)) in self.arrays.msgs.iter_mut().zip(&self.runs).enumerate() {
            msg.msg_len = 0;
            let hdr = &mut msg.msg_hdr;
            hdr.msg_name = names.wrapping_add(j).cast();
            hdr.msg_iov = iovs.wrapping_add(run.first);
            hdr.msg_iovlen = run.count;
            hdr.msg_flags = 0;
            if run.count > 1 {
                hdr.msg_control = cmsgs.wrapping_add(j).cast();
                hdr.msg_controllen = SEGMENT_CMSG_SPACE as usize;
            } else {
                hdr.msg_control = ptr::null_mut();
                hdr.msg_controllen = 0;
            }
        }
        (self.arrays.msgs.as_mut_ptr(), self.runs.len())
    }

    /// The kernel took the first `k` planned messages: frees their datagrams (see
    /// [`SendBatch::complete`]) and returns how many that was.
    fn complete_messages(&mut self, k: usize, pool: &mut PacketPool) -> usize {
        assert!(
            k <= self.runs.len(),
            "send batch: kernel reported more messages sent than planned"
        );
        let n = self.runs[..k].iter().map(|r| r.count).sum();
        self.messages_sent += u64::try_from(k).expect("message count fits u64");
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
        // The socket cannot take more now: wait and retry the same datagrams.
        Some(libc::EAGAIN | libc::EINTR | libc::ENOBUFS | libc::ENOMEM) => Transient,
        // About the datagram at the head (its size or its destination: no route, refused by
        // a firewall, an address this socket cannot reach): drop that one and go on, so one
        // bad peer never holds back or stops the others.
        Some(
            libc::EMSGSIZE
            | libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::EHOSTDOWN
            | libc::EPERM
            | libc::EACCES
            | libc::EINVAL
            | libc::EAFNOSUPPORT
            | libc::EADDRNOTAVAIL
            | libc::EDESTADDRREQ,
        ) => Datagram,
        // The socket itself is unusable (EBADF, ENOTSOCK, EFAULT, anything unknown).
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
            (libc::ECONNREFUSED, Datagram),
            (libc::EHOSTUNREACH, Datagram),
            (libc::ENETUNREACH, Datagram),
            (libc::ENETDOWN, Datagram),
            (libc::EHOSTDOWN, Datagram),
            (libc::EPERM, Datagram),
            (libc::EMSGSIZE, Datagram),
            (libc::EINVAL, Datagram),
            (libc::EACCES, Datagram),
            (libc::EAFNOSUPPORT, Datagram),
            (libc::EBADF, Hard),
            (libc::ENOTSOCK, Hard),
            (libc::EFAULT, Hard),
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

    /// `(first, count, segment)` of each planned message.
    fn shape(runs: &[Run]) -> Vec<(usize, usize, usize)> {
        runs.iter().map(|r| (r.first, r.count, r.segment)).collect()
    }

    fn plan(datagrams: &[(usize, SocketAddr, Option<u8>)], gso: bool) -> Vec<Run> {
        let mut runs = Vec::new();
        plan_runs(datagrams.iter().copied(), gso, &mut runs);
        runs
    }

    #[test]
    fn runs_group_consecutive_equal_datagrams_per_destination_and_steering_byte() {
        let (a, b) = (addr(1), addr(2));
        let s0 = Some(0);
        let datagrams = [
            (100, a, s0),
            (100, a, s0),
            (100, a, s0),
            (60, a, s0), // a shorter last segment closes the run
            (60, a, s0),
            (60, b, s0), // another destination
            (60, b, s0),
            (100, b, s0), // longer than the run's segment
            (100, a, s0),
            (100, b, s0),
            (100, b, Some(1)), // another steering byte: another receiving socket
            (4, b, None),      // too short to steer: alone
            (4, b, None),
            (0, b, None),
            (0, b, None),
        ];
        let runs = plan(&datagrams, true);
        assert_eq!(
            shape(&runs),
            vec![
                (0, 4, 100),
                (4, 1, 60),
                (5, 2, 60),
                (7, 1, 100),
                (8, 1, 100),
                (9, 1, 100),
                (10, 1, 100),
                (11, 1, 4),
                (12, 1, 4),
                (13, 1, 0),
                (14, 1, 0),
            ]
        );
        assert_eq!(runs[0].bytes, 360);
        assert_eq!((runs[2].to, runs[0].to), (b, a));

        let single = plan(&datagrams, false);
        assert_eq!(
            single.len(),
            datagrams.len(),
            "without GSO, one message each"
        );
        assert!(
            single
                .iter()
                .enumerate()
                .all(|(i, r)| r.first == i && r.count == 1)
        );
    }

    #[test]
    fn runs_split_at_the_segment_and_byte_limits() {
        let a = addr(1);
        // 64 x 1232 bytes is past 65507: 53 segments (65296 bytes) and the rest.
        let full = vec![(1232, a, Some(0)); BATCH_DATAGRAMS_MAX];
        let runs = plan(&full, true);
        assert_eq!(shape(&runs), vec![(0, 53, 1232), (53, 11, 1232)]);
        assert!(runs.iter().all(|r| r.bytes <= GSO_BYTES_MAX));
        // 64 x 1023 = 65472 bytes fits one message.
        let fits = vec![(1023, a, Some(0)); BATCH_DATAGRAMS_MAX];
        assert_eq!(shape(&plan(&fits, true)), vec![(0, 64, 1023)]);
        // A short last segment that would cross the byte limit starts the next message.
        let mut over = vec![(1232, a, Some(0)); 53];
        over.push((300, a, Some(0)));
        assert_eq!(shape(&plan(&over, true)), vec![(0, 53, 1232), (53, 1, 300)]);
        // Small datagrams: the segment count caps a message.
        let many = vec![(10, a, Some(0)); 150];
        assert_eq!(
            shape(&plan(&many, true)),
            vec![(0, 64, 10), (64, 64, 10), (128, 22, 10)]
        );
        // Two datagrams past the byte limit together go alone (the kernel's EMSGSIZE
        // then names the one at fault).
        let big = vec![(40_000, a, Some(0)); 2];
        assert_eq!(
            shape(&plan(&big, true)),
            vec![(0, 1, 40_000), (1, 1, 40_000)]
        );
    }

    fn port_of(q: &Queued) -> u16 {
        q.to.port()
    }

    #[test]
    fn messages_sent_complete_exactly_their_datagrams_in_order() {
        let mut pool = PacketPool::new(BATCH_DATAGRAMS_MAX, 128);
        let mut batch = SendBatch::new();
        // Runs: 4 x 100 to port 1, 3 x 100 to port 2, 3 x 50 to port 1 (datagram i marked
        // by its first byte).
        let layout = [(4, 100, 1), (3, 100, 2), (3, 50, 1)];
        let mut mark = 0u8;
        for (count, len, port) in layout {
            for _ in 0..count {
                let buf = pool.alloc().expect("free buffer");
                pool.buf_mut(&buf)[..len].fill(0);
                pool.buf_mut(&buf)[0] = mark;
                mark += 1;
                batch.push(&pool, buf, len, addr(port)).expect("room");
            }
        }
        let (_, messages) = batch.prepare(&mut pool, true);
        assert_eq!(messages, 3);
        assert_eq!(
            shape(&batch.runs),
            vec![(0, 4, 100), (4, 3, 100), (7, 3, 50)]
        );
        // Header 1 carries datagrams 4..7 behind one UDP_SEGMENT cmsg of 100.
        let hdr = &batch.arrays.msgs[1].msg_hdr;
        assert_eq!(hdr.msg_iovlen, 3);
        assert_eq!(hdr.msg_controllen, SEGMENT_CMSG_SPACE as usize);
        assert_eq!(batch.cmsgs[1].segment, 100);
        assert_eq!(batch.cmsgs[1].hdr.cmsg_type, libc::UDP_SEGMENT);

        // The kernel took 2 of 3 messages: 7 datagrams.
        assert_eq!(batch.complete_messages(2, &mut pool), 7);
        assert_eq!(batch.messages_sent(), 2);
        assert_eq!(pool.available(), pool.capacity() - 3);
        let marks: Vec<u8> = batch.queue.iter().map(|q| pool.buf(&q.buf)[0]).collect();
        assert_eq!(marks, vec![7, 8, 9], "the unsent keep their order");
        assert!(batch.queue.iter().all(|q| port_of(q) == 1 && q.len == 50));

        // Nothing taken (EAGAIN): nothing completes.
        let (_, messages) = batch.prepare(&mut pool, true);
        assert_eq!(messages, 1);
        assert_eq!(batch.complete_messages(0, &mut pool), 0);
        assert_eq!(batch.len(), 3);
        // Without GSO the same three are three messages.
        let (_, messages) = batch.prepare(&mut pool, false);
        assert_eq!(messages, 3);
        assert!(
            batch.arrays.msgs[..3]
                .iter()
                .all(|m| m.msg_hdr.msg_controllen == 0)
        );
        assert_eq!(batch.complete_messages(1, &mut pool), 1);
        assert_eq!(pool.buf(&batch.queue[0].buf)[0], 8);
        assert_eq!(batch.clear(&mut pool), 2);
        assert_eq!(batch.messages_sent(), 3);
        assert_eq!(pool.available(), pool.capacity());
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

    proptest! {
        /// Runs cover the datagrams in order, each within the limits and made of equal
        /// segments (the last may be shorter) to one destination with one steering byte.
        #[test]
        fn runs_partition_the_queue_within_the_limits(
            datagrams in prop::collection::vec(
                (prop_oneof![Just(0usize), Just(4), Just(5), Just(1232), Just(40_000), 0..2000usize],
                 1u16..3, prop::option::of(0u8..2)),
                0..200,
            ),
            gso in any::<bool>(),
        ) {
            let datagrams: Vec<(usize, SocketAddr, Option<u8>)> = datagrams
                .into_iter()
                .map(|(len, port, steer)| (len, addr(port), steer.filter(|_| len > 4)))
                .collect();
            let runs = plan(&datagrams, gso);
            let mut next = 0;
            for r in &runs {
                prop_assert_eq!(r.first, next);
                next += r.count;
                let members = &datagrams[r.first..r.first + r.count];
                prop_assert_eq!(r.bytes, members.iter().map(|d| d.0).sum::<usize>());
                if r.count > 1 {
                    prop_assert!(gso);
                    prop_assert!(r.count <= GSO_SEGMENTS_MAX && r.bytes <= GSO_BYTES_MAX);
                    prop_assert!(members.iter().all(|d| d.1 == r.to && d.2 == r.steer));
                    prop_assert!(r.steer.is_some());
                    let (last, rest) = members.split_last().expect("non-empty");
                    prop_assert!(rest.iter().all(|d| d.0 == r.segment));
                    prop_assert!(last.0 <= r.segment && last.0 > 0);
                }
            }
            prop_assert_eq!(next, datagrams.len());
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
