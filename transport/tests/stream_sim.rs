//! The stream protocol over a simulated network that drops, duplicates, reorders and delays
//! frames, with a publisher whose log has holes and a subscriber that sometimes refuses
//! records: every record arrives exactly once and in order, every hole is reported as
//! skipped, and the publisher never sends new data beyond its credit.

#![allow(clippy::cast_possible_truncation)] // test data: wrapping bytes on purpose

use net_transport::stream::{
    self, Ack, DataFrameWriter, Delivery, Frame, RecvLimits, RecvStream, SendStream, StreamRef,
    StreamTimers,
};
use proptest::prelude::*;

const FRAME: usize = 1400;

/// A tiny deterministic generator (the sim must replay from its seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

#[derive(Clone)]
struct Rec {
    seq: u64,
    ts: u64,
    payload: Vec<u8>,
}

/// The publisher's log: records with holes (sequence numbers it does not have).
struct Log {
    recs: Vec<Rec>,
    end: u64,
}

impl Log {
    fn new(events: u64, hole: Option<(u64, u64)>, big_every: u64, rng: &mut Rng) -> Log {
        let mut recs = Vec::new();
        for seq in 0..events {
            if let Some((a, b)) = hole
                && (a..b).contains(&seq)
            {
                continue;
            }
            let len = if big_every > 0 && seq % big_every == 7 {
                3000 + (rng.next() % 4000) as usize
            } else {
                (rng.next() % 200) as usize
            };
            let payload = (0..len).map(|i| (seq as usize * 31 + i) as u8).collect();
            recs.push(Rec {
                seq,
                ts: seq * 10,
                payload,
            });
        }
        Log { recs, end: events }
    }

    /// Records (or the hole) from `from` on.
    fn at(&self, from: u64) -> Result<&[Rec], (u64, u64)> {
        let i = self.recs.partition_point(|r| r.seq < from);
        match self.recs.get(i) {
            Some(r) if r.seq == from => Ok(&self.recs[i..]),
            Some(r) => Err((from, r.seq)),
            None if from < self.end => Err((from, self.end)),
            None => Ok(&[]),
        }
    }
}

/// Packs frames for `from..to` into `out` (what the engine's log reader does); with
/// `credit`, only as much new data as the stream allows. Returns the end reached.
fn pack(
    log: &Log,
    s: StreamRef,
    from: u64,
    to: u64,
    tx: Option<&mut SendStream>,
    out: &mut Vec<Vec<u8>>,
) -> u64 {
    let mut tx = tx;
    let mut at = from;
    while at < to {
        let recs = match log.at(at) {
            Ok(r) => r,
            Err((a, b)) => {
                let b = b.min(to);
                let mut buf = vec![0u8; stream::SKIP_LEN];
                stream::write_skip(&mut buf, s, a, b);
                out.push(buf);
                if let Some(t) = tx.as_deref_mut() {
                    t.skipped_new(b);
                }
                at = b;
                continue;
            }
        };
        let Some(first) = recs.first() else {
            break;
        };
        if !DataFrameWriter::fits_alone(FRAME, first.payload.len()) {
            let bytes = stream::record_bytes(first.payload.len());
            if let Some(t) = tx.as_deref()
                && !t.may_send(bytes)
            {
                break;
            }
            let mut i = 0;
            loop {
                let mut buf = vec![0u8; FRAME];
                match stream::write_fragment(&mut buf, s, first.seq, first.ts, &first.payload, i) {
                    Some(n) => {
                        buf.truncate(n);
                        out.push(buf);
                    }
                    None => break,
                }
                i += 1;
            }
            if let Some(t) = tx.as_deref_mut() {
                t.sent_new(first.seq + 1, bytes);
            }
            at = first.seq + 1;
            continue;
        }
        let mut buf = vec![0u8; FRAME];
        let mut w = DataFrameWriter::new(&mut buf, s, at);
        for r in recs {
            if r.seq >= to || r.seq != w.end_seq() || !w.fits(r.payload.len()) {
                break;
            }
            if let Some(t) = tx.as_deref()
                && !t.may_send(w.record_bytes() + stream::record_bytes(r.payload.len()))
            {
                break;
            }
            w.push(r.ts, &r.payload);
        }
        if w.count() == 0 {
            break;
        }
        let (end, bytes) = (w.end_seq(), w.record_bytes());
        let n = w.finish();
        buf.truncate(n);
        out.push(buf);
        if let Some(t) = tx.as_deref_mut() {
            t.sent_new(end, bytes);
        }
        at = end;
    }
    at
}

