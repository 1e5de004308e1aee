//! `Producer::send_batch` reports exactly which events it refused (never a refused event
//! counted as accepted, never an accepted one lost); batch consumers see every completed
//! batch on the shard, and one that cannot keep up never slows ingest: it refuses batches,
//! its lag shows in the stats, and it catches up by reading the log on its own thread.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use net_engine::{
    AppendedBatch, Backpressure, BatchConsumer, Bus, SendError, ShardId, shard_for_key,
};

#[test]
fn send_batch_refuses_by_index_and_keeps_per_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 2)).unwrap();
    let mut p = bus.producer().unwrap();
    let too_big = vec![0u8; p.payload_bytes_max() + 1];
    let mut expected = Vec::new();
    for round in 0..100u64 {
        let payloads: Vec<Vec<u8>> = (0..100u64)
            .map(|i| common::payload(0, round * 100 + i, 40))
            .collect();
        let keys: Vec<[u8; 8]> = (0..100u64).map(|i| (i % 7).to_le_bytes()).collect();
        let mut events: Vec<(&[u8], &[u8])> = keys
            .iter()
            .zip(&payloads)
            .map(|(k, p)| (&k[..], &p[..]))
            .collect();
        events.insert(13, (b"big", &too_big[..]));
        let sent = p.send_batch(events.iter().copied());
        assert_eq!((sent.queued, sent.dropped), (100, 0));
        assert_eq!(sent.refused.len(), 1);
        assert_eq!(sent.refused[0].0, 13);
        assert!(matches!(sent.refused[0].1, SendError::TooLarge { .. }));
        expected.extend(payloads.iter().map(|p| common::parse(p).1));
    }
    bus.flush().unwrap();
    let events = common::poll_all(&bus, 10_000);
    assert_eq!(events.len(), 10_000);
    // Within a shard (so within a key) events keep their sending order.
    for shard in 0..2u16 {
        let seen: Vec<u64> = events
            .iter()
            .filter(|e| e.id.shard == ShardId(shard))
            .map(|e| common::parse(&e.payload).1)
            .collect();
        let want: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|n| shard_for_key(&(n % 100 % 7).to_le_bytes(), 2) == usize::from(shard))
            .collect();
        assert_eq!(seen, want, "shard {shard}");
    }
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
}

#[test]
fn send_batch_under_fail_reports_what_a_full_lane_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), 1);
    cfg.lane.capacity_bytes = 4096;
    cfg.lane.backpressure = Backpressure::Fail;
    let bus = Bus::start(cfg).unwrap();
    bus.pause_shard(ShardId(0), true).unwrap();
    let mut p = bus.producer().unwrap();
    let payloads: Vec<Vec<u8>> = (0..200u64).map(|i| common::payload(0, i, 40)).collect();
    let sent = p.send_batch(payloads.iter().map(|x| (&b"k"[..], &x[..])));
    assert!(sent.queued > 0 && !sent.refused.is_empty());
    assert_eq!(sent.queued + sent.refused.len(), 200);
    assert!(
        sent.refused
            .iter()
            .all(|(_, e)| *e == SendError::Full(ShardId(0)))
    );
    bus.pause_shard(ShardId(0), false).unwrap();
    bus.flush().unwrap();
    let refused: Vec<usize> = sent.refused.iter().map(|&(i, _)| i).collect();
    let read: Vec<u64> = common::poll_all(&bus, sent.queued)
        .iter()
        .map(|e| common::parse(&e.payload).1)
        .collect();
    let accepted: Vec<u64> = (0..200u64)
        .filter(|i| !refused.contains(&(*i as usize)))
        .collect();
    assert_eq!(read, accepted, "exactly the events not refused were stored");
    let stats = bus.stats();
    assert_eq!(stats.total.ingested, sent.queued as u64);
    assert_eq!(stats.total.rejected, sent.refused.len() as u64);
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
}

/// Records as (seq, payload).
type Records = Vec<(u64, Vec<u8>)>;
/// A forwarded batch: its first seq and its records.
type Forwarded = (u64, Records);

/// A consumer that forwards each batch's records to its own thread through a bounded
/// channel, and refuses a batch when the channel is full.
struct Forward {
    tx: SyncSender<Forwarded>,
}

impl BatchConsumer for Forward {
    fn on_batch(&mut self, _shard: ShardId, batch: &AppendedBatch<'_>) -> bool {
        let records = batch
            .records()
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        match self.tx.try_send((batch.first_seq, records)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The consumer's thread: takes forwarded batches and fills every gap from the log.
fn consume(bus: &Bus, rx: Receiver<Forwarded>, total: u64) -> Records {
    let mut reader = bus.shard_reader(ShardId(0)).unwrap();
    let mut got: Records = Vec::new();
    let catch_up = |got: &mut Records, reader: &mut net_engine::Reader, to: u64| {
        while (got.len() as u64) < to {
            let next = got.len() as u64;
            let batch = reader.read(next, (to - next) as usize, 1 << 20).unwrap();
            for r in batch.records.into_iter().take((to - next) as usize) {
                got.push((r.seq, r.payload.to_vec()));
            }
        }
    };
    while (got.len() as u64) < total {
        // Nothing forwarded: everything so far is in the log (ingest was flushed).
        let Ok((first, records)) = rx.try_recv() else {
            catch_up(&mut got, &mut reader, total);
            break;
        };
        catch_up(&mut got, &mut reader, first);
        for (seq, payload) in records {
            if seq == got.len() as u64 {
                got.push((seq, payload));
            }
        }
    }
    got
}

#[test]
fn a_stalled_consumer_never_stalls_ingest_and_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(common::config(dir.path(), 1)).unwrap();
    let (tx, rx) = sync_channel(4);
    bus.add_batch_consumer(ShardId(0), "forward", Box::new(Forward { tx }))
        .unwrap();
    let stall = Arc::new(Barrier::new(2));
    let total = 50_000u64;
    let got = std::thread::scope(|scope| {
        let consumer = {
            let (bus, stall) = (&bus, stall.clone());
            scope.spawn(move || {
                stall.wait(); // stalled until ingest is done
                consume(bus, rx, total)
            })
        };
        let mut p = bus.producer().unwrap();
        for i in 0..total {
            p.send_to(0, &common::payload(0, i, 30)).unwrap();
        }
        // Ingest completes while the consumer takes nothing.
        bus.flush().unwrap();
        let stats = bus.stats();
        let c = &stats.shards[0].consumers[0];
        assert_eq!(c.name, "forward");
        assert!(
            c.batches_refused > 0 && c.lag > 0,
            "a stalled consumer refuses and lags: {c:?}"
        );
        assert_eq!(
            stats.shards[0].appended_payload_bytes,
            total * 30,
            "the built-in tally counts every payload byte"
        );
        stall.wait();
        consumer.join().unwrap()
    });
    assert_eq!(got.len() as u64, total);
    for (i, (seq, payload)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(payload, &common::payload(0, i as u64, 30), "seq {seq}");
    }
    assert!(!bus.shutdown(Duration::from_secs(5)).lossy);
}
