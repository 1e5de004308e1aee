//! A shard: one thread, one ring, one RedEX log. Its duty cycle (Aeron's agent loop): reap
//! the ring's completions and hand each to its component; answer control messages; let each
//! component do what is due; hand the queued I/O to the kernel; and, when nothing made
//! progress, idle by the configured strategy — for `park`, in exactly one place: waiting on
//! the ring, until an operation completes, a producer rings the doorbell, or the next
//! deadline comes.
//!
//! Components own their state; the shard owns the ring and the loop. Today they are the
//! ingest pipeline (lanes → batch → log) and the batch consumers it feeds; the mesh and sink
//! feeds join the same way: a completion source, a `work` step, a readiness check, a
//! deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::clock::monotonic_ns;
use crate::config::{IdleConfig, IdleStrategy};
use crate::consumer::Consumers;
use crate::control::{Control, ShardShared};
use crate::ingest::Ingest;
use crate::mesh_shard::Mesh;
use crate::reactor::{Component, Cx, Reactor, Source};

/// Why a shard's thread ended other than cleanly.
#[derive(Debug)]
pub(crate) enum ShardExit {
    /// Its log failed, or failed to close.
    Storage(net_storage::StorageError),
    /// Its ring failed (an io_uring_enter error other than an interruption).
    Ring(std::io::Error),
    /// Its thread panicked with this message (caught; recorded as the shard's failure).
    Panicked(String),
}

