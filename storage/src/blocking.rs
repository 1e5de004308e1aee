//! Blocking use of a standalone log (tools, tests, compaction, benchmarks): the same pipeline
//! a shard drives, driven here by waiting on the log's own ring.
//!
//! A log opened with [`Log::open`] or [`Log::create`] owns a small ring; these helpers submit
//! through it and wait for completions. A shard opens its log with [`Log::open_shared`] and
//! drives it from its reactor instead; there only [`Log::close`] (after the shard waited for
//! every operation) and [`Log::read`] apply.

use crate::error::{Result, StorageError};
use crate::log::{Log, Push};
use crate::reader::StoredRecord;
use crate::record::Origin;
use crate::retention::{Retention, Swept};
use crate::uring::{Ring, Submit};

impl Log {
    /// Runs `f` with the log's own ring.
    ///
    /// # Panics
    /// If the log was opened shared (a shard drives it).
    fn with_ring<T>(&mut self, f: impl FnOnce(&mut Log, &mut Ring) -> Result<T>) -> Result<T> {
        let mut ring = self
            .own_ring
            .take()
            .expect("blocking helpers need a standalone log (Log::open)");
        let out = f(self, &mut ring);
        self.own_ring = Some(ring);
        out
    }

    /// Waits for at least one completion and handles all that are ready; completed batches
    /// are dropped (nobody consumes them here).
    fn wait_once(&mut self, ring: &mut Ring) -> Result<()> {
        ring.wait().map_err(StorageError::Uring)?;
        let mut ready = Vec::new();
        ring.reap(|tag, res| ready.push((tag, res)));
        let mut first_err = None;
        for (tag, res) in ready {
            if let Err(e) = self.complete(ring, tag, res) {
                first_err.get_or_insert(e);
            }
        }
        while self.pop_completed().is_some() {}
        first_err.map_or(Ok(()), Err)
    }

    /// Submits the open batch, waiting for a write in flight (or a free stage) first.
    fn submit_waiting(&mut self, ring: &mut Ring, sync: bool) -> Result<()> {
        while self.open_events() > 0 {
            if self.submit(ring, sync)? {
                ring.flush().map_err(StorageError::Uring)?;
                return Ok(());
            }
            self.wait_once(ring)?;
        }
        Ok(())
    }

    /// Waits until no operation of the log is in flight.
    fn wait_idle(&mut self, ring: &mut Ring) -> Result<()> {
        ring.flush().map_err(StorageError::Uring)?;
        while self.in_flight() {
            self.wait_once(ring)?;
        }
        self.check_poison()
    }

    /// Appends one record, writing full batches as needed, and returns its sequence number.
    pub fn append(&mut self, ts_ns: u64, payload: &[u8]) -> Result<u64> {
        self.append_record(ts_ns, None, payload)
    }

    /// [`Log::append`] of a record that carries where it came from (see
    /// [`Log::push_with_origin`]).
    pub fn append_with_origin(
        &mut self,
        ts_ns: u64,
        origin: &Origin,
        payload: &[u8],
    ) -> Result<u64> {
        self.append_record(ts_ns, Some(origin), payload)
    }

    /// Appends one record, with an origin block when `origin` is given (what compaction
    /// copies: a record keeps its origin).
    pub fn append_record(
        &mut self,
        ts_ns: u64,
        origin: Option<&Origin>,
        payload: &[u8],
    ) -> Result<u64> {
        self.with_ring(|log, ring| {
            loop {
                let pushed = match origin {
                    Some(o) => log.push_with_origin(ts_ns, o, payload)?,
                    None => log.push(ts_ns, payload)?,
                };
                match pushed {
                    Push::Staged(seq) => return Ok(seq),
                    Push::Full if log.open_events() > 0 => log.submit_waiting(ring, false)?,
                    Push::Full => log.wait_once(ring)?,
                }
            }
        })
    }

