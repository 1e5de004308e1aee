//! The shard's reactor: the one io_uring through which everything a shard does goes, and the
//! one place it waits.
//!
//! Components queue operations through a [`Queue`] that stamps the component's routing byte
//! into the top of the completion tag; [`Reactor::reap`] hands each completion back by that
//! byte. A producer's wake-up is a completion too: the reactor keeps a read of the shard's
//! eventfd outstanding, so a parked shard sleeps in exactly one place, `io_uring_enter`,
//! until a write or sync completes, a producer rings, or its next deadline comes.
//!
//! The park handshake is the doorbell's (see `wake.rs`): the shard announces it parks, checks
//! every component for work, and only then waits; a producer rings only if the shard parked.
//! Queued entries go to the kernel once per loop turn (one `io_uring_enter`, none when
//! nothing is queued), so the duty cycle makes no syscall per event.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};
use net_storage::{LOG_TAG_LIMIT, Submit};

use crate::wake::ShardSignal;

/// Submission queue entries of a shard's ring (a few batches' writes and syncs, the seal
/// chain, the manifest, the doorbell, with room to spare).
const RING_ENTRIES: u32 = 64;
/// Completions reaped per turn before they are dispatched (the scratch list never grows).
pub(crate) const REAP_MAX: usize = 128;
/// Routing byte position in a completion tag.
const SOURCE_SHIFT: u32 = 56;

/// Who a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Source {
    /// The shard's RedEX log.
    Log = 1,
    /// The doorbell read.
    Doorbell = 2,
    /// The shard's mesh socket (readiness polls).
    Mesh = 3,
}

const _: () = assert!(LOG_TAG_LIMIT <= 1 << SOURCE_SHIFT);

/// One completion: its source, the component's own tag, and the result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) source: Option<Source>,
    pub(crate) tag: u64,
    pub(crate) res: i32,
}

/// A shard's ring.
pub(crate) struct Reactor {
    ring: IoUring,
    signal: Arc<ShardSignal>,
    /// Where the outstanding eventfd read lands (boxed: the kernel holds its address).
    doorbell_buf: Box<u64>,
    doorbell_armed: bool,
    queued: bool,
    scratch: Vec<Completion>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("doorbell_armed", &self.doorbell_armed)
            .finish_non_exhaustive()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        // The doorbell read may still be outstanding when the ring closes: the kernel could
        // still write those 8 bytes, so they are never freed.
        if self.doorbell_armed {
            std::mem::forget(std::mem::replace(&mut self.doorbell_buf, Box::new(0)));
        }
    }
}

impl Reactor {
    /// Sets up the shard's ring. Fails when io_uring is unavailable (old kernel,
    /// `kernel.io_uring_disabled`, a seccomp profile).
    pub(crate) fn new(signal: Arc<ShardSignal>) -> io::Result<Reactor> {
        let ring = IoUring::new(RING_ENTRIES)?;
        net_storage::spread_workers(&ring);
        Ok(Reactor {
            ring,
            signal,
            doorbell_buf: Box::new(0),
            doorbell_armed: false,
            queued: false,
            scratch: Vec::with_capacity(REAP_MAX),
        })
    }

