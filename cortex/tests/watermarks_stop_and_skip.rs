//! The watermark is honest: under `stop` it never passes an event whose change did not land
//! (and `wait_for_seq` says false for it), under `skip` it passes skipped events (counted, the
//! last one named); the per-origin watermark fold refuses `u64::MAX` without wrapping.

mod common;

use std::time::Duration;

use common::{Seen, WAIT, record, shut, start_bus};
use net_cortex::watermark::{OriginKey, SEQ_CAP, WatermarkFold, Watermarks};
use net_cortex::{Cortex, CortexConfig, ErrorPolicy, FoldStatus, fold_fn};
use net_engine::{Origin, ShardId};

const S0: ShardId = ShardId(0);

/// Sends 10 good events, one bad one (seq 10), 10 good ones (seqs 11..=20) to shard 0.
fn send_with_bad_at_10(bus: &net_engine::Bus) {
    let mut p = bus.producer().unwrap();
    for i in 0..21u32 {
        let payload = if i == 10 {
            b"bad event".to_vec()
        } else {
            format!("good {i}").into_bytes()
        };
        p.send_to(0, &payload).unwrap();
    }
    bus.flush().unwrap();
}

fn config(policy: ErrorPolicy) -> CortexConfig {
    CortexConfig {
        on_error: policy,
        ..CortexConfig::new("seen")
    }
}

#[test]
fn stop_never_publishes_past_the_failed_event_and_wait_for_seq_says_false() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let cortex = Cortex::start(&bus, fold_fn(record), config(ErrorPolicy::Stop)).unwrap();
    send_with_bad_at_10(&bus);

    assert!(
        cortex.wait_for_seq(S0, 9, WAIT),
        "events before the failure fold"
    );
    assert!(
        !cortex.wait_for_seq(S0, 10, Duration::from_secs(5)),
        "the failed event is never reported folded"
    );
    assert!(!cortex.wait_for_seq(S0, 11, Duration::from_millis(10)));
    assert_eq!(cortex.folded_through_seq(S0), Some(9));

    let view = cortex.view(S0).unwrap();
    assert_eq!(view.folded_end(), 10);
    assert_eq!(view.folded_through_seq(), Some(9));
    let seqs: Vec<u64> = view.state().0.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (0..10).collect::<Vec<_>>(),
        "state holds exactly 0..10"
    );

    let stats = cortex.stats();
    let s = &stats.shards[0];
    match &s.status {
        FoldStatus::Stopped(f) => {
            assert_eq!(f.event.seq.0, 10);
            assert!(f.message.contains("is bad"), "{f:?}");
        }
        other => panic!("expected stopped, got {other:?}"),
    }
    assert_eq!(s.folded_end, 10);
    assert_eq!(s.log_end, 21);
    assert_eq!(s.lag, 11, "what the fold did not take is its lag");
    assert_eq!(s.applied, 10);
    assert_eq!(s.skipped, 0);
    assert_eq!(cortex.failure(S0).unwrap().event.seq.0, 10);

    // More events change nothing: the fold stays halted below the failure.
    let mut p = bus.producer().unwrap();
    p.send_to(0, b"good later").unwrap();
    bus.flush().unwrap();
    assert!(!cortex.wait_for_seq(S0, 21, Duration::from_millis(200)));
    assert_eq!(cortex.folded_through_seq(S0), Some(9));
    drop(cortex);
    shut(bus);
}

#[test]
fn skip_passes_skipped_events_counts_them_and_names_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let cortex = Cortex::start(&bus, fold_fn(record), config(ErrorPolicy::Skip)).unwrap();
    send_with_bad_at_10(&bus);

    assert!(
        cortex.wait_for_seq(S0, 10, WAIT),
        "a skipped event is folded"
    );
    assert!(cortex.wait_for_seq(S0, 20, WAIT));
    assert!(
        !cortex.wait_for_seq(S0, 21, Duration::from_millis(50)),
        "not sent yet"
    );
    assert_eq!(cortex.folded_through_seq(S0), Some(20));
    let view = cortex.view(S0).unwrap();
    let seqs: Vec<u64> = view.state().0.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (0..21).filter(|s| *s != 10).collect();
    assert_eq!(seqs, expected, "the skipped event changed nothing");
    let stats = cortex.stats();
    let s = &stats.shards[0];
    assert_eq!(s.status, FoldStatus::Running);
    assert_eq!(s.skipped, 1);
    assert_eq!(s.applied, 20);
    let last = s
        .last_skipped
        .as_ref()
        .expect("the last skipped event is named");
    assert_eq!(last.event.seq.0, 10);
    assert!(last.message.contains("is bad"));
    drop(cortex);
    shut(bus);
}