    /// Writes everything staged and waits for it; with `sync`, also makes it durable.
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        self.with_ring(|log, ring| {
            log.submit_waiting(ring, sync)?;
            log.wait_idle(ring)?;
            if sync && log.sync(ring)? {
                log.wait_idle(ring)?;
            }
            Ok(())
        })
    }

    /// Applies `policy` and waits until the removed segments' files are gone.
    pub fn enforce_retention(&mut self, policy: &Retention, now_ns: u64) -> Result<Swept> {
        self.with_ring(|log, ring| {
            let swept = log.retain(ring, policy, now_ns)?;
            log.wait_idle(ring)?;
            Ok(swept)
        })
    }

    /// Reads up to `max_events` records (and about `max_bytes`, at least one record) from
    /// `from`, across segments, through the log's own reader. Empty at the end of what is
    /// readable.
    pub fn read(
        &mut self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>> {
        let reader = self.reader.get_or_insert_with(|| self.view.reader());
        Ok(reader.read(from, max_events, max_bytes)?.records)
    }

    /// Waits for what is in flight, seals what is being sealed, cuts the active segment's
    /// reserved tail, makes everything durable and records the clean end in the manifest.
    ///
    /// # Panics
    /// If records are staged but not submitted (the caller decides what happens to them), or,
    /// for a shared log, if operations are still in flight.
    pub fn close(mut self) -> Result<()> {
        assert_eq!(self.open_events, 0, "close with staged records");
        self.reader = None;
        if self.own_ring.is_some() {
            self.with_ring(|log, ring| log.wait_idle(ring))?;
        } else {
            assert!(!self.in_flight(), "close a shared log only when it is idle");
        }
        self.check_poison()?;
        self.seal_now()?;
        // A segment whose header was staged but never written stays empty, not a block of zeros.
        let has_records = self.next_seq > self.active.base;
        let end = if has_records {
            self.stages[self.open].end()
        } else {
            0
        };
        let a = &self.active;
        let dat_err = crate::roll::segment_err("truncate and sync", &self.dir, a.base, "dat");
        a.dat
            .set_len(end)
            .and_then(|()| a.dat.sync_all())
            .map_err(dat_err)?;
        crate::segment::sync_dir(&self.dir)?;
        let (next, base) = (self.next_seq, self.active.base);
        self.manifest.update(|m| {
            m.clean_end = Some(next);
            m.active_base = base;
        });
        self.manifest.write_now(&self.dir)
    }
}

impl Log {
    /// Continues the log at `seq`, beyond its next sequence number, in a new segment, and
    /// records `next_seq..seq` as an accepted gap (compaction copies a source's gaps).
    pub fn skip_to(&mut self, seq: u64) -> Result<()> {
        assert!(seq > self.next_seq, "skip forward only");
        self.flush(false)?;
        let from = self.next_seq;
        let mut gaps = self.manifest.manifest().clone();
        gaps.add_gap(from, seq)
            .map_err(|what| StorageError::Invalid {
                field: "gaps",
                what,
            })?;
        self.manifest.update(|m| m.gaps = gaps.gaps);
        self.next_seq = seq;
        self.with_ring(|log, ring| {
            while log.sealing.is_some() || !log.active.dir_synced {
                log.wait_once(ring)?;
            }
            log.roll()?;
            Ok(())
        })?;
        let map = self.view.map();
        self.view.publish_map(crate::view::SegmentMap {
            first_seq: map.first_seq,
            segments: map.segments.clone(),
            gaps: self.manifest.manifest().gaps.clone(),
        });
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if !self.in_flight() {
            return;
        }
        // The kernel may still write into (or read from) the stages: wait for it, or, when
        // that is impossible, never free them.
        if let Some(mut ring) = self.own_ring.take() {
            while self.in_flight() && self.wait_once(&mut ring).is_ok() {}
            if !self.in_flight() {
                return;
            }
        }
        std::mem::forget(std::mem::take(&mut self.stages));
    }
}