    /// A queue that routes completions back to `source`.
    pub(crate) fn queue(&mut self, source: Source) -> Queue<'_> {
        Queue {
            reactor: self,
            source,
        }
    }

    /// Keeps a read of the doorbell's eventfd outstanding (re-armed after each ring).
    fn arm_doorbell(&mut self) -> io::Result<()> {
        if self.doorbell_armed {
            return Ok(());
        }
        let fd: RawFd = self.signal.doorbell().fd();
        let entry = opcode::Read::new(types::Fd(fd), (&raw mut *self.doorbell_buf).cast::<u8>(), 8)
            .build()
            .user_data((Source::Doorbell as u64) << SOURCE_SHIFT);
        self.push(entry)?;
        self.doorbell_armed = true;
        Ok(())
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer an entry points at outlives its completion: the log's stages
        // live as long as the log (which outlives the ring's use), the doorbell buffer as long
        // as the reactor, and the shard waits for every operation before closing either.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.queued = true;
        Ok(())
    }

    /// Hands queued entries to the kernel (no syscall when nothing is queued).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.queued {
            self.ring.submit()?;
            self.queued = false;
        }
        Ok(())
    }

    /// Submits what is queued and waits for one completion, or until `timeout_ns` passes
    /// (`None`: no limit). The only place a shard blocks.
    pub(crate) fn wait(&mut self, timeout_ns: Option<u64>) -> io::Result<()> {
        self.arm_doorbell()?;
        self.queued = false;
        let result = match timeout_ns {
            None => self.ring.submit_and_wait(1),
            Some(ns) => {
                let ts = types::Timespec::new()
                    .sec(ns / 1_000_000_000)
                    .nsec(u32::try_from(ns % 1_000_000_000).expect("below a second"));
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the completions ready now (at most [`REAP_MAX`]); the doorbell's are handled
    /// here. Makes no syscall.
    pub(crate) fn reap(&mut self) -> &[Completion] {
        self.scratch.clear();
        let mut doorbell = false;
        for cqe in self.ring.completion().take(REAP_MAX) {
            let ud = cqe.user_data();
            let source = match ud >> SOURCE_SHIFT {
                1 => Some(Source::Log),
                3 => Some(Source::Mesh),
                2 => {
                    doorbell = true;
                    continue;
                }
                _ => None,
            };
            self.scratch.push(Completion {
                source,
                tag: ud & (LOG_TAG_LIMIT - 1),
                res: cqe.result(),
            });
        }
        if doorbell {
            self.doorbell_armed = false;
        }
        &self.scratch
    }

    /// A copy of completion `i` of the last reap.
    pub(crate) fn completion(&self, i: usize) -> Completion {
        self.scratch[i]
    }
}

/// What a component gets for one step of the duty cycle: its view of the ring, the batch
/// consumers completed batches go to, and whether the shard is stopping.
pub(crate) struct Cx<'a> {
    pub(crate) io: Queue<'a>,
    pub(crate) consumers: &'a mut crate::consumer::Consumers,
    /// The shard's mesh, for the log's completions: its publications take each completed
    /// batch as it is (`None` for the mesh's own steps).
    pub(crate) mesh: Option<&'a mut crate::mesh_shard::Mesh>,
    pub(crate) stopping: bool,
}

/// One part of a shard's work (Aeron's agent): the shard owns the ring and the loop, a
/// component owns its state. Adding a capability (the mesh, a sink feed) adds a component.
pub(crate) trait Component {
    /// The routing byte of its completions.
    fn source(&self) -> Source;
    /// Does what is due now; returns whether it made progress.
    fn work(&mut self, cx: &mut Cx<'_>) -> bool;
    /// Handles one of its completions (`tag` as it pushed it).
    fn complete(&mut self, cx: &mut Cx<'_>, tag: u64, res: i32);
    /// Whether it has work that needs no completion to proceed (checked before parking).
    fn ready(&self) -> bool;
    /// The next time it needs the shard without a completion (monotonic ns), if any.
    fn deadline_ns(&self) -> Option<u64>;
    /// Whether an operation of it is in flight whose completion is due shortly (a disk
    /// write, not a socket read that waits for a peer): the shard then waits for it without
    /// asking producers to ring. Must be false for operations that may never complete.
    fn completes_soon(&self) -> bool;
}

/// A component's view of the ring: pushes stamp its routing byte.
pub(crate) struct Queue<'a> {
    reactor: &'a mut Reactor,
    source: Source,
}

impl Submit for Queue<'_> {
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        let tag = entry.get_user_data();
        debug_assert!(
            tag < LOG_TAG_LIMIT,
            "component tags stay below the routing byte"
        );
        let routed = entry.user_data(((self.source as u64) << SOURCE_SHIFT) | tag);
        self.reactor.push(routed)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.reactor.flush()
    }
}