/// A network that delays each frame by a random number of steps, and drops or duplicates.
struct Net {
    in_flight: Vec<(u64, Vec<u8>)>,
    drop: u64,
    dup: u64,
    jitter: u64,
}

impl Net {
    fn send(&mut self, now: u64, frame: Vec<u8>, rng: &mut Rng) {
        if rng.chance(self.drop) {
            return;
        }
        if rng.chance(self.dup) {
            let at = now + 1 + rng.next() % (self.jitter + 1);
            self.in_flight.push((at, frame.clone()));
        }
        let at = now + 1 + rng.next() % (self.jitter + 1);
        self.in_flight.push((at, frame));
    }

    fn due(&mut self, now: u64) -> Vec<Vec<u8>> {
        let (due, rest): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(at, _)| *at <= now);
        self.in_flight = rest;
        due.into_iter().map(|(_, f)| f).collect()
    }
}

struct Outcome {
    got: Vec<(u64, u64, Vec<u8>)>,
    skipped: Vec<(u64, u64)>,
    steps: u64,
    /// Ranges resent and tail timeouts; duplicate frames and frames dropped for room.
    resent: (u64, u64),
    dropped: (u64, u64),
}

#[allow(clippy::too_many_arguments)]
fn run(
    seed: u64,
    events: u64,
    hole: Option<(u64, u64)>,
    big_every: u64,
    drop: u64,
    dup: u64,
    jitter: u64,
    refuse: u64,
    window: u64,
) -> (Log, Outcome) {
    let mut rng = Rng(seed | 1);
    let log = Log::new(events, hole, big_every, &mut rng);
    let s = StreamRef {
        id: 7,
        generation: 99,
    };
    let step_ns = 100_000;
    let timers = StreamTimers::default();
    let mut tx = SendStream::new(s, 0, window, 0, timers);
    let mut rx = RecvStream::new(
        s,
        0,
        RecvLimits {
            window,
            slots: 64,
            slot_bytes: FRAME,
            record_bytes_max: 1 << 16,
        },
        timers,
    );
    let mut down = Net {
        in_flight: Vec::new(),
        drop,
        dup,
        jitter,
    };
    let mut up = Net {
        in_flight: Vec::new(),
        drop,
        dup,
        jitter,
    };
    let mut out = Outcome {
        got: Vec::new(),
        skipped: Vec::new(),
        steps: 0,
        resent: (0, 0),
        dropped: (0, 0),
    };
    let mut step = 0u64;
    while (rx.next() < log.end || !down.in_flight.is_empty()) && step < 2_000_000 {
        step += 1;
        let now = step * step_ns;
        // Publisher: acknowledgements, then resends, then new data within credit.
        for f in up.due(step) {
            if let Ok(Frame::Ack(a)) = stream::decode(&f) {
                tx.on_ack(now, &a);
            }
        }
        let mut frames = Vec::new();
        for _ in 0..4 {
            let Some((from, to)) = tx.take_resend(now) else {
                break;
            };
            let end = pack(&log, s, from, to.min(from + 64), None, &mut frames);
            if end < to {
                tx.resend_later(end, to);
            }
        }
        let next = tx.next_new();
        if next < log.end {
            pack(
                &log,
                s,
                next,
                (next + 50).min(log.end),
                Some(&mut tx),
                &mut frames,
            );
        }
        assert!(
            tx.sent_bytes() <= tx.granted() || tx.sent_bytes() <= rx.consumed() + (1 << 16),
            "new data beyond the credit: sent {} granted {}",
            tx.sent_bytes(),
            tx.granted()
        );
        for f in frames {
            down.send(step, f, &mut rng);
        }
        // Subscriber: frames, then the acknowledgement when due.
        let refusing = rng.chance(refuse);
        if !refusing {
            rx.consumer_ready();
        }
        let mut deliver = |d: Delivery<'_>| -> bool {
            match d {
                Delivery::Record {
                    seq,
                    ts_ns,
                    payload,
                } => {
                    if refusing {
                        return false;
                    }
                    out.got.push((seq, ts_ns, payload.to_vec()));
                    true
                }
                Delivery::Skipped { from, to } => {
                    out.skipped.push((from, to));
                    true
                }
            }
        };
        for f in down.due(step) {
            let frame = stream::decode(&f).expect("frames are well formed");
            rx.on_frame(now, &frame, &f, &mut deliver);
        }
        rx.pump(&mut deliver);
        if rx.ack_due(now) {
            let a: Ack = rx.make_ack(now);
            let mut buf = vec![0u8; stream::ACK_MAX];
            let n = stream::write_ack(&mut buf, &a);
            buf.truncate(n);
            up.send(step, buf, &mut rng);
        }
    }
    out.steps = step;
    out.resent = tx.resend_counts();
    out.dropped = rx.drop_counts();
    (log, out)
}