#[test]
fn wait_for_seq_is_false_for_a_shard_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 1);
    let cortex = Cortex::start(&bus, fold_fn(record), config(ErrorPolicy::Stop)).unwrap();
    assert!(!cortex.wait_for_seq(ShardId(7), 0, Duration::from_millis(10)));
    assert_eq!(cortex.folded_through_seq(ShardId(7)), None);
    assert_eq!(cortex.folded_through_seq(S0), None, "nothing folded yet");
    drop(cortex);
    shut(bus);
}

#[test]
fn the_watermark_cap_is_u64_max_minus_one_with_no_wrap() {
    let mut w = Watermarks::default();
    let k = OriginKey::Remote { node: 9, shard: 3 };
    assert!(w.observe(k, u64::MAX).is_err(), "u64::MAX is refused");
    assert_eq!(w.highest(k), None, "a refused number changes nothing");
    w.observe(k, 5).unwrap();
    let err = w.observe(k, u64::MAX).unwrap_err();
    assert!(err.message().contains("cap"), "{err}");
    assert_eq!(w.highest(k), Some(5));
    w.observe(k, SEQ_CAP).unwrap();
    assert_eq!(w.highest(k), Some(u64::MAX - 1));
    assert_eq!(w.next(k), u64::MAX, "one past the cap is u64::MAX, not 0");
    w.observe(k, 3).unwrap();
    assert_eq!(w.highest(k), Some(SEQ_CAP), "lower numbers never lower it");
}

fn mirror_max_between(bus: &net_engine::Bus) {
    let mut m = bus.mirror_producer().unwrap();
    for seq in [5, u64::MAX, 7] {
        let origin = Origin {
            node: 0xabc,
            shard: 3,
            seq,
        };
        m.send(S0, origin, b"mirrored").unwrap();
    }
    // Lanes are drained round robin: flush so the local event comes after the mirrored ones.
    bus.flush().unwrap();
    let mut p = bus.producer().unwrap();
    p.send_to(0, b"local").unwrap(); // seq 3 here
    bus.flush().unwrap();
}

#[test]
fn the_watermark_fold_rejects_u64_max_under_both_policies() {
    let remote = OriginKey::Remote {
        node: 0xabc,
        shard: 3,
    };
    let local = OriginKey::Local { shard: 0 };
    {
        let dir = tempfile::tempdir().unwrap();
        let bus = start_bus(dir.path(), 1);
        let cortex = Cortex::start(&bus, WatermarkFold, config(ErrorPolicy::Stop)).unwrap();
        mirror_max_between(&bus);
        assert!(cortex.wait_for_seq(S0, 0, WAIT));
        assert!(!cortex.wait_for_seq(S0, 1, Duration::from_secs(5)));
        let view = cortex.view(S0).unwrap();
        assert_eq!(view.state().highest(remote), Some(5));
        assert_eq!(view.state().highest(local), None);
        let failure = cortex.failure(S0).expect("stopped at the u64::MAX event");
        assert_eq!(failure.event.seq.0, 1);
        assert!(failure.message.contains("cap"), "{failure}");
        drop(cortex);
        shut(bus);
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let bus = start_bus(dir.path(), 1);
        let cortex = Cortex::start(&bus, WatermarkFold, config(ErrorPolicy::Skip)).unwrap();
        mirror_max_between(&bus);
        assert!(cortex.wait_for_seq(S0, 3, WAIT));
        let view = cortex.view(S0).unwrap();
        assert_eq!(view.state().highest(remote), Some(7));
        assert_eq!(view.state().next(remote), 8);
        assert_eq!(view.state().highest(local), Some(3));
        let stats = cortex.stats();
        assert_eq!(stats.shards[0].skipped, 1);
        assert_eq!(
            stats.shards[0].last_skipped.as_ref().unwrap().event.seq.0,
            1
        );
        drop(cortex);
        shut(bus);
    }
}

#[test]
fn a_fold_sees_every_payload_byte_for_byte_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), 2);
    let cortex = Cortex::start(&bus, fold_fn(record), config(ErrorPolicy::Stop)).unwrap();
    let mut p = bus.producer().unwrap();
    let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
    for i in 0..3000u32 {
        let shard = (i % 2) as usize;
        let payload = format!("{{\"n\": 1.0, \"i\" :{i} }}").into_bytes();
        p.send_to(shard, &payload).unwrap();
        sent[shard].push(payload);
    }
    bus.flush().unwrap();
    assert!(cortex.wait_caught_up(WAIT));
    for (shard, payloads) in sent.iter().enumerate() {
        let view = cortex.view(ShardId::from_index(shard)).unwrap();
        let got: Vec<&Vec<u8>> = view.state().0.iter().map(|(_, p)| p).collect();
        let want: Vec<&Vec<u8>> = payloads.iter().collect();
        assert_eq!(got, want);
        let seqs: Vec<u64> = view.state().0.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..1500).collect::<Vec<_>>());
    }
    let _: &Seen = cortex.view(S0).unwrap().state();
    drop(cortex);
    shut(bus);
}
