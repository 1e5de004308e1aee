//! A fuzz run of the socket's frame decoder on stable, bounded in time: mutations, splices
//! and truncations of valid frames, and plain random bytes, fed through exactly the path the
//! server takes (`frame_end` over a byte stream read in arbitrary chunks, then
//! `decode_request`). Properties: nothing panics or reads past its input; a decoded PUBLISH's
//! events lie inside the frame and re-encode to the same frame; a valid frame always decodes.
//!
//! `NETD_FUZZ_SECS` sets the budget (default 2 s; `scripts/test.sh` runs 20 s).

// Random numbers drawn below small bounds are narrowed on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::time::{Duration, Instant};

use netd::frame::{self, Limits, Request};

const LIMITS: Limits = Limits {
    frame_bytes_max: 1 << 16,
    payload_bytes_max: 4096,
    read_events_max: 1000,
    read_wait_ms_max: 1000,
};

/// xorshift64*: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn valid_frame(r: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    match r.below(3) {
        0 => {
            let n = 1 + r.below(20);
            let events: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|_| {
                    let k = vec![r.below(256) as u8; r.below(8)];
                    let p = vec![r.below(256) as u8; r.below(300)];
                    (k, p)
                })
                .collect();
            frame::encode_publish(
                &mut out,
                r.below(2) == 0,
                events.iter().map(|(k, p)| (k.as_slice(), p.as_slice())),
            );
        }
        1 => frame::encode_sync(&mut out),
        _ => frame::encode_read(
            &mut out,
            1 + r.below(999) as u32,
            r.below(1000) as u32,
            "net1.0100000000",
        ),
    }
    out
}

fn mutate(r: &mut Rng, f: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + r.below(4) {
        if f.is_empty() {
            f.push(r.below(256) as u8);
        }
        let at = r.below(f.len());
        match r.below(7) {
            0 => f[at] ^= 1 << r.below(8),
            1 => f[at] = [0, 1, 0x7f, 0x80, 0xff][r.below(5)],
            2 => f.truncate(at),
            3 => f.insert(at, r.below(256) as u8),
            4 => {
                let other = &corpus[r.below(corpus.len())];
                let from = r.below(other.len());
                f.splice(at..at, other[from..].iter().copied().take(64));
            }
            5 if at + 4 <= f.len() => {
                let v = [0u32, 1, 0xffff_ffff, 0x7fff_ffff, 65_536, 65_537][r.below(6)];
                f[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                let n = r.below(16);
                f.extend((0..n).map(|_| r.below(256) as u8));
            }
        }
    }
}

/// The server's path over `stream`, read in chunks of random sizes.
fn feed(r: &mut Rng, stream: &[u8]) {
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = 1 + r.below(97);
        buf.extend_from_slice(&stream[at..(at + n).min(stream.len())]);
        at += n;
        loop {
            match frame::frame_end(&buf, &LIMITS) {
                Ok(Some(end)) => {
                    assert!(end <= buf.len() && end > frame::LEN_BYTES);
                    let body = &buf[frame::LEN_BYTES..end];
                    if let Ok(req) = frame::decode_request(body, &LIMITS) {
                        check(body, &req);
                    }
                    buf.drain(..end);
                }
                Ok(None) => break,
                // The server closes the connection here.
                Err(_) => return,
            }
        }
    }
}

fn check(body: &[u8], req: &Request<'_>) {
    if let Request::Publish { ack, events } = req {
        let list: Vec<(&[u8], &[u8])> = events.iter().collect();
        assert_eq!(list.len(), events.len());
        let sum: u64 = list.iter().map(|(_, p)| p.len() as u64).sum();
        assert_eq!(sum, events.payload_bytes());
        let mut again = Vec::new();
        frame::encode_publish(&mut again, *ack, list.iter().copied());
        assert_eq!(&again[frame::LEN_BYTES..], body, "re-encoding differs");
        for (_, p) in list {
            assert!(p.len() <= LIMITS.payload_bytes_max);
        }
    }
}

#[test]
fn the_frame_decoder_survives_mutated_spliced_and_random_streams() {
    let secs: u64 = std::env::var("NETD_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let seed = std::env::var("NETD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fuzz_frames: seed {seed} (NETD_FUZZ_SEED={seed} repeats this run), {secs} s");
    let mut r = Rng(seed);
    let corpus: Vec<Vec<u8>> = (0..64).map(|_| valid_frame(&mut r)).collect();
    // Every valid frame decodes, alone and in a stream.
    for f in &corpus {
        let body = &f[frame::LEN_BYTES..];
        let req = frame::decode_request(body, &LIMITS).expect("a valid frame decodes");
        check(body, &req);
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let mut cases = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            let mut stream = Vec::new();
            for _ in 0..1 + r.below(4) {
                let mut f = corpus[r.below(corpus.len())].clone();
                match r.below(4) {
                    0 => {}
                    1 => f = (0..r.below(64)).map(|_| r.below(256) as u8).collect(),
                    _ => mutate(&mut r, &mut f, &corpus),
                }
                stream.extend_from_slice(&f);
            }
            let mut r2 = Rng(r.next() | 1);
            feed(&mut r2, &stream);
            if let Ok(Some(end)) = frame::frame_end(&stream, &LIMITS) {
                let _ = frame::decode_request(&stream[frame::LEN_BYTES..end], &LIMITS);
            }
            cases += 1;
        }
    }
    eprintln!("fuzz_frames: {cases} streams");
    assert!(cases > 0);
}