fn check(log: &Log, out: &Outcome, hole: Option<(u64, u64)>) {
    let want: Vec<(u64, u64, &[u8])> = log
        .recs
        .iter()
        .map(|r| (r.seq, r.ts, r.payload.as_slice()))
        .collect();
    assert_eq!(out.got.len(), want.len(), "every record exactly once");
    for (g, w) in out.got.iter().zip(&want) {
        assert_eq!((g.0, g.1, g.2.as_slice()), *w, "in order, byte for byte");
    }
    let skipped: u64 = out.skipped.iter().map(|(a, b)| b - a).sum();
    let want_skipped = hole.map_or(0, |(a, b)| b - a);
    assert_eq!(skipped, want_skipped, "every hole reported, once");
}

#[test]
fn clean_network_delivers_everything_in_order() {
    let (log, out) = run(1, 20_000, None, 0, 0, 0, 0, 0, 64 << 10);
    check(&log, &out, None);
}

#[test]
fn lossy_network_with_holes_and_fragments() {
    let hole = Some((5_000, 5_300));
    let (log, out) = run(42, 12_000, hole, 997, 50, 10, 6, 20, 128 << 10);
    assert!(out.resent.0 > 0, "the losses were repaired by resending");
    assert!(out.dropped.0 > 0, "duplicates were recognised");
    check(&log, &out, hole);
}

#[test]
fn a_stalled_subscriber_stops_new_data_at_the_credit() {
    let s = StreamRef {
        id: 1,
        generation: 1,
    };
    let mut tx = SendStream::new(s, 0, 10_000, 0, StreamTimers::default());
    let mut rng = Rng(5);
    let log = Log::new(10_000, None, 0, &mut rng);
    let mut frames = Vec::new();
    pack(&log, s, 0, log.end, Some(&mut tx), &mut frames);
    assert!(tx.sent_bytes() <= 10_000, "sent {}", tx.sent_bytes());
    assert!(tx.next_new() < log.end);
    assert!(!tx.may_send(200));
    // The subscriber consumed half: half a window more may go.
    let ack = Ack {
        stream: s,
        next: tx.next_new(),
        consumed: 5_000,
        window: 10_000,
        nacks: [(0, 0); stream::NACKS_MAX],
        nack_count: 0,
    };
    tx.on_ack(1, &ack);
    assert_eq!(tx.granted(), 15_000);
    // A hostile acknowledgement claiming more than was sent moves nothing past it.
    let lie = Ack {
        next: u64::MAX,
        consumed: u64::MAX,
        ..ack
    };
    tx.on_ack(2, &lie);
    assert_eq!(tx.acked(), tx.next_new());
    assert!(tx.granted() <= tx.sent_bytes().saturating_add(10_000));
}

#[test]
fn hostile_frames_are_refused_not_trusted() {
    // Truncations and garbage at every length decode to errors, never panic.
    let s = StreamRef {
        id: 3,
        generation: 4,
    };
    let mut buf = vec![0u8; FRAME];
    let mut w = DataFrameWriter::new(&mut buf, s, 10);
    w.push(1, b"hello");
    w.push(2, b"world");
    let n = w.finish();
    for cut in 0..n {
        assert!(stream::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    let mut rng = Rng(9);
    for _ in 0..20_000 {
        let len = (rng.next() % 64) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(k) = b.first_mut() {
            *k = (*k % 10).max(1);
        }
        let _ = stream::decode(&b);
    }
    // A SKIP that would wrap, a reversed range, a zero-record DATA.
    let mut skip = vec![0u8; stream::SKIP_LEN];
    stream::write_skip(&mut skip, s, 10, 5);
    assert!(stream::decode(&skip).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn exactly_once_in_order_under_any_mix(
        seed in 1u64..u64::MAX,
        drop in 0u64..150,
        dup in 0u64..50,
        jitter in 0u64..12,
        refuse in 0u64..100,
        window in 4_000u64..200_000,
        hole_at in 100u64..2_500,
    ) {
        let hole = Some((hole_at, hole_at + 37));
        let (log, out) = run(seed, 3_000, hole, 401, drop, dup, jitter, refuse, window);
        check(&log, &out, hole);
    }
}