pub(crate) struct Shard {
    id: u16,
    idle: IdleConfig,
    reactor: Reactor,
    ingest: Ingest,
    mesh: Option<Mesh>,
    consumers: Consumers,
    shared: Arc<ShardShared>,
    stop_deadline_ns: Option<u64>,
    idle_since_ns: Option<u64>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Shard {
    pub(crate) fn new(
        id: u16,
        idle: IdleConfig,
        reactor: Reactor,
        ingest: Ingest,
        mesh: Option<Mesh>,
        consumers: Consumers,
        shared: Arc<ShardShared>,
    ) -> Shard {
        Shard {
            id,
            idle,
            reactor,
            ingest,
            mesh,
            consumers,
            shared,
            stop_deadline_ns: None,
            idle_since_ns: None,
        }
    }

    pub(crate) fn id(&self) -> u16 {
        self.id
    }

    /// Runs until stopped; returns how the log closed.
    pub(crate) fn run(mut self) -> Result<(), ShardExit> {
        loop {
            let mut busy = self.reap();
            if self.shared.has_pending() {
                busy |= self.handle_control();
            }
            if let Some(deadline) = self.stop_deadline_ns
                && self.ingest.stop_reached(deadline)
            {
                break;
            }
            busy |= self.work();
            self.reactor.flush().map_err(ShardExit::Ring)?;
            if busy {
                self.idle_since_ns = None;
            } else {
                self.idle()?;
            }
        }
        self.finish()
    }

    /// The components of the duty cycle, in the order they run.
    fn components<'a>(
        ingest: &'a mut Ingest,
        mesh: &'a mut Option<Mesh>,
    ) -> impl Iterator<Item = &'a mut dyn Component> {
        std::iter::once(ingest as &mut dyn Component)
            .chain(mesh.as_mut().map(|m| m as &mut dyn Component))
    }

    /// Lets every component do what is due; returns whether any made progress.
    fn work(&mut self) -> bool {
        let stopping = self.stop_deadline_ns.is_some();
        let mut cx = Cx {
            io: self.reactor.queue(self.ingest.source()),
            consumers: &mut self.consumers,
            mesh: self.mesh.as_mut(),
            stopping,
        };
        let mut busy = self.ingest.work(&mut cx);
        if let Some(mesh) = &mut self.mesh {
            let mut cx = Cx {
                io: self.reactor.queue(mesh.source()),
                consumers: &mut self.consumers,
                mesh: None,
                stopping,
            };
            busy |= mesh.work(&mut cx);
        }
        busy
    }

    /// Hands every ready completion to its component; returns whether there were any. The
    /// log's completions come with the mesh, whose publications take each completed batch.
    fn reap(&mut self) -> bool {
        let n = self.reactor.reap().len();
        let stopping = self.stop_deadline_ns.is_some();
        for i in 0..n {
            let done = self.reactor.completion(i);
            match done.source {
                Some(Source::Log) => {
                    let mut cx = Cx {
                        io: self.reactor.queue(Source::Log),
                        consumers: &mut self.consumers,
                        mesh: self.mesh.as_mut(),
                        stopping,
                    };
                    self.ingest.complete(&mut cx, done.tag, done.res);
                }
                Some(Source::Mesh) => {
                    if let Some(mesh) = &mut self.mesh {
                        let mut cx = Cx {
                            io: self.reactor.queue(Source::Mesh),
                            consumers: &mut self.consumers,
                            mesh: None,
                            stopping,
                        };
                        mesh.complete(&mut cx, done.tag, done.res);
                    }
                }
                _ => {}
            }
        }
        n > 0
    }

    /// Whether a component has work that needs no completion.
    fn ready(&mut self) -> bool {
        Self::components(&mut self.ingest, &mut self.mesh).any(|c| c.ready())
    }

    /// The earliest deadline of any component.
    fn deadline_ns(&mut self) -> Option<u64> {
        Self::components(&mut self.ingest, &mut self.mesh)
            .filter_map(|c| c.deadline_ns())
            .min()
    }

    fn handle_control(&mut self) -> bool {
        let mut any = false;
        while let Some(msg) = self.shared.take() {
            any = true;
            match msg {
                Control::AddLane(lane) => self.ingest.add_lane(lane),
                Control::AddConsumer(consumer, counters) => self.consumers.add(consumer, counters),
                Control::HoldRetention(at) => self.ingest.add_retention_hold(at),
                Control::Flush { heads, reply } => self.ingest.add_flush((heads, reply)),
                Control::SyncNow => self.ingest.request_sync(),
                Control::Latency { reply } => {
                    let _ = reply.send(self.ingest.take_latency());
                }
                Control::Pause(p) => self.ingest.set_paused(p),
                Control::InjectPanic => panic!("injected panic in shard {}", self.id),
                Control::Mesh(msg) => {
                    if let Some(mesh) = &mut self.mesh {
                        mesh.control(msg);
                    }
                }
                Control::Stop { deadline_ns } => {
                    self.stop_deadline_ns = Some(deadline_ns);
                    self.ingest.set_paused(false);
                }
            }
        }
        any
    }

    fn idle(&mut self) -> Result<(), ShardExit> {
        self.ingest.retire_lanes();
        let now = monotonic_ns();
        let since = *self.idle_since_ns.get_or_insert(now);
        let soon = self.completes_soon();
        match self.idle.strategy {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield => std::thread::yield_now(),
            // A completion due shortly will wake the shard: wait for it at once rather than
            // spin through the core the producers (and the kernel's workers) need.
            IdleStrategy::Park if soon => self.park(now, true)?,
            IdleStrategy::Park if now - since < self.idle.spin_us * 1000 => std::hint::spin_loop(),
            IdleStrategy::Park => self.park(now, false)?,
        }
        Ok(())
    }

    /// Whether a component has an operation in flight whose completion is due shortly.
    fn completes_soon(&mut self) -> bool {
        Self::components(&mut self.ingest, &mut self.mesh).any(|c| c.completes_soon())
    }

    /// Checks for work and waits on the ring until something completes, a producer rings, or
    /// the next deadline. The park is announced (so that producers ring the doorbell) only
    /// when no completion is due shortly (`soon`, from `completes_soon`): while a write is in flight the shard could not
    /// submit what a producer sends anyway, and it drains the lanes when the write completes.
    /// Ringing for every few events instead cost the producers a syscall each (an eventfd
    /// write) and the shard a wake-up each, and halved ingest throughput.
    fn park(&mut self, now: u64, soon: bool) -> Result<(), ShardExit> {
        let announce = !soon;
        if announce {
            self.shared.signal.prepare_park();
        }
        if self.shared.has_pending() || self.ready() {
            if announce {
                self.shared.signal.unpark();
            }
            return Ok(());
        }
        let max = now.saturating_add(self.idle.park_max_us.saturating_mul(1000));
        let until = self.deadline_ns().map_or(max, |d| d.min(max));
        let wait = self.reactor.wait(Some(until.saturating_sub(now).max(1)));
        if announce {
            self.shared.signal.unpark();
        }
        wait.map_err(ShardExit::Ring)
    }

    /// Waits for the I/O in flight (the kernel holds the log's buffers), submits what is left
    /// if everything was drained, and closes the log.
    fn finish(mut self) -> Result<(), ShardExit> {
        self.drive_until_idle()?;
        if self
            .ingest
            .submit_rest(&mut self.reactor.queue(Source::Log))
        {
            self.reactor.flush().map_err(ShardExit::Ring)?;
            self.drive_until_idle()?;
        }
        if let Some(mesh) = &mut self.mesh {
            mesh.close();
        }
        let result = self.ingest.finish().map_err(ShardExit::Storage);
        self.shared.counters.stopped.store(true, Ordering::Release);
        self.shared.close();
        result
    }

    fn drive_until_idle(&mut self) -> Result<(), ShardExit> {
        while self.ingest.io_in_flight() {
            self.reactor.flush().map_err(ShardExit::Ring)?;
            self.reactor.wait(None).map_err(ShardExit::Ring)?;
            self.reap();
        }
        Ok(())
    }
}
