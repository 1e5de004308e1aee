//! The demo's ledger of what it sent, checked against every event read back: each payload
//! byte-exact, no event missing or duplicated, and order kept where net promises it.
//!
//! Keys differ per event, so one producer's events spread over all shards; net orders events
//! only within a shard, and within a shard a producer's events come from one lane in send
//! order. So the ledger checks that, per (shard, producer), counters strictly increase, and
//! that per shard the sequence numbers strictly increase. Presence is a bitmap per producer,
//! one bit per event, sized once before reading starts.

use crate::payload;
use crate::workload::Workload;
use net_engine::Event;

/// Expected events, and which of them have been seen.
#[derive(Debug)]
pub struct Ledger {
    work: Workload,
    /// One bit per (producer, counter).
    seen: Vec<Vec<u64>>,
    /// Last counter seen per shard x producer, `shard * producers + producer`.
    last_counter: Vec<Option<u64>>,
    /// Last sequence number seen per shard.
    last_seq: Vec<Option<u64>>,
    expected: Vec<u8>,
    verified: u64,
}

impl Ledger {
    pub fn new(work: &Workload) -> Ledger {
        let seen = (0..work.producers)
            .map(|p| {
                let events = payload::share(work.events, work.producers, p);
                vec![0u64; usize::try_from(events.div_ceil(64)).expect("bitmap fits memory")]
            })
            .collect();
        Ledger {
            work: *work,
            seen,
            last_counter: vec![None; work.shards * work.producers],
            last_seq: vec![None; work.shards],
            expected: vec![0; work.payload_bytes],
            verified: 0,
        }
    }

    /// Checks one event read back; the error says which event and what was wrong.
    pub fn check(&mut self, event: &Event) -> Result<(), String> {
        // The event's name is only formatted on failure: this runs for every event read.
        let (shard, seq) = (usize::from(event.id.shard.0), event.id.seq.0);
        self.check_unnamed(event, shard, seq)
            .map_err(|e| format!("event {shard}/{seq}: {e}"))
    }

    fn check_unnamed(&mut self, event: &Event, shard: usize, seq: u64) -> Result<(), String> {
        if shard >= self.work.shards {
            return Err(format!("shard out of range (bus has {})", self.work.shards));
        }
        if self.last_seq[shard] >= Some(seq) {
            return Err(format!(
                "seq after {:?} on the same shard",
                self.last_seq[shard]
            ));
        }
        self.last_seq[shard] = Some(seq);
        let Some(id) = payload::identity(&event.payload) else {
            return Err(format!(
                "payload of {} bytes is too short",
                event.payload.len()
            ));
        };
        let producer = usize::try_from(id.producer).unwrap_or(usize::MAX);
        if producer >= self.work.producers
            || id.counter >= payload::share(self.work.events, self.work.producers, producer)
        {
            return Err(format!("claims {id:?}, which was never sent"));
        }
        self.check_payload(&event.payload, id)
            .map_err(|e| format!("{id:?}: {e}"))?;
        let order = &mut self.last_counter[shard * self.work.producers + producer];
        if *order >= Some(id.counter) {
            return Err(format!(
                "{id:?} read after counter {order:?} of that producer"
            ));
        }
        *order = Some(id.counter);
        self.mark(producer, id.counter)
            .map_err(|e| format!("{id:?}: {e}"))?;
        self.verified += 1;
        Ok(())
    }

    pub fn expected_events(&self) -> u64 {
        self.work.events
    }

    /// Fails unless every event sent was seen; returns how many were verified.
    pub fn finish(&self) -> Result<u64, String> {
        for (producer, bits) in self.seen.iter().enumerate() {
            let events = payload::share(self.work.events, self.work.producers, producer);
            if let Some(counter) = (0..events).find(|c| !bit(bits, *c)) {
                let seen: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
                let missing = events - seen;
                return Err(format!(
                    "{missing} events of producer {producer} never read back \
                     (first missing counter {counter})"
                ));
            }
        }
        Ok(self.verified)
    }

    fn check_payload(&mut self, payload: &[u8], id: payload::Identity) -> Result<(), String> {
        if payload.len() != self.expected.len() {
            return Err(format!(
                "{} bytes, sent {}",
                payload.len(),
                self.expected.len()
            ));
        }
        payload::fill(&mut self.expected, id.producer, id.counter);
        match payload.iter().zip(&self.expected).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(byte) => Err(format!("payload differs from what was sent at byte {byte}")),
        }
    }

    fn mark(&mut self, producer: usize, counter: u64) -> Result<(), String> {
        let bits = &mut self.seen[producer];
        if bit(bits, counter) {
            return Err("read back twice".to_owned());
        }
        let word = usize::try_from(counter / 64).expect("counter fits the bitmap");
        bits[word] |= 1 << (counter % 64);
        Ok(())
    }
}

fn bit(bits: &[u64], counter: u64) -> bool {
    let word = usize::try_from(counter / 64).expect("counter fits the bitmap");
    bits[word] & (1 << (counter % 64)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use net_engine::{EventId, Seq, ShardId};

    fn event(shard: u16, seq: u64, producer: u32, counter: u64) -> Event {
        let mut payload = vec![0u8; 20];
        payload::fill(&mut payload, producer, counter);
        let id = EventId {
            shard: ShardId(shard),
            seq: Seq(seq),
        };
        Event {
            id,
            ts_ns: 0,
            origin: None,
            payload: Bytes::from(payload),
        }
    }

    const WORK: Workload = Workload {
        events: 4,
        payload_bytes: 20,
        shards: 2,
        producers: 2,
    };

    #[test]
    fn accepts_a_complete_ordered_read_back() {
        let mut ledger = Ledger::new(&WORK);
        for e in [
            event(0, 0, 0, 0),
            event(1, 0, 1, 0),
            event(0, 1, 0, 1),
            event(1, 1, 1, 1),
        ] {
            ledger.check(&e).unwrap();
        }
        assert_eq!(ledger.finish(), Ok(4));
    }

    #[test]
    fn rejects_missing_duplicate_reordered_and_corrupt_events() {
        let mut ledger = Ledger::new(&WORK);
        ledger.check(&event(0, 0, 0, 0)).unwrap();
        assert!(ledger.finish().unwrap_err().contains("never read back"));
        assert!(
            ledger
                .check(&event(1, 0, 0, 0))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            ledger
                .check(&event(0, 0, 0, 1))
                .unwrap_err()
                .contains("seq after")
        );
        ledger.check(&event(0, 5, 1, 1)).unwrap();
        assert!(
            ledger
                .check(&event(0, 6, 1, 0))
                .unwrap_err()
                .contains("read after counter")
        );
        assert!(
            ledger
                .check(&event(0, 7, 0, 9))
                .unwrap_err()
                .contains("never sent")
        );
        let mut torn = event(1, 9, 0, 1);
        let mut bytes = torn.payload.to_vec();
        bytes[15] ^= 1;
        torn.payload = Bytes::from(bytes);
        assert!(ledger.check(&torn).unwrap_err().contains("at byte 15"));
    }
}
