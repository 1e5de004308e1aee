//! The fuzz targets' properties (`fuzz/`, cargo-fuzz, nightly) on stable, bounded for CI:
//! the codec is total and exact; arbitrary datagrams into a responder are dropped without an
//! answer and leave its live session working; mutations and splices of captured real packets
//! never deliver a forged or replayed message and leave the session working. The properties
//! themselves are in `fuzz_support`, shared with the fuzz targets.
//!
//! The case counts keep this file at about 10 s in the dev profile on two idle cores (about
//! 11 s of CPU, most of it the scenario's handshakes); `NET_FUZZ_CASES=N` runs N cases of each
//! property instead, e.g. `NET_FUZZ_CASES=200000 cargo test --release -p net-transport --test
//! fuzz_stable` for a longer local run.

mod fuzz_support;

use std::cell::RefCell;

use fuzz_support::{Responder, Scenario, check_decode};
use net_transport::codec::{DATA_MIN_LEN, INIT_LEN, INIT_PAYLOAD_LEN, RESPONSE_LEN};
use net_transport::stats::DropCause;
use proptest::collection::vec;
use proptest::prelude::*;

/// `NET_FUZZ_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("NET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // A failure's input is printed; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Datagrams around every length the codec cares about, with a valid or a random header.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        Just(INIT_LEN),
        Just(RESPONSE_LEN),
        Just(DATA_MIN_LEN),
        Just(DATA_MIN_LEN - 1),
        Just(INIT_PAYLOAD_LEN),
        0usize..400,
    ];
    let framed = (len, 0u8..5, any::<bool>()).prop_flat_map(|(len, kind, reserved)| {
        vec(any::<u8>(), len).prop_map(move |mut b| {
            if b.len() >= 4 {
                b[0] = 1;
                b[1] = kind;
                if !reserved {
                    b[2] = 0;
                    b[3] = 0;
                }
            }
            b
        })
    });
    prop_oneof![vec(any::<u8>(), 0..200), framed]
}

thread_local! {
    /// One responder for every case, as in the fuzz target: state carries over.
    static RESPONDER: RefCell<Responder> = RefCell::new(Responder::new());
}

proptest! {
    #![proptest_config(config(100_000))]

    #[test]
    fn decode_is_total_and_exact(b in datagram()) {
        check_decode(&b);
    }
}

proptest! {
    #![proptest_config(config(20_000))]

    /// Each case: a few arbitrary datagrams (control byte, clock byte, bytes; see
    /// `Responder::feed`) into the long-lived responder.
    #[test]
    fn arbitrary_datagrams_into_a_responder_are_dropped(
        inputs in vec(vec(any::<u8>(), 0..200), 1..8)
    ) {
        RESPONDER.with(|r| {
            let mut r = r.borrow_mut();
            for input in &inputs {
                r.feed(input);
            }
        });
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    /// Each case: a fresh handshake, then the operations the bytes encode (see
    /// `Scenario::run`).
    #[test]
    fn mutated_real_packets_never_deliver_and_the_session_survives(
        ops in vec(any::<u8>(), 0..400)
    ) {
        Scenario::new().run(&ops);
    }
}

/// The harness is not vacuous: hand-made inputs reach the paths the properties are about.
#[test]
fn the_scenario_delivers_genuine_packets_and_drops_each_attack_by_cause() {
    let mut s = Scenario::new();
    // Pool: 0 message 1 (to b), 1 message 2 (to a), 2 keepalive (to b), 3-5 data to b,
    // 6-7 data to a. Operation: op, packet, mutations, [kind, pos (u16 LE), args], source,
    // clock.
    s.run(&[
        1, 3, 0, 0, 0, // data 3, as sent: delivered
        1, 3, 0, 0, 0, // again: a replay
        1, 4, 1, 0, 20, 0, 1, 0, 0, // data 4 with a flipped bit
        0x81, 5, 1, 4, 0, 0, 6, 0, 0, // data 5 under data 6's header (a's index), sent to a
        1, 0, 0, 0, 0, // message 1 replayed
        1, 1, 0, 0, 0, // message 2 replayed
        1, 3, 1, 2, 20, 0, 0, 0, // data 3 truncated to 20 bytes
    ]);
    assert_eq!(s.delivered(), 1);
    assert_eq!(s.drops(DropCause::Replay), 2);
    assert_eq!(s.drops(DropCause::Auth), 2);
    assert_eq!(s.drops(DropCause::TooOld), 1);
    assert_eq!(s.drops(DropCause::Malformed), 1);
}

#[test]
fn the_responder_inputs_reach_the_session_the_handshake_and_the_pending_initiation() {
    let mut r = Responder::new();
    let body = |kind: u8| {
        let mut b = vec![0x77u8; 48];
        b[1] = kind; // framed as 1 + kind % 3
        b
    };
    let input = |ctl: u8, b: Vec<u8>| [&[ctl, 0][..], &b].concat();
    let drops = |r: &Responder, c| r.endpoint().counters().dropped(c);
    r.feed(&input(0x18, body(2))); // data on the live session's index: AEAD
    r.feed(&input(0x08, body(0))); // message 1: Noise
    r.feed(&input(0x28, body(1))); // message 2 for the pending initiation: Noise
    assert_eq!(drops(&r, DropCause::Auth), 3);
    r.feed(&input(0x18, body(1))); // message 2 for the live session's index
    assert_eq!(drops(&r, DropCause::Replay), 1);
    r.feed(&input(0x08, body(2))); // data for no session
    assert_eq!(drops(&r, DropCause::UnknownReceiver), 1);
    r.feed(&input(0, vec![0xff; 10]));
    assert_eq!(drops(&r, DropCause::Malformed), 1);
    assert_eq!(
        r.endpoint().counters().messages_in.get(),
        6 + 1,
        "one per feed, and setup's"
    );
}
